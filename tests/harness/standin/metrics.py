"""The kube-apiserver metrics the stand-in exports, with upstream's names and labels.

Upstream: ``k8s.io/apiserver/pkg/storage/value/encrypt/envelope/metrics`` and
``.../server/options/encryptionconfig/metrics``.  Hashes are
``sha256:<hex>`` of the key_id and of the apiserver identity, empty for an
empty value, as upstream.
"""

import hashlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

FROM_STORAGE = "from_storage"
TO_STORAGE = "to_storage"


def id_hash(value):
    return f"sha256:{hashlib.sha256(value.encode()).hexdigest()}" if value else ""


class StandinMetrics:
    """One registry per stand-in, so that several can live in one test process."""

    def __init__(self, apiserver_id):
        self.apiserver_id_hash = id_hash(apiserver_id)
        self.registry = CollectorRegistry(auto_describe=True)
        # kube-apiserver exports the process metrics too (component-base registers them);
        # process_start_time_seconds tells a restarted apiserver from the one before.
        ProcessCollector(registry=self.registry)
        envelope = "apiserver_envelope_encryption_"
        controller = "apiserver_encryption_config_controller_"
        self.key_id_hash_total = Counter(
            f"{envelope}key_id_hash", "Number of times a keyID is used split by transformation type, provider, and apiserver identity.",
            ["transformation_type", "provider_name", "key_id_hash", "apiserver_id_hash"], registry=self.registry)
        self.key_id_hash_last = Gauge(
            f"{envelope}key_id_hash_last_timestamp_seconds", "The last time in seconds when a keyID was used.",
            ["transformation_type", "provider_name", "key_id_hash", "apiserver_id_hash"], registry=self.registry)
        self.key_id_hash_status_last = Gauge(
            f"{envelope}key_id_hash_status_last_timestamp_seconds",
            "The last time in seconds when a keyID was returned by the Status RPC call.",
            ["provider_name", "key_id_hash", "apiserver_id_hash"], registry=self.registry)
        self.invalid_key_id_from_status = Counter(
            f"{envelope}invalid_key_id_from_status", "Number of times an invalid keyID is returned by the Status RPC call split by error.",
            ["provider_name", "error"], registry=self.registry)
        self.dek_source_cache_size = Gauge(
            f"{envelope}dek_source_cache_size", "Number of records in data encryption key (DEK) source cache.",
            ["provider_name"], registry=self.registry)
        self.kms_operations_latency = Histogram(
            f"{envelope}kms_operations_latency_seconds", "KMS operation duration with gRPC error code status total.",
            ["provider_name", "method_name", "grpc_status_code"], registry=self.registry,
            buckets=[0.0001 * 2 ** power for power in range(20)])
        self.reloads_total = Counter(
            f"{controller}automatic_reloads", "Total number of reload successes and failures of encryption configuration split by apiserver identity.",
            ["status", "apiserver_id_hash"], registry=self.registry)
        self.reload_last = Gauge(
            f"{controller}automatic_reload_last_timestamp_seconds",
            "Timestamp of the last successful or failed automatic reload of encryption configuration split by apiserver identity.",
            ["status", "apiserver_id_hash"], registry=self.registry)
        self.last_config_info = Gauge(
            f"{controller}last_config_info",
            "Information about the last applied encryption configuration with hash as label, split by apiserver identity.",
            ["apiserver_id_hash", "hash"], registry=self.registry)

    def record_key_id(self, transformation_type, provider_name, key_id):
        labels = (transformation_type, provider_name, id_hash(key_id), self.apiserver_id_hash)
        self.key_id_hash_total.labels(*labels).inc()
        self.key_id_hash_last.labels(*labels).set(time.time())

    def record_status_key_id(self, provider_name, key_id):
        self.key_id_hash_status_last.labels(provider_name, id_hash(key_id), self.apiserver_id_hash).set(time.time())

    def record_invalid_status_key_id(self, provider_name, error):
        self.invalid_key_id_from_status.labels(provider_name, error).inc()

    def record_kms_call(self, provider_name, method, seconds, code="OK"):
        self.kms_operations_latency.labels(provider_name, method, code).observe(seconds)

    def record_reload(self, status, config_hash=None):
        self.reloads_total.labels(status, self.apiserver_id_hash).inc()
        self.reload_last.labels(status, self.apiserver_id_hash).set(time.time())
        if config_hash is not None:
            self.record_config(config_hash)

    def record_config(self, config_hash):
        self.last_config_info.clear()
        self.last_config_info.labels(self.apiserver_id_hash, config_hash).set(1)

    def exposition(self):
        return generate_latest(self.registry)
