"""Prometheus metrics, served on a loopback listener of their own."""

import collections
import threading

import prometheus_client
from prometheus_client.core import GaugeMetricFamily

# The metric families (counters are exposed with a _total suffix).
KEY_CACHE_AGE = "teapot_kms_key_cache_age_seconds"
PRIMARY_KEY_INFO = "teapot_kms_primary_key_info"
HEALTHY = "teapot_kms_healthy"
KEYRING_SIZE = "teapot_kms_keyring_size"
RPC_DURATION = "teapot_kms_rpc_duration_seconds"
FETCH_DURATION = "teapot_kms_barbican_fetch_duration_seconds"
FETCH_ERRORS = "teapot_kms_barbican_fetch_errors"
RELOADS = "teapot_kms_reloads"
KEY_LOADED = "teapot_kms_key_loaded"
KEY_PIN_MISMATCH = "teapot_kms_key_pin_mismatch"
LAST_RELOAD_SUCCESS = "teapot_kms_last_reload_success"
LAST_RELOAD_TIME = "teapot_kms_last_reload_timestamp_seconds"
NAMES = {
    "key_cache_age": KEY_CACHE_AGE,
    "primary_key_info": PRIMARY_KEY_INFO,
    "healthy": HEALTHY,
    "keyring_size": KEYRING_SIZE,
    "rpc_duration": RPC_DURATION,
    "fetch_duration": FETCH_DURATION,
    "fetch_errors": FETCH_ERRORS,
    "reloads": RELOADS,
    "key_loaded": KEY_LOADED,
    "key_pin_mismatch": KEY_PIN_MISMATCH,
    "last_reload_success": LAST_RELOAD_SUCCESS,
    "last_reload_time": LAST_RELOAD_TIME,
}

_RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


_FOLD_BATCH = 256


class _Fold:
    """Folds the pending RPC timings into the histogram when the registry is collected."""

    def __init__(self, fold):
        self._fold = fold

    def collect(self):
        self._fold()
        return []


class _KeyringCollector:
    """Cache age, the current key_id and health, read from the keyring when scraped."""

    def __init__(self, get_keys):
        self._get_keys = get_keys

    def collect(self):
        keys = self._get_keys()
        if keys is None:
            # Scraped before the keyring exists (first fetch still running).
            return
        age = GaugeMetricFamily(KEY_CACHE_AGE,
                                "Seconds since Barbican last confirmed each cached key", labels=["key_id"])
        for key_id, seconds in sorted(keys.ages().items()):
            age.add_metric([key_id], seconds)
        yield age
        loaded = GaugeMetricFamily(KEY_LOADED, "1 when a configured key's material is loaded and usable now",
                                   labels=["key_id", "role"])
        mismatch = GaugeMetricFamily(KEY_PIN_MISMATCH, "1 when Barbican returned other material than the key's pinned one",
                                     labels=["key_id"])
        for key in keys.states():
            loaded.add_metric([key.key_id, key.role], 1 if key.loaded else 0)
            mismatch.add_metric([key.key_id], 1 if key.pin_mismatch else 0)
        yield loaded
        yield mismatch
        state = keys.status()
        primary = GaugeMetricFamily(PRIMARY_KEY_INFO, "The key_id Encrypt uses and Status reports",
                                    labels=["key_id"])
        primary.add_metric([state.key_id], 1)
        yield primary
        yield GaugeMetricFamily(HEALTHY, "1 when Status reports healthz ok", value=1 if state.healthy else 0)
        yield GaugeMetricFamily(KEYRING_SIZE, "Keys in the keyring (primary included)", value=len(keys.refs))


class Metrics:
    """The daemon's metrics, in a registry of its own."""

    def __init__(self, get_keys):
        self.registry = prometheus_client.CollectorRegistry()
        # RPC timings wait here (deque.append is atomic and takes no lock) and reach the
        # histogram in batches, or when metrics are scraped: the RPC path stays short.
        # Registered first, so that a scrape folds before it reads the histogram.
        self._pending = collections.deque()
        self._fold_lock = threading.Lock()
        self.registry.register(_Fold(self.fold))
        self._rpc_duration = prometheus_client.Histogram(
            RPC_DURATION, "KMS RPC latency by method and status code",
            ["method", "code"], registry=self.registry, buckets=_RPC_BUCKETS)
        self._fetch_duration = prometheus_client.Histogram(
            FETCH_DURATION, "Time to fetch one key from Barbican",
            registry=self.registry, buckets=_FETCH_BUCKETS)
        self._fetch_errors = prometheus_client.Counter(
            FETCH_ERRORS, "Failed key fetches from Barbican by reason",
            ["reason"], registry=self.registry)
        self._reloads = prometheus_client.Counter(
            RELOADS, "SIGHUP reloads by result", ["result"], registry=self.registry)
        self._last_reload_success = prometheus_client.Gauge(
            LAST_RELOAD_SUCCESS, "1 when the last SIGHUP reload was applied, 0 when it was refused",
            registry=self.registry)
        self._last_reload_time = prometheus_client.Gauge(
            LAST_RELOAD_TIME, "When the last SIGHUP reload ended (unix seconds)", registry=self.registry)
        self.registry.register(_KeyringCollector(get_keys))
        self._rpc_children = {}
        self._server = None

    def observe_rpc(self, method, code, seconds):
        self._pending.append((method, code, seconds))
        if len(self._pending) >= _FOLD_BATCH:
            self.fold()

    def fold(self):
        """Move the pending RPC timings into the histogram."""
        pending = self._pending
        with self._fold_lock:
            while pending:
                method, code, seconds = pending.popleft()
                child = self._rpc_children.get((method, code))
                if child is None:
                    child = self._rpc_children[(method, code)] = self._rpc_duration.labels(method, code)
                child.observe(seconds)

    def observe_fetch(self, seconds, error_reason):
        self._fetch_duration.observe(seconds)
        if error_reason:
            self._fetch_errors.labels(error_reason).inc()

    def observe_reload(self, result):
        self._reloads.labels(result).inc()
        self._last_reload_success.set(1 if result == "ok" else 0)
        self._last_reload_time.set_to_current_time()

    def serve(self, host, port):
        self._server, _thread = prometheus_client.start_http_server(port, addr=host, registry=self.registry)

    def shutdown(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def scrape_url(host, port):
    """Where a process on the same host reads the metrics served on ``host:port``."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
