"""The wiring modules against a running kube-apiserver STAND-IN (tests/harness/kube_apiserver_standin.py) on real etcd.

kube-apiserver cannot run here; the stand-in reads the same static pod
manifest, EncryptionConfiguration and flags, reloads the configuration as
kube-apiserver does, and serves the API the kubernetes client uses.  The
modules run in real playbooks (ansible-playbook, connection local):

- ``teapot.kms.kubeadm_config`` edits the kubeadm-config ConfigMap through the
  API (v1beta3 and v1beta4), idempotently, and leaves it alone in check mode;
- ``teapot.kms.encryption_config`` rewrites the file with the real KMS plugin
  (Keystone, Barbican) as its provider; the stand-in reloads it and
  ``teapot.kms.kube_apiserver_info`` sees the reload, and sees a reload that
  the stand-in rejects (a KMS provider whose socket does not exist);
- ``teapot.kms.kube_apiserver_manifest`` wires the static pod manifest; the
  kubelet stand-in restarts the process, ``kube_apiserver_info`` waits for
  the restarted one, which loads the file through the new hostPath mount.
"""

import base64
import pathlib

import pytest
import yaml

from tests.harness.collection import make_importable
from tests.harness.playbook import PlaybookRunner
from tests.harness.plugin_daemon import running_plugin
from tests.harness.standin.process import StandinProcess

make_importable()

# pylint: disable=wrong-import-position
from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdClient  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "unit" / "plugins" / "modules" / "fixtures"
AESCBC = base64.b64encode(b"integration-test-aescbc-key-32b!").decode()
FLAGS = {"encryption-provider-config": "/etc/kubernetes/encryption/config.yaml",
         "encryption-provider-config-automatic-reload": "true"}
VOLUMES = [{"name": "teapot-kms-socket", "host_path": "/run/teapot-kms", "mount_path": "/run/teapot-kms"}]


@pytest.fixture(scope="module")
def plugin(keystone, barbican, tmp_path_factory):
    """The real KMS plugin daemon with a KEK ordered in the real Barbican."""
    with running_plugin(keystone, barbican, tmp_path_factory.mktemp("plugin"), "wiring-kek") as process:
        yield process


@pytest.fixture
def runner(tmp_path):
    return PlaybookRunner(tmp_path / "ansible")


def aescbc_config(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": [
            {"aescbc": {"keys": [{"name": "key1", "secret": AESCBC}]}}, {"identity": {}}]}]}))
    path.chmod(0o600)
    return path


@pytest.fixture
def standin(tmp_path, etcd):
    config = aescbc_config(tmp_path / "encryption" / "config.yaml")
    process = StandinProcess(tmp_path / "standin", etcd.endpoints, encryption_config=str(config), kms_poll_interval=1,
                             kms_healthz_ttl=1, etcd_prefix=f"/registry-{tmp_path.name}")
    process.config = config
    with process:
        process.wait_health("/readyz")
        yield process
    print(f"--- {process.log_path} ---\n{process.log_tail(60)}")


def info_args(standin, **extra):
    return dict({"url": standin.url, "ca_cert": str(standin.pki.cert_path), "tls_server_name": "localhost",
                 "client_cert": "", "token": standin.token, "timeout": 60, "delay": 1}, **extra)


def single(run, name):
    results = [result for task, result in run.results if task == name]
    assert results, f"task {name!r} did not run:\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    return results[0]


@pytest.mark.parametrize("version", ["v1beta3", "v1beta4"])
def test_kubeadm_config_through_the_api(runner, standin, version):
    text = (FIXTURES / f"cluster-configuration-{version}.yaml").read_text()
    status, _body = standin.json("POST", "/api/v1/namespaces/kube-system/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": text}})
    assert status == 201
    task = {"name": "wire", "teapot.kms.kubeadm_config": {"kubeconfig": str(standin.kubeconfig), "flags": FLAGS,
                                                          "volumes": VOLUMES}}

    checked = single(runner.run([task], check=True, diff=True), "wire")
    assert checked["changed"] and "encryption-provider-config" in checked["diff"]["after"]
    assert standin.json("GET", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config")[1]["data"][
        "ClusterConfiguration"] == text

    first = single(runner.run([task]), "wire")
    assert first["changed"] and first["api_version"] == f"kubeadm.k8s.io/{version}"
    stored = yaml.safe_load(standin.json("GET", "/api/v1/namespaces/kube-system/configmaps/kubeadm-config")[1]["data"][
        "ClusterConfiguration"])
    extra_args = stored["apiServer"]["extraArgs"]
    if version == "v1beta3":
        assert extra_args == {"audit-log-maxage": "30", "authorization-mode": "Node,RBAC", **FLAGS}
    else:
        assert extra_args[2:] == [{"name": name, "value": value} for name, value in FLAGS.items()]
    assert stored["apiServer"]["extraVolumes"] == [{"hostPath": "/run/teapot-kms", "mountPath": "/run/teapot-kms",
                                                    "name": "teapot-kms-socket", "pathType": "DirectoryOrCreate"}]
    assert stored["kubernetesVersion"] == yaml.safe_load(text)["kubernetesVersion"]

    second = single(runner.run([task]), "wire")
    assert not second["changed"] and second["previous_flags"] == FLAGS


