"""EncryptionConfiguration and the value transformers, as kube-apiserver builds them.

Follows ``k8s.io/apiserver/pkg/server/options/encryptionconfig``: one chain of
providers per resource, tried by prefix in file order (a read by any
provider but the first, or by a KMS v2 key_id other than the current one, is
*stale*); KMS v2 providers are probed with Status (inline once at start, then
every poll interval, every 10 s while failing; the health answer is cached
20 s when good, 3 s when bad); a new DEK seed is encrypted by the plugin at
start and whenever Status reports another key_id; writes go on for 3 minutes
on the last good seed while the plugin fails, reads go on for ever.
"""

import base64
import hashlib
import logging
import os
import re
import threading
import time
import uuid

import grpc
import yaml

from tests.harness.standin import ciphers
from tests.harness.standin import kmsapi
from tests.harness.standin.collection import module_util
from tests.harness.standin.metrics import FROM_STORAGE, TO_STORAGE, id_hash

storage = module_util("_kms_storage")

LOG = logging.getLogger("kube-apiserver-standin.encryption")

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
KMS_MAX_KEY_ID = 1024
KMS_MAX_DEK_SOURCE = 1024
KMS_MAX_ANNOTATIONS = 32 * 1024
DEK_CACHE_TTL = 24 * 3600.0
# Upstream constants (encryptionconfig/config.go), the first three overridable for tests.
STATUS_POLL_INTERVAL = 60.0
HEALTHZ_POSITIVE_TTL = 20.0
WRITE_DEK_MAX_TTL = 180.0
STATUS_NEGATIVE_INTERVAL = 10.0
HEALTHZ_NEGATIVE_TTL = 3.0
DEFAULT_KMS_TIMEOUT = 3.0
# Where a KMS socket that the static pod does not mount "is" for the stand-in: nowhere.
UNMOUNTED_ROOT = "/nonexistent/not-mounted-into-the-kube-apiserver-container"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_FQDN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})+$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """The EncryptionConfiguration is not one kube-apiserver would load; the message says what to fix."""


class TransformError(RuntimeError):
    """A value that cannot be read or written now (kube-apiserver answers 500 Internal error)."""


class KmsTimings:
    """Poll and cache periods of the KMS v2 probes; upstream's by default, shorter in tests."""

    def __init__(self, poll_interval=STATUS_POLL_INTERVAL, healthz_ttl=HEALTHZ_POSITIVE_TTL, write_ttl=WRITE_DEK_MAX_TTL):
        self.poll_interval = float(poll_interval)
        self.negative_interval = min(STATUS_NEGATIVE_INTERVAL, self.poll_interval)
        self.healthz_ttl = float(healthz_ttl)
        self.negative_ttl = min(HEALTHZ_NEGATIVE_TTL, self.healthz_ttl)
        self.write_ttl = float(write_ttl)


def parse_duration(text, where):
    """A Go duration (``3s``, ``500ms``, ``1m30s``) in seconds."""
    text = str(text).strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ConfigError(f"{where}: {text!r} is not a duration (write it like 3s, 500ms or 1m30s)")
    return total


# ---------------------------------------------------------------- providers


class IdentityProvider:
    """Plain storage; refuses to return a value that carries an encryption prefix."""

    kind = "identity"
    name = None

    def matches(self, stored):
        return stored.provider_type == "identity"

    def read(self, stored, etcd_key):  # pylint: disable=unused-argument
        return stored.ciphertext, False

    def write(self, plaintext, etcd_key):  # pylint: disable=unused-argument
        return plaintext

    def describe(self):
        return "identity"


