"""The key service: Status, Encrypt and Decrypt, knowing nothing of gRPC."""

import typing

from . import keyring
from . import wrapping

API_VERSION = "v2"

# Error codes, by their gRPC names; the transport maps them.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
UNAVAILABLE = "UNAVAILABLE"


class KmsError(Exception):
    """A request the service refuses; ``code`` names the gRPC status code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class StatusResult(typing.NamedTuple):
    """The answer to Status."""

    version: str
    healthz: str
    key_id: str


class EncryptResult(typing.NamedTuple):
    """The answer to Encrypt."""

    ciphertext: bytes
    key_id: str
    annotations: "dict[str, bytes]"


class KeyService:
    """Wraps and unwraps DEK seeds with the keyring's keys."""

    def __init__(self, keys: keyring.Keyring):
        self.keys = keys

    def status(self) -> StatusResult:
        """From the keyring's state, with no remote call."""
        state = self.keys.status()
        return StatusResult(API_VERSION, state.healthz, state.key_id)

    def encrypt(self, plaintext) -> EncryptResult:
        """Wrap ``plaintext`` under the primary key."""
        if not plaintext:
            raise KmsError(INVALID_ARGUMENT, "plaintext is empty")
        if len(plaintext) > wrapping.MAX_PLAINTEXT:
            raise KmsError(INVALID_ARGUMENT, f"plaintext is {len(plaintext)} bytes, more than {wrapping.MAX_PLAINTEXT}")
        try:
            ref, aead = self.keys.primary()
        except keyring.KeyUnavailable as exc:
            raise KmsError(UNAVAILABLE, str(exc)) from None
        ciphertext = wrapping.seal(aead, ref.header, ref.aad, plaintext)
        return EncryptResult(ciphertext, ref.key_id, wrapping.annotations())

    def decrypt(self, ciphertext, key_id, annotations) -> bytes:
        """Return the plaintext of a ciphertext that Encrypt made.

        ``annotations`` is a dict or the request's protobuf map.  Checks run
        cheapest first; refusals come in this order: key_id empty or too long,
        framing, annotations, key_id not the ciphertext's, key unknown (NOT_FOUND)
        or unusable (UNAVAILABLE), authentication.
        """
        if not key_id:
            raise KmsError(INVALID_ARGUMENT, "key_id is empty")
        if len(key_id) > wrapping.MAX_KEY_ID:
            raise KmsError(INVALID_ARGUMENT, f"key_id is {len(key_id)} characters, more than {wrapping.MAX_KEY_ID}")
        try:
            key_slot = wrapping.parse(ciphertext)
            wrapping.check_annotations(annotations)
        except wrapping.FormatError as exc:
            raise KmsError(INVALID_ARGUMENT, str(exc)) from None
        try:
            ref, aead = self.keys.key(key_slot)
        except keyring.UnknownKey as exc:
            _check_slot(key_id, key_slot)
            # The key_id names the slot: it is the unknown key's own (whatever its source).
            raise KmsError(NOT_FOUND, f"key_id {key_id} is not in the keyring ({exc.known})" if exc.known else str(exc)) from None
        except keyring.KeyUnavailable as exc:
            _check_slot(key_id, key_slot)
            raise KmsError(UNAVAILABLE, str(exc)) from None
        if key_id != ref.key_id:
            _check_key_id(key_id, ref.key_id)
        try:
            return wrapping.open_sealed(aead, ref.aad, ciphertext)
        except wrapping.FormatError as exc:
            raise KmsError(INVALID_ARGUMENT, str(exc)) from None


def _check_slot(key_id, key_slot):
    if not wrapping.names_slot(key_id, key_slot):
        raise KmsError(INVALID_ARGUMENT, f"key_id {_shorten(key_id)} does not match the key that made this ciphertext "
                                         f"({wrapping.describe_slot(key_slot)})")


def _check_key_id(key_id, expected):
    if key_id != expected:
        raise KmsError(INVALID_ARGUMENT, f"key_id {_shorten(key_id)} does not match the key that made this ciphertext ({expected})")


def _shorten(text, limit=80):
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "...'"