def test_a_reload_is_seen_and_secrets_stay_readable(runner, standin, plugin, etcd):
    status, _body = standin.json("POST", "/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "under-aescbc"}, "stringData": {"k": "value-1"}})
    assert status == 201
    run = runner.run([
        {"name": "before", "teapot.kms.kube_apiserver_info": info_args(standin), "register": "before"},
        {"name": "rewrite", "teapot.kms.encryption_config": {
            "path": str(standin.config), "primary": False,
            "kms": {"name": "teapot-kms", "endpoint": f"unix://{plugin.socket}"}}, "register": "written"},
        {"name": "after", "teapot.kms.kube_apiserver_info": info_args(
            standin, changed_from="{{ before.state }}", wait_healthy=True, kms_health=False)},
    ])
    written, after = single(run, "rewrite"), single(run, "after")
    assert written["changed"] and not after.get("failed"), after.get("msg")
    assert [p["type"] for p in written["providers"]] == ["aescbc", "kms", "identity"]
    assert after["state"]["reload_success"] == single(run, "before")["state"]["reload_success"] + 1
    assert after["state"]["config_hashes"] == [f"sha256:{written['sha256']}"]
    status, secret = standin.json("GET", "/api/v1/namespaces/default/secrets/under-aescbc")
    assert status == 200 and base64.b64decode(secret["data"]["k"]) == b"value-1"

    # Step two: the KMS provider first; what is written now is stored under it.
    run = runner.run([
        {"name": "before", "teapot.kms.kube_apiserver_info": info_args(standin), "register": "before"},
        {"name": "primary", "teapot.kms.encryption_config": {
            "path": str(standin.config), "kms": {"name": "teapot-kms", "endpoint": f"unix://{plugin.socket}"}},
         "register": "primary"},
        {"name": "after", "teapot.kms.kube_apiserver_info": info_args(
            standin, changed_from="{{ before.state }}", wait_healthy=True)},
    ])
    primary, after = single(run, "primary"), single(run, "after")
    assert primary["changed"] and [p["type"] for p in primary["providers"]] == ["kms", "aescbc", "identity"]
    assert not after.get("failed"), after.get("msg")
    status, _body = standin.json("POST", "/api/v1/namespaces/default/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "under-kms"}, "stringData": {"k": "value-2"}})
    assert status == 201
    client = EtcdClient(etcd.endpoints)
    try:
        stored, _revision = client.get(f"{standin.etcd_prefix}/secrets/default/under-kms")
        older, _revision = client.get(f"{standin.etcd_prefix}/secrets/default/under-aescbc")
    finally:
        client.close()
    assert stored.startswith(b"k8s:enc:kms:v2:teapot-kms:") and older.startswith(b"k8s:enc:aescbc:v1:key1:")


def test_a_rejected_reload_fails_at_once(runner, standin, tmp_path):
    run = runner.run([
        {"name": "before", "teapot.kms.kube_apiserver_info": info_args(standin), "register": "before"},
        {"name": "break", "teapot.kms.encryption_config": {
            "path": str(standin.config), "kms": {"endpoint": f"unix://{tmp_path}/nowhere/kms.sock"}}},
        {"name": "after", "teapot.kms.kube_apiserver_info": info_args(
            standin, changed_from="{{ before.state }}", wait_healthy=True, timeout=120)},
    ])
    after = single(run, "after")
    assert after["failed"]
    assert after["msg"] == (f"kube-apiserver at {standin.url}: it rejected the changed EncryptionConfiguration "
                            "(automatic reload failed)")
    assert after["healthy"], "the stand-in keeps serving with the configuration it had"


def test_a_manifest_change_restarts_and_is_waited_for(runner, standin, tmp_path):
    manifest = standin.use_manifest(tmp_path / "manifests" / "kube-apiserver.yaml",
                                    [("standin", str(standin.base_dir), "Directory"),
                                     ("config", str(standin.config.parent), "DirectoryOrCreate")])
    standin.restart()
    standin.wait_health("/readyz")
    watcher = standin.watch_manifest()
    moved = aescbc_config(tmp_path / "moved" / "config.yaml")
    run = runner.run([
        {"name": "before", "teapot.kms.kube_apiserver_info": info_args(standin), "register": "before"},
        {"name": "wire", "teapot.kms.kube_apiserver_manifest": {
            "path": str(manifest), "backup_dir": str(tmp_path / "backups"),
            "flags": {"encryption-provider-config": str(moved)},
            "volumes": [{"name": "moved", "host_path": str(moved.parent), "mount_path": str(moved.parent),
                         "read_only": True}]}},
        {"name": "after", "teapot.kms.kube_apiserver_info": info_args(
            standin, changed_from="{{ before.state }}", wait_healthy=True, kms_health=False)},
    ])
    watcher.stop()
    wired, after = single(run, "wire"), single(run, "after")
    assert wired["changed"] and wired["previous_flags"] == {"encryption-provider-config": str(standin.config)}
    assert not after.get("failed"), after.get("msg")
    assert standin.restarts >= 2
    assert pathlib.Path(wired["backup_file"]).parent == tmp_path / "backups"
