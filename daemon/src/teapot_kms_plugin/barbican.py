"""Fetch key-encryption keys from Barbican (python-barbicanclient on a keystoneauth1 session)."""

import logging
import threading
import urllib.parse

from barbicanclient import client as barbican_client
from barbicanclient import exceptions as barbican_exceptions
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading
from keystoneauth1 import session as ks_session

from .config import SECRET_AUTH_FIELDS, insecure_http_refusal
from .keyring import FetchError

LOG = logging.getLogger(__name__)
PAYLOAD_CONTENT_TYPE = "application/octet-stream"


def _session(cfg):
    """A keystoneauth1 session, an endpoint override (or None: use the catalog), region and interface."""
    if cfg.cloud:
        # Imported here: openstacksdk is slow to import and only needed for clouds.yaml.
        import openstack.config  # pylint: disable=import-outside-toplevel

        files = [cfg.clouds_file] if cfg.clouds_file else None
        try:
            region = openstack.config.OpenStackConfig(config_files=files).get_one(
                cloud=cfg.cloud, region_name=cfg.region_name
            )
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise FetchError(f"clouds.yaml entry {cfg.cloud!r} is unusable: {type(exc).__name__}", "config") from None
        endpoint = cfg.endpoint_override or region.get_endpoint("key-manager")
        if not cfg.allow_insecure_http:
            # A clouds.yaml entry is read here, not at start: its URLs get the same refusal as barbican.auth's.
            for url, field in ((region.config.get("auth", {}).get("auth_url"), f"clouds.yaml entry {cfg.cloud!r} auth_url"),
                               (endpoint, f"clouds.yaml entry {cfg.cloud!r} key-manager endpoint")):
                refusal = insecure_http_refusal(url, field)
                if refusal:
                    raise FetchError(refusal, "config")
        session = region.get_session()
        if session.timeout is None:
            # Without a timeout a silent peer would hold the refresh thread forever.
            session.timeout = cfg.timeout
        return session, endpoint, region.get_region_name("key-manager"), region.get_interface("key-manager") or cfg.interface
    plugin = loading.get_plugin_loader(cfg.auth_type).load_from_options(**cfg.auth)
    session = ks_session.Session(auth=plugin, verify=cfg.cacert or True, timeout=cfg.timeout)
    return session, cfg.endpoint_override, cfg.region_name, cfg.interface


def _describe(exc):
    """A message and a metrics label for a failure, never carrying credentials."""
    if isinstance(exc, (ks_exceptions.Unauthorized, barbican_exceptions.HTTPAuthError)):
        return "Keystone rejected the credentials (HTTP 401): check barbican.auth", "unauthorized"
    if isinstance(exc, ks_exceptions.SSLError):
        return ("the TLS handshake failed (an untrusted certificate? set barbican.cacert to the CA that signed the "
                f"server's certificate): {exc}"), "unreachable"
    if isinstance(exc, ks_exceptions.ConnectFailure):
        return f"cannot connect: {exc}", "unreachable"
    if isinstance(exc, ks_exceptions.ConnectTimeout):
        return f"connection timed out: {exc}", "unreachable"
    if isinstance(exc, ks_exceptions.EndpointNotFound):
        return ("no key-manager endpoint in the Keystone catalog for this region and interface: "
                "set barbican.region_name/interface or barbican.endpoint_override"), "endpoint"
    if isinstance(exc, ks_exceptions.DiscoveryFailure):
        return f"cannot discover the API: {exc}", "unreachable"
    if isinstance(exc, barbican_exceptions.HTTPClientError):
        status = getattr(exc, "status_code", None)
        if status == 404:
            return "Barbican has no such secret (HTTP 404)", "not_found"
        if status == 403:
            return "Barbican refused access to the secret (HTTP 403): the plugin's user needs member or an ACL read grant", "forbidden"
        return f"Barbican answered HTTP {status}", "client_error"
    if isinstance(exc, barbican_exceptions.HTTPServerError):
        return f"Barbican failed with HTTP {getattr(exc, 'status_code', '5xx')}", "server_error"
    if isinstance(exc, ks_exceptions.HttpError):
        return f"Keystone answered HTTP {exc.http_status}", "keystone_error"
    if isinstance(exc, ks_exceptions.ClientException):
        return f"{type(exc).__name__}: {exc}", "error"
    return f"unexpected {type(exc).__name__}", "error"


