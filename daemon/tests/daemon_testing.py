"""Test doubles for the key source: key bytes from a dict, a clock moved by hand.

Only the service-free tests use them; tests/integration fetches from Barbican.
"""

import os
import uuid

from teapot_kms_plugin import keyring


class DictFetcher:
    """Serves key bytes from a dict; ``fail`` makes every fetch fail like an unreachable Barbican."""

    def __init__(self):
        self.material = {}
        self.fail = None
        self.calls = 0

    def add(self, material=None):
        secret_uuid = uuid.uuid4()
        self.material[secret_uuid] = material if material is not None else os.urandom(32)
        return keyring.KeyRef.parse(str(secret_uuid))

    def __call__(self, ref):
        self.calls += 1
        if self.fail:
            raise keyring.FetchError(self.fail, "unreachable")
        try:
            return self.material[ref.uuid]
        except KeyError:
            raise keyring.FetchError(f"no secret {ref.uuid}", "not_found") from None


class SurprisingFetcher:
    """Raises what no fetcher should (a bug, not a Barbican error), quoting a secret, then recovers."""

    def __init__(self, inner, failures):
        self.inner = inner
        self.failures = failures

    def __call__(self, ref):
        if self.failures:
            self.failures -= 1
            raise TypeError("secret-material-89ab")
        return self.inner(ref)


class FakeClock:
    """A monotonic clock the test moves by hand, for staleness rules."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now
