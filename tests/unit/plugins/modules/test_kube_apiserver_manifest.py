"""teapot.kms.kube_apiserver_manifest on a manifest as kubeadm 1.32 writes it: every other field kept, backup outside."""

import copy
import difflib
import os
import pathlib
import stat

import pytest
import yaml

from ansible_collections.teapot.kms.plugins.module_utils import _kube_apiserver as ka
from ansible_collections.teapot.kms.plugins.modules import kube_apiserver_manifest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
KUBEADM_MANIFEST = (FIXTURES / "kube-apiserver.yaml").read_text()
FLAGS = {
    "encryption-provider-config": "/etc/kubernetes/encryption/config.yaml",
    "encryption-provider-config-automatic-reload": True,
}
VOLUMES = [
    {"name": "teapot-kms-encryption-config", "host_path": "/etc/kubernetes/encryption",
     "mount_path": "/etc/kubernetes/encryption", "read_only": True},
    {"name": "teapot-kms-socket", "host_path": "/run/teapot-kms", "mount_path": "/run/teapot-kms"},
]


@pytest.fixture
def node(tmp_path):
    manifests = tmp_path / "etc" / "kubernetes" / "manifests"
    manifests.mkdir(parents=True)
    manifest = manifests / "kube-apiserver.yaml"
    manifest.write_text(KUBEADM_MANIFEST)
    manifest.chmod(0o600)
    return {"manifest": manifest, "backups": tmp_path / "var" / "backups" / "teapot-kms"}


@pytest.fixture
def run(run_module, node):
    def call(check=False, diff=False, **args):
        args.setdefault("path", str(node["manifest"]))
        args.setdefault("backup_dir", str(node["backups"]))
        args.setdefault("flags", FLAGS)
        args.setdefault("volumes", VOLUMES)
        if check:
            args["_ansible_check_mode"] = True
        if diff:
            args["_ansible_diff"] = True
        return run_module(kube_apiserver_manifest.main, args)

    return call


def without_wiring(manifest):
    """The manifest with the flags and volumes of this module taken out again."""
    manifest = copy.deepcopy(manifest)
    container = manifest["spec"]["containers"][0]
    container["command"] = [item for item in container["command"] if not item.startswith("--encryption-provider-config")]
    names = {volume["name"] for volume in VOLUMES}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] not in names]
    manifest["spec"]["volumes"] = [v for v in manifest["spec"]["volumes"] if v["name"] not in names]
    return manifest


def test_wires_flags_and_volumes_and_keeps_every_other_field(run, node):
    code, result = run()
    assert code == 0 and result["changed"]
    assert result["previous_flags"] == {"encryption-provider-config": None,
                                        "encryption-provider-config-automatic-reload": None}
    edited = yaml.safe_load(node["manifest"].read_text())
    assert without_wiring(edited) == yaml.safe_load(KUBEADM_MANIFEST)
    container = edited["spec"]["containers"][0]
    assert container["command"][-2:] == ["--encryption-provider-config=/etc/kubernetes/encryption/config.yaml",
                                         "--encryption-provider-config-automatic-reload=true"]
    assert container["volumeMounts"][-2:] == [
        {"mountPath": "/etc/kubernetes/encryption", "name": "teapot-kms-encryption-config", "readOnly": True},
        {"mountPath": "/run/teapot-kms", "name": "teapot-kms-socket"},
    ]
    assert edited["spec"]["volumes"][-2:] == [
        {"hostPath": {"path": "/etc/kubernetes/encryption", "type": "DirectoryOrCreate"}, "name": "teapot-kms-encryption-config"},
        {"hostPath": {"path": "/run/teapot-kms", "type": "DirectoryOrCreate"}, "name": "teapot-kms-socket"},
    ]
    # Lines are only inserted: kubeadm's layout survives the round trip.
    matcher = difflib.SequenceMatcher(a=KUBEADM_MANIFEST.splitlines(), b=node["manifest"].read_text().splitlines())
    assert {tag for tag, *_span in matcher.get_opcodes()} == {"equal", "insert"}
    assert stat.S_IMODE(node["manifest"].stat().st_mode) == 0o600


def test_backup_is_outside_the_manifests_directory(run, node):
    code, result = run()
    backup = pathlib.Path(result["backup_file"])
    assert backup.parent == node["backups"] and backup.name.startswith("kube-apiserver.yaml.")
    assert backup.read_text() == KUBEADM_MANIFEST and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert sorted(os.listdir(node["manifest"].parent)) == ["kube-apiserver.yaml"]


def test_second_run_changes_nothing_and_leaves_the_file_alone(run, node):
    run()
    before = node["manifest"].stat()
    text = node["manifest"].read_bytes()
    code, result = run()
    assert code == 0 and not result["changed"] and result["backup_file"] is None
    after = node["manifest"].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert node["manifest"].read_bytes() == text
    assert result["previous_flags"] == {"encryption-provider-config": "/etc/kubernetes/encryption/config.yaml",
                                        "encryption-provider-config-automatic-reload": "true"}
    assert len(os.listdir(node["backups"])) == 1


