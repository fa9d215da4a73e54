"""Barbican's dogtag backend as far as it runs here; the dogtag role's refusal of a host it cannot serve and the
barbican role's refusal of another KRA.

No Dogtag KRA runs here (its server is not packaged for Debian, see docs/dogtag.md) and none is faked: these
tests build Barbican's venv with the barbican role's Dogtag client pins, render barbican.conf with the role's
own variables and template, and import Barbican's dogtag plugin with it.  The plugin's attempt to reach the
KRA goes to a closed loopback port and fails, as it must; storing or reading a secret through a KRA is left to
the molecule/rhel/dogtag scenario on RHEL-family hosts.
"""

import hashlib
import json
import os
import re
import socket
import subprocess

import pytest

from tests.harness.pki import TestCA
from tests.harness.playbook import PlaybookRunner, render_barbican_config
from tests.harness.venvs import ensure_venv

pytestmark = pytest.mark.slow

# What the plugin prints about itself once imported with the rendered barbican.conf.
PROBE = """
import importlib.metadata, json, os
import barbican.plugin.dogtag as plugin
from barbican.plugin.interface import secret_store
options = plugin.CONF.dogtag_plugin
store_class = importlib.metadata.entry_points(group="barbican.secretstore.plugin")["dogtag_crypto"].load()
print(json.dumps({
    "options": {name: options[name] for name in ("pem_path", "dogtag_host", "dogtag_port", "nss_db_path",
                                                 "retries", "plugin_name")},
    "nss_password_matches": options.nss_password == os.environ["EXPECTED_NSS_PASSWORD"],
    "secret_stores": list(secret_store.CONF.secretstore.enabled_secretstore_plugins),
    "crypto_provider": type(plugin.crypto).__name__,
    "store_class": store_class.__module__ + "." + store_class.__name__,
}))
"""


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dogtag_plugin_loads_the_rendered_config(tmp_path):
    venv = ensure_venv("barbican-dogtag")
    runner = PlaybookRunner(tmp_path / "playbooks")
    port = _closed_port()
    settings = {
        "barbican_backend": "dogtag",
        "barbican_config_dir": str(tmp_path / "etc"),
        "barbican_data_dir": str(tmp_path / "data"),
        "barbican_keystone_auth_url": "http://127.0.0.1:5000/v3",
        "barbican_keystone_service_password": "service-secret",
        "barbican_dogtag_host": "127.0.0.1",
        "barbican_dogtag_port": port,
        "barbican_dogtag_nss_password": "nss-secret",
        "barbican_dogtag_retries": 5,
    }
    environment = render_barbican_config(runner, tmp_path, settings)
    assert environment["KEY_WRAP_PARAMETER_SET"] == "1"
    (tmp_path / "data").mkdir()

    env = {key: value for key, value in os.environ.items() if not key.startswith(("OS_", "VIRTUAL_ENV"))}
    env.update(environment, HOME=str(tmp_path / "home"), EXPECTED_NSS_PASSWORD="nss-secret")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["options"] == {
        "pem_path": str(tmp_path / "etc" / "kra_agent.pem"),
        "dogtag_host": "127.0.0.1",
        "dogtag_port": port,
        "nss_db_path": str(tmp_path / "data" / "dogtag-nssdb"),
        "retries": 5,
        "plugin_name": "Dogtag KRA",
    }
    assert report["nss_password_matches"] is True
    # oslo.config finds barbican.conf once as the project's file and once as the program's (both "barbican"),
    # so this multi-valued option reads every value twice, in Barbican's own processes too.
    assert set(report["secret_stores"]) == {"dogtag_crypto"}
    # The client's NSS provider (python-nss from Debian) created the database with certutil.
    assert report["crypto_provider"] == "NSSCryptoProvider"
    assert (tmp_path / "data" / "dogtag-nssdb" / "cert9.db").exists()
    assert report["store_class"] == "barbican.plugin.dogtag.DogtagKRAPlugin"
    # Nothing answers on that port: the plugin says so instead of pretending.
    assert "Error in importing transport cert" in result.stderr


def test_dogtag_role_refuses_a_host_without_dogtag_packages(tmp_path):
    runner = PlaybookRunner(tmp_path / "playbooks")
    run = runner.run([{"name": "dogtag", "ansible.builtin.include_role": {"name": "teapot.kms.dogtag"}}],
                     extra_vars={"dogtag_ds_password": "ds-secret", "dogtag_admin_password": "admin-secret",
                                 "dogtag_client_pkcs12_password": "p12-secret"},
                     check=True, gather_facts=True)
    assert run.returncode != 0
    result = run.task("teapot.kms.dogtag : Assert that the target is a RHEL-family host where Dogtag is packaged")
    assert result["failed"] is True
    facts = run.task("Gathering Facts")["ansible_facts"]
    assert f"this host runs {facts['ansible_distribution']} {facts['ansible_distribution_version']}" in result["msg"]
    assert "not packaged" in result["msg"]
    names = [name for name, _result in run.results]
    assert not any(name.startswith("teapot.kms.dogtag : Install") for name in names), names


def _fingerprint(pem):
    block = re.search(r"(?s)-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem).group(0)
    return hashlib.sha256(re.sub(r"\s", "", block).encode()).hexdigest()


def test_barbican_preflight_refuses_another_kra(tmp_path):
    """The barbican role's preflight, in check mode on this Debian 12 host, against a recorded dogtag deployment."""
    # Preflight only reads and fingerprints these; a test CA's certificates stand in for the KRA's.
    ca = TestCA(tmp_path / "pki")
    agent_cert, agent_key = (path.read_text(encoding="utf-8") for path in ca.issue("agent", client=True))
    transport = ca.issue("transport")[0].read_text(encoding="utf-8")
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "teapot-kms-backend.json").write_text(json.dumps({"backend": "dogtag", "dogtag": {
        "dogtag_host": "kra1.example.test", "dogtag_port": "8443",
        "transport_cert_sha256": _fingerprint(transport), "agent_cert_sha256": _fingerprint(agent_cert)}}))
    settings = {
        "barbican_backend": "dogtag",
        "barbican_config_dir": str(config_dir),
        "barbican_data_dir": str(tmp_path / "data"),
        "barbican_keystone_auth_url": "http://127.0.0.1:5000/v3",
        "barbican_keystone_service_password": "service-secret",
        "barbican_dogtag_host": "kra1.example.test",
        "barbican_dogtag_agent_pem": agent_cert + agent_key,
        "barbican_dogtag_transport_cert": transport,
        "barbican_dogtag_nss_password": "nss-secret",
    }
    preflight = [{"name": "preflight",
                  "ansible.builtin.include_role": {"name": "teapot.kms.barbican", "tasks_from": "preflight.yml"}}]
    refusal = "teapot.kms.barbican : Refuse a Dogtag KRA or agent other than the deployed one"
    runner = PlaybookRunner(tmp_path / "playbooks")

    same = runner.run(preflight, extra_vars=settings, check=True, gather_facts=True)
    assert same.returncode == 0, same.output
    assert same.task(refusal).get("failed") is not True

    other = runner.run(preflight, extra_vars={**settings, "barbican_dogtag_host": "kra2.example.test"},
                       check=True, gather_facts=True)
    assert other.returncode != 0
    result = other.task(refusal)
    assert result["failed"] is True
    assert "dogtag_host=kra1.example.test" in result["msg"] and "Nothing was changed" in result["msg"]
    assert "nss-secret" not in other.output and agent_key.splitlines()[1] not in other.output
