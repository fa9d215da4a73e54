# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""How kube-apiserver stores objects in etcd: parse a stored value, never decrypt it.  Private to this collection: no stable API.

Stored formats (the etcd key is the additional authenticated data wherever
one is used):

- identity: the plain storage encoding, ``k8s\\0`` + protobuf, JSON (custom
  resources) or self-described CBOR;
- ``k8s:enc:aescbc:v1:<key>:`` IV(16) + AES-CBC; ``k8s:enc:aesgcm:v1:<key>:``
  nonce(12) + ciphertext + tag(16); ``k8s:enc:secretbox:v1:<key>:`` nonce(24) +
  XSalsa20-Poly1305;
- ``k8s:enc:kms:v1:<name>:`` uint16 big-endian N + encrypted DEK (N bytes) +
  nonce + ciphertext + tag;
- ``k8s:enc:kms:v2:<name>:`` + protobuf ``EncryptedObject`` (k8s.io/apiserver
  ``pkg/storage/value/encrypt/envelope/kmsv2/v2/api.proto``).

The protobuf message class is built at import from a descriptor (no generated
code).  ``HAS_PROTOBUF`` says whether the ``protobuf`` library is there:
without it, every format but KMS v2 still parses, and a KMS v2 value raises
``StorageFormatError`` saying that the library is missing.
"""

import re
import traceback
from typing import Dict, NamedTuple, Optional

try:
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool
    from google.protobuf import message as protobuf_message
    from google.protobuf import message_factory
except ImportError:
    HAS_PROTOBUF = False
    PROTOBUF_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PROTOBUF = True
    PROTOBUF_IMPORT_ERROR = None

PROVIDER_TYPES = ("identity", "aescbc", "aesgcm", "secretbox", "kms-v1", "kms-v2")
ENCRYPTED_PREFIX = b"k8s:enc:"
# What follows ENCRYPTED_PREFIX, per provider type.
_TYPE_PREFIXES = (
    (b"kms:v2:", "kms-v2"),
    (b"kms:v1:", "kms-v1"),
    (b"aescbc:v1:", "aescbc"),
    (b"aesgcm:v1:", "aesgcm"),
    (b"secretbox:v1:", "secretbox"),
)
PROTOBUF_MAGIC = b"k8s\x00"
CBOR_SELF_DESCRIBED = b"\xd9\xd9\xf7"

# EncryptedObject.encryptedDEKSourceType values the apiserver reads.
DEK_SOURCE_AES_GCM_KEY = 0
DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED = 1
_DEK_SOURCE_TYPES = (DEK_SOURCE_AES_GCM_KEY, DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED)
# The apiserver's own limits on what the plugin returns (kmsv2 envelope validation).
MAX_KEY_ID_BYTES = 1024
MAX_ENCRYPTED_DEK_SOURCE_BYTES = 1024
MAX_ANNOTATIONS_BYTES = 32 * 1024
# Smallest payloads that the ciphers can have produced.
_GCM_OVERHEAD = 12 + 16
_SECRETBOX_OVERHEAD = 24 + 16
_CBC_BLOCK = 16
# A provider name longer than this is not a name: the value is garbled.
_MAX_NAME_BYTES = 1024

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_FQDN = re.compile(r"^%s(\.%s)+$" % (_DNS_LABEL, _DNS_LABEL))
_RESOURCE = re.compile(r"^%s(\.%s)*$" % (_DNS_LABEL, _DNS_LABEL))

DEFAULT_ETCD_PREFIX = "/registry"
# API groups compiled into kube-apiserver: their objects live under
# <etcd prefix>/<resource>, without the group.  Every other group (custom
# resources, and the apiextensions / apiregistration servers) lives under
# <etcd prefix>/<group>/<resource>.
BUILTIN_GROUPS = frozenset((
    "", "apps", "autoscaling", "batch", "extensions", "policy",
    "admissionregistration.k8s.io", "certificates.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
    "events.k8s.io", "flowcontrol.apiserver.k8s.io", "internal.apiserver.k8s.io", "networking.k8s.io",
    "node.k8s.io", "rbac.authorization.k8s.io", "resource.k8s.io", "scheduling.k8s.io", "storage.k8s.io",
    "storagemigration.k8s.io",
))
# Built-in resources stored under a path other than their name (kept from early releases).
_BUILTIN_PATHS = {
    "nodes": "minions",
    "services": "services/specs",
    "endpoints": "services/endpoints",
    "replicationcontrollers": "controllers",
    "ingresses": "ingress",
    "podsecuritypolicies": "podsecuritypolicy",
}


class StorageFormatError(ValueError):
    """A stored value that kube-apiserver could not read back; the message says why."""


class StoredValue(NamedTuple):
    """One parsed etcd value.

    ``provider_type`` is one of PROVIDER_TYPES; ``provider_name`` the key name
    (aescbc, aesgcm, secretbox) or the KMS provider name, None for identity;
    ``key_id``, ``annotations`` (str -> bytes) and ``dek_source_type`` are KMS v2
    only (else None, {}, None); ``encrypted_dek`` is what the KMS plugin's
    Encrypt returned (KMS v1 and v2); ``ciphertext`` is what follows the
    prefix (static keys), ``encryptedData`` (KMS v2), nonce + ciphertext + tag
    after the DEK (KMS v1), or the whole value (identity).
    """

    provider_type: str
    provider_name: Optional[str]
    key_id: Optional[str]
    annotations: Dict[str, bytes]
    dek_source_type: Optional[int]
    encrypted_dek: Optional[bytes]
    ciphertext: bytes


def _build_encrypted_object_class():
    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="teapot_kms_storage_kmsv2.proto", package="v2", syntax="proto3")
    enum = proto.enum_type.add(name="EncryptedDEKSourceType")
    enum.value.add(name="AES_GCM_KEY", number=DEK_SOURCE_AES_GCM_KEY)
    enum.value.add(name="HKDF_SHA256_XNONCE_AES_GCM_SEED", number=DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED)
    message = proto.message_type.add(name="EncryptedObject")
    entry = message.nested_type.add(name="AnnotationsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=fdp.TYPE_STRING, label=fdp.LABEL_OPTIONAL, json_name="key")
    entry.field.add(name="value", number=2, type=fdp.TYPE_BYTES, label=fdp.LABEL_OPTIONAL, json_name="value")
    for name, number, field_type, json_name in (
        ("encryptedData", 1, fdp.TYPE_BYTES, "encryptedData"),
        ("keyID", 2, fdp.TYPE_STRING, "keyID"),
        ("encryptedDEKSource", 3, fdp.TYPE_BYTES, "encryptedDEKSource"),
    ):
        message.field.add(name=name, number=number, type=field_type, label=fdp.LABEL_OPTIONAL, json_name=json_name)
    message.field.add(name="annotations", number=4, type=fdp.TYPE_MESSAGE, label=fdp.LABEL_REPEATED,
                      type_name=".v2.EncryptedObject.AnnotationsEntry", json_name="annotations")
    message.field.add(name="encryptedDEKSourceType", number=5, type=fdp.TYPE_ENUM, label=fdp.LABEL_OPTIONAL,
                      type_name=".v2.EncryptedDEKSourceType", json_name="encryptedDEKSourceType")
    # A private pool: the default one may already hold other "v2" messages.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_class(pool, "v2.EncryptedObject")


def message_class(pool, full_name):
    """The class of the message ``full_name`` of the descriptor pool ``pool`` (any protobuf from 3.20 on)."""
    descriptor = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    # protobuf < 4.22 (for example Debian 12's python3-protobuf)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


EncryptedObject = _build_encrypted_object_class() if HAS_PROTOBUF else None


def _provider_name(rest, start, provider_type):
    """The name between ``start`` and the next ':' of ``rest``, and where the payload begins."""
    end = rest.find(b":", start, start + _MAX_NAME_BYTES + 1)
    if end < 0:
        raise StorageFormatError(f"{provider_type} value without the ':' that ends the provider name")
    if end == start:
        raise StorageFormatError(f"{provider_type} value with an empty provider name")
    try:
        return rest[start:end].decode("utf-8"), end + 1
    except UnicodeDecodeError:
        raise StorageFormatError(f"{provider_type} value whose provider name is not UTF-8") from None


def _check_length(provider_type, payload, minimum, what):
    if len(payload) < minimum:
        raise StorageFormatError(
            f"{provider_type} value truncated: {len(payload)} bytes after the prefix, at least {minimum} needed ({what})")


def _parse_kms_v2(name, payload):
    if not HAS_PROTOBUF:
        raise StorageFormatError("KMS v2 value, but the Python library protobuf is not installed on this host: "
                                 "install it (python3-protobuf on Debian and Ubuntu) to read the key_id")
    try:
        message = EncryptedObject.FromString(payload)
    except (protobuf_message.DecodeError, UnicodeDecodeError) as exc:
        # upb reports invalid UTF-8 in keyID as a DecodeError, the pure-Python parser as UnicodeDecodeError.
        raise StorageFormatError(f"KMS v2 value whose EncryptedObject does not decode ({type(exc).__name__})") from None
    source_type = message.encryptedDEKSourceType
    if source_type not in _DEK_SOURCE_TYPES:
        raise StorageFormatError(f"KMS v2 value with an unknown encryptedDEKSourceType {source_type}")
    if not message.encryptedData:
        raise StorageFormatError("KMS v2 value with an empty encryptedData")
    key_id = message.keyID
    if not key_id:
        raise StorageFormatError("KMS v2 value with an empty keyID")
    if len(key_id) > MAX_KEY_ID_BYTES // 4 and len(key_id.encode("utf-8")) > MAX_KEY_ID_BYTES:
        raise StorageFormatError(f"KMS v2 value whose keyID exceeds {MAX_KEY_ID_BYTES} bytes")
    dek_source = message.encryptedDEKSource
    if not dek_source:
        raise StorageFormatError("KMS v2 value with an empty encryptedDEKSource")
    if len(dek_source) > MAX_ENCRYPTED_DEK_SOURCE_BYTES:
        raise StorageFormatError(f"KMS v2 value whose encryptedDEKSource exceeds {MAX_ENCRYPTED_DEK_SOURCE_BYTES} bytes")
    stored_annotations = message.annotations
    # A comprehension over the map is twice as fast as dict(map) with upb.
    annotations = {key: stored_annotations[key] for key in stored_annotations}
    _check_annotations(annotations)
    return StoredValue("kms-v2", name, key_id, annotations, source_type, dek_source, message.encryptedData)


# Annotation keys already found to be domain names: a plugin uses the same few keys on every object.
_VALID_ANNOTATION_KEYS = set()
_MAX_REMEMBERED_KEYS = 1024


def _check_annotations(annotations):
    total = 0
    for key, value in annotations.items():
        if key not in _VALID_ANNOTATION_KEYS:
            if len(key) > 253 or not _FQDN.fullmatch(key):
                raise StorageFormatError(f"KMS v2 value with an annotation key that is not a fully qualified domain name: {key[:80]!r}")
            if len(_VALID_ANNOTATION_KEYS) < _MAX_REMEMBERED_KEYS:
                _VALID_ANNOTATION_KEYS.add(key)
        total += len(key) + len(value)  # the regex admits ASCII only: characters are bytes
    if total > MAX_ANNOTATIONS_BYTES:
        raise StorageFormatError(f"KMS v2 value whose annotations exceed {MAX_ANNOTATIONS_BYTES} bytes")


def _parse_kms_v1(name, payload):
    _check_length("kms-v1", payload, 2, "the encrypted DEK length")
    dek_length = int.from_bytes(payload[:2], "big")
    if dek_length == 0:
        raise StorageFormatError("kms-v1 value with an empty encrypted DEK")
    _check_length("kms-v1", payload, 2 + dek_length + _GCM_OVERHEAD, f"a {dek_length}-byte encrypted DEK, nonce and tag")
    return StoredValue("kms-v1", name, None, {}, None, payload[2:2 + dek_length], payload[2 + dek_length:])


def _parse_static(provider_type, name, payload):
    if provider_type == "aescbc":
        _check_length(provider_type, payload, 2 * _CBC_BLOCK, "IV and one block")
        if len(payload) % _CBC_BLOCK:
            raise StorageFormatError(f"aescbc value truncated: {len(payload)} bytes after the prefix is not a whole number of blocks")
    elif provider_type == "aesgcm":
        _check_length(provider_type, payload, _GCM_OVERHEAD, "nonce and tag")
    else:
        _check_length(provider_type, payload, _SECRETBOX_OVERHEAD, "nonce and tag")
    return StoredValue(provider_type, name, None, {}, None, None, payload)


def parse_stored_value(value):
    """Classify the bytes kube-apiserver stored in etcd; raise StorageFormatError when they make no sense.

    Nothing is decrypted and no reason quotes the value's content.
    """
    if type(value) is not bytes:  # pylint: disable=unidiomatic-typecheck
        value = bytes(value)
    if not value:
        raise StorageFormatError("empty value")
    if value.startswith(ENCRYPTED_PREFIX):
        start = len(ENCRYPTED_PREFIX)
        for type_prefix, provider_type in _TYPE_PREFIXES:
            if value.startswith(type_prefix, start):
                name, payload_start = _provider_name(value, start + len(type_prefix), provider_type)
                payload = value[payload_start:]
                if provider_type == "kms-v2":
                    return _parse_kms_v2(name, payload)
                if provider_type == "kms-v1":
                    return _parse_kms_v1(name, payload)
                return _parse_static(provider_type, name, payload)
        raise StorageFormatError("encrypted with a provider this audit does not know: "
                                 f"{_printable_type(value[start:start + 40])!r} after k8s:enc:")
    if value.startswith(PROTOBUF_MAGIC) or value.startswith(b"{") or value.startswith(CBOR_SELF_DESCRIBED):
        return StoredValue("identity", None, None, {}, None, None, value)
    raise StorageFormatError(f"not a Kubernetes storage format ({len(value)} bytes that start with neither "
                             "k8s:enc: nor a plain protobuf, JSON or CBOR encoding)")


_TYPE_FIELD = re.compile(rb"^[a-z0-9]{1,16}$")
_VERSION_FIELD = re.compile(rb"^v[0-9]{1,3}((alpha|beta)[0-9]{0,3})?$")


def _printable_type(head):
    """``type:version`` of an unknown prefix when it has that shape, else '?' (never other bytes of the value)."""
    fields = head.split(b":")
    if len(fields) >= 3 and _TYPE_FIELD.match(fields[0]) and _VERSION_FIELD.match(fields[1]):
        return (fields[0] + b":" + fields[1]).decode("ascii")
    return "?"


def encode_kms_v2(provider_name, encrypted_data, key_id, encrypted_dek_source, annotations=None,
                  dek_source_type=DEK_SOURCE_HKDF_SHA256_XNONCE_AES_GCM_SEED):
    """The value kube-apiserver writes for a KMS v2 provider (annotations serialised sorted by key)."""
    if not HAS_PROTOBUF:
        raise RuntimeError("encode_kms_v2 needs the Python library protobuf")
    if not provider_name or ":" in provider_name:
        raise ValueError(f"a KMS provider name must be non-empty and free of ':' (got {provider_name!r})")
    message = EncryptedObject(encryptedData=bytes(encrypted_data), keyID=key_id,
                              encryptedDEKSource=bytes(encrypted_dek_source), encryptedDEKSourceType=dek_source_type)
    for key, value in (annotations or {}).items():
        message.annotations[key] = bytes(value)
    # Validate what would be written the way the reader does, so that nothing unreadable is produced.
    _parse_kms_v2(provider_name, message.SerializeToString())
    prefix = ENCRYPTED_PREFIX + b"kms:v2:" + provider_name.encode("utf-8") + b":"
    return prefix + message.SerializeToString(deterministic=True)


def _split_resource(resource):
    if not isinstance(resource, str) or not _RESOURCE.fullmatch(resource):
        raise ValueError(f"{resource!r} is not a Kubernetes resource name: give the plural, lower case, with the API "
                         "group for resources outside the core group (secrets, configmaps, widgets.example.com); "
                         "wildcards are not accepted")
    plural, _dot, group = resource.partition(".")
    return plural, group


def _normalise_etcd_prefix(etcd_prefix):
    etcd_prefix = "/" + (etcd_prefix or "").strip("/")
    return etcd_prefix.rstrip("/")


def registry_prefix(resource, etcd_prefix=DEFAULT_ETCD_PREFIX):
    """The etcd key prefix (ending in '/') under which kube-apiserver stores ``resource``.

    ``resource`` is written as in an EncryptionConfiguration: ``secrets``,
    ``configmaps``, ``deployments.apps``, ``widgets.example.com``.
    ``etcd_prefix`` is kube-apiserver's ``--etcd-prefix``.
    """
    plural, group = _split_resource(resource)
    root = _normalise_etcd_prefix(etcd_prefix)
    if group in BUILTIN_GROUPS:
        return f"{root}/{_BUILTIN_PATHS.get(plural, plural)}/"
    return f"{root}/{group}/{plural}/"


def parse_registry_key(key, resources, etcd_prefix=DEFAULT_ETCD_PREFIX):
    """``(resource, namespace, name)`` of the etcd ``key`` among ``resources``; namespace is None for cluster-scoped objects.

    Raises ValueError when the key belongs to none of ``resources`` or has no object name.
    """
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    best = None
    for resource in resources:
        prefix = registry_prefix(resource, etcd_prefix)
        if key.startswith(prefix) and (best is None or len(prefix) > len(best[1])):
            best = (resource, prefix)
    if best is None:
        raise ValueError(f"etcd key {key!r} is not under the storage prefix of any of {list(resources)}")
    namespace, name = split_object_key(key, best[1])
    return best[0], namespace, name


def split_object_key(key, prefix):
    """``(namespace, name)`` of ``key`` under the resource prefix ``prefix`` (from registry_prefix()).

    Raises ValueError when what follows the prefix is not ``[<namespace>/]<name>``.
    """
    parts = key[len(prefix):].split("/") if key.startswith(prefix) else ()
    if len(parts) == 1 and parts[0]:
        return None, parts[0]
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1]
    raise ValueError(f"etcd key {key!r} is not {prefix}[<namespace>/]<name>")
