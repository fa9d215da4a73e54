"""The KMS v2 plugin daemon against real Keystone and Barbican, through its real socket.

Keystone and Barbican serve HTTPS only here, as the roles deploy them (the
``keystone``, ``barbican`` and ``barbican_p11`` fixtures of this module are
the TLS ones of tests/integration/conftest.py): the plugin verifies them with
``barbican.cacert``.  The daemon runs as a process from a venv installed offline from wheels
(tests/harness/plugin_daemon.py); the client speaks KMS v2 with message classes
built from the proto descriptor.
"""

import base64
import os
import signal
import socket as socket_module
import subprocess
import sys
import uuid

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.harness.plugin_daemon import SOURCE, PluginProcess, order_kek, password_barbican_section, plugin_venv
from tests.harness.procs import free_port

pytestmark = pytest.mark.slow

SEED = os.urandom(32)


@pytest.fixture(scope="session")
def keystone(keystone_tls):
    return keystone_tls


@pytest.fixture(scope="session")
def barbican(barbican_tls):
    return barbican_tls


@pytest.fixture(scope="session")
def barbican_p11(barbican_p11_tls):
    return barbican_p11_tls


@pytest.fixture(scope="session")
def kms_venv():
    return plugin_venv()


@pytest.fixture(scope="session")
def kms_client_module(kms_venv):
    """The client classes come from the installed package (imported from its source tree)."""
    source = str(SOURCE / "src")
    if source not in sys.path:
        sys.path.insert(0, source)
    from teapot_kms_plugin import client  # pylint: disable=import-outside-toplevel,import-error

    return client


@pytest.fixture
def start_plugin(kms_venv, tmp_path):
    """Start plugins with a config; stop them and show their logs at teardown."""
    started = []

    def start(config, name="kms-plugin", wait=True):
        config = dict(config)
        config.setdefault("metrics", {"listen": f"127.0.0.1:{free_port()}"})
        config.setdefault("log_level", "debug")
        plugin = PluginProcess(kms_venv, tmp_path / f"{name}-{len(started)}", config, name=name)
        started.append(plugin)
        if wait:
            plugin.start()
        else:
            plugin.process.start()
        return plugin

    yield start
    for plugin in started:
        plugin.stop()
        print(f"--- {plugin.log_path} ---\n{plugin.log_tail(80)}")


def _secret_uuid(href):
    return uuid.UUID(href.rstrip("/").rsplit("/", 1)[1])


def _key_bytes(barbican, creds, href):
    return barbican.client(creds).secrets.get(href, payload_content_type="application/octet-stream").payload


@pytest.mark.parametrize("flavour", ["simple_crypto", "p11_crypto"])
def test_round_trip_both_flavours(request, keystone, start_plugin, kms_client_module, tmp_path, flavour):
    barbican = request.getfixturevalue("barbican" if flavour == "simple_crypto" else "barbican_p11")
    assert barbican.flavour == flavour
    href = order_kek(barbican, keystone.plugin_user, f"kek-roundtrip-{flavour}")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", region_name=keystone.region_name)
    if flavour == "simple_crypto":
        # No override: the plugin finds this Barbican through the Keystone catalog.
        assert barbican.session(keystone.plugin_user).get_endpoint(
            service_type="key-manager", interface="public", region_name=keystone.region_name).rstrip("/") == barbican.url
    else:
        section["endpoint_override"] = barbican.url
    plugin = start_plugin({"barbican": section, "keys": [href]})

    code, status = plugin.status_command()
    key_id = f"barbican:{_secret_uuid(href)}"
    assert code == 0 and {name: status[name] for name in ("healthz", "key_id", "version", "all_keys_loaded")} == {
        "healthz": "ok", "key_id": key_id, "version": "v2", "all_keys_loaded": True}
    assert [(key["key_id"], key["role"], key["loaded"]) for key in status["keys"]] == [(key_id, "primary", True)]

    with kms_client_module.KmsClient(plugin.socket) as client:
        encrypted = client.encrypt(SEED, uid="uid-roundtrip")
        assert encrypted.key_id == key_id
        assert dict(encrypted.annotations) == {"format.kms.teapot.dev": b"1"}
        assert len(encrypted.ciphertext) <= 1024
        decrypted = client.decrypt(encrypted.ciphertext, encrypted.key_id, dict(encrypted.annotations), uid="uid-roundtrip")
        assert decrypted.plaintext == SEED

    # The documented layout, opened independently with the key read from Barbican.
    key = _key_bytes(barbican, keystone.plugin_user, href)
    ciphertext = encrypted.ciphertext
    assert ciphertext[:3] == b"tk\x01" and ciphertext[3:19] == _secret_uuid(href).bytes
    assert AESGCM(key).decrypt(ciphertext[19:31], ciphertext[31:], ciphertext[:19] + key_id.encode()) == SEED

    # Key bytes reach neither the log nor the metrics.
    exposed = plugin.log_text() + plugin.metrics_text()
    for form in (key.hex(), base64.b64encode(key).decode(), repr(key)):
        assert form not in exposed
    assert keystone.plugin_user.password not in exposed
    assert "uid-roundtrip" in plugin.log_text()


