"""Fuzzing Decrypt: any input gets a documented error code and a message, never a crash or a hang.

``TEAPOT_KMS_FUZZ_EXAMPLES`` sets the number of examples (default 300 in
process, a third of it through the socket); a long run is e.g.
``TEAPOT_KMS_FUZZ_EXAMPLES=200000``.
"""

import os

import grpc
from hypothesis import HealthCheck, given, settings, strategies as st

from teapot_kms_plugin import keyservice
from teapot_kms_plugin import wrapping

EXAMPLES = int(os.environ.get("TEAPOT_KMS_FUZZ_EXAMPLES", "300"))
ALLOWED = {keyservice.INVALID_ARGUMENT, keyservice.NOT_FOUND}
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
_fqdn = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?){1,3}", fullmatch=True)


@st.composite
def near_miss_ciphertexts(draw, valid):
    """Valid ciphertexts mutated: flips, cuts, splices, extensions."""
    data = bytearray(draw(st.sampled_from(valid)))
    for _entry in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "extend", "splice"]))
        if action == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= draw(st.integers(1, 255))
        elif action == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif action == "extend":
            data += draw(st.binary(min_size=1, max_size=1100))
        elif data:
            index = draw(st.integers(0, len(data)))
            data[index:index] = draw(st.binary(max_size=40))
    return bytes(data)


def _inputs(valid, key_ids):
    ciphertexts = st.one_of(st.binary(max_size=1200), near_miss_ciphertexts(valid),
                            st.builds(lambda tail: b"tk\x01" + tail, st.binary(max_size=120)))
    key_id = st.one_of(st.sampled_from(key_ids), st.text(max_size=60), st.text(min_size=1000, max_size=1100))
    annotation_key = st.one_of(_fqdn, st.text(max_size=30), st.just(wrapping.FORMAT_ANNOTATION))
    annotations = st.dictionaries(annotation_key, st.binary(max_size=64), max_size=4)
    return st.tuples(ciphertexts, key_id, annotations, st.text(max_size=64))


def _valid_material(key_service, count=8):
    made = [key_service.encrypt(os.urandom(32)) for _made in range(count)]
    return [ciphertext for ciphertext, _k, _a in made], sorted({key_id for _c, key_id, _a in made})


def test_fuzz_decrypt_in_process(key_service, two_keys):
    valid, key_ids = _valid_material(key_service)
    key_ids.append(two_keys.refs[1].key_id)

    @FUZZ_SETTINGS
    @given(_inputs(valid, key_ids))
    def check(case):
        ciphertext, key_id, annotations, _uid = case
        try:
            plaintext = key_service.decrypt(ciphertext, key_id, annotations)
        except keyservice.KmsError as exc:
            assert exc.code in ALLOWED, (exc.code, str(exc))
            assert str(exc) and "\n" not in str(exc)
        else:
            # Only an untouched ciphertext may decrypt.
            assert ciphertext in valid and len(plaintext) == 32

    check()


def test_fuzz_decrypt_through_socket(socket_server):
    _path, client, key_service = socket_server
    valid, key_ids = _valid_material(key_service, 4)

    @settings(FUZZ_SETTINGS, max_examples=max(20, EXAMPLES // 3))
    @given(_inputs(valid, key_ids))
    def check(case):
        ciphertext, key_id, annotations, uid = case
        try:
            response = client.decrypt(ciphertext, key_id, annotations, uid=uid)
        except grpc.RpcError as exc:
            assert exc.code().name in ALLOWED, (exc.code(), exc.details())
            assert exc.details()
        else:
            assert ciphertext in valid and len(response.plaintext) == 32

    check()
    assert client.status().healthz == "ok"
