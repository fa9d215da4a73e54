"""The stand-in's HTTPS API: health, metrics, discovery and the resource paths of kube-apiserver.

Authentication as kube-apiserver's: bearer tokens from ``--token-auth-file``
(``token,user,uid,"group1,group2"``) and client certificates signed by
``--client-ca-file``; health and version paths are open to anonymous
requests unless ``--anonymous-auth=false``.  Every authenticated user may do
everything (there is no authorizer).  Request bodies are never logged.
"""

import csv
import hmac
import http.server
import json
import logging
import socket
import ssl
import threading
import urllib.parse

from tests.harness.standin.store import ApiError

LOG = logging.getLogger("kube-apiserver-standin.http")
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-teapot-standin", "platform": "linux/amd64",
           "goVersion": "none (kube-apiserver stand-in in Python)", "compiler": "none"}
MAX_BODY = 3 * 1024 * 1024


def load_token_file(path):
    """``{token: user}`` from a kube-apiserver static token file."""
    tokens = {}
    with open(path, encoding="utf-8", newline="") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise ValueError(f"{path} line {number}: need at least token,user,uid")
            tokens[row[0].strip()] = row[1].strip()
    return tokens


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-standin"
    # Headers and body leave in two writes: with Nagle's algorithm the body waits for the client's delayed
    # ACK of the headers, 40 ms on every kept-alive request (a tenth of the throughput real clients see).
    disable_nagle_algorithm = True

    def setup(self):
        self.request.settimeout(30)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            LOG.debug("TLS handshake with %s failed: %s", self.client_address[0], exc)
            raise
        super().setup()

    def handle(self):
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, socket.timeout):
            self.close_connection = True

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        LOG.debug("%s %s", self.client_address[0], format % args)

    # -------------------------------------------------------- plumbing

    def _user(self):
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            presented = header[len("Bearer "):].strip()
            for token, user in self.server.standin.tokens.items():
                if hmac.compare_digest(token.encode(), presented.encode()):
                    return user
            return None
        cert = self.request.getpeercert() if self.server.standin.client_ca else None
        if cert:
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return value
        return None

    def _send(self, code, body, content_type="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, error):
        self._send(error.code, error.status())

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", "the request body is larger than the stand-in accepts")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type not in ("application/json", "*/*", ""):
            raise ApiError(415, "UnsupportedMediaType", f"the stand-in accepts application/json bodies, not {content_type}")
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None

    def _dispatch(self):
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path.rstrip("/") or "/"
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        standin = self.server.standin
        user = self._user()
        public = self.command == "GET" and path.split("/")[1:2] and f"/{path.split('/')[1]}" in PUBLIC_PATHS and standin.anonymous_auth
        if user is None and not public:
            self._send(401, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                             "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
            return
        try:
            code, body, content_type = standin.api.handle(self.command, path, query, self._body)
        except ApiError as error:
            LOG.info("%s %s -> %s (%s)", self.command, path, error.code, user or "anonymous")
            self._error(error)
            return
        except Exception as exc:  # pylint: disable=broad-exception-caught
            # etcd unreachable, or a bug: kube-apiserver answers 500 and goes on serving.
            LOG.error("%s %s failed: %s: %s", self.command, path, type(exc).__name__, exc)
            self._error(ApiError(500, "InternalError", f"Internal error occurred: {type(exc).__name__}: {exc}"))
            return
        quiet = path == "/metrics" or path.split("/")[1] in ("healthz", "livez", "readyz")
        LOG.log(logging.DEBUG if quiet else logging.INFO, "%s %s -> %s (%s)", self.command, path, code, user or "anonymous")
        self._send(code, body, content_type)

    def do_GET(self):  # pylint: disable=invalid-name
        self._dispatch()

    def do_POST(self):  # pylint: disable=invalid-name
        self._dispatch()

    def do_PUT(self):  # pylint: disable=invalid-name
        self._dispatch()

    def do_DELETE(self):  # pylint: disable=invalid-name
        self._dispatch()

    def do_PATCH(self):  # pylint: disable=invalid-name
        self._dispatch()


class HTTPSServer(http.server.ThreadingHTTPServer):
    """TLS on accepted sockets, the handshake in the request's own thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, standin, context):
        self.standin = standin
        self.context = context
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        # Port probes and clients that drop the connection are not errors worth a traceback.
        LOG.debug("connection from %s ended early", client_address[0])

    def get_request(self):
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


def tls_context(cert_file, key_file, client_ca=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class ServingThread:
    """``serve_forever`` in a thread; ``stop()`` shuts it down."""

    def __init__(self, server):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="https", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