class StaticKeyProvider:
    """aescbc, aesgcm or secretbox: keys tried by name; a key other than the first reads stale."""

    _SIZES = {"aescbc": (32,), "aesgcm": (16, 24, 32), "secretbox": (32,)}

    def __init__(self, kind, keys, where):
        self.kind = kind
        self.keys = []
        if not keys:
            raise ConfigError(f"{where}.keys: Required value: {kind} provider has no valid keys")
        seen = set()
        for index, key in enumerate(keys):
            key_where = f"{where}.keys[{index}]"
            if not isinstance(key, dict) or not key.get("name"):
                raise ConfigError(f"{key_where}.name: Required value: key with invalid name provided")
            name = str(key["name"])
            if name in seen:
                raise ConfigError(f"{key_where}.name: Duplicate value: {name!r}")
            seen.add(name)
            if ":" in name:
                raise ConfigError(f"{key_where}.name: Invalid value: {name!r}: must not contain ':'")
            if not key.get("secret"):
                raise ConfigError(f"{key_where}.secret: Required value: key {name} has no provided secret")
            try:
                material = base64.b64decode(str(key["secret"]), validate=True)
            except ValueError:
                raise ConfigError(f"{key_where}.secret: Invalid value: REDACTED: secrets must be base64 encoded") from None
            if len(material) not in self._SIZES[kind]:
                raise ConfigError(f"{key_where}.secret: Invalid value: REDACTED: secret is not of the expected length, "
                                  f"got {len(material)}, expected one of {list(self._SIZES[kind])}")
            self.keys.append((name, material))
        self.name = self.keys[0][0]

    def matches(self, stored):
        return stored.provider_type == self.kind and any(name == stored.provider_name for name, _material in self.keys)

    def read(self, stored, etcd_key):
        for index, (name, material) in enumerate(self.keys):
            if name == stored.provider_name:
                if self.kind == "aescbc":
                    return ciphers.cbc_open(material, stored.ciphertext), index != 0
                if self.kind == "aesgcm":
                    return ciphers.gcm_open(material, stored.ciphertext, etcd_key.encode()), index != 0
                return ciphers.secretbox_open(material, stored.ciphertext), index != 0
        raise TransformError(f"no matching key was found for the provided {self.kind} transformer")

    def write(self, plaintext, etcd_key):
        name, material = self.keys[0]
        prefix = f"k8s:enc:{self.kind}:v1:{name}:".encode()
        if self.kind == "aescbc":
            return prefix + ciphers.cbc_seal(material, plaintext)
        if self.kind == "aesgcm":
            return prefix + ciphers.gcm_seal(material, plaintext, etcd_key.encode())
        return prefix + ciphers.secretbox_seal(material, plaintext)

    def describe(self):
        return f"{self.kind} (keys {', '.join(name for name, _material in self.keys)})"


def _rpc_error(exc):
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"rpc error: code = {exc.code().name} desc = {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def validate_key_id(key_id):
    """Upstream's ValidateKeyID: ``(error code, message)`` or ``(None, None)``."""
    if not key_id:
        return "empty", "keyID is empty"
    if len(key_id.encode()) > KMS_MAX_KEY_ID:
        return "too_long", f"keyID is {len(key_id.encode())} bytes, which exceeds the max size of {KMS_MAX_KEY_ID}"
    return None, None


def validate_encrypt_response(response):
    """What kube-apiserver checks on a plugin's Encrypt answer before it uses the seed; an error message or None."""
    _code, message = validate_key_id(response.key_id)
    if message:
        return message
    if not response.ciphertext:
        return "encrypted DEK source is empty"
    if len(response.ciphertext) > KMS_MAX_DEK_SOURCE:
        return f"encrypted DEK source is {len(response.ciphertext)} bytes, which exceeds the max size of {KMS_MAX_DEK_SOURCE}"
    total = 0
    for key, value in response.annotations.items():
        if len(key) > 253 or not _FQDN.match(key):
            return f"annotation key {key[:80]!r} is not a fully qualified domain name"
        total += len(key.encode()) + len(value)
    if total > KMS_MAX_ANNOTATIONS:
        return f"annotations size {total} exceeds the max size of {KMS_MAX_ANNOTATIONS}"
    return None


