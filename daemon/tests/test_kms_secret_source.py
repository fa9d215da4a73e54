"""The kubernetes_secret source: its configuration, its key_ids and slots, and the keys it refuses.

No API server here: the fetcher is given kubeconfigs that it must refuse before
any request, and Secret data values to decode; tests/integration reads a real
Secret through the kube-apiserver stand-in.
"""

import base64
import copy
import json
import os
import uuid

import pytest
import yaml
from daemon_testing import FakeClock

from teapot_kms_plugin import cli
from teapot_kms_plugin import config
from teapot_kms_plugin import keyring
from teapot_kms_plugin import keyservice
from teapot_kms_plugin import kubesecret
from teapot_kms_plugin import pins
from teapot_kms_plugin import wrapping

SEED = os.urandom(32)


@pytest.fixture
def kubeconfig(tmp_path):
    return _kubeconfig(tmp_path, "https://127.0.0.1:6443")


def _kubeconfig(tmp_path, server, **cluster):
    path = tmp_path / "mgmt.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "mgmt",
        "clusters": [{"name": "mgmt", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "tenant-a-kms", "user": {"token": "t0ken-value"}}],
        "contexts": [{"name": "mgmt", "context": {"cluster": "mgmt", "user": "tenant-a-kms"}}],
    }))
    return path


@pytest.fixture
def valid(kubeconfig):
    return {
        "socket": "/run/teapot-kms/kms.sock",
        "kubernetes_secret": {"kubeconfig": str(kubeconfig), "namespace": "tenant-a", "name": "tenant-a-kek"},
        "keys": ["kek-2", "kek-1"],
    }


def _load(tmp_path, data):
    path = tmp_path / "kms.yaml"
    path.write_text(yaml.safe_dump(data))
    return config.load(path)


def test_valid_config(tmp_path, valid, kubeconfig):
    cfg = _load(tmp_path, valid)
    assert cfg.barbican is None
    assert cfg.kubernetes_secret == config.KubernetesSecretConfig(
        kubeconfig=str(kubeconfig), namespace="tenant-a", name="tenant-a-kek", context=None, timeout=10.0)
    assert [ref.key_id for ref in cfg.keys] == ["k8s-secret:tenant-a/tenant-a-kek/kek-2",
                                                "k8s-secret:tenant-a/tenant-a-kek/kek-1"]
    assert [ref.field for ref in cfg.keys] == ["kek-2", "kek-1"]
    assert all(ref.source == "kubernetes_secret" for ref in cfg.keys)


def _set(data, dotted, value):
    target = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    if value is None:
        target.pop(parts[-1], None)
    else:
        target[parts[-1]] = value


BAD = [
    ("kubernetes_secret.kubeconfig", None, "kubernetes_secret.kubeconfig: required"),
    ("kubernetes_secret.kubeconfig", "mgmt.kubeconfig", "kubernetes_secret.kubeconfig: 'mgmt.kubeconfig' is not an absolute path"),
    ("kubernetes_secret.kubeconfig", "/nonexistent/kubeconfig", "kubernetes_secret.kubeconfig: /nonexistent/kubeconfig does not exist"),
    ("kubernetes_secret.namespace", None, "kubernetes_secret.namespace: required"),
    ("kubernetes_secret.namespace", "Tenant_A", "kubernetes_secret.namespace: 'Tenant_A' is not a Kubernetes namespace name"),
    ("kubernetes_secret.namespace", "a" * 64, "kubernetes_secret.namespace:"),
    ("kubernetes_secret.name", None, "kubernetes_secret.name: required"),
    ("kubernetes_secret.name", "kek/1", "kubernetes_secret.name: 'kek/1' is not a Kubernetes Secret name"),
    ("kubernetes_secret.timeout", 0, "kubernetes_secret.timeout: expected a positive number"),
    ("kubernetes_secret.field", "kek-1", "kubernetes_secret.field: unknown field"),
    ("keys", None, "keys: expected a non-empty list of data fields of the Secret tenant-a/tenant-a-kek"),
    ("keys", [], "keys: expected a non-empty list"),
    ("keys", ["kek-1", "kek 2"], "keys[1]: 'kek 2' is not a Secret data field name"),
    ("keys", ["kek-1", "kek-1"], "keys[1]: field kek-1 is already keys[0]"),
    ("keys", ["0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10", "https://kms.example/v1/secrets/x"], "keys[1]:"),
    ("barbican", {"cloud": "mycloud"}, "kubernetes_secret: set either barbican or kubernetes_secret, not both"),
]


