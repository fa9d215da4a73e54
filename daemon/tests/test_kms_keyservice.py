"""The key service and the ciphertext format: round trips and every malformed input class."""

import os
import threading
import time
import uuid

import pytest
import daemon_testing
from daemon_testing import FakeClock
from daemon_testing import SurprisingFetcher

from teapot_kms_plugin import keyring
from teapot_kms_plugin import proto
from teapot_kms_plugin import keyservice
from teapot_kms_plugin import wrapping

SEED = bytes(range(32))


def _refused(call, *args):
    with pytest.raises(keyservice.KmsError) as info:
        call(*args)
    return info.value


def _assert_turns_healthy(cache, ref, timeout=10.0):
    """Wait for the background refresh to make ``cache`` healthy; fail if it does not."""
    deadline = time.monotonic() + timeout
    while not cache.status()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.status() == (True, "ok", ref.key_id)


def test_round_trip_and_layout(key_service, two_keys):
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    primary = two_keys.primary_ref
    assert key_id == f"barbican:{primary.uuid}" == primary.key_id
    assert ciphertext[:3] == b"tk\x01"
    assert ciphertext[3:19] == primary.uuid.bytes
    assert len(ciphertext) == wrapping.OVERHEAD + len(SEED)
    assert annotations == {"format.kms.teapot.dev": b"1"}
    assert key_service.decrypt(ciphertext, key_id, annotations) == SEED
    # A fresh nonce every time.
    assert key_service.encrypt(SEED)[0] != ciphertext


def test_status_reports_primary(key_service, two_keys):
    assert key_service.status() == ("v2", "ok", two_keys.primary_ref.key_id)


def test_every_flipped_byte_is_rejected(key_service):
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    for index in range(len(ciphertext)):
        tampered = bytearray(ciphertext)
        tampered[index] ^= 0x01
        error = _refused(key_service.decrypt, bytes(tampered), key_id, annotations)
        assert error.code in (keyservice.INVALID_ARGUMENT, keyservice.NOT_FOUND), index
        assert str(error)


def test_every_truncation_is_rejected(key_service):
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    for length in range(len(ciphertext)):
        error = _refused(key_service.decrypt, ciphertext[:length], key_id, annotations)
        assert error.code == keyservice.INVALID_ARGUMENT
        assert any(word in str(error) for word in ("empty", "truncated", "authentication", "magic")), str(error)


@pytest.mark.parametrize("ciphertext, message", [
    (b"", "ciphertext is empty"),
    (b"tk\x01" + bytes(2000), "more than 1024"),
    (os.urandom(12) + os.urandom(48), "magic"),
    (b"tk\x02" + bytes(60), "format version 2 is not supported"),
    (b"tk\x01" + bytes(20), "truncated"),
])
def test_malformed_ciphertexts(key_service, ciphertext, message):
    key_id = key_service.status()[2]
    error = _refused(key_service.decrypt, ciphertext, key_id, wrapping.annotations())
    assert error.code == keyservice.INVALID_ARGUMENT
    assert message in str(error)


def test_key_id_must_match_ciphertext(key_service, two_keys):
    ciphertext, _key_id, annotations = key_service.encrypt(SEED)
    other = two_keys.refs[1].key_id
    error = _refused(key_service.decrypt, ciphertext, other, annotations)
    assert error.code == keyservice.INVALID_ARGUMENT and "does not match" in str(error)
    error = _refused(key_service.decrypt, ciphertext, "", annotations)
    assert "key_id is empty" in str(error)
    error = _refused(key_service.decrypt, ciphertext, "k" * 2000, annotations)
    assert "more than 1024" in str(error)


def test_slot_swapped_to_other_key_fails_authentication(key_service, two_keys):
    ciphertext, _key_id, annotations = key_service.encrypt(SEED)
    other = two_keys.refs[1]
    forged = ciphertext[:3] + other.uuid.bytes + ciphertext[19:]
    error = _refused(key_service.decrypt, forged, other.key_id, annotations)
    assert error.code == keyservice.INVALID_ARGUMENT and "authentication" in str(error)