class _WriteState:
    """The current seed: what writes use, as long as it has not expired."""

    def __init__(self, seed, encrypted_seed, key_id, annotations, expires, uid):
        self.seed = seed
        self.encrypted_seed = encrypted_seed
        self.key_id = key_id
        self.annotations = annotations
        self.expires = expires
        self.uid = uid

    def cache_key(self):
        return _seed_cache_key(storage.DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED, self.encrypted_seed, self.key_id, self.annotations)


def _seed_cache_key(source_type, encrypted, key_id, annotations):
    return (source_type, bytes(encrypted), key_id, tuple(sorted((key, bytes(value)) for key, value in annotations.items())))


class KmsV2Provider:
    """A KMS v2 provider: the probe (Status, seed rotation) and the envelope transformer."""

    kind = "kms-v2"

    def __init__(self, name, socket_path, timeout, metrics, timings):
        self.name = name
        self.socket_path = socket_path
        self.timeout = timeout
        self.metrics = metrics
        self.timings = timings
        self.client = kmsapi.KmsV2Client(socket_path, timeout=timeout)
        self._state = None
        self._version = None
        self._probe_lock = threading.Lock()
        self._last_error = None
        self._last_received = None
        self._ttl = timings.negative_ttl
        self._seeds = {}
        self._seeds_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def describe(self):
        return f"kms v2 {self.name} (unix://{self.socket_path})"

    def _rpc(self, method, *args, **kwargs):
        """One call to the plugin, timed into kms_operations_latency_seconds with Go's name of its gRPC code."""
        started = time.perf_counter()
        code = "OK"
        try:
            return getattr(self.client, method.lower())(*args, **kwargs)
        except grpc.RpcError as exc:
            name = exc.code().name if callable(getattr(exc, "code", None)) else "UNKNOWN"
            code = "".join(part.capitalize() for part in name.split("_"))
            raise
        finally:
            self.metrics.record_kms_call(self.name, method, time.perf_counter() - started, code)

    # -- probe

    def start(self):
        """Prime inline (the first Status and Encrypt), then keep polling in the background."""
        primed = self.check() is None
        self._thread = threading.Thread(target=self._poll, args=(primed,), name=f"kms-probe-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _poll(self, primed):
        if not primed:
            self._fast_until_success()
        while not self._stop.wait(self.timings.poll_interval):
            if self.check() is not None:
                self._fast_until_success()

    def _fast_until_success(self):
        while not self._stop.wait(self.timings.negative_interval):
            if self.check() is None:
                return

    def check(self):
        """The health of this provider: None when healthy, else the reason (cached like upstream)."""
        with self._probe_lock:
            now = time.monotonic()
            if self._last_received is not None and now - self._last_received < self._ttl:
                return self._last_error
            try:
                response = self._rpc("Status")
            except grpc.RpcError as exc:
                error = f"failed to perform status section of the healthz check for KMS Provider {self.name}, error: {_rpc_error(exc)}"
            else:
                error = self._healthy_and_maybe_rotate(response)
            self._last_error = error
            self._last_received = time.monotonic()
            self._ttl = self.timings.healthz_ttl if error is None else self.timings.negative_ttl
            if error is not None:
                LOG.warning("kms plugin failed health check probe: %s", error)
            return error

    def _healthy_and_maybe_rotate(self, response):
        errors = []
        if response.healthz != "ok":
            errors.append(f"got unexpected healthz status: {response.healthz}")
        if response.version not in ("v2", "v2beta1"):
            errors.append(f"expected KMSv2 API version v2, got {response.version}")
        else:
            self._version = self._version or response.version
            if self._version != response.version:
                errors.append(f"KMSv2 API version should not change after the initial status response version {self._version}, "
                              f"got {response.version}")
        code, message = validate_key_id(response.key_id)
        if code:
            self.metrics.record_invalid_status_key_id(self.name, code)
            errors.append(f"got invalid KMSv2 KeyID hash {id_hash(response.key_id)!r}: {message}")
        else:
            self.metrics.record_status_key_id(self.name, response.key_id)
            error = self._rotate_on_key_id_change(response.key_id)
            if error:
                errors.append(error)
        if errors:
            return f"kmsv2 Provider {self.name} is not healthy, error: " + "; ".join(errors)
        return None

    def _rotate_on_key_id_change(self, status_key_id):
        state = self._state
        expires = time.monotonic() + self.timings.write_ttl
        if state is not None and state.key_id == status_key_id:
            state.expires = expires
            return None
        uid = str(uuid.uuid4())
        seed = os.urandom(ciphers.SEED)
        try:
            response = self._rpc("Encrypt", seed, uid=uid)
        except grpc.RpcError as exc:
            error, encrypt_key_id = f"failed to encrypt DEK, error: {_rpc_error(exc)}", ""
        else:
            error, encrypt_key_id = validate_encrypt_response(response), response.key_id
        if error is None and encrypt_key_id == status_key_id:
            self._state = _WriteState(seed, bytes(response.ciphertext), response.key_id, dict(response.annotations), expires, uid)
            LOG.info("kms provider %s: new DEK seed under key_id hash %s (uid %s)", self.name, id_hash(response.key_id), uid)
            return None
        if error is None:
            error = "the key_id of Encrypt differs from the key_id of Status"
        return (f"failed to rotate DEK uid={uid!r}, errGen={error}, statusKeyIDHash={id_hash(status_key_id)!r}, "
                f"encryptKeyIDHash={id_hash(encrypt_key_id)!r}, stateKeyIDHash={id_hash(state.key_id if state else '')!r}")

    def current_key_id(self):
        state = self._state
        return state.key_id if state is not None else ""

    # -- transformer

    def matches(self, stored):
        return stored.provider_type == "kms-v2" and stored.provider_name == self.name

    def _seed_for(self, stored, etcd_key):
        cache_key = _seed_cache_key(stored.dek_source_type, stored.encrypted_dek, stored.key_id, stored.annotations)
        now = time.monotonic()
        with self._seeds_lock:
            cached = self._seeds.get(cache_key)
            if cached is not None and cached[1] > now:
                return cached[0]
        uid = str(uuid.uuid4())
        LOG.info("decrypting content using envelope service uid=%s key=%s", uid, etcd_key)
        try:
            seed = self._rpc("Decrypt", stored.encrypted_dek, stored.key_id, annotations=stored.annotations, uid=uid).plaintext
        except grpc.RpcError as exc:
            raise TransformError(f"failed to decrypt DEK, error: {_rpc_error(exc)}") from None
        if stored.dek_source_type == storage.DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED and len(seed) != ciphers.SEED:
            raise TransformError(f"the plugin's Decrypt returned a {len(seed)}-byte seed, not {ciphers.SEED} bytes")
        self._cache_seed(cache_key, seed)
        return seed

    def _cache_seed(self, cache_key, seed):
        now = time.monotonic()
        with self._seeds_lock:
            self._seeds[cache_key] = (seed, now + DEK_CACHE_TTL)
            for key in [key for key, (_seed, expires) in self._seeds.items() if expires <= now]:
                del self._seeds[key]
            size = len(self._seeds)
        self.metrics.dek_source_cache_size.labels(self.name).set(size)

    def read(self, stored, etcd_key):
        seed = self._seed_for(stored, etcd_key)
        self.metrics.record_key_id(FROM_STORAGE, self.name, stored.key_id)
        aad = etcd_key.encode()
        try:
            if stored.dek_source_type == storage.DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED:
                plaintext = ciphers.kms_v2_open(seed, stored.ciphertext, aad)
            else:
                plaintext = ciphers.gcm_open(seed, stored.ciphertext, aad, "KMS v2 AES-GCM (legacy DEK)")
        except ciphers.CipherError as exc:
            raise TransformError(str(exc)) from None
        return plaintext, stored.key_id != self.current_key_id()

    def write(self, plaintext, etcd_key):
        state = self._state
        if state is None:
            raise TransformError(f"kms provider {self.name}: got unexpected nil transformer "
                                 "(no DEK seed yet: the plugin has not answered Status and Encrypt)")
        if time.monotonic() > state.expires:
            raise TransformError(f"kms provider {self.name}: EDEK with keyID hash {id_hash(state.key_id)!r} expired "
                                 f"(the plugin has failed for more than {self.timings.write_ttl:.0f}s)")
        self._cache_seed(state.cache_key(), state.seed)
        encrypted_data = ciphers.kms_v2_seal(state.seed, plaintext, etcd_key.encode())
        self.metrics.record_key_id(TO_STORAGE, self.name, state.key_id)
        return storage.encode_kms_v2(self.name, encrypted_data, state.key_id, state.encrypted_seed, state.annotations,
                                     dek_source_type=storage.DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED)

    def close(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.timeout + 1)
        self.client.close()


class KmsV1Provider:
    """KMS v1 (``--feature-gates=KMSv1=true``): reads only; its health check encrypts and decrypts ``ping``."""

    kind = "kms-v1"

    def __init__(self, name, socket_path, timeout):
        self.name = name
        self.socket_path = socket_path
        self.client = kmsapi.KmsV1Client(socket_path, timeout)
        self._deks = {}
        self._probe_lock = threading.Lock()
        self._last = (None, None)
        self._ttl = HEALTHZ_NEGATIVE_TTL

    def describe(self):
        return f"kms v1 {self.name} (unix://{self.socket_path}, read-only in the stand-in)"

    def start(self):
        return self

    def check(self):
        with self._probe_lock:
            error, received = self._last
            if received is not None and time.monotonic() - received < self._ttl:
                return error
            try:
                if self.client.decrypt(self.client.encrypt(b"ping")) != b"ping":
                    error = f"KMS Provider {self.name}: the decrypt section of the healthz check did not return ping"
                else:
                    error = None
            except grpc.RpcError as exc:
                error = f"failed to perform the healthz check for KMS Provider {self.name}, error: {_rpc_error(exc)}"
            self._last = (error, time.monotonic())
            self._ttl = HEALTHZ_POSITIVE_TTL if error is None else HEALTHZ_NEGATIVE_TTL
            return error

    def matches(self, stored):
        return stored.provider_type == "kms-v1" and stored.provider_name == self.name

    def read(self, stored, etcd_key):
        dek = self._deks.get(stored.encrypted_dek)
        if dek is None:
            try:
                dek = self.client.decrypt(stored.encrypted_dek)
            except grpc.RpcError as exc:
                raise TransformError(f"failed to decrypt DEK, error: {_rpc_error(exc)}") from None
            self._deks[stored.encrypted_dek] = dek
        try:
            return ciphers.gcm_open(dek, stored.ciphertext, etcd_key.encode(), "KMS v1 AES-GCM"), False
        except ciphers.CipherError:
            # Values written before 1.25 used AES-CBC; reading one makes it stale.
            return ciphers.cbc_open(dek, stored.ciphertext), True

    def write(self, plaintext, etcd_key):
        raise TransformError(f"kms provider {self.name} is KMS v1: the kube-apiserver stand-in reads KMS v1 values but does "
                             "not write them; put a KMS v2 provider first")

    def close(self):
        self.client.close()


# ---------------------------------------------------------------- chains and config


class ProviderChain:
    """The providers of one ``resources`` entry, in file order."""

    def __init__(self, providers):
        self.providers = providers

    def read(self, value, etcd_key):
        """``(plaintext, stale, stored)``: the first provider whose prefix matches reads it."""
        try:
            stored = storage.parse_stored_value(value)
        except storage.StorageFormatError as exc:
            raise TransformError(f"{etcd_key}: {exc}") from None
        for index, provider in enumerate(self.providers):
            if provider.matches(stored):
                plaintext, stale = provider.read(stored, etcd_key)
                return plaintext, stale or index != 0, stored
        if stored.provider_type == "identity":
            raise TransformError(f"{etcd_key}: stored unencrypted but no identity provider is configured for it "
                                 "(no matching prefix found)")
        name = f" {stored.provider_name}" if stored.provider_name else ""
        raise TransformError(f"{etcd_key}: stored by {stored.provider_type}{name}, which is not in the encryption "
                             "configuration for this resource (no matching prefix found)")

    def write(self, plaintext, etcd_key):
        return self.providers[0].write(plaintext, etcd_key)


IDENTITY_ONLY = ProviderChain([IdentityProvider()])


def parse_group_resource(text):
    """``secrets`` -> ("", "secrets"); ``widgets.example.com`` -> ("example.com", "widgets"); ``*.`` -> ("", "*")."""
    resource, _dot, group = text.partition(".")
    return group, resource


def _validate_resource(text, where):
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where}: Required value: a resource name")
    if text != text.lower():
        raise ConfigError(f"{where}: Invalid value: {text!r}: resource name must be lowercase")
    if text in ("*", "*.*.*") or (text.startswith("*") and not text.startswith("*.")):
        raise ConfigError(f"{where}: Invalid value: {text!r}: use '*.' for all core resources, '*.<group>' for a group, "
                          "'*.*' for all resources")
    group, resource = parse_group_resource(text)
    if resource != "*" and "*" in text:
        raise ConfigError(f"{where}: Invalid value: {text!r}: a wildcard may only replace the whole resource")
    return group, resource