@pytest.mark.parametrize("field, value, message", BAD, ids=[f"{item[0]}={item[1]!r}"[:60] for item in BAD])
def test_bad_field_is_named(tmp_path, valid, field, value, message):
    data = copy.deepcopy(valid)
    _set(data, field, value)
    with pytest.raises(config.ConfigError) as info:
        _load(tmp_path, data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_key_id_and_slot_scheme():
    ref = keyring.SecretFieldRef.of("tenant-a", "tenant-a-kek", "kek-1")
    assert ref.key_id == "k8s-secret:tenant-a/tenant-a-kek/kek-1"
    assert ref.ref == "tenant-a/tenant-a-kek/kek-1"
    # The slot is the name-based UUID of the key_id: stable across restarts and hosts.
    assert ref.uuid == wrapping.slot_uuid_for(ref.key_id) and ref.uuid.version == 5
    assert ref.slot == ref.uuid.bytes and ref.header == b"tk\x01" + ref.slot
    assert ref.aad == ref.header + b"k8s-secret:tenant-a/tenant-a-kek/kek-1"
    assert ref == keyring.SecretFieldRef.of("tenant-a", "tenant-a-kek", "kek-1")
    # Another field, Secret or namespace is another key.
    others = [keyring.SecretFieldRef.of(*names) for names in
              (("tenant-a", "tenant-a-kek", "kek-2"), ("tenant-a", "other", "kek-1"), ("tenant-b", "tenant-a-kek", "kek-1"))]
    assert len({ref.slot, *(other.slot for other in others)}) == 4
    assert wrapping.names_slot(ref.key_id, ref.slot) and not wrapping.names_slot(others[0].key_id, ref.slot)


def test_key_ids_never_collide_with_barbican():
    barbican = keyring.KeyRef.parse(str(uuid.uuid4()))
    secret = keyring.SecretFieldRef.of("tenant-a", "kek", str(barbican.uuid))
    assert barbican.key_id.startswith("barbican:") and secret.key_id.startswith("k8s-secret:")
    assert barbican.source == "barbican" and secret.source == "kubernetes_secret"
    # Barbican's secret UUIDs are random (version 4); a Secret's slot is version 5: the slots differ too.
    assert barbican.uuid.version == 4 and secret.slot != barbican.slot
    assert not wrapping.names_slot(secret.key_id, barbican.slot)
    assert not wrapping.names_slot(barbican.key_id, secret.slot)


class SecretData:
    """A Secret's data as the fetcher would get it, decoded by the fetcher's own rules."""

    def __init__(self, **fields):
        self.data = {name: base64.b64encode(value).decode() for name, value in fields.items()}

    def __call__(self, ref):
        if ref.field not in self.data:
            raise keyring.FetchError(f"Secret {ref.namespace}/{ref.name} has no field {ref.field}", "not_found")
        return kubesecret.decode_key(self.data[ref.field], f"Secret {ref.namespace}/{ref.name} field {ref.field}")


def _refs(*fields):
    return [keyring.SecretFieldRef.of("tenant-a", "tenant-a-kek", field) for field in fields]


def test_round_trip_and_decrypt_rules(tmp_path):
    fetch = SecretData(**{"kek-2": os.urandom(32), "kek-1": os.urandom(32)})
    primary, older = _refs("kek-2", "kek-1")
    cache = keyring.KeyCache([primary, older], fetch, refresh_interval=300, max_stale=3600,
                             key_pins=pins.open_pins(str(tmp_path)))
    assert cache.refresh() == {}
    service = keyservice.KeyService(cache)
    ciphertext, key_id, annotations = service.encrypt(SEED)
    assert key_id == primary.key_id and ciphertext[3:19] == primary.slot
    assert service.decrypt(ciphertext, key_id, annotations) == SEED
    assert service.status().key_id == "k8s-secret:tenant-a/tenant-a-kek/kek-2"
    assert [state.source for state in cache.states()] == ["kubernetes_secret", "kubernetes_secret"]
    # Another key's key_id: refused before any decryption.
    with pytest.raises(keyservice.KmsError) as info:
        service.decrypt(ciphertext, older.key_id, annotations)
    assert info.value.code == keyservice.INVALID_ARGUMENT
    # A key no longer configured: NOT_FOUND, named by the key_id the apiserver kept.
    (gone,) = _refs("kek-0")
    forged = ciphertext[:3] + gone.slot + ciphertext[19:]
    with pytest.raises(keyservice.KmsError) as info:
        service.decrypt(forged, gone.key_id, annotations)
    assert info.value.code == keyservice.NOT_FOUND
    assert str(info.value).startswith(f"key_id {gone.key_id} is not in the keyring (known: {primary.key_id}, {older.key_id})")
    # ... and a key_id that is not that slot's: INVALID_ARGUMENT, the slot described without a wrong key_id.
    with pytest.raises(keyservice.KmsError) as info:
        service.decrypt(forged, primary.key_id, annotations)
    assert info.value.code == keyservice.INVALID_ARGUMENT
    assert f"a k8s-secret: key with key slot {gone.uuid}" in str(info.value)


@pytest.mark.parametrize("value, message", [
    (os.urandom(16), "holds 16 bytes; a key-encryption key is exactly 32 random bytes"),
    (os.urandom(33), "holds 33 bytes"),
    (base64.b64encode(os.urandom(32)), "holds 44 bytes; a key-encryption key is exactly 32 random bytes (44 bytes: the key looks "
                                       "base64-encoded twice"),
    (b"", "is empty"),
])
def test_wrong_keys_are_refused_naming_secret_and_field(value, message):
    encoded = base64.b64encode(value).decode()
    with pytest.raises(keyring.FetchError) as info:
        kubesecret.decode_key(encoded, "Secret tenant-a/tenant-a-kek field kek-1")
    text = str(info.value)
    assert text.startswith("Secret tenant-a/tenant-a-kek field kek-1 ") and message in text
    assert info.value.reason == "bad_key"
    # Never the key, in any encoding.
    if value:
        assert encoded not in text and value.hex() not in text


def test_invalid_base64_is_refused():
    with pytest.raises(keyring.FetchError, match="field kek-1 is not valid base64"):
        kubesecret.decode_key("not base64!", "Secret tenant-a/tenant-a-kek field kek-1")


def test_short_key_is_refused_by_the_keyring_and_start_is_unhealthy():
    fetch = SecretData(**{"kek-1": os.urandom(16)})
    cache = keyring.KeyCache(_refs("kek-1"), fetch, refresh_interval=300, max_stale=3600)
    errors = cache.refresh()
    assert list(errors) == ["k8s-secret:tenant-a/tenant-a-kek/kek-1"]
    error = errors["k8s-secret:tenant-a/tenant-a-kek/kek-1"]
    assert "Secret tenant-a/tenant-a-kek field kek-1 holds 16 bytes" in error
    status = cache.status()
    assert not status.healthy and "Secret tenant-a/tenant-a-kek field kek-1 holds 16 bytes" in status.healthz


def good_material(secret_data, field):
    return base64.b64decode(secret_data.data[field])


def test_reload_with_a_short_key_keeps_the_running_keyring():
    good = SecretData(**{"kek-1": os.urandom(32)})
    cache = keyring.KeyCache(_refs("kek-1"), good, refresh_interval=300, max_stale=3600)
    assert cache.refresh() == {}
    short = SecretData(**{"kek-1": good_material(good, "kek-1"), "kek-2": os.urandom(16)})
    with pytest.raises(keyring.KeyUnavailable, match="field kek-2 holds 16 bytes"):
        cache.replace(_refs("kek-2", "kek-1"), short)
    assert cache.primary_ref.field == "kek-1" and cache.fetcher is good and cache.status().healthy


def test_stale_key_names_the_secret_as_its_source():
    clock = FakeClock()
    fetch = SecretData(**{"kek-1": os.urandom(32)})
    cache = keyring.KeyCache(_refs("kek-1"), fetch, refresh_interval=10, max_stale=100, clock=clock)
    assert cache.refresh() == {}
    clock.now += 101
    status = cache.status()
    assert not status.healthy
    assert status.healthz.startswith("key k8s-secret:tenant-a/tenant-a-kek/kek-1 is stale: the Kubernetes Secret last "
                                     "confirmed it 101s ago, more than max_stale 100s")


def test_changed_material_under_a_field_is_refused_by_the_pins(tmp_path):
    first = SecretData(**{"kek-1": os.urandom(32)})
    key_pins = pins.open_pins(str(tmp_path))
    cache = keyring.KeyCache(_refs("kek-1"), first, refresh_interval=300, max_stale=3600, key_pins=key_pins)
    assert cache.refresh() == {}
    substituted = SecretData(**{"kek-1": os.urandom(32)})
    with pytest.raises(keyring.KeyUnavailable) as info:
        cache.replace(_refs("kek-1"), substituted)
    assert "The Kubernetes Secret returned different key material for k8s-secret:tenant-a/tenant-a-kek/kek-1" in str(info.value)
    assert "Restore the field's original value in the Secret" in str(info.value)


@pytest.mark.parametrize("server, cluster, message", [
    ("http://127.0.0.1:6443", {}, "the server http://127.0.0.1:6443 is not an https URL"),
    ("https://127.0.0.1:6443", {"insecure-skip-tls-verify": True}, "insecure-skip-tls-verify is set"),
])
def test_fetcher_refuses_an_unprotected_kubeconfig(tmp_path, server, cluster, message):
    path = _kubeconfig(tmp_path, server, **cluster)
    fetch = kubesecret.KubernetesSecretFetcher(config.KubernetesSecretConfig(str(path), "tenant-a", "tenant-a-kek"))
    with pytest.raises(keyring.FetchError) as info:
        fetch(_refs("kek-1")[0])
    assert message in str(info.value) and info.value.reason == "config"
    assert "t0ken-value" not in str(info.value)


def test_fetcher_names_an_unusable_kubeconfig(tmp_path):
    path = tmp_path / "broken.kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nusers: []\n")
    fetch = kubesecret.KubernetesSecretFetcher(config.KubernetesSecretConfig(str(path), "tenant-a", "tenant-a-kek"))
    with pytest.raises(keyring.FetchError) as info:
        fetch(_refs("kek-1")[0])
    assert str(info.value).startswith(f"reading Secret tenant-a/tenant-a-kek through {path} failed: the kubeconfig is unusable")
    assert info.value.reason == "config"


