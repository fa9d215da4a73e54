"""teapot.kms.reencrypt in real playbooks against the kube-apiserver STAND-IN and a real etcd over TLS.

The stand-in (tests/harness/kube_apiserver_standin.py) replaces kube-apiserver,
which cannot run here; these tests use its aescbc provider, so no KMS plugin
is needed (tests/integration/test_encryption_e2e.py runs the whole sequence
with the real plugin).  What is checked here: check mode writes nothing, a
second run finds everything current, an expired continue token in the state
file, and an object the API server refuses to write.
"""

import base64
import json

import pytest
import yaml

from tests.harness.collection import make_importable
from tests.harness.playbook import PlaybookRunner
from tests.harness.standin.process import StandinProcess

make_importable()

# pylint: disable=wrong-import-position
from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdClient  # noqa: E402
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import parse_stored_value  # noqa: E402

pytestmark = pytest.mark.slow

AESCBC = {"aescbc": {"keys": [{"name": "key1", "secret": base64.b64encode(bytes(range(32))).decode()}]}}


def write_config(path, providers):
    document = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                "resources": [{"resources": ["secrets"], "providers": providers}]}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


@pytest.fixture(scope="module")
def etcd_reencrypt(harness_servers):
    """An etcd of this module's own: the tests compact it."""
    return harness_servers.etcd_tls("reencrypt")


@pytest.fixture
def standin(etcd_reencrypt, tmp_path):
    """A stand-in storing Secrets in plaintext, under its own etcd prefix; ``switch()`` puts aescbc first."""
    config = tmp_path / "encryption.yaml"
    write_config(config, [{"identity": {}}, AESCBC])
    prefix = f"/{tmp_path.name}"
    process = StandinProcess(tmp_path / "standin", etcd_reencrypt.endpoints, config, automatic_reload=False,
                             etcd_prefix=prefix, extra_flags=[f"--etcd-cafile={etcd_reencrypt.ca_path}",
                                                              f"--etcd-certfile={etcd_reencrypt.client_cert}",
                                                              f"--etcd-keyfile={etcd_reencrypt.client_key}"])
    process.start()
    process.wait_health("/readyz")

    def switch():
        write_config(config, [AESCBC, {"identity": {}}])
        process.restart()
        process.wait_health("/readyz")

    process.switch = switch
    yield process
    process.stop()
    print(f"--- {process.log_path} ---\n{process.log_tail(40)}")


@pytest.fixture
def etcd(etcd_reencrypt):
    client = EtcdClient(etcd_reencrypt.endpoints, cacert=str(etcd_reencrypt.ca_path), cert=str(etcd_reencrypt.client_cert),
                        key=str(etcd_reencrypt.client_key))
    yield client
    client.close()


def create_secrets(standin, count, namespace="default"):
    for index in range(count):
        status, body = standin.json("POST", f"/api/v1/namespaces/{namespace}/secrets",
                                    {"metadata": {"name": f"s-{index:03d}"}, "stringData": {"marker": f"value-{index}"}})
        assert status == 201, body


def stored_types(etcd, standin):
    """``{name: provider type}`` of every stored Secret, read from etcd."""
    prefix = f"{standin.etcd_prefix}/secrets/"
    return {key[len(prefix):]: parse_stored_value(value).provider_type
            for page in etcd.range_pages(prefix) for key, value, _revision in page}


def reencrypt(standin, tmp_path, **options):
    return {"name": "reencrypt", "teapot.kms.reencrypt": {
        "kubeconfig": str(standin.kubeconfig), "state_file": str(tmp_path / "state" / "reencrypt.json"),
        "progress_log": str(tmp_path / "log" / "reencrypt.log"), "qps": 0, "page_size": 4, **options}}


