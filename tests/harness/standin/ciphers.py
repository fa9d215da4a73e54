"""The kube-apiserver's value ciphers, both directions, with ``cryptography`` (and PyNaCl for secretbox).

Layouts (the etcd key is the additional data where one is used):
aesgcm and KMS v1 payloads ``nonce(12) || ciphertext || tag``; aescbc
``IV(16) || AES-CBC(PKCS#7)``; secretbox ``nonce(24) || XSalsa20-Poly1305``;
KMS v2 seed mode ``info(32) || nonce(12) || ciphertext || tag`` under
``HKDF-Expand(SHA-256, seed, info)``.
"""

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.padding import PKCS7

try:
    import nacl.secret
    import nacl.exceptions
except ImportError:  # secretbox is refused with a message saying what to install
    nacl = None

NONCE = 12
INFO = 32
SEED = 32
SECRETBOX_NONCE = 24


class CipherError(ValueError):
    """A value that does not open with the key it names; the message says which layer failed."""


def gcm_seal(key, plaintext, aad):
    nonce = os.urandom(NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def gcm_open(key, blob, aad, what="AES-GCM"):
    try:
        return AESGCM(key).decrypt(blob[:NONCE], blob[NONCE:], aad)
    except Exception as exc:  # cryptography raises InvalidTag, ValueError for bad sizes
        raise CipherError(f"{what}: the data does not authenticate ({type(exc).__name__})") from None


def seed_data_key(seed, info):
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(seed)


def kms_v2_seal(seed, plaintext, aad):
    """A fresh info, hence a fresh data key, for every write."""
    info = os.urandom(INFO)
    return info + gcm_seal(seed_data_key(seed, info), plaintext, aad)


def kms_v2_open(seed, encrypted_data, aad):
    if len(encrypted_data) < INFO + NONCE + 16:
        raise CipherError(f"KMS v2 encryptedData of {len(encrypted_data)} bytes is too short for info, nonce and tag")
    return gcm_open(seed_data_key(seed, encrypted_data[:INFO]), encrypted_data[INFO:], aad, "KMS v2 AES-GCM")


def cbc_seal(key, plaintext):
    padder = PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def cbc_open(key, blob):
    try:
        decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).decryptor()
        padded = decryptor.update(blob[16:]) + decryptor.finalize()
        unpadder = PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CipherError("AES-CBC: bad padding (wrong key or damaged value)") from None


def _secretbox(key):
    if nacl is None:
        raise CipherError("secretbox needs PyNaCl, which is not installed for this Python: pip install pynacl")
    return nacl.secret.SecretBox(key)


def secretbox_seal(key, plaintext):
    nonce = os.urandom(SECRETBOX_NONCE)
    return nonce + _secretbox(key).encrypt(plaintext, nonce).ciphertext


def secretbox_open(key, blob):
    box = _secretbox(key)
    try:
        return box.decrypt(blob[SECRETBOX_NONCE:], blob[:SECRETBOX_NONCE])
    except nacl.exceptions.CryptoError:
        raise CipherError("secretbox: the data does not authenticate") from None