def test_unknown_key_is_named(key_service):
    ciphertext, _key_id, annotations = key_service.encrypt(SEED)
    stranger = uuid.uuid4()
    forged = ciphertext[:3] + stranger.bytes + ciphertext[19:]
    error = _refused(key_service.decrypt, forged, f"barbican:{stranger}", annotations)
    assert error.code == keyservice.NOT_FOUND
    assert f"barbican:{stranger}" in str(error) and "not in the keyring" in str(error)


@pytest.mark.parametrize("annotations, message", [
    ({}, "is missing"),
    ({"format.kms.teapot.dev": b"2"}, "expected 1"),
    ({"format.kms.teapot.dev": b"1", "NotAnFQDN": b"x"}, "not a fully qualified domain name"),
    ({"format.kms.teapot.dev": b"1", "single": b"x"}, "not a fully qualified domain name"),
    ({"format.kms.teapot.dev": b"1", "big.example.com": bytes(40000)}, "more than 32768"),
])
def test_annotations_are_checked(key_service, annotations, message):
    ciphertext, key_id, _annotations = key_service.encrypt(SEED)
    error = _refused(key_service.decrypt, ciphertext, key_id, annotations)
    assert error.code == keyservice.INVALID_ARGUMENT and message in str(error)


def test_foreign_annotations_are_accepted(key_service):
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    annotations = dict(annotations, **{"other.example.com": b"kept"})
    assert key_service.decrypt(ciphertext, key_id, annotations) == SEED


@pytest.mark.parametrize("plaintext, message", [(b"", "empty"), (bytes(978), "more than 977")])
def test_encrypt_rejects_bad_plaintext(key_service, plaintext, message):
    error = _refused(key_service.encrypt, plaintext)
    assert error.code == keyservice.INVALID_ARGUMENT and message in str(error)


def test_largest_plaintext_fits_the_apiserver_limit(key_service):
    ciphertext, key_id, annotations = key_service.encrypt(bytes(wrapping.MAX_PLAINTEXT))
    assert len(ciphertext) == 1024
    assert key_service.decrypt(ciphertext, key_id, annotations) == bytes(wrapping.MAX_PLAINTEXT)


def test_rotation_keeps_old_ciphertexts(fetcher, two_keys):
    key_service = keyservice.KeyService(two_keys)
    old_ciphertext, old_key_id, annotations = key_service.encrypt(SEED)
    newest = fetcher.add()
    two_keys.replace([newest] + list(two_keys.refs), fetcher)
    assert key_service.status() == ("v2", "ok", newest.key_id)
    new_ciphertext, new_key_id, _annotations = key_service.encrypt(SEED)
    assert new_key_id == newest.key_id != old_key_id
    assert key_service.decrypt(old_ciphertext, old_key_id, annotations) == SEED
    assert key_service.decrypt(new_ciphertext, new_key_id, annotations) == SEED
    # Dropping the old key: its ciphertexts now name it as unknown.
    two_keys.replace([newest], fetcher)
    error = _refused(key_service.decrypt, old_ciphertext, old_key_id, annotations)
    assert error.code == keyservice.NOT_FOUND and old_key_id in str(error)


def test_replace_keeps_old_ring_when_new_primary_fails(fetcher, two_keys):
    missing = keyring.KeyRef.parse(str(uuid.uuid4()))
    before = two_keys.refs
    with pytest.raises(keyring.KeyUnavailable, match=missing.key_id):
        two_keys.replace([missing] + list(before), fetcher)
    assert two_keys.refs == before
    assert two_keys.status()[0]


