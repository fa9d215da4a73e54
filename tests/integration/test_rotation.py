"""The key rotation playbook (teapot.kms.rotate_key) on two control-plane nodes, end to end.

Real components: Keystone and Barbican (the KEKs, the new one ordered by the
key custodian), two KMS plugin daemons (one per "node", each with its own
configuration, socket and state directory), etcd over TLS, and the
collection's playbook run by ansible-playbook against two inventory hosts
(connection local, per-host paths).  kube-apiserver cannot run here: one
STAND-IN per node (tests/harness/kube_apiserver_standin.py) stores the
objects in etcd in kube-apiserver's formats, encrypting through its node's
plugin, and exports the apiserver's KMS metrics that the playbook reads.

The run is stopped on purpose after phase 1 (then a node is down: the
rotation stops with a message and no plugin has the new key), after phase 2,
after 3 and after 4 (``teapot_kms_rotation_stop_after``), each time checked
from the plugins, etcd and the nodes' state files, and run again until it
completes: every object rewritten under the new key, none left under the old
one, the old key gone from every keyring, every object still readable through
both stand-ins, the same plugin processes serving throughout.

An etcd snapshot taken before the rotation is then restored into an etcd of its
own: the audit of the restored keyspace names the old key_id (the key its
backup needs), and a node whose plugin holds only that kept key reads every
object of the snapshot back through its stand-in.
"""

import base64
import hashlib
import sys
import time

import kubernetes.client
import pytest

from tests.harness.control_plane import KMS_NAME, ControlPlaneNode, audit_counts
from tests.harness.etcd import EtcdServer
from tests.harness.playbook import PlaybookRunner
from tests.harness.plugin_daemon import order_kek

pytestmark = pytest.mark.slow

RESOURCES = ["secrets", "configmaps"]
NODES = ("node1", "node2")
OBJECTS = 30


@pytest.fixture(scope="module")
def etcd_rotation(harness_servers):
    """An etcd of this module's own."""
    return harness_servers.etcd_tls("rotation")


@pytest.fixture
def nodes(keystone, barbican, etcd_rotation, tmp_path):
    kek = order_kek(barbican, keystone.plugin_user, f"rotation-a-{time.time_ns()}")
    started = []
    try:
        for name in NODES:
            node = ControlPlaneNode(name, tmp_path / name, keystone.plugin_user, keystone.region_name, kek, etcd_rotation,
                                    RESOURCES)
            started.append(node)
            node.start()
        yield started
    finally:
        for node in started:
            node.stop()


def results(run, task):
    return [result for name, result in run.results if name == task]


def failure(run):
    return " ".join(str(result.get("msg", "")) for _name, result in run.results if result.get("failed"))


