"""_kms_storage against the values a real kube-apiserver wrote, and against truncated and garbled ones."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.teapot.kms.plugins.module_utils import _kms_storage
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import (
    StorageFormatError,
    encode_kms_v2,
    parse_registry_key,
    parse_stored_value,
    registry_prefix,
)
from tests.harness import etcd_fixtures

FIXTURES = etcd_fixtures.load_fixtures()
KMS_V2 = [fixture for fixture in FIXTURES if fixture["provider_type"] == "kms-v2"]
SECRET_MARKER = b"DO-NOT-ECHO-0b7e"


def _ids(fixtures):
    return [fixture["file"] for fixture in fixtures]


def test_every_provider_type_has_a_fixture():
    assert {fixture["provider_type"] for fixture in FIXTURES} == set(_kms_storage.PROVIDER_TYPES)


@pytest.mark.parametrize("fixture", FIXTURES, ids=_ids(FIXTURES))
def test_fixture_is_classified(fixture):
    stored = parse_stored_value(fixture["value"])
    assert stored.provider_type == fixture["provider_type"]
    # The fixtures name identity "identity"; an EncryptionConfiguration's identity provider has no name.
    expected_name = None if fixture["provider_type"] == "identity" else fixture["provider_name"]
    assert stored.provider_name == expected_name
    assert stored.key_id == fixture["expected_key_id"]
    expected_annotations = {key: base64.b64decode(value) for key, value in (fixture["expected_annotations"] or {}).items()}
    assert stored.annotations == expected_annotations
    assert stored.dek_source_type == fixture.get("encrypted_dek_source_type")
    if fixture["expected_prefix"]:
        assert fixture["value"] == fixture["expected_prefix"].encode() + (
            stored.ciphertext if fixture["provider_type"] in ("aescbc", "aesgcm", "secretbox") else fixture["value"][len(fixture["expected_prefix"]):])


# secretbox (XSalsa20-Poly1305) has no implementation in cryptography: its prefix and payload are checked above.
OPENABLE = [fixture for fixture in FIXTURES if fixture["provider_type"] != "secretbox"]


@pytest.mark.parametrize("fixture", OPENABLE, ids=_ids(OPENABLE))
def test_fixture_parts_open_with_the_recorded_keys(fixture):
    """The parsed pieces are the right bytes: they decrypt to the object that holds the fixture's marker."""
    stored = parse_stored_value(fixture["value"])
    etcd_key = fixture["etcd_key"]
    provider_type = fixture["provider_type"]
    if provider_type == "identity":
        plaintext = stored.ciphertext
    elif provider_type == "kms-v2":
        seed = etcd_fixtures.unwrap_with_test_kek(fixture["test_kek_hex"], stored.encrypted_dek)
        assert seed.hex() == fixture["kms_seed_hex"]
        plaintext = etcd_fixtures.kms_v2_decrypt(stored.ciphertext, seed, etcd_key)
    elif provider_type == "kms-v1":
        dek = etcd_fixtures.unwrap_with_test_kek(fixture["test_kek_hex"], stored.encrypted_dek)
        assert dek.hex() == fixture["kms_v1_dek_hex"]
        plaintext = etcd_fixtures.kms_v1_decrypt(stored.ciphertext, dek, etcd_key)
    elif provider_type == "aesgcm":
        plaintext = etcd_fixtures.aesgcm_decrypt(stored.ciphertext, base64.b64decode(fixture["provider_key_b64"]), etcd_key)
    else:
        plaintext = etcd_fixtures.aescbc_decrypt(stored.ciphertext, base64.b64decode(fixture["provider_key_b64"]))
    assert plaintext.startswith(b"k8s\x00")
    assert fixture["plaintext_marker"].encode() in plaintext
    if provider_type != "identity":
        assert fixture["plaintext_marker"].encode() not in fixture["value"]


@pytest.mark.parametrize("fixture", KMS_V2, ids=_ids(KMS_V2))
def test_encode_kms_v2_is_byte_exact(fixture):
    stored = parse_stored_value(fixture["value"])
    # Insertion order must not matter: the apiserver writes annotations sorted by key.
    reversed_annotations = dict(sorted(stored.annotations.items(), reverse=True))
    encoded = encode_kms_v2(stored.provider_name, stored.ciphertext, stored.key_id, stored.encrypted_dek,
                            reversed_annotations, stored.dek_source_type)
    assert encoded == fixture["value"]
    assert parse_stored_value(encoded) == stored


def _partial_encodings(stored):
    """The prefixes of a KMS v2 value that are themselves complete messages, with what they parse to.

    Fields come in number order, so cutting the value just after encryptedDEKSource
    or after any annotation entry leaves a valid message: type 0 (legacy, no field 5)
    and fewer annotations.
    """
    keys = sorted(stored.annotations)
    partial = {}
    for count in range(len(keys) + 1):
        annotations = {key: stored.annotations[key] for key in keys[:count]}
        encoded = encode_kms_v2(stored.provider_name, stored.ciphertext, stored.key_id, stored.encrypted_dek,
                                annotations, dek_source_type=_kms_storage.DEK_SOURCE_AES_GCM_KEY)
        partial[len(encoded)] = annotations
    return partial


