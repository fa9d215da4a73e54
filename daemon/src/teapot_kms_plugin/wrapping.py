"""The ciphertext layout returned by Encrypt (format version 1).

::

    offset  size  field
    0       2     magic, the bytes "tk"
    2       1     format version, 1
    3       16    key slot: the Barbican secret UUID (RFC 4122 bytes), or for a
                  key read from a Kubernetes Secret the name-based (version 5)
                  UUID of its key_id
    19      12    nonce, random for every Encrypt
    31      n+16  AES-256-GCM ciphertext of the n plaintext bytes, then the tag

The additional authenticated data is the 19-byte header followed by the
key_id in UTF-8, so a ciphertext cannot be replayed under another format
version or presented with another key's key_id.
"""

import os
import re
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"tk"
FORMAT_VERSION = 1
# Magic and version: the first bytes of every ciphertext of this format.
PREFIX = MAGIC + bytes((FORMAT_VERSION,))
SLOT_SIZE = 16
HEADER_SIZE = len(PREFIX) + SLOT_SIZE
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + NONCE_SIZE + TAG_SIZE
KEY_SIZE = 32

# Limits the kube-apiserver enforces on what a plugin returns.
MAX_CIPHERTEXT = 1024
MAX_KEY_ID = 1024
MAX_ANNOTATIONS = 32 * 1024
MAX_PLAINTEXT = MAX_CIPHERTEXT - OVERHEAD

FORMAT_ANNOTATION = "format.kms.teapot.dev"
FORMAT_VALUE = str(FORMAT_VERSION).encode()
KEY_ID_PREFIX = "barbican:"
# Keys read from a data field of a Kubernetes Secret: ``k8s-secret:<namespace>/<name>/<field>``.
SECRET_KEY_ID_PREFIX = "k8s-secret:"
# The namespace of the name-based UUIDs that give those keys their slot.  Barbican names its
# secrets with random (version 4) UUIDs: a version 5 slot never equals one.
_SECRET_SLOT_NAMESPACE = uuid.UUID("5b0f6a8e-3c1d-5e2f-9a47-7d6c1e0b2a93")

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_FQDN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})+")


class FormatError(ValueError):
    """The input is not something this plugin can decrypt; the message says why."""


def key_id_for(secret_uuid):
    """The key_id reported for a Barbican secret: stable, unique, not secret."""
    return KEY_ID_PREFIX + str(secret_uuid)


def key_id_for_slot(slot):
    """The key_id of the secret whose UUID bytes are ``slot`` (bytes 3-18 of a ciphertext)."""
    return key_id_for(uuid.UUID(bytes=bytes(slot)))


def secret_field_key_id(namespace, name, field):
    """The key_id reported for the key in data field ``field`` of the Kubernetes Secret ``namespace/name``."""
    return f"{SECRET_KEY_ID_PREFIX}{namespace}/{name}/{field}"


def slot_uuid_for(key_id):
    """The UUID whose bytes are the key slot of a Secret-sourced ``key_id`` (name-based, version 5)."""
    return uuid.uuid5(_SECRET_SLOT_NAMESPACE, key_id)


def names_slot(key_id, slot):
    """Whether ``key_id`` is the key_id of the key whose slot is ``slot``, whatever its source."""
    if key_id.startswith(SECRET_KEY_ID_PREFIX):
        return slot_uuid_for(key_id).bytes == bytes(slot)
    return key_id == key_id_for_slot(slot)


def describe_slot(slot):
    """How messages name the key of an unknown ``slot``: its key_id when the slot tells it (Barbican)."""
    slot_uuid = uuid.UUID(bytes=bytes(slot))
    if slot_uuid.version == 5:
        return f"a {SECRET_KEY_ID_PREFIX} key with key slot {slot_uuid}"
    return key_id_for(slot_uuid)


def source_of(key_id):
    """The source a key_id names: ``kubernetes_secret`` or ``barbican``."""
    return "kubernetes_secret" if key_id.startswith(SECRET_KEY_ID_PREFIX) else "barbican"


def header_for(secret_uuid):
    """Bytes 0-18 of every ciphertext made with this secret."""
    return PREFIX + secret_uuid.bytes


