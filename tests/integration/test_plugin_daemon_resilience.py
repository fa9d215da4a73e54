"""The plugin daemon when things change: rotation by SIGHUP, Barbican or Keystone going away, starting without Barbican."""

import concurrent.futures
import os
import re
import time
import uuid

import grpc
import pytest

from tests.harness.barbican import BarbicanService
from tests.harness.keystone import KeystoneService
from tests.harness.plugin_daemon import order_kek, password_barbican_section
from tests.integration.test_plugin_daemon import kms_client_module, kms_venv, start_plugin  # noqa: F401 pylint: disable=unused-import

pytestmark = pytest.mark.slow
SEED = os.urandom(32)


def _key_id(href):
    return f"barbican:{uuid.UUID(href.rstrip('/').rsplit('/', 1)[1])}"


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def test_rotation_by_sighup(keystone, barbican, start_plugin, kms_client_module, tmp_path):  # noqa: F811
    key_a = order_kek(barbican, keystone.plugin_user, "kek-rotate-a")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url)
    plugin = start_plugin({"barbican": section, "keys": [key_a]})
    socket_inode = os.stat(plugin.socket).st_ino
    with kms_client_module.KmsClient(plugin.socket) as client:
        old = client.encrypt(SEED, uid="before-rotation")
        assert old.key_id == _key_id(key_a)

        key_b = order_kek(barbican, keystone.plugin_user, "kek-rotate-b")
        plugin.write_config(keys=[key_b, key_a])
        plugin.reload()
        _wait_for(lambda: client.status().key_id == _key_id(key_b), 30, "Status reporting the new key_id")
        assert client.status().healthz == "ok"
        assert os.stat(plugin.socket).st_ino == socket_inode and plugin.process.running()

        new = client.encrypt(SEED, uid="after-rotation")
        assert new.key_id == _key_id(key_b)
        assert client.decrypt(new.ciphertext, new.key_id, dict(new.annotations)).plaintext == SEED
        assert client.decrypt(old.ciphertext, old.key_id, dict(old.annotations)).plaintext == SEED

        # A broken reload keeps the running keyring.
        plugin.write_config(keys=["not-a-key"])
        plugin.reload()
        _wait_for(lambda: "reload refused" in plugin.log_text(), 30, "the refused reload being logged")
        assert client.status().key_id == _key_id(key_b)

        # A decrypt-only key Barbican does not have: refused as a whole, and reported.
        missing = barbican.url + "/v1/secrets/00000000-0000-4000-8000-000000000000"
        plugin.write_config(keys=[key_b, key_a, missing])
        plugin.reload()
        # The config refusal above is the last reload until this one ends.
        _wait_for(lambda: "00000000-0000-4000-8000-000000000000" in client.report()["reload"]["reason"], 30,
                  "the refused reload")
        report = client.report()
        assert report["reload"]["result"] == "refused" and "not every key could be fetched" in report["reload"]["reason"]
        assert [key["key_id"] for key in report["keys"]] == [_key_id(key_b), _key_id(key_a)]
        assert all(key["loaded"] for key in report["keys"])

        # Dropping A: its ciphertexts are refused with an error naming it.
        plugin.write_config(keys=[key_b])
        plugin.reload()
        _wait_for(lambda: plugin.log_text().count('"msg": "reloaded"') >= 2, 30, "the second reload")
        with pytest.raises(grpc.RpcError) as info:
            client.decrypt(old.ciphertext, old.key_id, dict(old.annotations))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and _key_id(key_a) in info.value.details()
    assert 'teapot_kms_reloads_total{result="ok"} 2.0' in plugin.metrics_text()


OUTAGE_MAX_STALE = 10


def _start_outage_plugin(start_plugin, user, own_barbican, href, tmp_path):
    """A plugin that refreshes every second and drops keys after OUTAGE_MAX_STALE seconds."""
    section = password_barbican_section(user, tmp_path / "secrets", endpoint_override=own_barbican.url)
    return start_plugin({"barbican": section, "keys": [href],
                         "cache": {"refresh_interval": 1, "retry_interval": 0.5, "max_stale": OUTAGE_MAX_STALE}})


def _serves_from_cache_then_turns_unhealthy(client, plugin, href, made, stopped_at):
    """Refreshes fail since ``stopped_at``: the cache keeps serving, then Status turns unhealthy
    only past max_stale and Encrypt is refused. Return Status's reason and Encrypt's error."""
    assert time.monotonic() - stopped_at < OUTAGE_MAX_STALE - 1, "the machine is too slow for this test's max_stale"
    assert client.status().healthz == "ok"
    assert client.decrypt(made.ciphertext, made.key_id, dict(made.annotations)).plaintext == SEED
    assert client.encrypt(SEED).key_id == _key_id(href)

    def unhealthy_reason():
        healthz = client.status().healthz
        return None if healthz == "ok" else healthz

    healthz = _wait_for(unhealthy_reason, 60, "Status turning unhealthy")
    # The last good refresh began at most refresh_interval (1s) before the stop began.
    assert time.monotonic() - stopped_at >= OUTAGE_MAX_STALE - 2
    assert "stale" in healthz and f"max_stale {OUTAGE_MAX_STALE}s" in healthz
    code, status = plugin.status_command()
    assert code == 1 and status["key_id"] == _key_id(href)
    with pytest.raises(grpc.RpcError) as info:
        client.encrypt(SEED)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    return healthz, info.value.details()


