"""Fetch key-encryption keys from the data fields of one Kubernetes Secret (the ``kubernetes`` client).

A tenant cluster's plugin reads its keys from a Secret in the management
cluster, through a kubeconfig whose user may read that Secret.  The
kubernetes client loads the kubeconfig (certificates, tokens, exec plugins)
and makes the request; the Secret's data holds each key base64-encoded, as
Kubernetes stores it, and every key must be 32 raw bytes.

This source cannot protect the management cluster itself: there, the
Secret's bytes at rest are protected by the management cluster's own
encryption (its kube-apiserver's KMS provider, backed by Barbican).
"""

import base64
import binascii
import logging
import threading

from .keyring import FetchError
from .wrapping import KEY_SIZE

LOG = logging.getLogger(__name__)
INSTALL_HINT = "install the plugin with its kubernetes extra: pip install 'teapot-kms-plugin[kubernetes]'"


def _describe(exc, where):
    """A message and a metrics label for a failed read, never quoting the answer's body or headers."""
    # Imported here: the kubernetes client is an optional dependency of the plugin.
    from kubernetes.client.exceptions import ApiException  # pylint: disable=import-outside-toplevel
    from kubernetes.config.config_exception import ConfigException  # pylint: disable=import-outside-toplevel
    import urllib3.exceptions  # pylint: disable=import-outside-toplevel

    if isinstance(exc, ApiException):
        status = exc.status
        if status == 401:
            return "the API server rejected the kubeconfig's credentials (HTTP 401): check kubernetes_secret.kubeconfig", "unauthorized"
        if status == 403:
            return (f"the kubeconfig's user may not read {where} (HTTP 403): grant it get on this Secret "
                    "(a Role with resourceNames)"), "forbidden"
        if status == 404:
            return f"{where} does not exist (HTTP 404)", "not_found"
        if status and status >= 500:
            return f"the API server failed with HTTP {status}", "server_error"
        return f"the API server answered HTTP {status}", "client_error"
    if isinstance(exc, ConfigException):
        text = str(exc).splitlines()[0] if str(exc) else ""
        if "exec" in text.lower():
            # An exec credential plugin's output may hold a token: never quoted.
            return "the kubeconfig's exec credential plugin failed", "config"
        # The loader's own messages name files and fields of the kubeconfig, not credentials.
        return f"the kubeconfig is unusable: {text[:200]}", "config"
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        reason = exc.reason
        if isinstance(reason, urllib3.exceptions.SSLError):
            return "TLS verification of the API server failed: check the kubeconfig's certificate-authority", "unreachable"
        return f"cannot connect to the API server: {type(reason).__name__}", "unreachable"
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return f"cannot connect to the API server: {type(exc).__name__}", "unreachable"
    return f"unexpected {type(exc).__name__}", "error"


def decode_key(encoded, where):
    """The raw key in a Secret's data value ``encoded`` (base64); FetchError naming ``where``, never the bytes."""
    if not isinstance(encoded, str) or not encoded:
        raise FetchError(f"{where} is empty", "bad_key")
    try:
        material = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise FetchError(f"{where} is not valid base64 (the Secret's data is the base64 of the raw key)", "bad_key") from None
    if len(material) != KEY_SIZE:
        hint = ""
        if len(material) == 44:
            hint = " (44 bytes: the key looks base64-encoded twice; put the raw 32 bytes in data, or their base64 in stringData)"
        raise FetchError(f"{where} holds {len(material)} bytes; a key-encryption key is exactly {KEY_SIZE} random bytes{hint}",
                         "bad_key")
    return material


class KubernetesSecretFetcher:
    """Reads one data field of the configured Secret per call; called by the keyring, never on the RPC path."""

    def __init__(self, cfg):
        self._cfg = cfg
        self._lock = threading.Lock()
        self._api = None

    def _client(self):
        """A CoreV1Api for the kubeconfig, built once (and again after a failure: the file may have new credentials)."""
        with self._lock:
            if self._api is None:
                # Imported here: the kubernetes client is an optional dependency of the plugin.
                from kubernetes import client, config  # pylint: disable=import-outside-toplevel

                configuration = client.Configuration()
                try:
                    config.load_kube_config(config_file=self._cfg.kubeconfig, context=self._cfg.context,
                                            client_configuration=configuration, persist_config=False)
                except OSError as exc:
                    raise FetchError(f"kubernetes_secret.kubeconfig: cannot read {self._cfg.kubeconfig}: "
                                     f"{exc.strerror or type(exc).__name__}", "config") from None
                if not configuration.host.startswith("https://"):
                    raise FetchError(f"kubernetes_secret.kubeconfig: the server {configuration.host} is not an https URL: "
                                     "the keys would cross the network in clear", "config")
                if not configuration.verify_ssl:
                    raise FetchError("kubernetes_secret.kubeconfig: insecure-skip-tls-verify is set: "
                                     "give the cluster's certificate-authority instead", "config")
                # One try per fetch: the keyring retries on its own schedule.
                configuration.retries = False
                self._api = client.CoreV1Api(client.ApiClient(configuration))
            return self._api

    def _reset(self):
        with self._lock:
            self._api = None

    def read_data(self, namespace, name):
        """The data of the Secret ``namespace/name`` (``{field: base64 text}``); FetchError naming the Secret."""
        where = f"Secret {namespace}/{name}"
        try:
            api = self._client()
            secret = api.read_namespaced_secret(name, namespace, _request_timeout=self._cfg.timeout)
        except ImportError:
            raise FetchError(f"the kubernetes client is not installed: {INSTALL_HINT}", "config") from None
        except FetchError:
            raise
        except Exception as exc:  # pylint: disable=broad-exception-caught
            message, reason = _describe(exc, where)
            # A rejected token: the kubeconfig is read again next time, in case its credentials were renewed.
            if reason in ("unreachable", "config", "error", "unauthorized"):
                self._reset()
            raise FetchError(f"reading {where} through {self._cfg.kubeconfig} failed: {message}", reason) from None
        return secret.data or {}

    def __call__(self, ref):
        """Return the 32 key bytes of ``ref`` (a SecretFieldRef) or raise FetchError."""
        data = self.read_data(ref.namespace, ref.name)
        if ref.field not in data:
            fields = ", ".join(sorted(data)) or "none"
            raise FetchError(f"Secret {ref.namespace}/{ref.name} has no field {ref.field} (its fields: {fields})", "not_found")
        return decode_key(data[ref.field], f"Secret {ref.namespace}/{ref.name} field {ref.field}")