def test_rotation_with_proof_interrupted_and_resumed(nodes, keystone, barbican, etcd_rotation, tmp_path, harness_log_dir):
    runner = PlaybookRunner(tmp_path / "playbooks")
    inventory = {"all": {"children": {"kube_control_plane": {"hosts": {node.name: node.host_vars() for node in nodes}}}}}
    new_name = f"rotation-b-{time.time_ns()}"
    extra_vars = {
        "teapot_kms_rotation_become": False, "teapot_kms_rotation_new_key_name": new_name,
        "teapot_kms_keystone_url": keystone.auth_url, "teapot_kms_region_name": keystone.region_name,
        "keystone_kms_user": keystone.plugin_user.username, "keystone_kms_password": keystone.plugin_user.password,
        "keystone_kms_custodian_user": keystone.key_custodian.username,
        "keystone_kms_custodian_password": keystone.key_custodian.password,
        "teapot_kms_cluster_name": "rotation-cluster",
        "teapot_kms_rotation_etcd": etcd_rotation.client_options(), "teapot_kms_rotation_audit_delay": 1,
        "kube_encryption_resources": RESOURCES, "teapot_kms_reencrypt_install_client": False,
        "teapot_kms_reencrypt_python": sys.executable, "teapot_kms_reencrypt_become": False,
        "teapot_kms_reencrypt_kubeconfig": str(nodes[0].standin.kubeconfig), "teapot_kms_reencrypt_qps": 0,
        "teapot_kms_reencrypt_state_file": str(tmp_path / "reencrypt-state.json"),
        "teapot_kms_reencrypt_progress_log": str(tmp_path / "reencrypt.log"), "teapot_kms_reencrypt_poll": 1,
    }

    def rotate(stop_after=0):
        return runner.run_playbook("teapot.kms.rotate_key", inventory,
                                   extra_vars=dict(extra_vars, teapot_kms_rotation_stop_after=stop_after))

    def audit(etcd=etcd_rotation):
        return audit_counts(runner, etcd, RESOURCES)

    # Objects written through node 1's apiserver under key A.
    old_key_id = nodes[0].status()["key_id"]
    assert nodes[1].status()["key_id"] == old_key_id
    core = kubernetes.client.CoreV1Api(nodes[0].standin.api_client())
    expected = {}
    for index in range(OBJECTS):
        name = f"obj-{index:03d}"
        marker = f"MARKER-{name}"
        core.create_namespaced_secret("app", kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(name=name), string_data={"marker": marker}))
        expected[("secrets", name)] = {"marker": base64.b64encode(marker.encode()).decode()}
        if index % 3 == 0:
            core.create_namespaced_config_map("app", kubernetes.client.V1ConfigMap(
                metadata=kubernetes.client.V1ObjectMeta(name=name), data={"marker": marker}))
            expected[("configmaps", name)] = {"marker": marker}
    total = len(expected)
    assert audit() == {"secrets": {f"kms-v2/{KMS_NAME}/{old_key_id}": OBJECTS},
                       "configmaps": {f"kms-v2/{KMS_NAME}/{old_key_id}": total - OBJECTS}}
    # The backup of the control plane before the rotation, and the key it was written with.
    snapshot = etcd_rotation.snapshot(tmp_path / "etcd-before-rotation.db")
    old_keyring = nodes[0].keyring()
    before_rotation = dict(expected)

    # Phase 1 only: the new key is ordered and recorded on both nodes; nothing else changed.
    first = rotate(stop_after=1)
    assert first.returncode == 0, first.output[-4000:]
    state = nodes[0].state()
    assert state == nodes[1].state()
    assert state["phase"] == 1 and state["old_key"]["key_id"] == old_key_id and state["new_key"]["name"] == new_name
    new_key_id, new_href = state["new_key"]["key_id"], state["new_key"]["href"]
    assert new_key_id != old_key_id and new_href.endswith(new_key_id.split(":", 1)[1])
    for node in nodes:
        assert [key["key_id"] for key in node.status()["keys"]] == [old_key_id]

    # Node 2's plugin is down: the rotation stops before phase 2, says which node and how to continue.
    nodes[1].plugin.stop()
    down = rotate()
    assert down.returncode != 0
    message = failure(down)
    assert "node2" in message and "never skipped" in message and "run teapot.kms.rotate_key again" in message.lower(), message
    assert nodes[0].status()["key_id"] == old_key_id and nodes[0].keyring() == nodes[1].keyring() == [nodes[0].keyring()[0]]
    assert nodes[0].state()["phase"] == nodes[1].state()["phase"] == 1
    nodes[1].plugin.start()
    nodes[1].standin.wait_health("/healthz/kms-providers")
    pids = {node.name: node.status()["pid"] for node in nodes}

    # Phase 2: both plugins hold B, decrypt-only; A is still what they encrypt with.
    second = rotate(stop_after=2)
    assert second.returncode == 0, second.output[-4000:]
    for node in nodes:
        status = node.status()
        assert status["key_id"] == old_key_id and status["all_keys_loaded"] is True
        assert [(key["key_id"], key["role"]) for key in status["keys"]] == [(old_key_id, "primary"), (new_key_id, "decrypt-only")]
        assert node.state()["phase"] == 2
    assert audit()["secrets"] == {f"kms-v2/{KMS_NAME}/{old_key_id}": OBJECTS}

    # Phase 3: B is primary everywhere; both apiservers received it from Status; new writes go under B.
    third = rotate(stop_after=3)
    assert third.returncode == 0, third.output[-4000:]
    for node in nodes:
        status = node.status()
        assert status["key_id"] == new_key_id and status["pid"] == pids[node.name]
        assert [key["key_id"] for key in status["keys"]] == [new_key_id, old_key_id]
        assert node.state()["phase"] == 3
        seen = {labels["key_id_hash"]: value for labels, value in node.standin.metric_samples(
            "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds")}
        new_hash = "sha256:" + hashlib.sha256(new_key_id.encode()).hexdigest()
        assert new_hash in seen
    core.create_namespaced_secret("app", kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name="zz-after-phase-3"), string_data={"marker": "MARKER-after"}))
    expected[("secrets", "zz-after-phase-3")] = {"marker": base64.b64encode(b"MARKER-after").decode()}
    total += 1
    counts = audit()["secrets"]
    assert counts == {f"kms-v2/{KMS_NAME}/{old_key_id}": OBJECTS, f"kms-v2/{KMS_NAME}/{new_key_id}": 1}

    # Phase 4: every object rewritten; the keyrings still hold A.
    fourth = rotate(stop_after=4)
    assert fourth.returncode == 0, fourth.output[-4000:]
    assert results(fourth, "Rewrite every object through the API server")[0]["summary"]["failed"] == 0
    counts = audit()
    assert counts == {"secrets": {f"kms-v2/{KMS_NAME}/{new_key_id}": OBJECTS + 1},
                      "configmaps": {f"kms-v2/{KMS_NAME}/{new_key_id}": total - OBJECTS - 1}}
    for node in nodes:
        assert node.state()["phase"] == 4 and old_key_id in [key["key_id"] for key in node.status()["keys"]]

    # The rest: the audit proves zero under A, then A leaves every keyring.
    last = rotate()
    assert last.returncode == 0, last.output[-4000:]
    # With the KMS plugin's Python, which the nodes have (kms_plugin_venv_path): over etcd's gRPC API.
    assert last.task("Phase 5, audit etcd until no object references the old key_id")["transport"] == "grpc"
    for node in nodes:
        status = node.status()
        assert status["key_id"] == new_key_id and status["pid"] == pids[node.name] and status["all_keys_loaded"] is True
        assert [key["key_id"] for key in status["keys"]] == [new_key_id]
        assert node.keyring() == [new_href]
        state = node.state()
        assert state["phase"] == 6 and state["completed"] and state["new_key"]["key_id"] == new_key_id
        assert state["audit"]["total"] == total
    # Ordered once, whatever the number of runs.
    custodian = barbican.client(keystone.key_custodian)
    assert [secret.secret_ref for secret in custodian.secrets.list(name=new_name)] == [new_href]
    # Every object reads back, through either node's apiserver.
    for node in nodes:
        node.standin.wait_health("/healthz/kms-providers")
        api = kubernetes.client.CoreV1Api(node.standin.api_client())
        for (resource, name), content in expected.items():
            read = api.read_namespaced_secret(name, "app") if resource == "secrets" else api.read_namespaced_config_map(name, "app")
            assert read.data == content, (node.name, resource, name)

    # The snapshot taken before the rotation, restored: its objects reference only the old key_id, and a
    # node whose plugin holds that kept key (never deleted in Barbican) reads every one of them back.
    restored = EtcdServer(tmp_path / "etcd-restored", harness_log_dir, name="restored", tls=True)
    restored.restore_from = snapshot
    recovery = None
    try:
        restored.start()
        assert audit(restored) == {"secrets": {f"kms-v2/{KMS_NAME}/{old_key_id}": OBJECTS},
                                   "configmaps": {f"kms-v2/{KMS_NAME}/{old_key_id}": len(before_rotation) - OBJECTS}}
        recovery = ControlPlaneNode("recovery", tmp_path / "recovery", keystone.plugin_user, keystone.region_name,
                                    old_keyring[0], restored, RESOURCES).start()
        assert recovery.status()["key_id"] == old_key_id
        api = kubernetes.client.CoreV1Api(recovery.standin.api_client())
        for (resource, name), content in before_rotation.items():
            read = api.read_namespaced_secret(name, "app") if resource == "secrets" else api.read_namespaced_config_map(name, "app")
            assert read.data == content, ("snapshot", resource, name)
    finally:
        if recovery is not None:
            recovery.stop()
        restored.stop()