def aad_for(secret_uuid, key_id=None):
    """The associated data: the header, then the key_id (the Barbican one of ``secret_uuid`` unless given) in UTF-8."""
    return header_for(secret_uuid) + (key_id or key_id_for(secret_uuid)).encode()


def annotations():
    """The annotations Encrypt returns and Decrypt expects back."""
    return {FORMAT_ANNOTATION: FORMAT_VALUE}


def is_fqdn(name):
    return len(name) <= 253 and _FQDN.fullmatch(name) is not None


def check_annotations(given):
    """Reject annotations the apiserver would not have stored from our Encrypt.

    ``given`` is a dict or the request's protobuf map.
    """
    if len(given) == 1 and given.get(FORMAT_ANNOTATION) == FORMAT_VALUE:
        # What Encrypt returns, as the apiserver hands it back: nothing more to check.
        return
    total = 0
    for key, value in given.items():
        if not is_fqdn(key):
            raise FormatError(f"annotation key {_shorten(key)} is not a fully qualified domain name")
        total += len(key.encode()) + len(value)
    if total > MAX_ANNOTATIONS:
        raise FormatError(f"annotations are {total} bytes, more than {MAX_ANNOTATIONS}")
    if FORMAT_ANNOTATION not in given:
        raise FormatError(f"annotation {FORMAT_ANNOTATION} is missing: the ciphertext was not made by this plugin")
    if given[FORMAT_ANNOTATION] != FORMAT_VALUE:
        raise FormatError(
            f"annotation {FORMAT_ANNOTATION} is {_shorten(given[FORMAT_ANNOTATION])}, expected {FORMAT_VALUE.decode()}"
        )


def _shorten(value, limit=64):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def seal(aead, header, aad, plaintext):
    """Encrypt ``plaintext`` under ``aead``, the AESGCM of the key that ``header`` and ``aad`` name."""
    if not plaintext:
        raise FormatError("plaintext is empty")
    if len(plaintext) > MAX_PLAINTEXT:
        raise FormatError(f"plaintext is {len(plaintext)} bytes, more than {MAX_PLAINTEXT}")
    nonce = os.urandom(NONCE_SIZE)
    return header + nonce + aead.encrypt(nonce, plaintext, aad)


def parse(ciphertext):
    """Check the framing of ``ciphertext``; return its key slot (the 16 UUID bytes of the key that made it)."""
    if OVERHEAD < len(ciphertext) <= MAX_CIPHERTEXT and ciphertext[:len(PREFIX)] == PREFIX:
        return bytes(ciphertext[len(PREFIX):HEADER_SIZE])
    raise _framing_error(ciphertext)


def _framing_error(ciphertext):
    """Why :func:`parse` refused ``ciphertext``, checked in a fixed order."""
    if not ciphertext:
        return FormatError("ciphertext is empty")
    if len(ciphertext) > MAX_CIPHERTEXT:
        return FormatError(f"ciphertext is {len(ciphertext)} bytes, more than {MAX_CIPHERTEXT}")
    if ciphertext[:len(MAGIC)] != MAGIC:
        return FormatError("ciphertext does not start with the teapot-kms magic bytes: it was made by another plugin or is corrupt")
    if len(ciphertext) < OVERHEAD + 1:
        return FormatError(f"ciphertext is truncated: {len(ciphertext)} bytes, at least {OVERHEAD + 1} expected")
    version = ciphertext[len(MAGIC)]
    return FormatError(f"ciphertext format version {version} is not supported (this plugin reads version {FORMAT_VERSION})")


def open_sealed(aead, aad, ciphertext):
    """Decrypt a ciphertext whose framing :func:`parse` accepted; ``aad`` is its key's :func:`aad_for`."""
    try:
        return aead.decrypt(ciphertext[HEADER_SIZE:HEADER_SIZE + NONCE_SIZE], ciphertext[HEADER_SIZE + NONCE_SIZE:], aad)
    except InvalidTag:
        raise FormatError("ciphertext failed authentication: it was tampered with, truncated, or made with other key material") from None


def new_aead(material):
    """An AES-256-GCM context for a key; ``material`` must be 32 bytes."""
    if len(material) != KEY_SIZE:
        raise ValueError(f"key is {len(material) * 8} bits, an AES-256 key-encryption key needs {KEY_SIZE * 8}")
    return AESGCM(bytes(material))