def test_reload_is_refused_unless_every_key_loads(fetcher, two_keys):
    """A decrypt-only key the new config names but Barbican cannot give: nothing changes."""
    missing = keyring.KeyRef.parse(str(uuid.uuid4()))
    before = two_keys.refs
    newest = fetcher.add()
    with pytest.raises(keyring.KeyUnavailable, match=missing.key_id):
        two_keys.replace([newest, missing] + list(before), fetcher)
    assert two_keys.refs == before and two_keys.primary_ref != newest


def test_refused_reload_keeps_the_running_fetcher(fetcher, two_keys):
    """New credentials that cannot read the keys are not adopted for later refreshes either."""
    wrong_credentials = daemon_testing.DictFetcher()
    wrong_credentials.fail = "401 Unauthorized"
    with pytest.raises(keyring.KeyUnavailable, match="401"):
        two_keys.replace(list(two_keys.refs), wrong_credentials)
    assert two_keys.fetcher is fetcher
    assert two_keys.refresh() == {}


def test_states_report_every_key(fetcher):
    clock = FakeClock()
    primary, older = fetcher.add(), fetcher.add()
    cache = keyring.KeyCache([primary, older], fetcher, refresh_interval=10, max_stale=100, clock=clock)
    del fetcher.material[older.uuid]
    cache.refresh()
    clock.now += 7
    loaded, missing = cache.states()
    assert loaded == (primary.key_id, "primary", True, 7.0, "none", False, "barbican")
    assert missing.key_id == older.key_id and missing.role == "decrypt-only" and not missing.loaded
    assert missing.age_seconds is None and "no secret" in missing.last_error
    # Status stays tied to the primary alone (see docs/kms-plugin.md, "Health").
    assert cache.status().healthy


def test_eviction_never_drops_a_key_refreshed_meanwhile(fetcher):
    """A reader that judged the old material stale must not drop the material a refresh just stored."""
    ref = fetcher.add()

    class RefreshingClock(FakeClock):
        refresh_on_next_read = False

        def __call__(self):
            if self.refresh_on_next_read:
                self.refresh_on_next_read = False
                assert cache.refresh() == {}
            return self.now

    clock = RefreshingClock()
    cache = keyring.KeyCache([ref], fetcher, refresh_interval=10, max_stale=100, clock=clock)
    assert cache.refresh() == {}
    clock.now += 101
    # The reader reads the old material, then the clock: the refresh lands in between.
    clock.refresh_on_next_read = True
    with pytest.raises(keyring.KeyUnavailable, match="stale"):
        cache.primary()
    assert cache.primary().ref == ref
    assert cache.status().healthy


def test_wrong_key_size_is_explained(fetcher):
    short = fetcher.add(os.urandom(16))
    cache = keyring.KeyCache([short], fetcher, refresh_interval=300, max_stale=3600)
    errors = cache.refresh()
    assert "128 bits" in errors[short.key_id] and "256" in errors[short.key_id]
    healthy, healthz, _reason = cache.status()
    assert not healthy and "128 bits" in healthz


def test_staleness_rule(fetcher):
    clock = FakeClock()
    ref = fetcher.add()
    cache = keyring.KeyCache([ref], fetcher, refresh_interval=10, max_stale=100, clock=clock)
    assert cache.refresh() == {}
    key_service = keyservice.KeyService(cache)
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    fetcher.fail = "cannot connect: Barbican is down"
    clock.now += 50
    assert cache.refresh() == {ref.key_id: "cannot connect: Barbican is down"}
    # Within max_stale: still healthy and serving from cache.
    assert key_service.status()[1] == "ok"
    assert key_service.decrypt(ciphertext, key_id, annotations) == SEED
    clock.now += 51
    _version, healthz, reported = key_service.status()
    assert reported == ref.key_id
    assert "stale" in healthz and "max_stale 100s" in healthz and "Barbican is down" in healthz
    assert _refused(key_service.encrypt, SEED).code == keyservice.UNAVAILABLE
    assert _refused(key_service.decrypt, ciphertext, key_id, annotations).code == keyservice.UNAVAILABLE
    # Barbican back: the next refresh restores service.
    fetcher.fail = None
    assert cache.refresh() == {}
    assert key_service.status()[1] == "ok"
    assert key_service.decrypt(ciphertext, key_id, annotations) == SEED