@pytest.mark.parametrize("fixture", KMS_V2, ids=_ids(KMS_V2))
def test_every_truncation_of_a_kms_v2_value_is_refused_or_visibly_different(fixture):
    value = fixture["value"]
    stored = parse_stored_value(value)
    partial = _partial_encodings(stored)
    refused = 0
    for length in range(len(value)):
        if length in partial:
            truncated = parse_stored_value(value[:length])
            assert truncated.dek_source_type == 0 and truncated.annotations == partial[length]
            assert truncated.key_id == stored.key_id and truncated.encrypted_dek == stored.encrypted_dek
            continue
        with pytest.raises(StorageFormatError):
            parse_stored_value(value[:length])
        refused += 1
    assert refused == len(value) - len(partial)


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f["provider_type"] in ("aescbc", "aesgcm", "secretbox", "kms-v1")],
                         ids=lambda fixture: fixture["file"])
def test_short_payloads_are_refused(fixture):
    prefix_length = len(fixture["expected_prefix"])
    minimum = {"aescbc": 32, "aesgcm": 28, "secretbox": 40}.get(fixture["provider_type"])
    if minimum is None:  # kms-v1: length, DEK, nonce and tag
        minimum = 2 + int.from_bytes(fixture["value"][prefix_length:prefix_length + 2], "big") + 28
    for length in range(prefix_length - 1, prefix_length + minimum):
        with pytest.raises(StorageFormatError):
            parse_stored_value(fixture["value"][:length])
    assert parse_stored_value(fixture["value"][:prefix_length + minimum]).provider_type == fixture["provider_type"]


def _kms_v2(**fields):
    message = _kms_storage.EncryptedObject(**fields)
    return b"k8s:enc:kms:v2:prov:" + message.SerializeToString()


VALID_V2 = dict(encryptedData=b"\x01" * 60, keyID="key-1", encryptedDEKSource=b"\x02" * 40, encryptedDEKSourceType=1)


def _v2_with(**changes):
    fields = dict(VALID_V2)
    fields.update(changes)
    return _kms_v2(**fields)


@pytest.mark.parametrize("value, reason", [
    (b"", "empty value"),
    (b"\x00\x01garbage", "not a Kubernetes storage format"),
    (b"k8s:enc:kms:v3:prov:" + SECRET_MARKER, "does not know: 'kms:v3'"),
    (b"k8s:enc:" + SECRET_MARKER + b":x", "does not know: '?'"),
    (b"k8s:enc:abc:" + SECRET_MARKER + b":x", "does not know: '?'"),
    (b"k8s:enc:kms:v2:prov", "without the ':' that ends the provider name"),
    (b"k8s:enc:kms:v2::" + b"\x0a\x01\x00", "empty provider name"),
    (b"k8s:enc:aesgcm:v1:\xff\xfe:" + b"\x00" * 40, "provider name is not UTF-8"),
    (b"k8s:enc:kms:v2:prov:\x0a\x05\x01", "EncryptedObject does not decode"),
    (b"k8s:enc:kms:v2:prov:\x12\x02\xff\xfe", "EncryptedObject does not decode"),
    (_v2_with(encryptedDEKSourceType=7), "unknown encryptedDEKSourceType 7"),
    (_v2_with(encryptedData=b""), "empty encryptedData"),
    (_v2_with(keyID=""), "empty keyID"),
    (_v2_with(keyID="k" * 1025), "keyID exceeds 1024 bytes"),
    (_v2_with(encryptedDEKSource=b""), "empty encryptedDEKSource"),
    (_v2_with(encryptedDEKSource=b"\x01" * 1025), "encryptedDEKSource exceeds 1024 bytes"),
    (_v2_with(annotations={"not_a_domain": b"x"}), "not a fully qualified domain name"),
    (_v2_with(annotations={"single": b"x"}), "not a fully qualified domain name"),
    (_v2_with(annotations={"big.example.com": b"x" * 32768}), "annotations exceed 32768 bytes"),
    (b"k8s:enc:kms:v1:prov:\x00\x00" + b"\x00" * 40, "kms-v1 value with an empty encrypted DEK"),
    (b"k8s:enc:kms:v1:prov:\x00\x20" + b"\x00" * 40, "kms-v1 value truncated"),
    (b"k8s:enc:aescbc:v1:key1:" + b"\x00" * 33, "not a whole number of blocks"),
])
def test_garbled_values_say_why(value, reason):
    with pytest.raises(StorageFormatError) as raised:
        parse_stored_value(value)
    assert reason in str(raised.value)
    assert SECRET_MARKER.decode() not in str(raised.value)


def test_a_valid_kms_v2_value_parses():
    stored = parse_stored_value(_v2_with(annotations={"a.example.com": b"1"}, encryptedDEKSourceType=0))
    assert stored == _kms_storage.StoredValue("kms-v2", "prov", "key-1", {"a.example.com": b"1"}, 0, b"\x02" * 40, b"\x01" * 60)