def test_check_mode_then_rewrite_then_nothing_left(standin, etcd, tmp_path):
    runner = PlaybookRunner(tmp_path / "playbooks")
    create_secrets(standin, 10)
    standin.switch()
    revision = etcd.revision()

    checked = runner.run([reencrypt(standin, tmp_path)], check=True).task("reencrypt")
    assert checked["changed"] is True
    assert checked["summary"] == {"total": 10, "rewritten": 0, "already_current": 0, "deleted": 0, "failed": 0, "conflicts": 0}
    assert etcd.revision() == revision
    assert not (tmp_path / "state").exists() and not (tmp_path / "log").exists()
    assert set(stored_types(etcd, standin).values()) == {"identity"}

    done = runner.run([reencrypt(standin, tmp_path)]).task("reencrypt")
    assert done["changed"] is True and done["resumed"] is False and done["complete"] is True
    assert done["summary"] == {"total": 10, "rewritten": 10, "already_current": 0, "deleted": 0, "failed": 0, "conflicts": 0}
    assert done["resources"] == {"secrets": done["summary"]}
    assert set(stored_types(etcd, standin).values()) == {"aescbc"}
    state = json.loads((tmp_path / "state" / "reencrypt.json").read_text(encoding="utf-8"))
    assert state["completed"] and state["server"] == standin.url
    assert (tmp_path / "state" / "reencrypt.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    log = (tmp_path / "log" / "reencrypt.log").read_text(encoding="utf-8")
    assert "secrets: 10 done (10 rewritten, 0 already current, 0 deleted, 0 failed, 0 conflicts)" in log

    revision = etcd.revision()
    again = runner.run([reencrypt(standin, tmp_path)]).task("reencrypt")
    assert again["changed"] is False and again["resumed"] is False
    assert again["summary"]["already_current"] == again["summary"]["total"] == 10
    assert etcd.revision() == revision


def test_expired_continue_token_starts_the_list_over_after_the_last_object_done(standin, etcd, tmp_path):
    runner = PlaybookRunner(tmp_path / "playbooks")
    create_secrets(standin, 12)
    status, page = standin.json("GET", "/api/v1/secrets?limit=4")
    assert status == 200 and page["metadata"]["continue"]
    standin.switch()
    # Where an interrupted run would have stopped: the first page done up to s-003, its token then compacted away.
    state_path = tmp_path / "state" / "reencrypt.json"
    state_path.parent.mkdir(mode=0o700)
    counts = {"total": 4, "rewritten": 4, "already_current": 0, "deleted": 0, "failed": 0, "conflicts": 0}
    state_path.write_text(json.dumps({"version": 1, "server": standin.url, "started": "2026-01-01T00:00:00Z", "completed": None,
                                      "resources": {"secrets": {"continue": page["metadata"]["continue"], "last": "default/s-003",
                                                                "done": False, "counts": counts}}}), encoding="utf-8")
    etcd.compact(etcd.revision())

    resumed = runner.run([reencrypt(standin, tmp_path)]).task("reencrypt")
    assert resumed["resumed"] is True and resumed["complete"] is True
    assert resumed["summary"]["total"] == 12 and resumed["summary"]["rewritten"] == 12
    # What the state said was done is skipped: those four were never written in this test, so they kept their old provider.
    types = stored_types(etcd, standin)
    assert [name for name, kind in sorted(types.items()) if kind == "identity"] == [f"default/s-{index:03d}" for index in range(4)]
    assert {kind for name, kind in types.items() if name > "default/s-003"} == {"aescbc"}

    fresh = runner.run([reencrypt(standin, tmp_path)]).task("reencrypt")
    assert fresh["resumed"] is False and fresh["summary"]["rewritten"] == 4
    assert set(stored_types(etcd, standin).values()) == {"aescbc"}


def test_object_the_api_server_refuses_fails_the_run_and_the_others_move(standin, etcd, tmp_path):
    runner = PlaybookRunner(tmp_path / "playbooks")
    create_secrets(standin, 5)
    # Stored by something that skipped validation: the API server reads it but refuses to write it back.
    broken = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"marker": "not base64!"},
              "metadata": {"name": "broken", "namespace": "default", "uid": "0c7f6b3e-9a1d-4a8e-bf5e-2f1f8c3d4e5a",
                           "creationTimestamp": "2026-01-01T00:00:00Z"}}
    etcd.put(f"{standin.etcd_prefix}/secrets/default/broken", json.dumps(broken).encode())
    standin.switch()

    run = runner.run([reencrypt(standin, tmp_path)])
    failed = run.task("reencrypt")
    assert failed["failed"] is True
    assert failed["msg"].startswith("1 object could not be rewritten and is still stored as before") and "default/broken: 422" in failed["msg"]
    assert failed["summary"] == {"total": 6, "rewritten": 5, "already_current": 0, "deleted": 0, "failed": 1, "conflicts": 0}
    assert failed["failures"] == [{"resource": "secrets", "namespace": "default", "name": "broken", "status": 422,
                                   "message": failed["failures"][0]["message"]}]
    assert "not base64" in failed["failures"][0]["message"]
    types = stored_types(etcd, standin)
    assert types.pop("default/broken") == "identity" and set(types.values()) == {"aescbc"}
    # The run went through everything: the next one starts over and retries the broken object with the rest.
    assert json.loads((tmp_path / "state" / "reencrypt.json").read_text(encoding="utf-8"))["completed"]


def test_errors_say_what_to_fix(standin, tmp_path):
    runner = PlaybookRunner(tmp_path / "playbooks")
    config = yaml.safe_load(standin.kubeconfig.read_text(encoding="utf-8"))
    config["users"][0]["user"]["token"] = "not-the-token"
    wrong = tmp_path / "wrong-token.conf"
    wrong.write_text(yaml.safe_dump(config), encoding="utf-8")
    refused = runner.run([reencrypt(standin, tmp_path, kubeconfig=str(wrong))]).task("reencrypt")
    assert refused["failed"] is True and "answered GET /api/v1/secrets with 401" in refused["msg"]
    assert f"the credentials of {wrong} must allow list, get and update" in refused["msg"]
    assert "not-the-token" not in json.dumps(refused)

    unknown = runner.run([reencrypt(standin, tmp_path, resources=["secrets", "gadgets.example.com"])]).task("reencrypt")
    assert unknown["failed"] is True
    assert "does not serve the API group example.com of gadgets.example.com: check the resource name" in unknown["msg"]