def test_barbican_outage_serves_until_max_stale(keystone, barbican_factory, start_plugin, kms_client_module, tmp_path):  # noqa: F811
    own_barbican = barbican_factory()
    href = order_kek(own_barbican, keystone.plugin_user, "kek-outage")
    plugin = _start_outage_plugin(start_plugin, keystone.plugin_user, own_barbican, href, tmp_path)
    with kms_client_module.KmsClient(plugin.socket) as client:
        made = client.encrypt(SEED)
        stopped_at = time.monotonic()
        own_barbican.stop()

        # Refreshes now fail, yet everything keeps serving from the cache.
        _wait_for(lambda: "teapot_kms_barbican_fetch_errors_total" in plugin.metrics_text(), 30, "a failed refresh")
        healthz, refused = _serves_from_cache_then_turns_unhealthy(client, plugin, href, made, stopped_at)
        assert "cannot connect" in healthz
        confirmed_ago = int(re.search(r"last confirmed it (\d+)s ago", healthz).group(1))
        assert confirmed_ago >= OUTAGE_MAX_STALE
        assert "max_stale" in refused

        own_barbican.start()
        _wait_for(lambda: client.status().healthz == "ok", 60, "recovery after Barbican came back")
        assert client.decrypt(made.ciphertext, made.key_id, dict(made.annotations)).plaintext == SEED


def test_start_with_barbican_down(keystone, barbican_factory, start_plugin, kms_client_module, tmp_path):  # noqa: F811
    own_barbican = barbican_factory()
    href = order_kek(own_barbican, keystone.plugin_user, "kek-down-at-start")
    own_barbican.stop()
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=own_barbican.url)
    plugin = start_plugin({"barbican": section, "keys": [href], "cache": {"refresh_interval": 5, "retry_interval": 0.5}})
    code, status = plugin.status_command()
    assert code == 1
    assert status["key_id"] == _key_id(href)
    assert "not loaded" in status["healthz"] and "cannot connect" in status["healthz"]
    assert "cannot load key" in plugin.log_text() and "retried every" in plugin.log_text()
    with kms_client_module.KmsClient(plugin.socket) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.encrypt(SEED)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and _key_id(href) in info.value.details()
        own_barbican.start()
        _wait_for(lambda: client.status().healthz == "ok", 60, "the plugin loading its key once Barbican is up")
        made = client.encrypt(SEED)
        assert client.decrypt(made.ciphertext, made.key_id, dict(made.annotations)).plaintext == SEED


class _ShortTokenKeystone(KeystoneService):
    """Keystone issuing 60-second tokens.

    keystoneauth1 renews a token that expires within two minutes, so a plugin
    using this Keystone has to reach it before every fetch, as any plugin must
    once its token ages out.
    """

    def _write_config(self):
        super()._write_config()
        text = self.conf_path.read_text(encoding="utf-8")
        assert "provider = fernet\n" in text, "the harness's keystone.conf changed shape"
        self.conf_path.write_text(text.replace("provider = fernet\n", "provider = fernet\nexpiration = 60\n", 1), encoding="utf-8")


@pytest.fixture(scope="module")
def keystone_to_stop(service_venvs, tmp_path_factory, harness_log_dir):
    """A Keystone of its own (short tokens) and a Barbican that trusts it, for a Keystone outage."""
    log_dir = harness_log_dir / "keystone-outage"
    log_dir.mkdir(exist_ok=True)
    keystone = _ShortTokenKeystone(service_venvs["keystone"], tmp_path_factory.mktemp("keystone-outage"), log_dir)
    barbican = BarbicanService(service_venvs["barbican"], keystone, tmp_path_factory.mktemp("barbican-keystone-outage"), log_dir,
                               name="barbican-keystone-outage")
    try:
        # Barbican needs Keystone only to validate tokens, i.e. after both are up: start them side by side.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(keystone.start), pool.submit(barbican.start)]:
                started.result()
        yield keystone, barbican
    finally:
        barbican.stop()
        keystone.stop()
        for service in (keystone, barbican):
            print(f"--- {service.log_path} ---\n{service.log_path.read_text(errors='replace')[-4000:] if service.log_path.exists() else ''}")


def test_keystone_outage_serves_until_max_stale(keystone_to_stop, start_plugin, kms_client_module, tmp_path):  # noqa: F811
    own_keystone, own_barbican = keystone_to_stop
    href = order_kek(own_barbican, own_keystone.plugin_user, "kek-keystone-outage")
    plugin = _start_outage_plugin(start_plugin, own_keystone.plugin_user, own_barbican, href, tmp_path)
    with kms_client_module.KmsClient(plugin.socket) as client:
        made = client.encrypt(SEED)
        stopped_at = time.monotonic()
        own_keystone.stop()

        # Refreshes now fail at authentication; Barbican is still up; the cache keeps serving.
        _wait_for(lambda: 'reason="keystone_unreachable"' in plugin.metrics_text(), 30, "a refresh failing at Keystone")
        assert own_barbican.running()
        healthz, refused = _serves_from_cache_then_turns_unhealthy(client, plugin, href, made, stopped_at)
        assert f"authenticating with Keystone at {own_keystone.auth_url}" in healthz and "cannot connect" in healthz
        assert "Keystone" in refused
        assert "authenticating with Keystone" in plugin.log_text()

        own_keystone.start()
        _wait_for(lambda: client.status().healthz == "ok", 90, "recovery after Keystone came back")
        assert client.decrypt(made.ciphertext, made.key_id, dict(made.annotations)).plaintext == SEED
    assert own_keystone.plugin_user.password not in plugin.log_text() + plugin.metrics_text()