@pytest.mark.parametrize("value", [b"k8s\x00\x0a\x02v1", b'{"kind":"Widget"}', b"\xd9\xd9\xf7\xa1\x01\x02"])
def test_plain_encodings_are_identity(value):
    stored = parse_stored_value(value)
    assert stored.provider_type == "identity" and stored.provider_name is None and stored.ciphertext == value


def test_without_protobuf_kms_v2_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_kms_storage, "HAS_PROTOBUF", False)
    with pytest.raises(StorageFormatError, match="protobuf is not installed.*python3-protobuf"):
        parse_stored_value(KMS_V2[0]["value"])
    assert parse_stored_value(FIXTURES[0]["value"]).provider_type == FIXTURES[0]["provider_type"]


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"", b"k8s:enc:", b"k8s:enc:kms:v2:p:", b"k8s:enc:kms:v1:p:", b"k8s:enc:aescbc:v1:k:",
                               b"k8s:enc:aesgcm:v1:k:", b"k8s:enc:secretbox:v1:k:"]), tail=st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_storage_format_error(prefix, tail):
    try:
        stored = parse_stored_value(prefix + tail)
    except StorageFormatError:
        return
    assert stored.provider_type in _kms_storage.PROVIDER_TYPES


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=len(b"k8s:enc:kms:v2:fixturekms:"), max_value=len(KMS_V2[0]["value"]) - 1),
       flip=st.integers(min_value=1, max_value=255))
def test_a_flipped_byte_in_a_kms_v2_value_never_passes_unnoticed(position, flip):
    value = bytearray(KMS_V2[0]["value"])
    value[position] ^= flip
    try:
        stored = parse_stored_value(bytes(value))
    except StorageFormatError:
        return
    assert stored != parse_stored_value(KMS_V2[0]["value"])


def test_encode_refuses_what_the_apiserver_could_not_read():
    with pytest.raises(ValueError, match="free of ':'"):
        encode_kms_v2("a:b", b"x", "k", b"d", {})
    with pytest.raises(StorageFormatError, match="empty keyID"):
        encode_kms_v2("p", b"x", "", b"d", {})


@pytest.mark.parametrize("resource, prefix", [
    ("secrets", "/registry/secrets/"),
    ("configmaps", "/registry/configmaps/"),
    ("deployments.apps", "/registry/deployments/"),
    ("services", "/registry/services/specs/"),
    ("endpoints", "/registry/services/endpoints/"),
    ("nodes", "/registry/minions/"),
    ("ingresses.networking.k8s.io", "/registry/ingress/"),
    ("roles.rbac.authorization.k8s.io", "/registry/roles/"),
    ("widgets.example.com", "/registry/example.com/widgets/"),
    ("volumesnapshots.snapshot.storage.k8s.io", "/registry/snapshot.storage.k8s.io/volumesnapshots/"),
    ("customresourcedefinitions.apiextensions.k8s.io", "/registry/apiextensions.k8s.io/customresourcedefinitions/"),
])
def test_registry_prefix(resource, prefix):
    assert registry_prefix(resource) == prefix


def test_registry_prefix_follows_etcd_prefix():
    assert registry_prefix("secrets", "/kubernetes.io/") == "/kubernetes.io/secrets/"
    assert registry_prefix("widgets.example.com", "custom") == "/custom/example.com/widgets/"


@pytest.mark.parametrize("resource", ["Secrets", "*.apps", "*.*", "", "secrets/", "a..b", None])
def test_registry_prefix_refuses_what_is_not_a_resource(resource):
    with pytest.raises(ValueError, match="not a Kubernetes resource name"):
        registry_prefix(resource)


def test_parse_registry_key():
    resources = ["secrets", "configmaps", "widgets.example.com", "namespaces", "services"]
    assert parse_registry_key("/registry/secrets/ns1/db", resources) == ("secrets", "ns1", "db")
    assert parse_registry_key(b"/registry/configmaps/kube-system/c", resources) == ("configmaps", "kube-system", "c")
    assert parse_registry_key("/registry/namespaces/default", resources) == ("namespaces", None, "default")
    assert parse_registry_key("/registry/example.com/widgets/ns/w1", resources) == ("widgets.example.com", "ns", "w1")
    assert parse_registry_key("/registry/services/specs/default/kubernetes", resources) == ("services", "default", "kubernetes")
    for fixture in FIXTURES:
        assert parse_registry_key(fixture["etcd_key"], ["secrets", "configmaps"]) == (
            fixture["resource"], fixture["namespace"], fixture["name"])


@pytest.mark.parametrize("key", ["/registry/pods/ns/p", "/registry/secretsx/ns/p", "/registry/secrets/", "/registry/secrets/a/b/c",
                                 "/registry/secrets/ns/"])
def test_parse_registry_key_refuses_foreign_and_malformed_keys(key):
    with pytest.raises(ValueError):
        parse_registry_key(key, ["secrets"])
