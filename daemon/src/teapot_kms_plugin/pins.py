"""Key pinning: a check value of each key's material, recorded at first load and enforced after.

Barbican should never return other bytes under a secret UUID it already
served; if it does (a restore from the wrong backup, a substituted secret),
data sealed under the pinned material would stop decrypting and new data would
be sealed under a key nobody vetted.  The plugin refuses such material.

The check value is HMAC-SHA256 of a fixed label under the key, truncated to
128 bits: it identifies the material without revealing it (it is a MAC of a
public string, not the key), so it may sit in a state file and in messages.
"""

import json
import logging
import os
import tempfile
import threading

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac

from . import wrapping

LOG = logging.getLogger(__name__)

PINS_FILE = "key-pins.json"
_LABEL = b"teapot-kms key check value v1"


class PinStoreError(Exception):
    """The pin file exists but cannot be read or parsed; the message says what to fix."""


class PinMismatch(Exception):
    """Barbican returned material other than the pinned one; the message names the key and the file."""


def check_value(material):
    """The key check value of ``material``: hex of HMAC-SHA256(material, label), first 16 bytes."""
    mac = hmac.HMAC(material, hashes.SHA256())
    mac.update(_LABEL)
    return mac.finalize()[:16].hex()


class KeyPins:
    """The pins of one plugin, kept in ``state_dir/key-pins.json`` ({key_id: check value})."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, PINS_FILE)
        self._lock = threading.Lock()
        self._pins = self._read()

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as handle:
                pins = json.load(handle)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PinStoreError(f"{self.path}: cannot read the key pins: {exc.strerror}") from None
        except ValueError:
            raise PinStoreError(f"{self.path}: the key pins are not valid JSON; restore the file from a backup "
                                "(removing it re-pins whatever Barbican returns next)") from None
        if not isinstance(pins, dict) or not all(isinstance(value, str) for value in pins.values()):
            raise PinStoreError(f"{self.path}: expected a JSON object of key_id: check value")
        return pins

    def verify(self, key_id, material):
        """Pin ``material`` under ``key_id`` on first sight; raise PinMismatch when it differs from the pin."""
        value = check_value(material)
        with self._lock:
            pinned = self._pins.get(key_id)
            if pinned is None:
                self._pins[key_id] = value
                self._write()
                return
        if pinned != value:
            source, original = (("Barbican", "the original secret in Barbican") if wrapping.source_of(key_id) == "barbican"
                                else ("The Kubernetes Secret", "the field's original value in the Secret"))
            raise PinMismatch(
                f"{source} returned different key material for {key_id} than the material pinned at its first load "
                f"(check value {value}, pinned {pinned}): refusing it. Restore {original}; only if "
                f"the change is intended and no data depends on the old material, remove {key_id} from {self.path}")

    def _write(self):
        directory = os.path.dirname(self.path)
        try:
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=".key-pins-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._pins, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            # The pin still holds for this process; a restart would pin afresh.
            LOG.error("cannot save the key pins; they hold only until the plugin restarts",
                      extra={"path": self.path, "error": exc.strerror or type(exc).__name__})


def open_pins(state_dir):
    """The pins kept in ``state_dir``, created (0700) if missing; PinStoreError when unusable."""
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise PinStoreError(f"state_dir: cannot create {state_dir}: {exc.strerror}") from None
    return KeyPins(state_dir)
