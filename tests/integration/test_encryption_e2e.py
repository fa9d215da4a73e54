"""From plaintext and aescbc to KMS v2, end to end.

Real components: Keystone and Barbican (the KEK), the KMS plugin daemon,
etcd over TLS, and the collection's modules and playbook run by
ansible-playbook.  kube-apiserver cannot run here: a STAND-IN for it
(tests/harness/kube_apiserver_standin.py) serves the Kubernetes API and
stores the objects in etcd in kube-apiserver's formats, encrypting through
the real plugin.

The sequence is the one an operator runs: objects exist in plaintext and
under aescbc; ``teapot.kms.encryption_config`` puts the KMS v2 provider
first; removing ``identity`` is refused while objects still need it; the
``teapot.kms.reencrypt`` playbook is interrupted part-way (Ansible's async
timeout kills the module) and run again, which resumes, while an object is
changed and another deleted behind its back; the audit
(``teapot.kms.secret_encryption_info``) then finds every object under KMS v2
with the plugin's key_id, every object reads back with its content,
``identity`` may go, and after etcd compaction no older revision, which held
the plaintext, can be read.
"""

import base64
import hashlib
import json
import sys
import threading
import time

import kubernetes.client
import pytest
import yaml

from tests.harness.collection import make_importable
from tests.harness.playbook import PlaybookRunner
from tests.harness.plugin_daemon import running_plugin
from tests.harness.standin.process import StandinProcess

make_importable()

# pylint: disable=wrong-import-position
from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdClient, EtcdError  # noqa: E402

pytestmark = pytest.mark.slow

KMS_NAME = "teapot"
RESOURCES = ["secrets", "configmaps", "widgets.example.com"]
REENCRYPT_TASK = "Rewrite every object through the API server"
STATE_POLL = 0.05


def write_config(path, providers):
    document = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                "resources": [{"resources": RESOURCES, "providers": providers}]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(document), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)


def wait_config_applied(standin, path, timeout=60.0):
    """Wait until the stand-in reports the file's current content as its configuration (automatic reload)."""
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = [labels.get("hash") for labels, value in
                   standin.metric_samples("apiserver_encryption_config_controller_last_config_info") if value == 1]
        if digest in applied:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the stand-in did not apply {path} within {timeout:.0f}s; log:\n{standin.log_tail()}")


