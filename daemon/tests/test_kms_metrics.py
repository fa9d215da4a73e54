"""Metrics: RPC timings recorded off the RPC path still show in every scrape, exactly."""

import threading

import prometheus_client

from teapot_kms_plugin import metrics as metrics_module


def _count(registry, method, code):
    return registry.get_sample_value("teapot_kms_rpc_duration_seconds_count", {"method": method, "code": code})


def test_scrape_sees_every_rpc(two_keys):
    metrics = metrics_module.Metrics(lambda: two_keys)
    for _call in range(3):
        metrics.observe_rpc("Decrypt", "OK", 0.0002)
    metrics.observe_rpc("Decrypt", "INVALID_ARGUMENT", 0.00005)
    text = prometheus_client.generate_latest(metrics.registry).decode()
    assert 'teapot_kms_rpc_duration_seconds_count{code="OK",method="Decrypt"} 3.0' in text
    assert 'teapot_kms_rpc_duration_seconds_bucket{code="OK",le="0.00025",method="Decrypt"} 3.0' in text
    assert 'teapot_kms_rpc_duration_seconds_bucket{code="OK",le="0.0001",method="Decrypt"} 0.0' in text
    assert _count(metrics.registry, "Decrypt", "INVALID_ARGUMENT") == 1


def test_concurrent_rpcs_are_all_counted(two_keys):
    metrics = metrics_module.Metrics(lambda: two_keys)
    per_thread = 3 * metrics_module._FOLD_BATCH + 7  # pylint: disable=protected-access

    def hammer():
        for _call in range(per_thread):
            metrics.observe_rpc("Encrypt", "OK", 0.001)

    threads = [threading.Thread(target=hammer) for _thread in range(4)]
    for thread in threads:
        thread.start()
    # Scrapes while the RPCs run must neither lose nor double any.
    for _scrape in range(20):
        prometheus_client.generate_latest(metrics.registry)
    for thread in threads:
        thread.join()
    assert _count(metrics.registry, "Encrypt", "OK") == 4 * per_thread


def test_scrape_before_the_keyring_exists():
    metrics = metrics_module.Metrics(lambda: None)
    text = prometheus_client.generate_latest(metrics.registry).decode()
    assert "teapot_kms_healthy" not in text
    assert "teapot_kms_barbican_fetch_duration_seconds_count 0.0" in text