def test_not_loaded_at_start_reports_reason(fetcher):
    fetcher.fail = "cannot connect: connection refused"
    ref = fetcher.add()
    cache = keyring.KeyCache([ref], fetcher, refresh_interval=10, max_stale=100)
    assert ref.key_id in cache.refresh()
    healthy, healthz, key_id = cache.status()
    assert not healthy and key_id == ref.key_id
    assert "not loaded" in healthz and "connection refused" in healthz


def test_background_refresh_retries_until_loaded(fetcher):
    fetcher.fail = "cannot connect"
    ref = fetcher.add()
    cache = keyring.KeyCache([ref], fetcher, refresh_interval=5, max_stale=100, retry_interval=0.05)
    cache.refresh()
    cache.start()
    try:
        fetcher.fail = None
        _assert_turns_healthy(cache, ref)
    finally:
        cache.stop()


@pytest.mark.parametrize("text", [
    "not-a-uuid", "http://example/v1/orders/0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10", "ftp://h/v1/secrets/0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10", "", 5,
])
def test_key_ref_rejects(text):
    with pytest.raises(ValueError):
        keyring.KeyRef.parse(text)


def test_key_ref_accepts_uuid_and_href():
    plain = keyring.KeyRef.parse("0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10")
    href = keyring.KeyRef.parse("https://kms.example:9311/v1/secrets/0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10")
    assert plain.key_id == href.key_id == "barbican:0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10"
    assert href.ref.startswith("https://")


def test_key_ref_precomputes_what_the_rpc_path_needs():
    ref = keyring.KeyRef.parse("0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10")
    assert ref.slot == ref.uuid.bytes
    assert ref.header == b"tk\x01" + ref.uuid.bytes
    assert ref.aad == ref.header + b"barbican:0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10"
    assert wrapping.key_id_for_slot(ref.slot) == ref.key_id
    # Derived fields take no part in equality: the same secret is the same key.
    assert ref == keyring.KeyRef(ref.uuid, ref.ref)


def test_layout_is_bound_to_header_and_key_id(key_service, two_keys):
    ciphertext, _key_id, _annotations = key_service.encrypt(SEED)
    ref, aead = two_keys.primary()
    nonce, body = ciphertext[19:31], ciphertext[31:]
    # The documented associated data, built by hand, opens it; anything else does not.
    assert aead.decrypt(nonce, body, b"tk\x01" + ref.uuid.bytes + f"barbican:{ref.uuid}".encode()) == SEED
    with pytest.raises(wrapping.FormatError, match="authentication"):
        wrapping.open_sealed(aead, b"tk\x01" + ref.uuid.bytes, ciphertext)


@pytest.mark.parametrize("annotations", [
    {"format.kms.teapot.dev": b"1"},
    {"format.kms.teapot.dev": b"1", "other.example.com": b"x"},
])
def test_annotation_fast_path_agrees_with_full_check(annotations):
    wrapping.check_annotations(annotations)
    wrapping.check_annotations(proto.DecryptRequest(annotations=annotations).annotations)


@pytest.mark.parametrize("annotations, message", [
    ({"format.kms.teapot.dev": b"2"}, "expected 1"),
    ({"Format.kms.teapot.dev": b"1"}, "not a fully qualified domain name"),
    ({"format.kms.teapot.dev.": b"1"}, "not a fully qualified domain name"),
    ({"other.example.com": b"1"}, "is missing"),
])
def test_protobuf_map_annotations_are_checked(annotations, message):
    request = proto.DecryptRequest(annotations=annotations)
    with pytest.raises(wrapping.FormatError, match=message):
        wrapping.check_annotations(request.annotations)


