# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection's etcd v3 client.  Private to this collection: no stable API.

It speaks to etcd's JSON gateway (``POST /v3/kv/range`` and friends), which
every etcd 3.4 or newer serves on its client URLs next to gRPC, with the TLS
client certificate the kube-apiserver uses.  So a control-plane host needs
nothing beyond Python's standard library: no etcdctl binary (kubeadm keeps it
inside the etcd container) and no client package.  TLS connections are kept
alive between calls (a small pool per endpoint, safe to share between threads).

Keys are ``str`` (decoded with ``surrogateescape``, so that any key read can
be written back), values ``bytes``.  Every failure raises ``EtcdError`` with a
message that names the endpoint and says what to fix.
"""

import base64
import binascii
import concurrent.futures
import http.client
import json
import socket
import ssl
import threading
from urllib.parse import urlsplit

DEFAULT_PAGE_SIZE = 1000
_API = "/v3"
# gRPC status codes the gateway returns in "code".
_OUT_OF_RANGE = 11
_PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16


def etcd_argument_spec():
    """The ``etcd`` option of the modules that talk to etcd (documented by the teapot.kms.etcd fragment)."""
    return dict(type="dict", default={}, options=dict(
        endpoints=dict(type="list", elements="str", default=["https://127.0.0.1:2379"]),
        cacert=dict(type="path"),
        cert=dict(type="path"),
        key=dict(type="path", no_log=False),
        timeout=dict(type="int", default=30),
    ))


def client_from_params(connection, timeout=None, client_class=None):
    """An EtcdClient (or a ``client_class`` with its options) from the ``etcd`` option's value (``timeout`` overrides its timeout)."""
    return (client_class or EtcdClient)(connection["endpoints"], cacert=connection["cacert"], cert=connection["cert"],
                                        key=connection["key"], timeout=timeout or connection["timeout"])


class EtcdError(Exception):
    """etcd could not be used; the message names the endpoint and what to fix."""


class _TransportFailure(Exception):
    """No answer from one endpoint: ``cause`` is the socket or TLS error."""

    def __init__(self, cause, during_handshake):
        super().__init__(str(cause))
        self.cause = cause
        self.during_handshake = during_handshake


# A kept-alive connection that the server closed while idle fails with one of these.
_CLOSED_MEANWHILE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def _b64(data):
    return base64.b64encode(data).decode("ascii")


# binascii directly: base64.b64decode's argument checks cost as much as the decoding of a typical value.
_a2b = binascii.a2b_base64


def _key_bytes(key):
    return key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)


def _key_str(data):
    return data.decode("utf-8", "surrogateescape")


def prefix_range_end(prefix):
    """The first key after every key that starts with ``prefix`` (etcd's ``range_end`` for a prefix)."""
    prefix = bytearray(prefix)
    while prefix:
        if prefix[-1] < 0xFF:
            prefix[-1] += 1
            return bytes(prefix)
        prefix.pop()
    return b"\x00"  # every key