def read_state(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def secrets_done(state):
    return ((state or {}).get("resources", {}).get("secrets") or {}).get("counts", {}).get("total", 0)


class Cluster:
    """The objects of the test, written and read through the stand-in with the kubernetes client."""

    def __init__(self, standin):
        client = standin.api_client()
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.expected = {}

    def create(self, namespace, count):
        """``count`` Secrets, a ConfigMap per two Secrets and a Widget per four, each with a marker of its own."""
        for index in range(count):
            name = f"obj-{index:03d}"
            marker = f"MARKER-{namespace}-{name}"
            created = self.core.create_namespaced_secret(namespace, kubernetes.client.V1Secret(
                metadata=kubernetes.client.V1ObjectMeta(name=name), string_data={"marker": marker}))
            self.expected[("secrets", namespace, name)] = {"marker": base64.b64encode(marker.encode()).decode()}
            if index % 2 == 0:
                self.core.create_namespaced_config_map(namespace, kubernetes.client.V1ConfigMap(
                    metadata=kubernetes.client.V1ObjectMeta(name=name), data={"marker": marker}))
                self.expected[("configmaps", namespace, name)] = {"marker": marker}
            if index % 4 == 0:
                self.custom.create_namespaced_custom_object("example.com", "v1", namespace, "widgets", {
                    "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"marker": marker}})
                self.expected[("widgets.example.com", namespace, name)] = {"marker": marker}
        return created

    def content(self, resource, namespace, name):
        if resource == "secrets":
            return self.core.read_namespaced_secret(name, namespace).data
        if resource == "configmaps":
            return self.core.read_namespaced_config_map(name, namespace).data
        return self.custom.get_namespaced_custom_object("example.com", "v1", namespace, "widgets", name)["spec"]


@pytest.fixture(scope="module")
def etcd_e2e(harness_servers):
    """An etcd of this module's own: the test compacts it."""
    return harness_servers.etcd_tls("e2e")


@pytest.fixture
def plugin(keystone, barbican, tmp_path):
    with running_plugin(keystone, barbican, tmp_path, "e2e-kek") as process:
        yield process


@pytest.fixture
def standin(etcd_e2e, tmp_path):
    config = tmp_path / "encryption" / "config.yaml"
    config.parent.mkdir(mode=0o700)
    write_config(config, [{"identity": {}}])
    process = StandinProcess(tmp_path / "standin", etcd_e2e.endpoints, config, kms_poll_interval=1, kms_healthz_ttl=1, extra_flags=[
        f"--etcd-cafile={etcd_e2e.ca_path}", f"--etcd-certfile={etcd_e2e.client_cert}", f"--etcd-keyfile={etcd_e2e.client_key}",
        "--standin-custom-resource=widgets.example.com/v1/Widget"])
    process.start()
    process.wait_health("/readyz")
    process.config_path = config
    yield process
    process.stop()
    print(f"--- {process.log_path} ---\n{process.log_tail(40)}")


def test_plaintext_and_aescbc_objects_move_to_kms_v2(plugin, standin, etcd_e2e, tmp_path):
    runner = PlaybookRunner(tmp_path / "playbooks")
    config = standin.config_path
    etcd_options = etcd_e2e.client_options()
    key_id = plugin.status_command()[1]["key_id"]
    cluster = Cluster(standin)
    aescbc = {"aescbc": {"keys": [{"name": "key1", "secret": base64.b64encode(bytes(range(32))).decode()}]}}

    # Objects written in plaintext, then under aescbc; two more that the test changes and deletes mid-run.
    write_config(config, [{"identity": {}}, aescbc])
    wait_config_applied(standin, config)
    first_plain = cluster.core.create_namespaced_secret("app-plain", kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name="first"), string_data={"marker": "MARKER-first-plaintext"}))
    cluster.expected[("secrets", "app-plain", "first")] = {"marker": base64.b64encode(b"MARKER-first-plaintext").decode()}
    cluster.create("app-plain", 40)
    for name in ("changed", "deleted"):
        cluster.core.create_namespaced_secret("zz-late", kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(name=name), string_data={"marker": f"MARKER-zz-late-{name}"}))
    write_config(config, [aescbc, {"identity": {}}])
    wait_config_applied(standin, config)
    cluster.create("app-aescbc", 40)

    def audit(**options):
        run = runner.run([{"name": "audit", "teapot.kms.secret_encryption_info": {
            "etcd": etcd_options, "resources": RESOURCES, "expected_provider": KMS_NAME, "expected_key_id": key_id,
            "list": "all", **options}}])
        return run.task("audit")

    before = audit()
    assert before["counts"]["secrets"] == {"identity/-/-": 43, "aescbc/key1/-": 40}
    assert before["counts"]["configmaps"] == {"identity/-/-": 20, "aescbc/key1/-": 20}
    assert before["counts"]["widgets.example.com"] == {"identity/-/-": 10, "aescbc/key1/-": 10}

    # KMS v2 first, the providers that still hold objects kept behind it.
    switch = runner.run([{"name": "switch", "teapot.kms.encryption_config": {
        "path": str(config), "resources": RESOURCES,
        "kms": {"name": KMS_NAME, "endpoint": f"unix://{plugin.socket}", "timeout": "5s"}}}]).task("switch")
    assert switch["changed"] is True, switch
    assert [provider["type"] for provider in switch["providers"]] == ["kms", "aescbc", "identity"]
    wait_config_applied(standin, config)
    standin.wait_health("/healthz/kms-providers")

    # identity still holds objects: its removal is refused, and the file stays as it is.
    switched = config.read_bytes()
    refused = runner.run([{"name": "remove", "teapot.kms.encryption_config": {
        "path": str(config), "resources": RESOURCES, "kms": {"name": KMS_NAME, "endpoint": f"unix://{plugin.socket}"},
        "remove_providers": ["identity"], "audit": before}}]).task("remove")
    assert refused.get("failed") is True and "identity" in refused["msg"], refused
    assert config.read_bytes() == switched

    state_file = tmp_path / "state" / "reencrypt.json"
    progress_log = tmp_path / "log" / "reencrypt.log"
    playbook_vars = {
        "teapot_kms_reencrypt_install_client": False, "teapot_kms_reencrypt_python": sys.executable,
        "teapot_kms_reencrypt_become": False, "teapot_kms_reencrypt_kubeconfig": str(standin.kubeconfig),
        "teapot_kms_reencrypt_resources": RESOURCES, "teapot_kms_reencrypt_state_file": str(state_file),
        "teapot_kms_reencrypt_progress_log": str(progress_log), "teapot_kms_reencrypt_poll": 1,
    }

    # Check mode counts what would be written back and writes nothing: no object, no state, no log.
    etcd = EtcdClient(etcd_options["endpoints"], cacert=etcd_options["cacert"], cert=etcd_options["cert"], key=etcd_options["key"])
    revision = etcd.revision()
    checked = runner.run_playbook("teapot.kms.reencrypt", runner.local_inventory(["kube_control_plane"]),
                                  extra_vars=dict(playbook_vars, teapot_kms_reencrypt_qps=0), check=True)
    assert checked.returncode == 0, checked.output[-3000:]
    assert checked.task(REENCRYPT_TASK)["summary"]["total"] == 143
    assert checked.task("Show the counts")["msg"].startswith("143 objects would be written back")
    assert etcd.revision() == revision and not state_file.exists() and not progress_log.exists()

    # Interrupted: at 5 requests per second, Ansible's async timeout kills the module part-way through the Secrets.
    interrupted = runner.run_playbook("teapot.kms.reencrypt", runner.local_inventory(["kube_control_plane"]), extra_vars=dict(
        playbook_vars, teapot_kms_reencrypt_qps=5, teapot_kms_reencrypt_page_size=10, teapot_kms_reencrypt_async_timeout=4))
    assert interrupted.returncode != 0
    assert interrupted.task(REENCRYPT_TASK)["msg"] == "Timeout exceeded"
    # The poller reports the timeout before the async wrapper's kill lands on
    # a loaded machine: take the state once it has held still for 3 s (a run
    # that is never killed writes every 0.2 s and never holds still).
    stopped, still_since, deadline = read_state(state_file), time.monotonic(), time.monotonic() + 60
    while time.monotonic() - still_since < 3:
        assert time.monotonic() < deadline, "the interrupted run went on writing for a minute"
        time.sleep(0.5)
        current = read_state(state_file)
        if current != stopped:
            stopped, still_since = current, time.monotonic()
    assert stopped["completed"] is None and stopped["resources"]["secrets"]["done"] is False
    assert 0 < secrets_done(stopped) < 85 and stopped["resources"]["secrets"]["last"] < "zz-late/"
    assert "starting: secrets, configmaps, widgets.example.com" in progress_log.read_text(encoding="utf-8")
    time.sleep(2)
    assert read_state(state_file) == stopped, "the interrupted run went on writing"
    partial = audit()["counts"]["secrets"]
    assert partial.get(f"kms-v2/{KMS_NAME}/{key_id}", 0) > 0 and partial.get("identity/-/-", 0) > 0

    # Resumed, while one object is changed and another deleted ahead of the run.
    resumed = {}
    thread = threading.Thread(target=lambda: resumed.setdefault("run", runner.run_playbook(
        "teapot.kms.reencrypt", runner.local_inventory(["kube_control_plane"]),
        extra_vars=dict(playbook_vars, teapot_kms_reencrypt_qps=10))))
    thread.start()
    deadline = time.monotonic() + 120
    while secrets_done(read_state(state_file)) <= secrets_done(stopped) and time.monotonic() < deadline:
        time.sleep(STATE_POLL)
    assert read_state(state_file)["resources"]["secrets"]["last"] < "zz-late/", "the run reached the objects too soon"
    changed = cluster.core.read_namespaced_secret("changed", "zz-late")
    changed.data = {"marker": base64.b64encode(b"MARKER-zz-late-changed-during-the-run").decode()}
    cluster.core.replace_namespaced_secret("changed", "zz-late", changed)
    cluster.core.delete_namespaced_secret("deleted", "zz-late")
    thread.join(300)
    assert not thread.is_alive()
    run = resumed["run"]
    assert run.returncode == 0, run.output[-3000:]
    result = run.task(REENCRYPT_TASK)
    assert result["resumed"] is True and result["complete"] is True and result["failures"] == []
    summary = result["summary"]
    assert summary["failed"] == 0
    assert summary["deleted"] == 1 and summary["conflicts"] >= 1
    # Every object counted once, all 143 of them, the deleted one included. Only the changed one was current
    # already, and maybe the one in flight at the kill (rewritten, but not yet recorded).
    assert summary["total"] == 143
    assert summary["rewritten"] + summary["already_current"] + summary["deleted"] == summary["total"]
    assert 140 <= summary["rewritten"] <= 141
    assert read_state(state_file)["completed"]
    assert "finished: all:" in progress_log.read_text(encoding="utf-8")

    # The audit: every object under KMS v2 with the plugin's key_id; every object reads back unchanged.
    after = audit(fail_on_unexpected=True)
    assert after.get("failed") is not True, after.get("msg")
    assert after["unexpected"] == 0 and after["total"] == 142
    for resource in RESOURCES:
        assert list(after["counts"][resource]) == [f"kms-v2/{KMS_NAME}/{key_id}"]
    for (resource, namespace, name), content in cluster.expected.items():
        assert cluster.content(resource, namespace, name) == content, (resource, namespace, name)
    assert cluster.core.read_namespaced_secret("changed", "zz-late").data == changed.data
    with pytest.raises(kubernetes.client.exceptions.ApiException) as gone:
        cluster.core.read_namespaced_secret("deleted", "zz-late")
    assert gone.value.status == 404

    # Now identity may go.
    removed = runner.run([{"name": "remove", "teapot.kms.encryption_config": {
        "path": str(config), "resources": RESOURCES, "kms": {"name": KMS_NAME, "endpoint": f"unix://{plugin.socket}"},
        "remove_providers": ["identity"], "audit": after}}]).task("remove")
    assert removed["changed"] is True and removed["removed"] == ["identity"], removed
    assert [provider["type"] for provider in removed["providers"]] == ["kms", "aescbc"]
    wait_config_applied(standin, config)
    assert cluster.content("secrets", "app-plain", "first") == cluster.expected[("secrets", "app-plain", "first")]

    # The revision the plaintext was written at is still in etcd until compaction.
    first_key = "/registry/secrets/app-plain/first"
    old_revision = int(first_plain.metadata.resource_version)
    old_values = [value for page in etcd.range_pages(first_key, revision=old_revision) for key, value, _rev in page if key == first_key]
    # Secret data is stored base64-encoded: the plaintext's encoded form is what shows.
    encoded_marker = base64.b64encode(b"MARKER-first-plaintext")
    assert old_values and encoded_marker in old_values[0]
    assert encoded_marker not in etcd.get(first_key)[0]

    compacted = runner.run_playbook("teapot.kms.reencrypt", runner.local_inventory(["kube_control_plane"]), extra_vars=dict(
        playbook_vars, teapot_kms_reencrypt_qps=0, teapot_kms_reencrypt_etcd_compact=True,
        teapot_kms_reencrypt_etcd_defragment=True, teapot_kms_reencrypt_etcd=etcd_options))
    assert compacted.returncode == 0, compacted.output[-3000:]
    final = compacted.task(REENCRYPT_TASK)
    assert final["resumed"] is False and final["summary"]["already_current"] == final["summary"]["total"] == 142
    assert final["etcd"]["compacted"] is True and final["etcd"]["defragmented"] == etcd_options["endpoints"]
    assert any("compacted" in warning for warning in final["warnings"])
    with pytest.raises(EtcdError, match="compacted"):
        list(etcd.range_pages(first_key, revision=old_revision))
    etcd.close()
    assert cluster.content("secrets", "app-plain", "first") == cluster.expected[("secrets", "app-plain", "first")]