def _safe_url(url):
    """``url`` without any user:password part, or None when it is not an http(s) URL."""
    if not isinstance(url, str):
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _keystone_reason(reason):
    return "keystone_unreachable" if reason == "unreachable" else reason


class BarbicanFetcher:
    """Reads secret payloads; called by the keyring, never on the RPC path in cached mode."""

    def __init__(self, cfg):
        self._cfg = cfg
        self._lock = threading.Lock()
        self._session = None
        self._client = None

    def _get_session(self):
        with self._lock:
            if self._session is None:
                self._session = _session(self._cfg)
            return self._session

    def _get_client(self, session, endpoint, region_name, interface):
        with self._lock:
            if self._client is None:
                if endpoint is None and not self._cfg.allow_insecure_http:
                    # The catalog's key-manager endpoint gets the same refusal as a configured one.
                    endpoint = session.get_endpoint(service_type="key-manager", region_name=region_name,
                                                    interface=interface)
                    refusal = insecure_http_refusal(endpoint, "the Keystone catalog's key-manager endpoint")
                    if refusal:
                        raise FetchError(refusal, "config")
                # Constructing the client negotiates the API microversion (a request).
                self._client = barbican_client.Client(
                    session=session,
                    endpoint=endpoint,
                    region_name=region_name,
                    interface=interface,
                    service_type="key-manager",
                )
            return self._client

    def _reset(self):
        """Build a fresh session and client next time: discovery may have cached a failure."""
        with self._lock:
            self._session = None
            self._client = None

    def _authenticate(self):
        """A token from Keystone (keystoneauth1 keeps it until it nears expiry); FetchError naming Keystone."""
        try:
            session = self._get_session()
            session[0].get_auth_headers()
        except FetchError:
            raise
        except Exception as exc:  # pylint: disable=broad-exception-caught
            message, reason = _describe(exc)
            self._reset()
            where = _safe_url(self._cfg.auth.get("auth_url"))
            where = f" at {where}" if where else ""
            raise FetchError(self._redact(f"authenticating with Keystone{where} failed: {message}"), _keystone_reason(reason)) from None
        return session

    def _redact(self, text):
        """Mask the configured secrets, should a library ever echo one."""
        for name in SECRET_AUTH_FIELDS:
            secret = self._cfg.auth.get(name)
            if secret:
                text = text.replace(secret, "***")
        return text

    def __call__(self, ref):
        """Return the payload bytes of the secret ``ref`` or raise FetchError."""
        session = self._authenticate()
        try:
            client = self._get_client(*session)
            # With the content type given, reading the payload is one GET .../payload.
            payload = client.secrets.get(ref.ref, payload_content_type=PAYLOAD_CONTENT_TYPE).payload
        except FetchError:
            raise
        except Exception as exc:  # pylint: disable=broad-exception-caught
            message, reason = _describe(exc)
            if reason in ("unreachable", "endpoint", "error"):
                self._reset()
            raise FetchError(self._redact(f"fetching secret {ref.ref} from Barbican failed: {message}"), reason) from None
        if isinstance(payload, str):
            # Never decoded here: an error message must not quote key material.
            raise FetchError(f"secret {ref.ref} has a text payload; a key-encryption key is stored as {PAYLOAD_CONTENT_TYPE}", "bad_key")
        if not isinstance(payload, bytes):
            raise FetchError(f"secret {ref.ref} has no payload", "bad_key")
        return payload
