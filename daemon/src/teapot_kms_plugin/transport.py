"""gRPC transport: a thin layer over the key service, on a unix socket.

Requests are parsed here rather than by gRPC so that a request that is not
valid protobuf is answered INVALID_ARGUMENT instead of a generic error.
"""

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import time
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError

from . import proto
from . import keyservice

LOG = logging.getLogger(__name__)
# A DecryptRequest is at most ~1 KiB ciphertext + 1 KiB key_id + 32 KiB annotations.
MAX_MESSAGE = 64 * 1024


class SocketError(Exception):
    """The socket path cannot be used; the message says why."""


def _uid(text):
    return text if len(text) <= 128 else text[:128] + "..."


class Servicer:
    """Maps gRPC calls onto the key service; records metrics and logs."""

    def __init__(self, key_service, metrics=None):
        self.key_service = key_service
        self.metrics = metrics

    def _finish(self, method, started, code, uid, message=None):
        if self.metrics is not None:
            self.metrics.observe_rpc(method, code, time.perf_counter() - started)
        if message is not None:
            LOG.warning("%s refused", method, extra={"method": method, "code": code, "uid": _uid(uid), "error": message})
        elif LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("%s done", method, extra={"method": method, "code": code, "uid": _uid(uid)})

    def _refuse(self, context, method, started, uid, code, message):
        self._finish(method, started, code, uid, message)
        context.abort(grpc.StatusCode[code], message)

    def _internal(self, context, method, started, uid, exc):
        """A bug, not a bad request: answer INTERNAL without the exception's text, which is not known to be free of secrets."""
        LOG.error("%s failed", method, extra={"method": method, "code": "INTERNAL", "uid": _uid(uid), "exception": type(exc).__name__})
        self._finish(method, started, "INTERNAL", uid)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in the KMS plugin ({type(exc).__name__}); see its log")

    def _parse(self, method, raw, context, started):
        try:
            return proto.METHODS[method][0].FromString(raw)
        except (DecodeError, ValueError, RuntimeError) as exc:
            message = f"request is not a valid {proto.METHODS[method][0].DESCRIPTOR.name}: {type(exc).__name__}"
            return self._refuse(context, method, started, "", "INVALID_ARGUMENT", message)

    def _handle(self, method, raw, context, answer):
        """Parse the request, let ``answer(request)`` build the response; time, log and map errors alike for every method."""
        started = time.perf_counter()
        request = self._parse(method, raw, context, started)
        # StatusRequest has no uid.
        uid = getattr(request, "uid", "")
        try:
            response = answer(request)
        except keyservice.KmsError as exc:
            return self._refuse(context, method, started, uid, exc.code, str(exc))
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return self._internal(context, method, started, uid, exc)
        self._finish(method, started, "OK", uid)
        return response

    def status(self, raw, context):
        return self._handle("Status", raw, context, self._status)

    def encrypt(self, raw, context):
        return self._handle("Encrypt", raw, context, self._encrypt)

    def decrypt(self, raw, context):
        return self._handle("Decrypt", raw, context, self._decrypt)

    def _status(self, _request):
        result = self.key_service.status()
        return proto.StatusResponse(version=result.version, healthz=result.healthz, key_id=result.key_id)

    def _encrypt(self, request):
        result = self.key_service.encrypt(request.plaintext)
        return proto.EncryptResponse(ciphertext=result.ciphertext, key_id=result.key_id, annotations=result.annotations)

    def _decrypt(self, request):
        return proto.DecryptResponse(plaintext=self.key_service.decrypt(request.ciphertext, request.key_id, request.annotations))


def _serialize(message):
    return message.SerializeToString()


def generic_handler(servicer):
    """A gRPC generic handler serving ``v2.KeyManagementService`` with ``servicer``."""
    serialize = _serialize
    handlers = {
        "Status": grpc.unary_unary_rpc_method_handler(servicer.status, response_serializer=serialize),
        "Encrypt": grpc.unary_unary_rpc_method_handler(servicer.encrypt, response_serializer=serialize),
        "Decrypt": grpc.unary_unary_rpc_method_handler(servicer.decrypt, response_serializer=serialize),
    }
    return grpc.method_handlers_generic_handler(proto.GRPC_SERVICE, handlers)


# The plugin's own read-only service beside KMS v2, for ``teapot-kms-plugin status``: the apiserver
# never calls it.  Raw bytes in, JSON out: no schema to keep in step with a proto file.
REPORT_METHOD = "/teapot.kms.Plugin/Report"


def report_handler(report):
    """A generic handler answering REPORT_METHOD with ``report()`` as JSON (no secrets in it, by contract)."""
    service, method = REPORT_METHOD.strip("/").split("/")

    def answer(_raw, _context):
        return json.dumps(report(), sort_keys=True).encode()

    return grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(answer)})


def prepare_socket_path(path):
    """Create the parent directory (0700) if needed; remove a stale socket, refuse anything else."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SocketError(f"{path}: cannot create the directory {parent}: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketError(f"{path} exists and is not a socket: refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketError(f"{path}: cannot tell whether the socket is in use: {exc.strerror}") from None
    else:
        raise SocketError(f"{path} is in use by a running process: another plugin instance?")
    finally:
        probe.close()
    os.unlink(path)


def _apply_group(path, group):
    import grp  # pylint: disable=import-outside-toplevel

    try:
        gid = int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketError(f"socket_group: no group named {group!r}") from None
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        raise SocketError(f"socket_group: cannot give {path} to group {group!r}: {exc.strerror}") from None
    os.chmod(path, 0o660)
    _let_group_through(os.path.dirname(path), gid, group)


def _let_group_through(parent, gid, group):
    """A 0660 socket is of no use to the group behind a directory it cannot search (the 0700 default)."""
    info = os.stat(parent)
    if info.st_mode & stat.S_IXOTH or (info.st_gid == gid and info.st_mode & stat.S_IXGRP):
        return
    if info.st_uid != os.geteuid():
        raise SocketError(f"socket_group: group {group!r} cannot reach the socket: {parent} is not searchable by it "
                          "and not the plugin's to change; give the group search permission on it (chgrp, chmod g+x)")
    try:
        os.chown(parent, -1, gid)
    except OSError as exc:
        raise SocketError(f"socket_group: cannot give {parent} to group {group!r}: {exc.strerror}") from None
    # Search only: the group reaches the socket by name, it does not list the directory.
    os.chmod(parent, (stat.S_IMODE(info.st_mode) & ~0o070) | stat.S_IXGRP)


def start_server(servicer, path, workers=8, group=None, report=None):
    """Serve on a unix socket at ``path`` (mode 0600, or 0660 for ``group``); return the server.

    ``report`` (a callable returning a JSON-able dict) is served as REPORT_METHOD.
    """
    prepare_socket_path(path)
    handlers = (generic_handler(servicer),) + ((report_handler(report),) if report is not None else ())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        handlers=handlers,
        options=(("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)),
    )
    # The socket is created by gRPC: a strict umask closes the window before chmod.
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{path}")
        server.start()
    except RuntimeError:
        raise SocketError(f"{path}: gRPC cannot listen on this socket path") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    if group is not None:
        _apply_group(path, group)
    return server


def remove_socket(path):
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