@pytest.fixture(scope="module")
def served(keystone, barbican, kms_venv, tmp_path_factory):
    """One plugin for the malformed-input tests (module scope: they only read)."""
    base = tmp_path_factory.mktemp("kms-served")
    href = order_kek(barbican, keystone.plugin_user, "kek-malformed")
    section = password_barbican_section(keystone.plugin_user, base / "secrets", endpoint_override=barbican.url)
    config = {"barbican": section, "keys": [href], "metrics": {"listen": f"127.0.0.1:{free_port()}"}, "log_level": "info"}
    plugin = PluginProcess(kms_venv, base, config).start()
    yield plugin
    plugin.stop()
    print(plugin.log_tail(80))


def _refused(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_malformed_inputs(served, kms_client_module):
    with kms_client_module.KmsClient(served.socket) as client:
        made = client.encrypt(SEED, uid="u1")
        ciphertext, key_id, annotations = made.ciphertext, made.key_id, dict(made.annotations)
        stranger = uuid.uuid4()
        cases = {
            "empty": (b"", key_id, annotations, "ciphertext is empty"),
            "truncated": (ciphertext[:25], key_id, annotations, "truncated"),
            "tag cut": (ciphertext[:-1], key_id, annotations, "failed authentication"),
            "tampered": (ciphertext[:40] + bytes([ciphertext[40] ^ 1]) + ciphertext[41:], key_id, annotations,
                         "failed authentication"),
            "oversized": (ciphertext + bytes(1100), key_id, annotations, "more than 1024"),
            "foreign": (os.urandom(60), key_id, annotations, "magic"),
            "future version": (b"tk\x09" + ciphertext[3:], key_id, annotations, "version 9"),
            "wrong key_id": (ciphertext, f"barbican:{stranger}", annotations, "does not match"),
            "no annotation": (ciphertext, key_id, {}, "format.kms.teapot.dev is missing"),
            "bad annotation key": (ciphertext, key_id, dict(annotations, **{"Not_FQDN": b"x"}), "not a fully qualified"),
        }
        for name, (data, kid, ann, message) in cases.items():
            code, details = _refused(lambda data=data, kid=kid, ann=ann: client.decrypt(data, kid, ann))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, name
            assert message in details, (name, details)

        forged = ciphertext[:3] + stranger.bytes + ciphertext[19:]
        code, details = _refused(lambda: client.decrypt(forged, f"barbican:{stranger}", annotations))
        assert code == grpc.StatusCode.NOT_FOUND and f"barbican:{stranger}" in details

        code, details = _refused(lambda: client.encrypt(b""))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "plaintext is empty" in details
        code, details = _refused(lambda: client.encrypt(bytes(2000)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than 977" in details

        raw = client.channel.unary_unary("/v2.KeyManagementService/Decrypt")
        code, details = _refused(lambda: raw(b"\xff\xff\xff\xff", timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid DecryptRequest" in details

        assert client.decrypt(ciphertext, key_id, annotations).plaintext == SEED
        assert client.status().healthz == "ok"
    assert served.process.running()


def test_fuzz_decrypt_through_daemon(served, kms_client_module):
    """A short hypothesis run through the real daemon (the long run is daemon/tests/test_kms_fuzz.py)."""
    client = kms_client_module.KmsClient(served.socket)
    made = client.encrypt(SEED)
    valid = made.ciphertext

    truncated_or_extended = st.builds(lambda cut, tail: valid[:cut] + tail, st.integers(0, len(valid)), st.binary(max_size=64))

    @settings(max_examples=int(os.environ.get("TEAPOT_KMS_FUZZ_EXAMPLES", "150")) // 2 or 1, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=1100), truncated_or_extended),
           st.one_of(st.just(made.key_id), st.text(max_size=40)),
           st.dictionaries(st.text(max_size=20), st.binary(max_size=20), max_size=3),
           st.text(max_size=40))
    def check(ciphertext, key_id, annotations, uid):
        try:
            response = client.decrypt(ciphertext, key_id, annotations, uid=uid)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), exc.details()
        else:
            assert response.plaintext == SEED

    try:
        check()
        assert client.status().healthz == "ok"
    finally:
        client.close()
    assert served.process.running()


def test_metrics(served, kms_client_module):
    with kms_client_module.KmsClient(served.socket) as client:
        client.status()
        client.encrypt(SEED)
        with pytest.raises(grpc.RpcError):
            client.decrypt(b"junk", "barbican:x")
    text = served.metrics_text()
    key_id = served.status_command()[1]["key_id"]
    assert 'teapot_kms_rpc_duration_seconds_count{code="OK",method="Encrypt"}' in text
    assert 'teapot_kms_rpc_duration_seconds_count{code="INVALID_ARGUMENT",method="Decrypt"}' in text
    assert f'teapot_kms_primary_key_info{{key_id="{key_id}"}} 1.0' in text
    assert f'teapot_kms_key_cache_age_seconds{{key_id="{key_id}"}}' in text
    assert "teapot_kms_barbican_fetch_duration_seconds_count" in text
    assert "teapot_kms_healthy 1.0" in text


def test_application_credential(keystone, barbican, start_plugin, tmp_path):
    href = order_kek(barbican, keystone.plugin_user, "kek-appcred")
    app = keystone.plugin_app_cred
    secret_file = tmp_path / "appcred"
    secret_file.write_text(app.secret)
    section = {"auth_type": "v3applicationcredential",
               "auth": {"auth_url": app.auth_url, "application_credential_id": app.id,
                        "application_credential_secret_file": str(secret_file)},
               "endpoint_override": barbican.url, "cacert": app.cacert}
    plugin = start_plugin({"barbican": section, "keys": [href]})
    code, status = plugin.status_command()
    assert code == 0 and (status["healthz"], status["key_id"], status["all_keys_loaded"]) == (
        "ok", f"barbican:{_secret_uuid(href)}", True)
    assert app.secret not in plugin.log_text()


def test_clouds_yaml_entry(keystone, barbican, start_plugin, tmp_path):
    href = order_kek(barbican, keystone.plugin_user, "kek-clouds")
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"kms": {
        "auth": keystone.plugin_user.auth_dict(), "region_name": keystone.region_name,
        "interface": "public", "key_manager_endpoint_override": barbican.url, "cacert": keystone.cacert}}}))
    clouds.chmod(0o600)
    plugin = start_plugin({"barbican": {"cloud": "kms", "clouds_file": str(clouds)}, "keys": [_secret_uuid(href).hex]})
    code, status = plugin.status_command()
    assert (code, status["healthz"]) == (0, "ok"), plugin.log_tail()