class EncryptionConfig:
    """One loaded EncryptionConfiguration: the chain for every resource, and the KMS probes."""

    def __init__(self, path, data, chains, kms_providers, kms_v1_used, reload):
        self.path = path
        self.content_hash = "sha256:" + hashlib.sha256(data).hexdigest()
        self.chains = chains
        self.kms_providers = kms_providers
        self.kms_v1_used = kms_v1_used
        self.reload = reload

    def chain_for(self, group, resource):
        for key in ((group, resource), (group, "*"), ("*", "*")):
            if key in self.chains:
                return self.chains[key]
        return IDENTITY_ONLY

    def health_checks(self):
        """``[(check name, callable -> error or None)]`` as upstream names them."""
        if self.reload or (self.kms_providers and not self.kms_v1_used):
            return [("kms-providers", self._all_kms)]
        return [(f"kms-provider-{index}", provider.check) for index, provider in enumerate(self.kms_providers)]

    def _all_kms(self):
        errors = [f"{provider.name}: {error}" for provider in self.kms_providers for error in [provider.check()] if error]
        return "; ".join(errors) or None

    def start(self):
        for provider in self.kms_providers:
            provider.start()
        return self

    def close(self):
        for provider in self.kms_providers:
            provider.close()

    def summary(self):
        lines = []
        for (group, resource), chain in self.chains.items():
            name = resource if not group else f"{resource}.{group}"
            lines.append(f"{name}: " + " -> ".join(provider.describe() for provider in chain.providers))
        return lines


