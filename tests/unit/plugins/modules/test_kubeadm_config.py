"""teapot.kms.kubeadm_config: apiServer extraArgs/extraVolumes in v1beta3 and v1beta4, everything else kept."""

import copy
import pathlib

import pytest
import yaml

from ansible_collections.teapot.kms.plugins.module_utils import _kube_apiserver as ka
from ansible_collections.teapot.kms.plugins.modules import kubeadm_config
from tests.harness.procs import free_port

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FLAGS = {"encryption-provider-config": "/etc/kubernetes/encryption/config.yaml",
         "encryption-provider-config-automatic-reload": "true"}
VOLUMES = [
    {"name": "teapot-kms-encryption-config", "host_path": "/etc/kubernetes/encryption",
     "mount_path": "/etc/kubernetes/encryption", "read_only": True, "path_type": "DirectoryOrCreate"},
    {"name": "teapot-kms-socket", "host_path": "/run/teapot-kms", "mount_path": "/run/teapot-kms",
     "read_only": False, "path_type": "DirectoryOrCreate"},
]
EXPECTED_VOLUMES = [
    {"hostPath": "/etc/kubernetes/encryption", "mountPath": "/etc/kubernetes/encryption",
     "name": "teapot-kms-encryption-config", "pathType": "DirectoryOrCreate", "readOnly": True},
    {"hostPath": "/run/teapot-kms", "mountPath": "/run/teapot-kms", "name": "teapot-kms-socket",
     "pathType": "DirectoryOrCreate"},
]


def fixture(version):
    return yaml.safe_load((FIXTURES / f"cluster-configuration-{version}.yaml").read_text())


def wire(document):
    return ka.wire_cluster_configuration(document, FLAGS, VOLUMES, "test")


def test_v1beta3_extra_args_map():
    original = fixture("v1beta3")
    document = copy.deepcopy(original)
    assert ka.cluster_configuration_flags(document, list(FLAGS), "t") == dict.fromkeys(FLAGS)
    assert wire(document) == ("kubeadm.k8s.io/v1beta3", True)
    api_server = document["apiServer"]
    assert api_server["extraArgs"] == {"audit-log-maxage": "30", "authorization-mode": "Node,RBAC", **FLAGS}
    assert api_server["extraVolumes"] == EXPECTED_VOLUMES
    # Every other field as it was.
    stripped = copy.deepcopy(document)
    del stripped["apiServer"]["extraVolumes"]
    for name in FLAGS:
        del stripped["apiServer"]["extraArgs"][name]
    assert stripped == original
    assert wire(document) == ("kubeadm.k8s.io/v1beta3", False)
    assert ka.cluster_configuration_flags(document, list(FLAGS), "t") == FLAGS


def test_v1beta4_extra_args_list():
    original = fixture("v1beta4")
    document = copy.deepcopy(original)
    assert wire(document) == ("kubeadm.k8s.io/v1beta4", True)
    assert document["apiServer"]["extraArgs"] == [
        {"name": "audit-log-maxage", "value": "30"},
        {"name": "authorization-mode", "value": "Node,RBAC"},
        {"name": "encryption-provider-config", "value": FLAGS["encryption-provider-config"]},
        {"name": "encryption-provider-config-automatic-reload", "value": "true"},
    ]
    assert document["apiServer"]["extraVolumes"] == EXPECTED_VOLUMES
    stripped = copy.deepcopy(document)
    del stripped["apiServer"]["extraVolumes"]
    stripped["apiServer"]["extraArgs"] = stripped["apiServer"]["extraArgs"][:2]
    assert stripped == original
    assert wire(document) == ("kubeadm.k8s.io/v1beta4", False)


def test_v1beta4_replaces_a_value_and_drops_duplicates_of_the_flag():
    document = fixture("v1beta4")
    document["apiServer"]["extraArgs"][1:1] = [
        {"name": "encryption-provider-config", "value": "/old.yaml"},
        {"name": "encryption-provider-config", "value": "/older.yaml"},
    ]
    assert ka.cluster_configuration_flags(document, ["encryption-provider-config"], "t") == {
        "encryption-provider-config": "/older.yaml"}
    wire(document)
    assert [item for item in document["apiServer"]["extraArgs"] if item["name"] == "encryption-provider-config"] == [
        {"name": "encryption-provider-config", "value": FLAGS["encryption-provider-config"]}]
    assert document["apiServer"]["extraArgs"][1]["name"] == "encryption-provider-config"


def test_an_empty_api_server_section_is_filled():
    document = fixture("v1beta4")
    document["apiServer"] = {}
    assert wire(document)[1]
    assert [item["name"] for item in document["apiServer"]["extraArgs"]] == list(FLAGS)


def test_an_existing_volume_of_ours_is_updated_and_false_read_only_is_not_a_change():
    document = fixture("v1beta3")
    document["apiServer"]["extraVolumes"] = [dict(EXPECTED_VOLUMES[0], hostPath="/elsewhere"),
                                             dict(EXPECTED_VOLUMES[1], readOnly=False)]
    assert wire(document)[1]
    assert document["apiServer"]["extraVolumes"][0] == EXPECTED_VOLUMES[0]
    assert document["apiServer"]["extraVolumes"][1] == dict(EXPECTED_VOLUMES[1], readOnly=False)
    assert not wire(document)[1]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(apiVersion="kubeadm.k8s.io/v1beta2"), "apiVersion 'kubeadm.k8s.io/v1beta2' is not supported"),
    (lambda d: d.update(kind="InitConfiguration"), "not a kubeadm ClusterConfiguration"),
    (lambda d: d["apiServer"].update(extraArgs={"a": "b"}), "must be a list of name/value pairs"),
    (lambda d: d["apiServer"].update(extraVolumes=[{"name": "x", "hostPath": "/x", "mountPath": "/run/teapot-kms"}]),
     "already mounts '/x' at /run/teapot-kms"),
])
def test_documents_that_cannot_be_edited(change, message):
    document = fixture("v1beta4")
    change(document)
    with pytest.raises(ka.WiringError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wire(document)


def test_a_missing_kubeconfig_is_named(run_module, tmp_path):
    code, result = run_module(kubeadm_config.main, {"kubeconfig": str(tmp_path / "admin.conf"), "flags": FLAGS})
    assert code == 1 and f"cannot use the kubeconfig {tmp_path / 'admin.conf'}" in result["msg"]


def test_an_unreachable_api_server_is_named(run_module, tmp_path):
    port = free_port()
    kubeconfig = tmp_path / "admin.conf"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "admin", "context": {"cluster": "c", "user": "admin"}}],
    }))
    code, result = run_module(kubeadm_config.main, {"kubeconfig": str(kubeconfig), "flags": FLAGS, "timeout": 2})
    assert code == 1
    assert f"cannot reach the API server https://127.0.0.1:{port} named in {kubeconfig}" in result["msg"]
    assert "not-a-real-token" not in str(result)