def test_wrong_key_id_is_reported_before_the_key_state(fetcher):
    clock = FakeClock()
    ref, other = fetcher.add(), fetcher.add()
    cache = keyring.KeyCache([ref, other], fetcher, refresh_interval=10, max_stale=100, clock=clock)
    assert cache.refresh() == {}
    key_service = keyservice.KeyService(cache)
    ciphertext, key_id, annotations = key_service.encrypt(SEED)
    clock.now += 101
    # Stale: the right key_id gets UNAVAILABLE, a wrong one INVALID_ARGUMENT as when fresh.
    assert _refused(key_service.decrypt, ciphertext, other.key_id, annotations).code == keyservice.INVALID_ARGUMENT
    assert _refused(key_service.decrypt, ciphertext, key_id, annotations).code == keyservice.UNAVAILABLE
    # Unknown slot with a key_id that is not its own: INVALID_ARGUMENT, not NOT_FOUND.
    stranger = uuid.uuid4()
    forged = ciphertext[:3] + stranger.bytes + ciphertext[19:]
    error = _refused(key_service.decrypt, forged, key_id, annotations)
    assert error.code == keyservice.INVALID_ARGUMENT and f"barbican:{stranger}" in str(error)


def test_framing_errors_come_in_a_fixed_order():
    assert "magic" in str(_framing(b"xx\x02"))
    assert "truncated" in str(_framing(b"tk\x02" + bytes(10)))
    assert "version 2" in str(_framing(b"tk\x02" + bytes(60)))
    assert "more than 1024" in str(_framing(b"xx" + bytes(2000)))
    assert wrapping.parse(bytearray(b"tk\x01" + bytes(16) + bytes(29))) == bytes(16)


def _framing(ciphertext):
    with pytest.raises(wrapping.FormatError) as info:
        wrapping.parse(ciphertext)
    return info.value


def test_unexpected_fetch_error_is_reported_by_type_only(fetcher):
    ref = fetcher.add()
    cache = keyring.KeyCache([ref], SurprisingFetcher(fetcher, 1), refresh_interval=10, max_stale=100)
    errors = cache.refresh()
    assert errors == {ref.key_id: f"fetching secret {ref.ref} failed: unexpected TypeError"}
    healthy, healthz, _key_id = cache.status()
    assert not healthy and "TypeError" in healthz and "secret-material" not in healthz


def test_background_refresh_survives_a_surprise(fetcher):
    ref = fetcher.add()
    cache = keyring.KeyCache([ref], SurprisingFetcher(fetcher, 3), refresh_interval=5, max_stale=100, retry_interval=0.02)
    cache.refresh()
    cache.start()
    try:
        _assert_turns_healthy(cache, ref)
    finally:
        cache.stop()


def test_results_are_named(key_service, two_keys):
    made = key_service.encrypt(SEED)
    assert made.key_id == two_keys.primary_ref.key_id and made.annotations == wrapping.annotations()
    assert key_service.decrypt(made.ciphertext, made.key_id, made.annotations) == SEED
    answer = key_service.status()
    assert (answer.version, answer.healthz, answer.key_id) == ("v2", "ok", made.key_id)
    state = two_keys.status()
    assert state.healthy and state.key_id == made.key_id
    assert two_keys.primary().ref == two_keys.primary_ref


def test_stop_does_not_wait_for_a_hung_fetch(fetcher):
    """A refresh stuck on Barbican must not hold the shutdown past the unit's TimeoutStopSec."""
    release = threading.Event()
    entered = threading.Event()

    def hanging(ref):
        entered.set()
        release.wait(120)
        return fetcher(ref)

    ref = fetcher.add()
    cache = keyring.KeyCache([ref], hanging, refresh_interval=5, max_stale=100)
    cache.start()
    try:
        assert entered.wait(30)
        cache.stop(timeout=0.2)
        # stop returned while the fetch is still hanging.
        assert not release.is_set()
    finally:
        release.set()
