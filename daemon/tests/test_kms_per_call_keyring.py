"""The benchmark's per-call keyring (bench/kms_per_call_plugin.py) behind the key service, and the
Keyring protocol that it and the shipped KeyCache both declare."""

import inspect
import pathlib
import sys

import pytest
from daemon_testing import SurprisingFetcher

from teapot_kms_plugin import keyring
from teapot_kms_plugin import keyservice

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
import kms_per_call_plugin  # noqa: E402  pylint: disable=wrong-import-position,import-error

SEED = bytes(range(32))
PROTOCOL_MEMBERS = sorted(name for name in vars(keyring.Keyring) if not name.startswith("_"))


@pytest.mark.parametrize("implementation", [keyring.KeyCache, kms_per_call_plugin.PerCallKeys])
def test_keyrings_declare_and_implement_the_protocol(implementation):
    assert keyring.Keyring in implementation.__mro__
    assert {"primary", "key", "status", "replace", "set_timings", "refs"} <= set(PROTOCOL_MEMBERS)
    for name in PROTOCOL_MEMBERS:
        # Inherited from the protocol means not implemented: its bodies return None.
        assert inspect.getattr_static(implementation, name) is not vars(keyring.Keyring)[name], name


def test_per_call_mode_fetches_every_time(fetcher):
    ref = fetcher.add()
    keys = kms_per_call_plugin.PerCallKeys([ref], fetcher)
    key_service = keyservice.KeyService(keys)
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    before = fetcher.calls
    assert key_service.decrypt(ciphertext, key_id, annotations) == SEED
    assert fetcher.calls == before + 1


def test_unexpected_fetch_error_is_reported_by_type_only(fetcher):
    ref = fetcher.add()
    per_call = kms_per_call_plugin.PerCallKeys([ref], SurprisingFetcher(fetcher, 1))
    with pytest.raises(keyservice.KmsError) as info:
        keyservice.KeyService(per_call).encrypt(SEED)
    error = info.value
    assert error.code == keyservice.UNAVAILABLE and "TypeError" in str(error) and "secret-material" not in str(error)
