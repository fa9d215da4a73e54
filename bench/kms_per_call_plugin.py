"""The KMS plugin with a keyring that fetches the key from Barbican on every call.

This is the design of the upstream plugin, kept here only to measure against:
every RPC then depends on Barbican and Keystone, which the shipped plugin never
does.  Run with the plugin's venv, like ``teapot-kms-plugin``::

    VENV/bin/python bench/kms_per_call_plugin.py serve --config PATH
"""

import sys

from teapot_kms_plugin import cli
from teapot_kms_plugin import keyring
from teapot_kms_plugin import wrapping


class PerCallKeys(keyring.Keyring):
    """Fetch the key on every call; nothing is kept but the last error, for Status."""

    def __init__(self, refs, fetch, metrics=None):
        self._refs = tuple(refs)
        self._fetch = fetch
        self._metrics = metrics
        self._last_error = None

    @property
    def primary_ref(self):
        return self._refs[0]

    @property
    def refs(self):
        return self._refs

    def _load(self, ref):
        try:
            aead = keyring.load_aead(self._fetch, ref, self._metrics)
        except keyring.KeyLoadFailed as exc:
            self._last_error = str(exc)
            if exc.fetch_failed:
                raise keyring.KeyUnavailable(f"key {ref.key_id} could not be fetched: {exc}") from None
            raise keyring.KeyUnavailable(str(exc)) from None
        self._last_error = None
        return keyring.LoadedKey(ref, aead)

    def primary(self):
        return self._load(self._refs[0])

    def key(self, key_slot):
        for ref in self._refs:
            if ref.slot == key_slot:
                return self._load(ref)
        raise keyring.UnknownKey(f"key_id {wrapping.key_id_for_slot(key_slot)} is not in the keyring")

    def status(self):
        if self._last_error:
            return keyring.KeyringStatus(False, self._last_error, self._refs[0].key_id)
        return keyring.KeyringStatus(True, "ok", self._refs[0].key_id)

    def ages(self):
        return {}

    def states(self):
        # Nothing is held: a key is "loaded" only in the sense that the last call could fetch it.
        return [keyring.KeyState(ref.key_id, "primary" if index == 0 else "decrypt-only", not self._last_error, None,
                                 self._last_error or "none")
                for index, ref in enumerate(self._refs)]

    def refresh(self):
        return {}

    def replace(self, refs, fetch):
        self._refs = tuple(refs)
        self._fetch = fetch

    @property
    def fetcher(self):
        return self._fetch

    def set_timings(self, refresh_interval, max_stale, retry_interval):
        """No cache, no timings."""

    def start(self):
        """Nothing runs in the background."""

    def stop(self, timeout=2.0):
        """Nothing runs in the background."""


def per_call_keyring(cfg, fetch, metrics):
    return PerCallKeys(cfg.keys, fetch, metrics=metrics)


if __name__ == "__main__":
    sys.exit(cli.main(make_keyring=per_call_keyring))
