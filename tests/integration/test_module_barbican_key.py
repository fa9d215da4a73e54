"""teapot.kms.barbican_key and barbican_key_info in real playbooks against the harness's Keystone and Barbican.

Keystone and Barbican serve HTTPS only here, as the roles deploy them (this
module's ``keystone`` and ``barbican`` are the TLS fixtures of
tests/integration/conftest.py): the modules verify them with ``ca_cert``.
"""

import base64
import json
import uuid

import pytest
import yaml
from barbicanclient import exceptions as barbican_exceptions

from tests.harness.keystone import make_session
from tests.harness.plugin_daemon import first_status
from tests.harness.playbook import PlaybookRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return PlaybookRunner(tmp_path_factory.mktemp("playbooks"))


@pytest.fixture(scope="session")
def keystone(keystone_tls):
    return keystone_tls


@pytest.fixture(scope="session")
def barbican(barbican_tls):
    return barbican_tls


@pytest.fixture(scope="module")
def conn(keystone, barbican):
    """Module options for the plugin user, finding Barbican through the catalog."""
    return {"auth": keystone.plugin_user.auth_dict(), "region_name": keystone.region_name, "ca_cert": keystone.cacert}


@pytest.fixture(scope="module")
def plugin_user_id(keystone):
    return make_session(keystone.plugin_user).get_user_id()


def _name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _key_task(title, conn, **options):
    return {"name": title, "teapot.kms.barbican_key": {**conn, **options}, "ignore_errors": True}


def _info_task(title, conn, key_name):
    return {"name": title, "teapot.kms.barbican_key_info": {**conn, "name": key_name}}


def _payload(barbican, creds, href):
    return barbican.client(creds).secrets.get(href, payload_content_type="application/octet-stream").payload