def test_untrusted_certificate_is_explained(keystone, barbican, start_plugin, tmp_path):
    href = order_kek(barbican, keystone.plugin_user, "kek-untrusted")
    assert barbican.url.startswith("https://") and keystone.plugin_user.auth_url.startswith("https://")
    # Without barbican.cacert: the system's CAs, which did not sign the services' certificates.
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url)
    del section["cacert"]
    plugin = start_plugin({"barbican": section, "keys": [href]})
    code, status = plugin.status_command()
    assert code == 1 and status["all_keys_loaded"] is False
    assert "the TLS handshake failed" in status["healthz"] and "set barbican.cacert" in status["healthz"]
    assert "CERTIFICATE_VERIFY_FAILED" in status["healthz"]


def test_plain_http_to_a_remote_keystone_is_refused(kms_venv, tmp_path):
    config = tmp_path / "kms.yaml"
    password_file = tmp_path / "password"
    password_file.write_text("not-used-here\n")
    config.write_text(yaml.safe_dump({"socket": str(tmp_path / "kms.sock"), "keys": [str(uuid.uuid4())],
                                      "barbican": {"auth": {"auth_url": "http://192.0.2.10:5000/v3", "username": "kms-plugin",
                                                            "password_file": str(password_file), "project_name": "kms"}}}))
    result = subprocess.run([str(kms_venv / "bin" / "teapot-kms-plugin"), "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "barbican.auth.auth_url" in lines[0] and "allow_insecure_http: true" in lines[0]
    assert not (tmp_path / "kms.sock").exists()


def test_allowed_plain_http_is_warned_about_at_start(keystone, barbican, start_plugin, tmp_path):
    # The daemon's warning when allow_insecure_http is set; the services themselves are TLS here.
    href = order_kek(barbican, keystone.plugin_user, "kek-insecure-allowed")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url,
                                        allow_insecure_http=True)
    plugin = start_plugin({"barbican": section, "keys": [href]})
    assert plugin.status_command()[0] == 0
    assert "barbican.allow_insecure_http is true" in plugin.log_text()


def test_wrong_credentials_are_explained(keystone, barbican, start_plugin, tmp_path):
    href = order_kek(barbican, keystone.plugin_user, "kek-wrongpw")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url)
    (tmp_path / "secrets" / "password").write_text("definitely-not-the-password\n")
    plugin = start_plugin({"barbican": section, "keys": [href]})
    code, status = plugin.status_command()
    assert code == 1
    assert "Keystone rejected the credentials (HTTP 401)" in status["healthz"]
    assert status["key_id"] == f"barbican:{_secret_uuid(href)}"
    log = plugin.log_text()
    assert "Keystone rejected the credentials" in log and "definitely-not-the-password" not in log


