"""``ansible-playbook teapot.kms.verify -i inventory`` against a real etcd over TLS (and a real KMS plugin).

The inventory has two control-plane hosts, both this machine (connection
local): the audit must run once, on the first.
"""

import subprocess
import sys
import uuid

import pytest

from tests.harness import etcd_fixtures
from tests.harness.collection import make_importable
from tests.harness.plugin_daemon import PluginProcess, order_kek, password_barbican_section, plugin_venv
from tests.harness.playbook import PlaybookRunner

make_importable()

# pylint: disable=wrong-import-position
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import encode_kms_v2, parse_stored_value  # noqa: E402

pytestmark = pytest.mark.slow

FIXTURES = etcd_fixtures.load_fixtures()
KMS_FIXTURE = next(fixture for fixture in FIXTURES if fixture["file"] == "kmsv2-kek1-secret-a.json")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return PlaybookRunner(tmp_path_factory.mktemp("playbooks-verify"))


@pytest.fixture(scope="module")
def etcd_verify(harness_servers):
    """A TLS etcd of this module's own: the fixtures go under the real /registry keys."""
    server = harness_servers.etcd_tls("verify")
    client = server.client()
    for fixture in FIXTURES:
        client.put(fixture["etcd_key"], fixture["value"])
    client.close()
    return server


def _inventory(server, python=sys.executable, **variables):
    host = {"ansible_connection": "local", "ansible_python_interpreter": str(python)}
    return {"all": {
        "children": {"kube_control_plane": {"hosts": {"cp1": dict(host), "cp2": dict(host)}}},
        "vars": {"verify_become": False, "verify_etcd_endpoints": server.endpoints, "verify_etcd_cacert": str(server.ca_path),
                 "verify_etcd_cert": str(server.client_cert), "verify_etcd_key": str(server.client_key), **variables},
    }}


def _store_kms_v2(server, key_ids):
    """Write one KMS v2 Secret per key_id under a private etcd prefix; return the prefix."""
    prefix = f"/teapot-verify-{uuid.uuid4().hex[:8]}/registry"
    stored = parse_stored_value(KMS_FIXTURE["value"])
    client = server.client()
    for number, key_id in enumerate(key_ids):
        client.put(f"{prefix}/secrets/default/s{number}", encode_kms_v2(
            "teapot", stored.ciphertext, key_id, stored.encrypted_dek, {"version.teapot.example.com": b"1"}))
    client.close()
    return prefix


def test_fixtures_fail_with_a_readable_report(runner, etcd_verify):
    inventory = _inventory(etcd_verify, verify_expected_key_id="fixture-kek-1", verify_expected_provider="fixturekms",
                           verify_resources=["secrets", "configmaps"], verify_report_limit=3)
    run = runner.run_playbook("teapot.kms.verify", inventory)
    assert run.returncode != 0
    audit = run.task("Read how etcd stores every object")
    assert audit["total"] == len(FIXTURES) and audit["plaintext"] == 1 and audit["unexpected"] == len(FIXTURES) - 2
    report = run.task("Report what etcd holds")["msg"]
    assert report[0] == (f"etcd revision {audit['revision']}: {len(FIXTURES)} objects, 1 in plaintext, {len(FIXTURES) - 2} not "
                         "as expected (expected kms-v2, provider fixturekms, key_id fixture-kek-1)")
    assert "secrets: identity/-/-: 1" in report and "configmaps: kms-v2/fixturekms/fixture-kek-1: 1" in report
    assert "secrets: kms-v2/fixturekms/fixture-kek-2: 1" in report
    listed = [line for line in report if line.startswith("not as expected: ")]
    assert len(listed) == 3 and report[-1] == f"... and {len(FIXTURES) - 2 - 3} more (verify_report_limit)"
    assert "not as expected: /registry/secrets/default/identity-secret-1: stored in plaintext, expected kms-v2" in listed
    failure = run.task("Fail while an object is in plaintext or not as expected")
    assert failure["failed"] is True
    assert failure["msg"].startswith(f"{len(FIXTURES) - 2} of {len(FIXTURES)} objects not as expected (1 in plaintext)")
    # Once, on the first control-plane host.
    assert [name for name, _result in run.results].count("Read how etcd stores every object") == 1
    for fixture in FIXTURES:
        assert fixture["plaintext_marker"] not in run.output

    # What a user sees on the terminal.
    plain = runner.run_playbook("teapot.kms.verify", inventory, json_output=False)
    assert plain.returncode != 0
    assert "secrets: kms-v2/fixturekms/fixture-kek-2: 1" in plain.stdout
    assert "not as expected: /registry/secrets/default/identity-secret-1: stored in plaintext, expected kms-v2" in plain.stdout
    assert "rewrite them through the API (teapot.kms.reencrypt)" in plain.stdout


