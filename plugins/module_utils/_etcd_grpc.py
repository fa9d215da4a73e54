# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Paged range reads from etcd v3 over its own gRPC API.  Private to this collection: no stable API.

etcd answers a gRPC ``KV/Range`` with its protobuf message as it holds it;
through the JSON gateway (``_etcd.EtcdClient``) the same answer is turned into
JSON inside etcd first, which costs etcd about four times the CPU.  This
client reads the same pages with ``grpcio`` and ``protobuf`` (message classes
built from a descriptor at run time, no generated code) and offers the part of
``EtcdClient`` that a read-only audit needs: ``revision()``, ``range_pages()``
and ``close()``, with the same options (endpoints tried in order, ``cacert``,
client ``cert`` and ``key``, ``timeout``), one revision for every page, and
the same ``EtcdError`` messages (``_etcd`` writes them for both).

``grpcio`` is not in every Python: ``grpc_import_error()`` imports it (and
protobuf) on first use and says why that failed, None when it did not.
"""

import os
import re
import traceback

from ansible_collections.teapot.kms.plugins.module_utils._etcd import (
    DEFAULT_PAGE_SIZE,
    EtcdError,
    client_certificate_refusal,
    connection_refused,
    first_answer,
    no_answer,
    parse_endpoints,
    prefix_range_end,
    request_refused,
    tls_context,
    unreachable,
    unresolvable,
    untrusted_server,
)

_RANGE_METHOD = "/etcdserverpb.KV/Range"
_loaded = {}
# The fields of etcd's etcdserverpb RangeRequest and RangeResponse (api/etcdserverpb/rpc.proto, mvccpb/kv.proto)
# that a paged read uses, with their numbers; fields left out are skipped by the parser.
_MESSAGES = {
    "ResponseHeader": (("revision", 3, "int64"),),
    "KeyValue": (("key", 1, "bytes"), ("mod_revision", 3, "int64"), ("value", 5, "bytes")),
    "RangeRequest": (("key", 1, "bytes"), ("range_end", 2, "bytes"), ("limit", 3, "int64"), ("revision", 4, "int64"),
                     ("keys_only", 8, "bool")),
    "RangeResponse": (("header", 1, "ResponseHeader"), ("kvs", 2, "repeated KeyValue"), ("more", 3, "bool")),
}


def grpc_import_error():
    """None when grpcio and protobuf import (they are then loaded), else the traceback of the failed import."""
    if "error" not in _loaded:
        # grpc's C core writes connection failures to stderr itself; EtcdError says them once, clearly.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        try:
            # pylint: disable-next=import-outside-toplevel
            import grpc
            # pylint: disable-next=import-outside-toplevel
            from google.protobuf import descriptor_pb2, descriptor_pool
        except ImportError:
            _loaded["error"] = traceback.format_exc()
        else:
            _loaded.update(error=None, grpc=grpc, classes=_message_classes(descriptor_pb2, descriptor_pool))
    return _loaded["error"]


def _message_classes(descriptor_pb2, descriptor_pool):
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import message_class

    fdp = descriptor_pb2.FieldDescriptorProto
    scalars = {"bytes": fdp.TYPE_BYTES, "int64": fdp.TYPE_INT64, "bool": fdp.TYPE_BOOL}
    proto = descriptor_pb2.FileDescriptorProto(name="teapot_kms_etcd_range.proto", package="etcdserverpb", syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind in fields:
            label = fdp.LABEL_REPEATED if kind.startswith("repeated ") else fdp.LABEL_OPTIONAL
            kind = kind.rsplit(" ", 1)[-1]
            field = message.field.add(name=field_name, number=number, label=label)
            if kind in scalars:
                field.type = scalars[kind]
            else:
                field.type, field.type_name = fdp.TYPE_MESSAGE, f".etcdserverpb.{kind}"
    # A private pool: the default one may hold etcd's own generated messages.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_class(pool, f"etcdserverpb.{name}") for name in ("RangeRequest", "RangeResponse")}


def _read(path):
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


# A failed connection's details, as grpcio words them, end with what went wrong at the last address tried.
_LAST_ERROR = re.compile(r"last error: [A-Z_]+: (?:(?:ipv4|ipv6|unix):\S+: )?(?P<detail>.*)$", re.DOTALL)
_NOT_VERIFIED = re.compile(r"CERTIFICATE_VERIFY_FAILED:? ?(?P<reason>[^:]*)")


class EtcdGrpcClient:
    """Paged reads of etcd v3 over gRPC, with TLS client certificates; options as ``_etcd.EtcdClient``'s.

    ``cacert`` None verifies https endpoints with grpcio's own CA bundle.
    Raises EtcdError (and does not connect) when grpcio cannot be imported.
    """

    def __init__(self, endpoints, cacert=None, cert=None, key=None, timeout=10):
        self.endpoints = parse_endpoints(endpoints, cert, key)
        self.cacert, self.cert, self.key = cacert, cert, key
        self.timeout = timeout
        error = grpc_import_error()
        if error is not None:
            raise EtcdError("etcd's gRPC API needs the Python libraries grpcio and protobuf, which this Python cannot "
                            "import (" + error.strip().splitlines()[-1] + ")")
        self._grpc = _loaded["grpc"]
        self._request, self._response = _loaded["classes"]["RangeRequest"], _loaded["classes"]["RangeResponse"]
        self._credentials = None
        if any(endpoint.scheme == "https" for endpoint in self.endpoints):
            # The same checks as the JSON client's, for the same messages about unreadable or mismatched files.
            tls_context(cacert, cert, key)
            self._credentials = self._grpc.ssl_channel_credentials(_read(cacert), _read(key), _read(cert))
        self._channels = {}
        self._preferred = 0

    def _range_call(self, endpoint):
        channel = self._channels.get(endpoint.url)
        if channel is None:
            host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
            # A page's size is set by page_size, not by a message limit (kube-apiserver's objects go up to 1.5 MiB).
            options = [("grpc.max_receive_message_length", -1)]
            if endpoint.scheme == "https":
                channel = self._grpc.secure_channel(f"{host}:{endpoint.port}", self._credentials, options=options)
            else:
                channel = self._grpc.insecure_channel(f"{host}:{endpoint.port}", options=options)
            self._channels[endpoint.url] = channel
        return channel.unary_unary(_RANGE_METHOD, request_serializer=self._request.SerializeToString,
                                   response_deserializer=self._response.FromString)

    def close(self):
        """Close the channels (the client stays usable: it reconnects when asked again)."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.close()

    def _failure(self, endpoint, error):
        """What to tell the user about ``error`` (a grpc.RpcError) from ``endpoint``; raises EtcdError when etcd itself answered it."""
        code = error.code()
        details = error.details() or ""
        if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
            return no_answer(endpoint.url, self.timeout)
        if code != self._grpc.StatusCode.UNAVAILABLE:
            raise request_refused(endpoint.url, code.value[0], details or "no message") from None
        match = _LAST_ERROR.search(details)
        detail = match.group("detail") if match else details
        url = endpoint.url
        if "Connection refused" in detail:
            return connection_refused(url)
        if details.startswith("errors resolving") or "Domain name not found" in details:
            return unresolvable(url, endpoint.host, detail)
        verify = _NOT_VERIFIED.search(detail)
        if verify:
            return untrusted_server(url, verify.group("reason").strip() or "certificate verify failed")
        closed = f"{url}: etcd closed the connection ({detail})"
        if endpoint.scheme == "http":
            if "Socket closed" in detail or "Connection reset" in detail:
                return f"{closed} without an answer: if it serves TLS on this port, use https:// with cacert, cert and key"
        elif "Handshake read failed" in detail or "Socket closed" in detail:
            return (f"{closed} during the TLS handshake: either it serves plain HTTP on this port (use http://) or "
                    + client_certificate_refusal(self.cert))
        elif "BAD_CERTIFICATE" in detail or "CERTIFICATE_REQUIRED" in detail or "Unwrap failed" in detail:
            return f"{closed}: " + client_certificate_refusal(self.cert)
        return unreachable(url, detail)

    def _call(self, request):
        """``request`` answered by the first endpoint that answers; EtcdError when none does."""
        self._preferred, answer = first_answer(self.endpoints, self._preferred,
                                               lambda endpoint: self._range_call(endpoint)(request, timeout=self.timeout),
                                               self._grpc.RpcError, self._failure)
        return answer

    def revision(self):
        """The store's current revision."""
        return self._call(self._request(key=b"\x00", limit=1, keys_only=True)).header.revision

    def range_pages(self, prefix, page_size=DEFAULT_PAGE_SIZE, revision=None, keys_only=False):
        """Yield the keys under ``prefix`` as lists of ``(key, value, mod_revision)``, as ``EtcdClient.range_pages``.

        Every page is read at one revision (the first page's, or ``revision``).
        While the caller works on a page, the next one is already being read
        from the endpoint that answered; should it fail, the other endpoints
        are asked in turn.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        start = prefix.encode("utf-8", "surrogateescape") if isinstance(prefix, str) else bytes(prefix)
        end = prefix_range_end(start)
        pinned = int(revision or 0)
        answer = self._call(self._request(key=start, range_end=end, limit=page_size, revision=pinned, keys_only=keys_only))
        while True:
            pinned = pinned or answer.header.revision
            kvs = answer.kvs
            following = None
            if answer.more and kvs:
                request = self._request(key=kvs[-1].key + b"\x00", range_end=end, limit=page_size, revision=pinned,
                                        keys_only=keys_only)
                following = (request, self._range_call(self.endpoints[self._preferred]).future(request, timeout=self.timeout))
            if kvs:
                yield [(kv.key.decode("utf-8", "surrogateescape"), kv.value, kv.mod_revision) for kv in kvs]
            if following is None:
                return
            request, future = following
            try:
                answer = future.result()
            except self._grpc.RpcError:
                # The same request again, through every endpoint in turn, for the message when all fail.
                answer = self._call(request)