def test_missing_key_is_explained(keystone, barbican, start_plugin, tmp_path):
    missing = uuid.uuid4()
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url)
    plugin = start_plugin({"barbican": section, "keys": [str(missing)]})
    code, status = plugin.status_command()
    assert code == 1
    assert f"barbican:{missing}" in status["healthz"] and "no such secret (HTTP 404)" in status["healthz"]


def test_bad_config_field_is_one_line(kms_venv, tmp_path):
    config = tmp_path / "kms.yaml"
    config.write_text(yaml.safe_dump({"socket": str(tmp_path / "kms.sock"), "keys": ["nope"],
                                      "barbican": {"auth": {"auth_url": "http://127.0.0.1:1/v3"}}}))
    result = subprocess.run([str(kms_venv / "bin" / "teapot-kms-plugin"), "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid configuration" in lines[0] and "barbican.auth.password_file" in lines[0]
    assert not (tmp_path / "kms.sock").exists()


def test_sigterm_drains_and_removes_socket(keystone, barbican, start_plugin, tmp_path):
    href = order_kek(barbican, keystone.plugin_user, "kek-sigterm")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url)
    plugin = start_plugin({"barbican": section, "keys": [href]})
    plugin.process.signal(signal.SIGTERM)
    assert plugin.process.popen.wait(30) == 0
    assert not os.path.exists(plugin.socket)
    assert '"msg": "stopped"' in plugin.log_text()


def test_refuses_to_replace_a_regular_file(kms_venv, keystone, barbican, tmp_path):
    target = tmp_path / "run" / "kms.sock"
    target.parent.mkdir()
    target.write_text("precious")
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican.url)
    plugin = PluginProcess(kms_venv, tmp_path, {"socket": str(target), "barbican": section,
                                                "keys": [str(uuid.uuid4())], "metrics": {"listen": ""}})
    plugin.process.start()
    assert plugin.process.popen.wait(60) == 1
    assert target.read_text() == "precious"
    assert "is not a socket: refusing to remove it" in plugin.log_text()


def test_metrics_port_in_use_is_explained(kms_venv, tmp_path):
    # Nothing listens at auth_url: the first fetch fails at once (loopback, connection refused).
    password_file = tmp_path / "password"
    password_file.write_text("not-used-here\n")
    password_file.chmod(0o600)
    socket_path = tmp_path / "run" / "kms.sock"
    with socket_module.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        plugin = PluginProcess(kms_venv, tmp_path, {
            "socket": str(socket_path), "keys": [str(uuid.uuid4())], "metrics": {"listen": f"127.0.0.1:{port}"},
            "barbican": {"auth": {"auth_url": f"http://127.0.0.1:{free_port()}/v3", "username": "kms-plugin",
                                  "password_file": str(password_file), "project_name": "kms"}, "timeout": 5}})
        plugin.process.start()
        assert plugin.process.popen.wait(60) == 1
    log = plugin.log_text()
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in log, log
    # The listener is bound before the socket and before any fetch: nothing else was tried.
    assert "authenticating with Keystone" not in log
    assert not socket_path.exists()
