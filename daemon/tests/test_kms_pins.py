"""Key pinning: other bytes under a known secret UUID are refused, said loudly, and never shown."""

import json
import logging
import os
import stat

import prometheus_client
import pytest

from teapot_kms_plugin import keyring
from teapot_kms_plugin import keyservice
from teapot_kms_plugin import metrics as metrics_module
from teapot_kms_plugin import pins

SEED = bytes(range(32))


def _cache(fetcher, refs, state_dir, metrics=None):
    return keyring.KeyCache(refs, fetcher, refresh_interval=10, max_stale=100, metrics=metrics,
                            key_pins=pins.open_pins(str(state_dir)))


def test_check_value_identifies_without_revealing():
    material = os.urandom(32)
    value = pins.check_value(material)
    assert value == pins.check_value(material) != pins.check_value(os.urandom(32))
    assert len(value) == 32 and material.hex() not in value


def test_substituted_material_is_refused_and_reported(fetcher, tmp_path, caplog):
    primary, older = fetcher.add(), fetcher.add()
    state_dir = tmp_path / "state"
    cache = _cache(fetcher, [primary, older], state_dir)
    assert cache.refresh() == {}
    pin_file = state_dir / pins.PINS_FILE
    assert stat.S_IMODE(os.stat(pin_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    recorded = json.loads(pin_file.read_text())
    assert set(recorded) == {primary.key_id, older.key_id}
    key_service = keyservice.KeyService(cache)
    sealed = key_service.encrypt(SEED)

    # A restore gone wrong: the same UUID now returns other bytes.
    substitute = os.urandom(32)
    fetcher.material[primary.uuid] = substitute
    with caplog.at_level(logging.ERROR):
        errors = cache.refresh()
    assert "different key material" in errors[primary.key_id] and str(pin_file) in errors[primary.key_id]
    # The pinned material keeps serving (until max_stale); the substitute is never used.
    assert key_service.decrypt(sealed.ciphertext, sealed.key_id, sealed.annotations) == SEED
    state = cache.states()[0]
    assert state.pin_mismatch and "different key material" in state.last_error
    logged = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert logged and all(substitute.hex() not in record.getMessage() + str(record.__dict__) for record in logged)
    assert json.loads(pin_file.read_text()) == recorded

    # After a restart the substitute never loads at all, and the metrics say why.
    metrics = metrics_module.Metrics(lambda: restarted)
    restarted = _cache(fetcher, [primary, older], state_dir, metrics)
    assert primary.key_id in restarted.refresh()
    status = restarted.status()
    assert not status.healthy and "different key material" in status.healthz
    registry = metrics.registry
    assert registry.get_sample_value("teapot_kms_key_pin_mismatch", {"key_id": primary.key_id}) == 1
    assert registry.get_sample_value("teapot_kms_key_pin_mismatch", {"key_id": older.key_id}) == 0
    assert registry.get_sample_value("teapot_kms_barbican_fetch_errors_total", {"reason": "pin_mismatch"}) == 1
    text = prometheus_client.generate_latest(registry).decode()
    assert substitute.hex() not in text


def test_reload_with_substituted_material_is_refused(fetcher, tmp_path):
    ref = fetcher.add()
    cache = _cache(fetcher, [ref], tmp_path / "state")
    assert cache.refresh() == {}
    fetcher.material[ref.uuid] = os.urandom(32)
    with pytest.raises(keyring.KeyUnavailable, match="different key material"):
        cache.replace([ref], fetcher)


def test_unreadable_pin_file_refuses_to_start(tmp_path):
    (tmp_path / pins.PINS_FILE).write_text("{not json")
    with pytest.raises(pins.PinStoreError, match="not valid JSON"):
        pins.open_pins(str(tmp_path))