def _kms_socket(endpoint, where):
    if not isinstance(endpoint, str) or not endpoint:
        raise ConfigError(f"{where}.endpoint: Required value: the plugin's socket, unix:///path/to/socket")
    if not endpoint.startswith("unix://") or len(endpoint) == len("unix://"):
        raise ConfigError(f"{where}.endpoint: Invalid value: {endpoint!r}: unsupported scheme, only unix:// is supported")
    return endpoint[len("unix://"):]


def _build_provider(entry, where, context):
    kinds = [kind for kind in ("kms", "aescbc", "aesgcm", "secretbox", "identity") if kind in (entry or {})]
    unknown = sorted(set(entry or {}) - {"kms", "aescbc", "aesgcm", "secretbox", "identity"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (a provider is one of kms, aescbc, aesgcm, secretbox, identity)")
    if len(kinds) != 1:
        raise ConfigError(f"{where}: Invalid value: provider does not contain exactly one of the expected providers: "
                          "KMS, AESGCM, AESCBC, Secretbox, Identity (split them into separate list elements)")
    kind = kinds[0]
    body = entry[kind] or {}
    if kind == "identity":
        return IdentityProvider()
    if kind != "kms":
        return StaticKeyProvider(kind, body.get("keys"), f"{where}.{kind}")
    return _build_kms(body, f"{where}.kms", context)


def _build_kms(body, where, context):
    name = body.get("name")
    if not name:
        raise ConfigError(f"{where}.name: Required value: kms provider name")
    name = str(name)
    if ":" in name:
        raise ConfigError(f"{where}.name: Invalid value: {name!r}: must not contain ':'")
    api_version = str(body.get("apiVersion") or "v1")
    if api_version not in ("v1", "v2"):
        raise ConfigError(f"{where}.apiVersion: Unsupported value: {api_version!r}: supported values: \"v1\", \"v2\"")
    if name in context["kms_names"]:
        raise ConfigError(f"{where}.name: Invalid value: {name!r}: duplicate kms provider name found")
    context["kms_names"].add(name)
    container_path = _kms_socket(body.get("endpoint"), where)
    socket_path = context["map_path"](container_path)
    if socket_path is None:
        # As in the real pod: kube-apiserver starts, and its KMS health check fails because the socket is not there.
        socket_path = UNMOUNTED_ROOT + container_path
        LOG.warning("kms provider %s: %s is in no volumeMount of the kube-apiserver container: the plugin is unreachable",
                    name, container_path)
    timeout = parse_duration(body["timeout"], f"{where}.timeout") if body.get("timeout") is not None else DEFAULT_KMS_TIMEOUT
    if timeout <= 0:
        raise ConfigError(f"{where}.timeout: Invalid value: {body.get('timeout')!r}: should be a positive value")
    if api_version == "v1":
        if not context["kms_v1_enabled"]:
            raise ConfigError(f"{where}: KMSv1 is deprecated and will only receive security updates going forward. Use KMSv2 instead. "
                              "Set --feature-gates=KMSv1=true to use the deprecated KMSv1 feature.")
        context["kms_v1_used"] = True
        provider = KmsV1Provider(name, socket_path, timeout)
    else:
        if body.get("cachesize") not in (None, 0):
            raise ConfigError(f"{where}.cachesize: Invalid value: {body.get('cachesize')!r}: cachesize is not supported in v2")
        provider = KmsV2Provider(name, socket_path, timeout, context["metrics"], context["timings"])
    context["kms"].append(provider)
    return provider


def load_encryption_config(path, metrics, timings=None, reload=False, kms_v1_enabled=False, map_path=None):
    """Parse and validate ``path``; build (not start) its providers. Raises ConfigError."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError(f"error reading encryption provider configuration file {path!r}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"encryption provider configuration file {path!r} is empty")
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"error decoding encryption provider configuration file {path!r}: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"error decoding encryption provider configuration file {path!r}: not a YAML mapping")
    if document.get("kind") != KIND or document.get("apiVersion") != API_VERSION:
        raise ConfigError(f"error decoding encryption provider configuration file {path!r}: got apiVersion "
                          f"{document.get('apiVersion')!r} kind {document.get('kind')!r}, expected {API_VERSION} {KIND}")
    resources = document.get("resources")
    if not isinstance(resources, list) or not resources:
        raise ConfigError("resources: Required value: EncryptionConfiguration.Resources must contain at least one resource")
    context = {"kms_names": set(), "kms": [], "kms_v1_used": False, "kms_v1_enabled": kms_v1_enabled, "metrics": metrics,
               "timings": timings or KmsTimings(), "map_path": map_path or (lambda container_path: container_path)}
    chains = {}
    try:
        for index, entry in enumerate(resources):
            where = f"resources[{index}]"
            if not isinstance(entry, dict) or not entry.get("resources"):
                raise ConfigError(f"{where}.resources: Required value: at least one resource")
            if not entry.get("providers"):
                raise ConfigError(f"{where}.providers: Required value: at least one provider")
            chain = ProviderChain([_build_provider(provider, f"{where}.providers[{number}]", context)
                                   for number, provider in enumerate(entry["providers"])])
            for number, text in enumerate(entry["resources"]):
                group, resource = _validate_resource(text, f"{where}.resources[{number}]")
                if (group, resource) in chains:
                    raise ConfigError(f"{where}.resources[{number}]: Duplicate value: {text!r}")
                for mask in ((group, "*"), ("*", "*")):
                    if mask in chains and mask != (group, resource):
                        raise ConfigError(f"{where}.resources[{number}]: resource {text!r} is masked by earlier rule "
                                          f"{'*.' + mask[0] if mask[0] != '*' else '*.*'}")
                chains[(group, resource)] = chain
    except ConfigError:
        for provider in context["kms"]:
            provider.close()
        raise
    return EncryptionConfig(path, data, chains, context["kms"], context["kms_v1_used"], reload)


class EncryptionController:
    """The current configuration; with automatic reload, a watcher that swaps in a changed file once its KMS providers are healthy."""

    def __init__(self, path, metrics, timings=None, reload=False, kms_v1_enabled=False, map_path=None, watch_interval=1.0):
        self.path = path
        self.metrics = metrics
        self.timings = timings or KmsTimings()
        self.reload = reload
        self.kms_v1_enabled = kms_v1_enabled
        self.map_path = map_path
        self.watch_interval = watch_interval
        self.current = None
        self.last_reload_error = None
        self._failed = (None, 0.0)
        self._stop = threading.Event()
        self._thread = None

    def _load(self):
        return load_encryption_config(self.path, self.metrics, self.timings, self.reload, self.kms_v1_enabled, self.map_path)

    def start(self):
        """Load the file (ConfigError when it is unusable: kube-apiserver exits) and start its probes."""
        self.current = self._load().start()
        self.metrics.record_config(self.current.content_hash)
        for line in self.current.summary():
            LOG.info("encryption: %s", line)
        if self.reload:
            self._thread = threading.Thread(target=self._watch, name="encryption-config-watch", daemon=True)
            self._thread.start()
        return self

    def _file_hash(self):
        try:
            with open(self.path, "rb") as stream:
                return "sha256:" + hashlib.sha256(stream.read()).hexdigest()
        except OSError:
            return None

    def _watch(self):
        while not self._stop.wait(self.watch_interval):
            content_hash = self._file_hash()
            if content_hash is None or content_hash == self.current.content_hash:
                continue
            failed_hash, retry_at = self._failed
            if content_hash == failed_hash and time.monotonic() < retry_at:
                continue
            self.try_reload()

    def try_reload(self):
        """Load the file again; keep the old configuration when the new one fails. Returns the error or None."""
        try:
            candidate = self._load().start()
        except ConfigError as exc:
            return self._reload_failed(self._file_hash(), f"error while parsing file: {exc}")
        deadline = time.monotonic() + max(10.0, 2 * sum(provider.timeout for provider in candidate.kms_providers))
        error = None
        for _name, check in candidate.health_checks():
            while True:
                error = check()
                if error is None or time.monotonic() > deadline or self._stop.wait(0.1):
                    break
            if error is not None:
                break
        if error is not None:
            candidate.close()
            return self._reload_failed(candidate.content_hash, f"health check for new transformers failed, error: {error}")
        old, self.current = self.current, candidate
        self.last_reload_error = None
        self._failed = (None, 0.0)
        self.metrics.record_reload("success", candidate.content_hash)
        LOG.info("encryption configuration reloaded from %s", self.path)
        for line in candidate.summary():
            LOG.info("encryption: %s", line)
        grace = 2 * sum(provider.timeout for provider in old.kms_providers)
        threading.Timer(grace, old.close).start()
        return None

    def _reload_failed(self, content_hash, error):
        self.last_reload_error = error
        self._failed = (content_hash, time.monotonic() + 10.0)
        self.metrics.record_reload("failure")
        LOG.error("failed to reload the encryption configuration, the previous one stays in force: %s", error)
        return error

    def health_checks(self):
        return self.current.health_checks()

    def chain_for(self, group, resource):
        return self.current.chain_for(group, resource)

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.watch_interval + 1)
        if self.current is not None:
            self.current.close()