def test_passes_when_every_object_carries_the_key(runner, etcd_verify):
    prefix = _store_kms_v2(etcd_verify, ["key-a", "key-a", "key-a"])
    run = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, verify_etcd_prefix=prefix, verify_expected_key_id="key-a"))
    assert run.returncode == 0, run.output[-3000:]
    assert run.task("Report what etcd holds")["msg"][1:] == ["secrets: kms-v2/teapot/key-a: 3"]
    assert run.task("Fail while an object is in plaintext or not as expected")["msg"] == "All 3 objects are stored as expected."
    # Any key_id when asked for none: the check is then only "kms-v2".
    mixed = _store_kms_v2(etcd_verify, ["key-a", "key-b"])
    run = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, verify_etcd_prefix=mixed, verify_expected_key_id=""))
    assert run.returncode == 0, run.output[-3000:]


def test_wrong_certificate_says_what_to_fix(runner, etcd_verify):
    inventory = _inventory(etcd_verify, verify_expected_key_id="key-a", verify_etcd_cert=str(etcd_verify.foreign_client_cert),
                           verify_etcd_key=str(etcd_verify.foreign_client_key))
    run = runner.run_playbook("teapot.kms.verify", inventory)
    assert run.returncode != 0
    assert "it refuses the client certificate" in run.task("Read how etcd stores every object")["msg"]


def test_expects_the_key_id_the_plugins_report(runner, etcd_verify, keystone, barbican, tmp_path):
    """Without verify_expected_key_id, the playbook asks the real KMS plugin for its key_id."""
    kek = order_kek(barbican, keystone.plugin_user, "kek-verify")
    key_id = "barbican:" + kek.rsplit("/", 1)[1]
    section = password_barbican_section(keystone.plugin_user, tmp_path / "secrets", region_name=keystone.region_name)
    plugin = PluginProcess(plugin_venv(), tmp_path / "plugin", {"barbican": section, "keys": [kek], "metrics": {"listen": ""}})
    good = _store_kms_v2(etcd_verify, [key_id, key_id])
    stale = _store_kms_v2(etcd_verify, [key_id, "barbican:00000000-0000-4000-8000-000000000000"])
    plugin_vars = {"verify_kms_plugin_command": str(plugin.venv / "bin" / "teapot-kms-plugin"),
                   "verify_kms_plugin_config": str(plugin.config_path)}
    with plugin:
        passed = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, verify_etcd_prefix=good, **plugin_vars))
        failed = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, verify_etcd_prefix=stale, **plugin_vars))
    assert passed.returncode == 0, passed.output[-3000:]
    assert passed.task("Report what etcd holds")["msg"][0].endswith(f"(expected kms-v2, provider any, key_id {key_id})")
    assert failed.returncode != 0
    assert "not as expected: " + stale + "/secrets/default/s1: key_id barbican:00000000-0000-4000-8000-000000000000, expected " \
        + key_id in failed.task("Report what etcd holds")["msg"]

    # The plugin stopped: the playbook refuses to guess.
    stopped = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, verify_etcd_prefix=good, **plugin_vars))
    assert stopped.returncode != 0
    refusal = stopped.task("Refuse to guess the key_id when a plugin is unhealthy or the plugins disagree")
    assert "Cannot tell which key_id to expect" in refusal["msg"] and "set verify_expected_key_id" in refusal["msg"]


def test_audits_with_the_plugin_python_where_the_host_has_it(runner, etcd_verify, tmp_path):
    """The hosts' usual Python is a bare one (no protobuf, no grpcio), which cannot run the audit.

    With the KMS plugin's venv at kms_plugin_venv_path, the audit runs with its
    Python and reads etcd over gRPC; without it, the audit runs with the usual
    Python, which says what it lacks.
    """
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
    prefix = _store_kms_v2(etcd_verify, ["key-a", "key-a"])
    common = dict(verify_etcd_prefix=prefix, verify_expected_key_id="key-a")
    venv = plugin_venv()
    run = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, python=bare / "bin" / "python",
                                                              kms_plugin_venv_path=str(venv), **common))
    assert run.returncode == 0, run.output[-3000:]
    audit = run.task("Read how etcd stores every object")
    assert audit["transport"] == "grpc" and audit["total"] == 2 and audit["unexpected"] == 0
    assert run.task("Fail while an object is in plaintext or not as expected")["msg"] == "All 2 objects are stored as expected."

    missing = runner.run_playbook("teapot.kms.verify", _inventory(etcd_verify, python=bare / "bin" / "python",
                                                                  kms_plugin_venv_path=str(tmp_path / "no-venv"), **common))
    assert missing.returncode != 0
    message = missing.task("Read how etcd stores every object")["msg"]
    assert "Failed to import the required Python library (protobuf)" in message and str(bare / "bin" / "python") in message
