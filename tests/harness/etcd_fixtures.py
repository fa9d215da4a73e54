"""The raw etcd values a real kube-apiserver wrote (``../shared/fixtures/etcd``), and the arithmetic to open them.

The decryption here proves, in tests, that a parser split a stored value at
the right places: it follows the fixtures' README (the apiserver's formats and
the capture's test plugin, which wrapped with AES-256-GCM under a published
test KEK).  The collection itself never decrypts a stored value.
"""

import base64
import json
import os
import pathlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.padding import PKCS7

from tests.harness.playbook import REPO

FIXTURES_DIR = pathlib.Path(os.environ.get("TEAPOT_KMS_ETCD_FIXTURES") or REPO.parent / "shared" / "fixtures" / "etcd")
GCM_NONCE = 12
KMS_V2_INFO = 32


def load_fixtures():
    """Every fixture as its JSON dict plus ``value`` (the stored bytes) and ``file``, sorted by file name."""
    files = sorted(FIXTURES_DIR.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no etcd fixtures in {FIXTURES_DIR}: set TEAPOT_KMS_ETCD_FIXTURES to their directory")
    fixtures = []
    for path in files:
        fixture = json.loads(path.read_text(encoding="utf-8"))
        fixture["value"] = base64.b64decode(fixture["value_b64"])
        fixture["file"] = path.name
        fixtures.append(fixture)
    return fixtures


def _gcm_open(key, blob, aad):
    """AES-GCM open of nonce(12) || ciphertext || tag(16)."""
    return AESGCM(key).decrypt(blob[:GCM_NONCE], blob[GCM_NONCE:], aad)


def unwrap_with_test_kek(kek_hex, wrapped):
    """What the capture's test KMS plugin's Decrypt returned: AES-256-GCM, no additional data."""
    return _gcm_open(bytes.fromhex(kek_hex), wrapped, None)


def kms_v2_decrypt(encrypted_data, seed, etcd_key):
    """Open a KMS v2 encryptedData of source type 1: info(32) || nonce(12) || ciphertext || tag under HKDF-Expand(seed, info)."""
    info = encrypted_data[:KMS_V2_INFO]
    data_key = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(seed)
    return _gcm_open(data_key, encrypted_data[KMS_V2_INFO:], etcd_key.encode("utf-8"))


def kms_v1_decrypt(ciphertext, dek, etcd_key):
    """Open a KMS v1 payload (after the DEK): nonce(12) || ciphertext || tag, the etcd key as additional data."""
    return _gcm_open(dek, ciphertext, etcd_key.encode("utf-8"))


def aesgcm_decrypt(ciphertext, key, etcd_key):
    return _gcm_open(key, ciphertext, etcd_key.encode("utf-8"))


def aescbc_decrypt(ciphertext, key):
    """IV(16) || AES-CBC with PKCS#7 padding; no additional data."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(ciphertext[:16])).decryptor()
    padded = decryptor.update(ciphertext[16:]) + decryptor.finalize()
    unpadder = PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()
