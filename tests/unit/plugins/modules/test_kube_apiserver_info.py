"""teapot.kms.kube_apiserver_info: what identifies a running kube-apiserver, from its metrics of several releases."""

import pytest

from ansible_collections.teapot.kms.plugins.modules import kube_apiserver_info as info
from tests.harness.pki import TestCA
from tests.harness.procs import free_port

HASH_A = "sha256:" + "a" * 64
HASH_B = "sha256:" + "b" * 64

# As kube-apiserver 1.31 exports them: the current counter and the deprecated ones side by side.
METRICS_1_31 = """\
# HELP apiserver_encryption_config_controller_automatic_reload_success_total [ALPHA] (Deprecated since 1.30.0) ...
# TYPE apiserver_encryption_config_controller_automatic_reload_success_total counter
apiserver_encryption_config_controller_automatic_reload_success_total{apiserver_id_hash="sha256:1f"} 2
# TYPE apiserver_encryption_config_controller_automatic_reload_failure_total counter
apiserver_encryption_config_controller_automatic_reload_failure_total{apiserver_id_hash="sha256:1f"} 1
# TYPE apiserver_encryption_config_controller_automatic_reloads_total counter
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:1f",status="failure"} 1
apiserver_encryption_config_controller_automatic_reloads_total{apiserver_id_hash="sha256:1f",status="success"} 2
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.73869e+09
"""
# 1.28: only the first counters, no apiserver identity.
METRICS_1_28 = """\
apiserver_encryption_config_controller_automatic_reload_failures_total 3
apiserver_encryption_config_controller_automatic_reload_success_total 1
process_start_time_seconds 1.7e+09
"""
# 1.34: one counter and the hash of the loaded configuration.
METRICS_1_34 = f"""\
apiserver_encryption_config_controller_automatic_reloads_total{{apiserver_id_hash="sha256:1f",status="success"}} 4
apiserver_encryption_config_controller_last_config_info{{apiserver_id_hash="sha256:1f",hash="{HASH_A}"}} 1
"""


@pytest.mark.parametrize("text, expected", [
    (METRICS_1_31, {"process_start_time": 1.73869e9, "reload_success": 2, "reload_failure": 1, "config_hashes": []}),
    (METRICS_1_28, {"process_start_time": 1.7e9, "reload_success": 1, "reload_failure": 3, "config_hashes": []}),
    (METRICS_1_34, {"process_start_time": None, "reload_success": 4, "reload_failure": 0, "config_hashes": [HASH_A]}),
    ("", {"process_start_time": None, "reload_success": 0, "reload_failure": 0, "config_hashes": []}),
])
def test_parse_state(text, expected):
    assert info.parse_state(text) == dict(expected, metrics_readable=True)


def state(**changes):
    base = {"metrics_readable": True, "process_start_time": 100.0, "reload_success": 2, "reload_failure": 1,
            "config_hashes": [HASH_A]}
    return dict(base, **changes)


@pytest.mark.parametrize("now, verdict, why", [
    (state(), None, "still runs as before"),
    (state(process_start_time=200.0), "changed", "restarted"),
    (state(reload_success=0, reload_failure=0, process_start_time=None), "changed", "counters started again"),
    (state(reload_success=3), "changed", "reloaded"),
    (state(config_hashes=[HASH_B]), "changed", "loaded another"),
    (state(reload_failure=2), "rejected", "rejected the changed EncryptionConfiguration"),
    (state(metrics_readable=False), None, "cannot be read"),
])
def test_compare(now, verdict, why):
    got_verdict, got_why = info.compare(state(), now)
    assert got_verdict == verdict and why in got_why


def test_compare_without_a_readable_before_accepts_anything():
    assert info.compare(state(metrics_readable=False), state())[0] == "changed"
    assert info.compare(None, state())[0] == "changed"


def test_a_restart_is_not_taken_for_a_rejected_reload():
    # A restarted process starts its counters again: fewer successes, maybe a failure since.
    assert info.compare(state(), state(process_start_time=300.0, reload_success=0, reload_failure=2))[0] == "changed"


def test_a_url_without_https_is_refused(run_module):
    code, result = run_module(info.main, {"url": "http://127.0.0.1:6443"})
    assert code == 1 and "give https://HOST:PORT" in result["msg"]


def test_a_missing_ca_is_named(run_module, tmp_path):
    code, result = run_module(info.main, {"ca_cert": str(tmp_path / "ca.crt"), "client_cert": ""})
    assert code == 1 and f"cannot use the CA {tmp_path / 'ca.crt'}" in result["msg"]


def test_waiting_for_an_apiserver_that_is_not_there_fails_with_what_it_answered(run_module, tmp_path):
    ca = TestCA(tmp_path, "ca")
    url = f"https://127.0.0.1:{free_port()}"
    code, result = run_module(info.main, {"url": url, "ca_cert": str(ca.cert_path), "client_cert": "",
                                          "wait_healthy": True, "timeout": 2, "delay": 1})
    assert code == 1
    assert result["msg"].startswith(f"kube-apiserver at {url} is not healthy after 2 s: /readyz answered nothing: ")
    assert "ConnectionRefusedError" in result["msg"] and result["readyz"]["status"] == 0


def test_a_token_is_hidden(run_module, tmp_path):
    ca = TestCA(tmp_path, "ca")
    code, result = run_module(info.main, {"url": f"https://127.0.0.1:{free_port()}", "ca_cert": str(ca.cert_path),
                                          "client_cert": "", "token": "s3cret-token-value"})
    assert code == 0 and not result["healthy"]
    assert "s3cret-token-value" not in str(result)


def test_parse_kms_status_key_ids():
    # As kube-apiserver 1.31 exports it; other families and malformed samples are ignored.
    text = "\n".join([
        "# TYPE apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds gauge",
        'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:aa",'
        'key_id_hash="sha256:new",provider_name="teapot"} 1.7e+09',
        'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{apiserver_id_hash="sha256:aa",'
        'key_id_hash="sha256:old",provider_name="teapot"} 1.6e+09',
        'apiserver_envelope_encryption_key_id_hash_last_timestamp_seconds{key_id_hash="sha256:other",provider_name="teapot",'
        'transformation_type="to_storage",apiserver_id_hash="sha256:aa"} 1.8e+09',
        'apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds{key_id_hash="sha256:x"} NaNish',
    ])
    assert info.parse_kms_status_key_ids(text) == [
        {"provider_name": "teapot", "key_id_hash": "sha256:old", "last_seconds": 1.6e9},
        {"provider_name": "teapot", "key_id_hash": "sha256:new", "last_seconds": 1.7e9},
    ]
    assert not info.parse_kms_status_key_ids("process_start_time_seconds 1\n")