def test_check_apply_check_apply(runner, keystone, barbican, conn, plugin_user_id):
    name = _name("kek-idempotence")
    options = {
        "name": name,
        "acl": {"users": [plugin_user_id], "project_access": False},
        "consumers": [{"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "test-cluster"}],
    }
    tasks = [
        _key_task("check 1", conn, **options) | {"check_mode": True},
        _info_task("after check 1", conn, name),
        _key_task("apply 1", conn, **options),
        _key_task("check 2", conn, **options) | {"check_mode": True},
        _key_task("apply 2", conn, **options),
        _info_task("after apply 2", conn, name),
    ]
    run = runner.run(tasks, diff=True)
    assert run.returncode == 0, run.output
    results = {task: run.task(task) for task in ("check 1", "apply 1", "check 2", "apply 2")}
    assert [results[task]["changed"] for task in ("check 1", "apply 1", "check 2", "apply 2")] == [True, True, False, False], run.stdout
    assert not any(result.get("failed") for result in results.values()), run.stdout
    # Check mode ordered nothing.
    assert run.task("after check 1")["barbican_keys"] == []

    key = results["apply 1"]["key"]
    href = key["href"]
    secret_uuid = href.rstrip("/").rsplit("/", 1)[1]
    assert href.startswith(barbican.url + "/v1/secrets/")
    assert key["uuid"] == secret_uuid
    assert key["key_id"] == f"barbican:{secret_uuid}"
    assert key["created"] and key["created"].endswith("+00:00")
    assert (key["algorithm"], key["bit_length"], key["secret_type"], key["status"]) == ("aes", 256, "symmetric", "ACTIVE")
    assert key["acl"] == {"read": {"users": [plugin_user_id], "project_access": False}}
    assert key["consumers"] == [{"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "test-cluster"}]
    assert "payload" not in key
    # Later runs return the same key; the diff shows the order in check mode and nothing afterwards.
    assert results["apply 2"]["key"] == key
    assert results["check 1"]["diff"]["before"] == {} and results["check 1"]["diff"]["after"]["name"] == name
    assert results["apply 2"]["diff"]["before"] == results["apply 2"]["diff"]["after"]
    listed = run.task("after apply 2")["barbican_keys"]
    assert [item["href"] for item in listed] == [href]
    assert listed[0]["acl"] == key["acl"] and listed[0]["consumers"] == key["consumers"]

    # Neither the password nor the key material reached Ansible's output.
    material = _payload(barbican, keystone.plugin_user, href)
    assert len(material) == 32
    for secret in (keystone.plugin_user.password, base64.b64encode(material).decode(), material.hex()):
        assert secret not in run.output


def test_acl_keeps_other_members_out(runner, keystone, barbican, conn, plugin_user_id):
    name = _name("kek-acl")
    run = runner.run([_key_task("order without acl", conn, name=name)])
    href = run.task("order without acl")["key"]["href"]
    # Without an ACL, every member of the project reads the key (Barbican's default).
    assert len(_payload(barbican, keystone.other_member, href)) == 32

    run = runner.run([_key_task("restrict", conn, name=name, acl={"users": [plugin_user_id]})])
    result = run.task("restrict")
    assert result["changed"] is True and result["key"]["acl"]["read"] == {"users": [plugin_user_id], "project_access": False}
    with pytest.raises(barbican_exceptions.HTTPClientError) as refused:
        _payload(barbican, keystone.other_member, href)
    assert refused.value.status_code == 403
    assert len(_payload(barbican, keystone.plugin_user, href)) == 32


def test_consumer_blocks_deletion(runner, keystone, barbican, conn):
    name = _name("kek-consumed")
    consumer = {"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "cluster-a"}
    tasks = [
        _key_task("order", conn, name=name, consumers=[consumer]),
        _key_task("delete without force", conn, name=name, state="absent"),
        _info_task("still there", conn, name),
        _key_task("delete with force, check mode", conn, name=name, state="absent", force=True) | {"check_mode": True},
        _key_task("delete with force", conn, name=name, state="absent", force=True),
        _key_task("delete again", conn, name=name, state="absent", force=True),
        _info_task("gone", conn, name),
    ]
    run = runner.run(tasks)
    refused = run.task("delete without force")
    assert refused["failed"] is True
    assert "1 consumer(s) (kubernetes/kms-plugin/cluster-a)" in refused["msg"] and "force: true" in refused["msg"]
    assert len(run.task("still there")["barbican_keys"]) == 1
    assert run.task("delete with force, check mode")["changed"] is True
    deleted = run.task("delete with force")
    assert deleted["changed"] is True and not deleted.get("failed")
    assert deleted["key"]["href"] == run.task("order")["key"]["href"]
    assert run.task("delete again")["changed"] is False
    assert run.task("gone")["barbican_keys"] == []


def test_barbican_itself_refuses_to_delete_a_consumed_key(keystone, barbican, runner, conn):
    """The refusal is Barbican's, not only the module's: the client without force gets an error."""
    name = _name("kek-server-refusal")
    consumer = {"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "cluster-b"}
    href = runner.run([_key_task("order", conn, name=name, consumers=[consumer])]).task("order")["key"]["href"]
    client = barbican.client(keystone.plugin_user)
    with pytest.raises(barbican_exceptions.SecretHasConsumers):
        client.secrets.delete(href)
    assert len(_payload(barbican, keystone.plugin_user, href)) == 32


def test_bad_credentials_and_unknown_project(runner, keystone, barbican):
    good = keystone.plugin_user.auth_dict()
    wrong_password = {**good, "password": "not-the-password-" + uuid.uuid4().hex}
    unknown_project = {**good, "project_name": "no-such-project"}
    tasks = [
        _key_task("wrong password", {"auth": wrong_password, "region_name": keystone.region_name, "ca_cert": keystone.cacert},
                  name="never"),
        _key_task("unknown project", {"auth": unknown_project, "region_name": keystone.region_name, "ca_cert": keystone.cacert},
                  name="never"),
        {"name": "info with wrong password", "teapot.kms.barbican_key_info": {"auth": wrong_password, "ca_cert": keystone.cacert},
         "ignore_errors": True},
    ]
    run = runner.run(tasks)
    wrong = run.task("wrong password")
    assert wrong["failed"] is True
    assert f"Keystone at {keystone.auth_url} rejected the credentials (HTTP 401)" in wrong["msg"]
    unknown = run.task("unknown project")
    assert unknown["failed"] is True
    assert "refused a token for project 'no-such-project'" in unknown["msg"] and "does not exist or the user has no role" in unknown["msg"]
    assert run.task("info with wrong password")["failed"] is True
    assert wrong_password["password"] not in run.output and good["password"] not in run.output


def test_untrusted_certificate_is_explained(runner, keystone, barbican):
    assert keystone.auth_url.startswith("https://") and barbican.url.startswith("https://")
    auth = keystone.plugin_user.auth_dict()
    run = runner.run([
        _key_task("without the CA", {"auth": auth, "region_name": keystone.region_name}, name="never"),
        {"name": "info without the CA", "teapot.kms.barbican_key_info": {"auth": auth, "endpoint_override": barbican.url},
         "ignore_errors": True},
    ])
    for task in ("without the CA", "info without the CA"):
        failed = run.task(task)
        assert failed["failed"] is True
        assert "the TLS handshake failed" in failed["msg"] and "set ca_cert to the CA" in failed["msg"], failed["msg"]
        assert "CERTIFICATE_VERIFY_FAILED" in failed["msg"]
    assert auth["password"] not in run.output


def test_existing_key_that_differs_is_not_replaced(runner, barbican, conn):
    name = _name("kek-differs")
    run = runner.run([
        _key_task("order", conn, name=name),
        _key_task("ask for 128 bits", conn, name=name, bit_length=128),
    ])
    failed = run.task("ask for 128 bits")
    assert failed["failed"] is True
    assert "bit_length is 256, not 128" in failed["msg"] and run.task("order")["key"]["href"] in failed["msg"]


def test_expiration_and_payload_on_request(runner, keystone, barbican, conn):
    name = _name("kek-expiring")
    run = runner.run([
        _key_task("order", conn, name=name, expiration="2040-01-02T03:04:05Z", return_payload=True) | {"no_log": True, "register": "ordered"},
        {"name": "keep",
         "ansible.builtin.copy": {"content": "{{ ordered | to_json }}", "dest": str(runner.workdir / f"{name}.json"), "mode": "0600"}},
        _key_task("same expiration", conn, name=name, expiration="2040-01-02T03:04:05+00:00"),
        _key_task("other expiration", conn, name=name, expiration="2041-01-01T00:00:00Z"),
    ])
    assert run.task("order").get("censored"), "no_log hides the result"
    # The registered result, written by the play itself, carries the payload.
    ordered = json.loads((runner.workdir / f"{name}.json").read_text(encoding="utf-8"))
    assert ordered["key"]["expiration"] == "2040-01-02T03:04:05+00:00"
    assert base64.b64decode(ordered["key"]["payload"]) == _payload(barbican, keystone.plugin_user, ordered["key"]["href"])
    assert run.task("same expiration")["changed"] is False
    assert "expiration is '2040-01-02T03:04:05+00:00', not '2041-01-01T00:00:00+00:00'" in run.task("other expiration")["msg"]
    assert any("expires at 2040-01-02T03:04:05+00:00" in warning and "KMS plugin's keyring" in warning
               for warning in run.task("same expiration")["warnings"])


def test_an_expiring_key_is_refused_in_a_keyring(runner, barbican, conn):
    name = _name("kek-expiring-keyring")
    consumer = {"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "test-cluster"}
    run = runner.run([
        _key_task("order for a keyring", conn, name=name, expiration="2040-01-02T03:04:05Z", consumers=[consumer]),
        _key_task("order without consumer", conn, name=name, expiration="2040-01-02T03:04:05Z"),
        _key_task("put it in a keyring", conn, name=name, consumers=[consumer]),
        _info_task("after", conn, name),
    ])
    refused = run.task("order for a keyring")
    assert refused["failed"] is True and "KMS plugin's keyring (kubernetes/kms-plugin/test-cluster)" in refused["msg"]
    assert run.task("order without consumer")["changed"] is True
    href = run.task("order without consumer")["key"]["href"]
    refused = run.task("put it in a keyring")
    assert refused["failed"] is True
    assert f"the existing key {name!r} ({href}) expires" in refused["msg"] and "Nothing was changed" in refused["msg"]
    assert [(item["href"], item["consumers"]) for item in run.task("after")["barbican_keys"]] == [(href, [])]


def test_clouds_yaml_entry(runner, keystone, barbican, tmp_path):
    clouds = tmp_path / "clouds.yaml"
    entry = {"auth": keystone.plugin_user.auth_dict(), "region_name": keystone.region_name, "cacert": keystone.cacert}
    clouds.write_text(yaml.safe_dump({"clouds": {"teapot-kms": entry}}), encoding="utf-8")
    clouds.chmod(0o600)
    name = _name("kek-cloud")
    run = runner.run([
        _key_task("order by cloud", {"cloud": "teapot-kms"}, name=name) | {"environment": {"OS_CLIENT_CONFIG_FILE": str(clouds)}},
        _key_task("unknown cloud", {"cloud": "no-such-cloud"}, name=name) | {"environment": {"OS_CLIENT_CONFIG_FILE": str(clouds)}},
    ])
    assert run.task("order by cloud")["changed"] is True
    assert run.task("unknown cloud")["failed"] is True and "no-such-cloud" in run.task("unknown cloud")["msg"]


def test_key_id_is_what_the_plugin_reports(runner, keystone, barbican, conn, plugin_user_id, tmp_path):
    name = _name("kek-plugin")
    run = runner.run([_key_task("order", conn, name=name, acl={"users": [plugin_user_id]})])
    key = run.task("order")["key"]
    code, status, log_tail = first_status(keystone.plugin_user, [key["href"]], tmp_path, keystone.region_name)
    assert (code, status["healthz"]) == (0, "ok"), log_tail
    assert status["key_id"] == key["key_id"]