def tls_context(cacert, cert, key):
    """An ``ssl.SSLContext`` for these files; EtcdError saying which file is wrong when one cannot be used."""
    for what, path in (("cacert", cacert), ("cert", cert), ("key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise EtcdError(f"cannot read the etcd {what} {path}: {exc.strerror}"
                            + (" (run as root, for example with become)" if isinstance(exc, PermissionError) else "")) from None
    try:
        context = ssl.create_default_context(cafile=cacert)
    except ssl.SSLError as exc:
        raise EtcdError(f"the etcd cacert {cacert} holds no usable CA certificate ({exc.reason or exc})") from None
    if cert:
        try:
            context.load_cert_chain(cert, keyfile=key)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                reason = f"the key {key} does not belong to the certificate {cert}"
            else:
                reason = f"{cert} and {key or 'its key'} are not a PEM certificate and private key ({exc.reason or exc})"
            raise EtcdError(f"cannot load the etcd client certificate: {reason}") from None
    return context


# What to tell the user when a connection fails before etcd answered: shared by every transport.

def untrusted_server(url, detail):
    return (f"{url}: the server's TLS certificate is not trusted ({detail}): set cacert to the CA that "
            "signed etcd's server certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt) and use an address "
            "the certificate names")


def not_tls(url):
    return f"{url}: the server does not speak TLS: use http:// if this etcd serves plain HTTP, or check the port"


def client_certificate_refusal(cert):
    """Why a TLS etcd closes the connection on a client: its certificate (``cert``, None when none was given)."""
    if cert:
        return (f"it refuses the client certificate {cert} (not signed by the CA etcd trusts with "
                "--trusted-ca-file, expired, or not for client authentication)")
    return ("it demands a client certificate: set cert and key (kubeadm: "
            "/etc/kubernetes/pki/apiserver-etcd-client.crt and .key)")


def no_answer(url, timeout):
    return f"{url}: no answer within {timeout}s: check the endpoint and the network, or raise the timeout"


def connection_refused(url):
    return f"{url}: connection refused: check that etcd runs there and that the address and port are right"


def unresolvable(url, host, detail):
    return f"{url}: cannot resolve {host} ({detail})"


def unreachable(url, detail):
    return f"{url}: {detail}: check that etcd runs there and that the address and port are right"


def reach_failure(failures):
    """The EtcdError for endpoints that all failed (``failures``: one message per endpoint, in order)."""
    if len(failures) == 1:
        return EtcdError(f"cannot reach etcd at {failures[0]}")
    return EtcdError("cannot reach etcd at any endpoint: " + "; ".join(failures))


def first_answer(endpoints, preferred, attempt, transient, describe):
    """``(index, attempt(endpoint))`` of the first of ``endpoints`` that answers, asked in turn from ``preferred`` on.

    An exception of type ``transient`` moves on to the next endpoint, noted as
    ``describe(endpoint, exception)``; EtcdError (``reach_failure``) when none answers.
    """
    failures = []
    for offset in range(len(endpoints)):
        index = (preferred + offset) % len(endpoints)
        try:
            return index, attempt(endpoints[index])
        except transient as exc:
            failures.append(describe(endpoints[index], exc))
    raise reach_failure(failures)


def request_refused(url, code, message):
    """The EtcdError for a request etcd answered with an error (``code``: its gRPC status code)."""
    if code == _PERMISSION_DENIED:
        hint = "etcd authorisation is on and this user may not do that: use the apiserver's etcd client certificate"
    elif code == _UNAUTHENTICATED:
        hint = "etcd's own user authentication is on, which this client does not use: authenticate with a client certificate"
    elif "compacted" in message:
        hint = "the revision read was compacted meanwhile: run again"
    else:
        hint = None
    return EtcdError(f"{url}: etcd refused the request: {message}" + (f" ({hint})" if hint else ""))


class Endpoint:
    """One client URL of etcd: ``scheme``, ``host``, ``port``."""

    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EtcdError(f"etcd endpoint {url!r} is not an http:// or https:// URL (for example https://127.0.0.1:2379)")
        if parts.path not in ("", "/"):
            raise EtcdError(f"etcd endpoint {url!r} has a path: give scheme, address and port only")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or 2379


def parse_endpoints(endpoints, cert=None, key=None):
    """``endpoints`` (client URLs, or one URL) as a list of Endpoint; EtcdError for an unusable one, or a key without ``cert``."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not endpoints:
        raise EtcdError("no etcd endpoint given: set at least one client URL, for example https://127.0.0.1:2379")
    parsed = [Endpoint(url) for url in endpoints]
    if key and not cert:
        raise EtcdError("an etcd client key was given without its certificate: set cert too")
    return parsed


class EtcdClient:
    """etcd v3 through its JSON gateway, with TLS client certificates.

    ``endpoints`` are client URLs (``https://10.0.0.1:2379``), tried in order
    until one answers; ``cacert`` verifies the servers (the system's CAs when
    None); ``cert``/``key`` are the client certificate and its key.
    """

    def __init__(self, endpoints, cacert=None, cert=None, key=None, timeout=10):
        self.endpoints = parse_endpoints(endpoints, cert, key)
        self.cacert, self.cert, self.key = cacert, cert, key
        self.timeout = timeout
        self._context = None
        if any(endpoint.scheme == "https" for endpoint in self.endpoints):
            self._context = tls_context(cacert, cert, key)
        self._lock = threading.Lock()
        self._idle = {}
        self._preferred = 0

    # -- transport ---------------------------------------------------------

    def _take_connection(self, endpoint):
        """An idle kept-alive connection to ``endpoint``, or a new (not yet connected) one."""
        with self._lock:
            idle = self._idle.get(endpoint.url)
            if idle:
                return idle.pop()
        if endpoint.scheme == "https":
            return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=self.timeout, context=self._context)
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.timeout)

    def _give_back(self, endpoint, connection):
        with self._lock:
            self._idle.setdefault(endpoint.url, []).append(connection)

    def close(self):
        """Close the idle connections (the client stays usable: it reconnects when asked again)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _exchange(self, endpoint, path, body):
        """One POST; a kept-alive connection that the server closed meanwhile is reopened once."""
        for attempt in (1, 2):
            connection = self._take_connection(endpoint)
            reused = connection.sock is not None
            try:
                if not reused:
                    try:
                        connection.connect()
                    except (OSError, http.client.HTTPException) as exc:
                        raise _TransportFailure(exc, during_handshake=True) from None
                connection.request("POST", _API + path, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
            except _TransportFailure:
                connection.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused and attempt == 1 and isinstance(exc, _CLOSED_MEANWHILE):
                    continue
                raise _TransportFailure(exc, during_handshake=False) from None
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                self._give_back(endpoint, connection)
            return response.status, payload
        raise AssertionError("unreachable")

    def _transport_error(self, endpoint, failure):
        """What to tell the user about a connection that failed before etcd answered."""
        url = endpoint.url
        exc = failure.cause
        if isinstance(exc, ssl.SSLCertVerificationError):
            return untrusted_server(url, exc.verify_message)
        text = str(exc)
        if isinstance(exc, ssl.SSLError) and ("WRONG_VERSION_NUMBER" in text or "wrong version number" in text):
            return not_tls(url)
        if isinstance(exc, (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
            closed = f"{url}: etcd closed the connection ({type(exc).__name__}: {exc})"
            if endpoint.scheme == "http":
                return f"{closed} without an answer: if it serves TLS on this port, use https:// with cacert, cert and key"
            refusal = client_certificate_refusal(self.cert)
            if failure.during_handshake and endpoint.scheme == "https":
                return f"{closed} during the TLS handshake: either it serves plain HTTP on this port (use http://) or {refusal}"
            return f"{closed}: {refusal}"
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return no_answer(url, self.timeout)
        if isinstance(exc, ConnectionRefusedError):
            return connection_refused(url)
        if isinstance(exc, socket.gaierror):
            return unresolvable(url, endpoint.host, exc.strerror)
        if isinstance(exc, OSError):
            return unreachable(url, exc.strerror or exc)
        return f"{url}: {type(exc).__name__}: {exc}"

    def _call_endpoint(self, endpoint, path, request):
        status, payload = self._exchange(endpoint, path, json.dumps(request))
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict):
            return answer
        if isinstance(answer, dict) and ("error" in answer or "message" in answer):
            raise request_refused(endpoint.url, answer.get("code"), answer.get("message") or answer.get("error") or "no message")
        snippet = payload[:200].decode("utf-8", "replace").strip()
        if status == 400 and "HTTPS server" in snippet:
            raise EtcdError(f"{endpoint.url}: etcd serves TLS there: use https:// with cacert, cert and key")
        raise EtcdError(f"{endpoint.url}: HTTP {status} from {_API}{path} ({snippet!r}): this is not the JSON gateway of "
                        "an etcd 3.4 or newer client URL")

    def _call(self, path, request):
        """POST ``request`` to every endpoint in turn until one answers; raise EtcdError when none does."""
        self._preferred, answer = first_answer(self.endpoints, self._preferred,
                                               lambda endpoint: self._call_endpoint(endpoint, path, request),
                                               _TransportFailure, self._transport_error)
        return answer

    # -- key-value API -----------------------------------------------------

    def range_pages(self, prefix, page_size=DEFAULT_PAGE_SIZE, revision=None, keys_only=False):
        """Yield the keys under ``prefix`` as lists of ``(key, value, mod_revision)``, at most ``page_size`` at a time.

        Every page is read at one revision (the first page's, or ``revision``),
        so the pages are one consistent snapshot.  With ``keys_only`` values are b"".
        While the caller works on a page, the next one is already being read.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        end = _b64(prefix_range_end(_key_bytes(prefix)))
        pinned = int(revision or 0)

        def fetch(start):
            request = {"key": _b64(start), "range_end": end, "limit": page_size, "revision": pinned}
            if keys_only:
                request["keys_only"] = True
            return self._call("/kv/range", request)

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:
            answer = fetch(_key_bytes(prefix))
            while True:
                if not pinned:
                    pinned = int(answer["header"]["revision"])
                kvs = answer.get("kvs") or ()
                following = None
                if answer.get("more") and kvs:
                    following = reader.submit(fetch, _a2b(kvs[-1]["key"]) + b"\x00")
                if kvs:
                    yield [(_key_str(_a2b(kv["key"])), _a2b(kv.get("value", "")), int(kv.get("mod_revision", 0))) for kv in kvs]
                if following is None:
                    return
                answer = following.result()

    def get(self, key):
        """``(value, mod_revision)`` of ``key``, or None when it does not exist."""
        answer = self._call("/kv/range", {"key": _b64(_key_bytes(key))})
        kvs = answer.get("kvs")
        if not kvs:
            return None
        return _a2b(kvs[0].get("value", "")), int(kvs[0].get("mod_revision", 0))

    def put(self, key, value):
        """Write ``value`` at ``key``; return the new revision."""
        answer = self._call("/kv/put", {"key": _b64(_key_bytes(key)), "value": _b64(bytes(value))})
        return int(answer["header"]["revision"])

    def put_if(self, key, value, mod_revision):
        """Write ``value`` only if ``key`` is still at ``mod_revision`` (0: only if it does not exist); True if written."""
        key_b64 = _b64(_key_bytes(key))
        answer = self._call("/kv/txn", {
            "compare": [{"key": key_b64, "target": "MOD", "result": "EQUAL", "mod_revision": int(mod_revision)}],
            "success": [{"request_put": {"key": key_b64, "value": _b64(bytes(value))}}],
        })
        return bool(answer.get("succeeded"))

    def delete(self, key):
        """Delete ``key``; return how many keys were deleted (0 or 1)."""
        answer = self._call("/kv/deleterange", {"key": _b64(_key_bytes(key))})
        return int(answer.get("deleted", 0))

    def revision(self):
        """The store's current revision."""
        answer = self._call("/kv/range", {"key": _b64(b"\x00"), "limit": 1, "keys_only": True})
        return int(answer["header"]["revision"])

    def compact(self, revision):
        """Discard the history before ``revision`` (physically, before returning)."""
        self._call("/kv/compaction", {"revision": int(revision), "physical": True})

    def defragment(self):
        """Defragment every endpoint's member (a member-local operation)."""
        for endpoint in self.endpoints:
            try:
                self._call_endpoint(endpoint, "/maintenance/defragment", {})
            except _TransportFailure as failure:
                raise EtcdError(f"defragment failed at {self._transport_error(endpoint, failure)}") from None
