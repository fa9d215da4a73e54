"""Health that never lies: every key's state, the last reload's outcome, in ``status`` and the metrics.

Keys come from a dict (daemon_testing.DictFetcher); the refused reload builds the
real Barbican fetcher against a loopback port nothing listens on.
"""

import json
import os
import socket

import prometheus_client
import pytest
import yaml

from teapot_kms_plugin import cli
from teapot_kms_plugin import config as config_module
from teapot_kms_plugin import keyring
from teapot_kms_plugin import keyservice
from teapot_kms_plugin import transport
from teapot_kms_plugin.daemon import Daemon


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(tmp_path, fetcher):
    """A Daemon (not run: no signals in tests) whose keyring and report are served on a real socket."""
    primary, older = fetcher.add(), fetcher.add()
    password = tmp_path / "password"
    password.write_text("wrong-password\n")
    data = {
        "socket": str(tmp_path / "run" / "kms.sock"),
        "barbican": {"auth": {"auth_url": f"http://127.0.0.1:{_closed_port()}/v3", "username": "kms",
                              "password_file": str(password), "project_name": "kms"}, "timeout": 2},
        "keys": [str(primary.uuid), str(older.uuid)],
    }
    path = tmp_path / "kms.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = config_module.load(path)
    daemon = Daemon(str(path), cfg)
    daemon.keys = keyring.KeyCache(cfg.keys, fetcher, refresh_interval=300, max_stale=3600, metrics=daemon.metrics)
    server = transport.start_server(transport.Servicer(keyservice.KeyService(daemon.keys)), cfg.socket,
                                    workers=2, report=daemon.report)
    try:
        yield daemon, cfg, (primary, older)
    finally:
        server.stop(1).wait()


def _status(capsys, cfg):
    code = cli.main(["status", "--socket", cfg.socket])
    return code, json.loads(capsys.readouterr().out)


def test_status_names_a_decrypt_only_key_that_never_loaded(served, fetcher, capsys):
    daemon, cfg, (primary, older) = served
    material = fetcher.material.pop(older.uuid)
    daemon.keys.refresh()
    code, answer = _status(capsys, cfg)
    # The apiserver's healthz stays ok (writes go on), but the command does not say all is well.
    assert answer["healthz"] == "ok" and answer["key_id"] == primary.key_id
    assert code == 1 and answer["all_keys_loaded"] is False
    by_id = {key["key_id"]: key for key in answer["keys"]}
    assert by_id[primary.key_id]["loaded"] and by_id[primary.key_id]["role"] == "primary"
    assert by_id[primary.key_id]["age_seconds"] >= 0
    assert not by_id[older.key_id]["loaded"] and "no secret" in by_id[older.key_id]["last_error"]
    registry = daemon.metrics.registry
    assert registry.get_sample_value("teapot_kms_key_loaded", {"key_id": older.key_id, "role": "decrypt-only"}) == 0
    assert registry.get_sample_value("teapot_kms_key_loaded", {"key_id": primary.key_id, "role": "primary"}) == 1
    fetcher.material[older.uuid] = material
    daemon.keys.refresh()
    code, answer = _status(capsys, cfg)
    assert code == 0 and answer["all_keys_loaded"] and answer["reload"] is None
    # The process that serves the socket: where a reload's SIGHUP goes.
    assert answer["pid"] == os.getpid()


def test_reload_with_credentials_that_cannot_fetch_is_refused(served, fetcher, capsys):
    daemon, cfg, (primary, _older) = served
    assert daemon.keys.refresh() == {}
    daemon.reload()
    code, answer = _status(capsys, cfg)
    assert code == 0 and answer["key_id"] == primary.key_id
    reload = answer["reload"]
    assert reload["result"] == "refused" and "not every key could be fetched" in reload["reason"]
    assert "wrong-password" not in json.dumps(answer)
    # The running keyring and its fetcher stay: later refreshes still read the keys.
    assert daemon.keys.fetcher is fetcher and daemon.keys.refresh() == {}
    text = prometheus_client.generate_latest(daemon.metrics.registry).decode()
    assert "teapot_kms_last_reload_success 0.0" in text
    assert 'teapot_kms_reloads_total{result="key_error"} 1.0' in text
