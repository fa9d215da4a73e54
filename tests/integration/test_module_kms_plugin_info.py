"""teapot.kms.kms_plugin_info against a real plugin daemon (Keystone, Barbican, the daemon's venv).

The service state needs systemd, which this machine's PID 1 is not: the
Molecule scenario kms_plugin checks it on systemd-nspawn hosts.
"""

import pytest
import yaml

from tests.harness.plugin_daemon import PluginProcess, order_kek, password_barbican_section, plugin_venv
from tests.harness.playbook import PlaybookRunner
from tests.harness.procs import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return PlaybookRunner(tmp_path_factory.mktemp("playbooks-info"))


def _info(plugin, **extra):
    return {"name": "info", "teapot.kms.kms_plugin_info": {
        "command": str(plugin.venv / "bin" / "teapot-kms-plugin"), "config": str(plugin.config_path), "service": "", **extra}}


def test_healthy_unhealthy_and_stopped(runner, keystone, barbican, tmp_path):
    primary = order_kek(barbican, keystone.plugin_user, "kek-info-primary")
    old = order_kek(barbican, keystone.plugin_user, "kek-info-old")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", region_name=keystone.region_name)
    plugin = PluginProcess(plugin_venv(), tmp_path / "plugin", {
        "barbican": section, "keys": [primary, old], "metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    primary_id = "barbican:" + primary.rsplit("/", 1)[1]
    old_id = "barbican:" + old.rsplit("/", 1)[1]
    try:
        plugin.start()
        run = runner.run([_info(plugin)], check=True)
        info = run.task("info")
        assert info["changed"] is False
        status = info["status"]
        keys = status.pop("keys")
        # The process that answered on the socket: the daemon itself.
        assert status.pop("pid") == plugin.process.popen.pid
        assert status == {"reachable": True, "healthy": True, "healthz": "ok", "key_id": primary_id, "version": "v2",
                          "all_keys_loaded": True, "reload": None}
        assert [(key["key_id"], key["role"], key["loaded"], key["last_error"]) for key in keys] == [
            (primary_id, "primary", True, "none"), (old_id, "decrypt-only", True, "none")]
        assert info["socket"] == plugin.socket
        assert info["configured_key_ids"] == [primary_id, old_id]
        assert info["configured_keys"] == [{"key_id": primary_id, "secret": primary, "role": "primary", "source": "barbican"},
                                           {"key_id": old_id, "secret": old, "role": "decrypt-only", "source": "barbican"}]
        assert info["loaded_key_ids"] == sorted([primary_id, old_id])
        assert info["service"] is None
        assert keystone.plugin_user.password not in run.output
    finally:
        plugin.stop()

    run = runner.run([_info(plugin)])
    stopped = run.task("info")
    assert stopped["status"]["reachable"] is False and stopped["status"]["healthy"] is False
    assert stopped["status"]["healthz"].startswith("unreachable") and stopped["status"]["pid"] is None
    assert stopped["loaded_key_ids"] is None and any("metrics" in warning for warning in stopped.get("warnings", []))

    # A primary that Barbican does not have: the plugin answers, unhealthy, and says why.
    missing = barbican.url + "/v1/secrets/00000000-0000-4000-8000-000000000000"
    plugin.write_config(keys=[missing])
    plugin.start()
    try:
        unhealthy = runner.run([_info(plugin)]).task("info")
    finally:
        plugin.stop()
    assert unhealthy["status"]["reachable"] is True and unhealthy["status"]["healthy"] is False
    assert "not loaded" in unhealthy["status"]["healthz"] and "404" in unhealthy["status"]["healthz"]
    assert unhealthy["status"]["key_id"] == unhealthy["configured_key_ids"][0] == "barbican:00000000-0000-4000-8000-000000000000"
    assert unhealthy["loaded_key_ids"] == []
    assert unhealthy["status"]["all_keys_loaded"] is False
    assert [key["loaded"] for key in unhealthy["status"]["keys"]] == [False]
    assert "404" in unhealthy["status"]["keys"][0]["last_error"]


def test_no_plugin_installed(runner, tmp_path):
    run = runner.run([{"name": "info", "teapot.kms.kms_plugin_info": {
        "command": str(tmp_path / "missing" / "teapot-kms-plugin"), "config": str(tmp_path / "none.yaml"), "service": ""}}])
    info = run.task("info")
    assert info["status"]["reachable"] is False and "does not exist" in info["status"]["healthz"]
    assert info["configured_key_ids"] == [] and info["loaded_key_ids"] is None


def test_config_the_plugin_refuses(runner, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("never-shown\n")
    config = tmp_path / "kms-plugin.yaml"
    config.write_text(yaml.safe_dump({
        "socket": str(tmp_path / "kms.sock"), "keys": ["not-a-secret"],
        "barbican": {"auth": {"auth_url": "http://127.0.0.1:5000/v3", "username": "kms-plugin",
                              "password_file": str(password_file), "project_name": "kms"}}}))
    run = runner.run([{"name": "info", "teapot.kms.kms_plugin_info": {
        "command": str(plugin_venv() / "bin" / "teapot-kms-plugin"), "config": str(config), "service": ""}}])
    info = run.task("info")
    assert info["configured_key_ids"] == [] and info["loaded_key_ids"] is None and info["socket"] == ""
    assert info["status"]["reachable"] is False and "no socket to ask" in info["status"]["healthz"]
    assert any("invalid configuration: keys[0]:" in warning for warning in info.get("warnings", []))
    assert "never-shown" not in run.output