def test_an_existing_flag_is_replaced_in_place(run, node):
    manifest = yaml.safe_load(KUBEADM_MANIFEST)
    command = manifest["spec"]["containers"][0]["command"]
    command[3:3] = ["--encryption-provider-config", "/etc/kubernetes/enc/old.yaml"]
    command.append("--encryption-provider-config=/etc/kubernetes/enc/older.yaml")
    node["manifest"].write_text(yaml.safe_dump(manifest, sort_keys=False))
    code, result = run()
    assert code == 0 and result["previous_flags"]["encryption-provider-config"] == "/etc/kubernetes/enc/older.yaml"
    command = yaml.safe_load(node["manifest"].read_text())["spec"]["containers"][0]["command"]
    assert command[3] == "--encryption-provider-config=/etc/kubernetes/encryption/config.yaml"
    assert [c for c in command if c.startswith("--encryption-provider-config=")] == [command[3]]
    assert "/etc/kubernetes/enc/old.yaml" not in command


def test_flags_go_to_args_when_command_is_only_the_binary(run, node):
    manifest = yaml.safe_load(KUBEADM_MANIFEST)
    container = manifest["spec"]["containers"][0]
    container["args"] = container["command"][1:]
    container["command"] = ["kube-apiserver"]
    node["manifest"].write_text(yaml.safe_dump(manifest, sort_keys=False))
    code, _result = run()
    container = yaml.safe_load(node["manifest"].read_text())["spec"]["containers"][0]
    assert container["command"] == ["kube-apiserver"]
    assert "--encryption-provider-config-automatic-reload=true" in container["args"]


def test_check_mode_writes_nothing_and_shows_the_diff(run, node):
    code, result = run(check=True, diff=True)
    assert code == 0 and result["changed"] and result["backup_file"] is None
    assert node["manifest"].read_text() == KUBEADM_MANIFEST and not node["backups"].exists()
    assert result["diff"]["before"] == KUBEADM_MANIFEST
    assert "--encryption-provider-config=/etc/kubernetes/encryption/config.yaml" in result["diff"]["after"]


def test_read_flags_reports_without_setting(run, node):
    code, result = run(check=True, flags={}, volumes=[], read_flags=["encryption-provider-config", "secure-port"])
    assert code == 0 and not result["changed"]
    assert result["previous_flags"] == {"encryption-provider-config": None, "secure-port": "6443"}


def test_a_mount_path_taken_by_another_volume_is_refused(run, node):
    code, result = run(volumes=[{"name": "teapot-kms-socket", "host_path": "/run/teapot-kms", "mount_path": "/etc/kubernetes/pki"}])
    assert code == 1
    assert "/etc/kubernetes/pki is already mounted from volume 'k8s-certs'" in result["msg"]
    assert node["manifest"].read_text() == KUBEADM_MANIFEST


def test_a_path_already_mounted_from_the_same_host_path_is_used(run, node):
    code, result = run(flags={}, volumes=[{"name": "mine", "host_path": "/etc/kubernetes/pki", "mount_path": "/etc/kubernetes/pki",
                                           "read_only": True}])
    assert code == 0 and not result["changed"]


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: etcd, command: [etcd]}]}\n",
     "no container named 'kube-apiserver' (containers: etcd)"),
    ("kind: Deployment\n", "not a Pod manifest"),
    ("spec: [unclosed\n", "not valid YAML at line 2"),
    ("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: kube-apiserver, image: x}]}\n", "has neither command nor args"),
])
def test_a_manifest_that_cannot_be_edited_is_left_alone(run, node, text, message):
    node["manifest"].write_text(text)
    code, result = run()
    assert code == 1 and message in result["msg"] and result["msg"].endswith("nothing was changed")
    assert node["manifest"].read_text() == text and not node["backups"].exists()


def test_a_missing_manifest_is_reported(run, node):
    node["manifest"].unlink()
    code, result = run()
    assert code == 1 and "kube-apiserver.yaml does not exist" in result["msg"]


def test_a_backup_directory_inside_the_manifests_directory_is_refused(run, node):
    code, result = run(backup_dir=str(node["manifest"].parent / "backups"))
    assert code == 1 and "the kubelet would run the backup" in result["msg"]
    assert node["manifest"].read_text() == KUBEADM_MANIFEST


def test_set_flags_removes_later_duplicates():
    command = ["kube-apiserver", "--a=1", "--b", "2", "--a", "3", "--c"]
    assert ka.set_flags([command], {"a": "9", "c": "x"})
    assert command == ["kube-apiserver", "--a=9", "--b", "2", "--c=x"]
    assert not ka.set_flags([command], {"a": "9", "c": "x"})