def test_fetcher_names_an_unreadable_kubeconfig(tmp_path):
    # Replaced by a directory after the configuration was read: the read fails.
    path = tmp_path / "kubeconfig.d"
    path.mkdir()
    fetch = kubesecret.KubernetesSecretFetcher(config.KubernetesSecretConfig(str(path), "tenant-a", "tenant-a-kek"))
    with pytest.raises(keyring.FetchError) as info:
        fetch(_refs("kek-1")[0])
    assert f"kubernetes_secret.kubeconfig: cannot read {path}" in str(info.value) and info.value.reason == "config"


def test_inspect_names_the_source(tmp_path, valid, kubeconfig, capsys):
    path = tmp_path / "kms.yaml"
    path.write_text(yaml.safe_dump(valid))
    assert cli.main(["inspect", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert report["keys"] == [
        {"key_id": "k8s-secret:tenant-a/tenant-a-kek/kek-2", "secret": "tenant-a/tenant-a-kek/kek-2", "role": "primary",
         "source": "kubernetes_secret"},
        {"key_id": "k8s-secret:tenant-a/tenant-a-kek/kek-1", "secret": "tenant-a/tenant-a-kek/kek-1", "role": "decrypt-only",
         "source": "kubernetes_secret"},
    ]
    settings = report["settings"]
    assert "barbican" not in settings and settings["keys"] == ["kek-2", "kek-1"]
    assert settings["kubernetes_secret"] == {"kubeconfig": str(kubeconfig), "context": None, "namespace": "tenant-a",
                                             "name": "tenant-a-kek", "timeout": 10.0}
    # The kubeconfig's credentials stay in the kubeconfig.
    assert "t0ken-value" not in out
