"""The clusters the site derives from the inventory (playbooks/vars/site.yml) and the cluster selection of the stages
(playbooks/_select_cluster.yml, playbooks/tasks/clusters.yml), run with ansible-playbook on the controller only."""

import copy
import hashlib
import json
import sys

import pytest
import yaml

from tests.harness.playbook import REPO, PlaybookRunner

MULTICLUSTER_EXAMPLE = REPO / "docs" / "inventory-example-multicluster"
VAULT = {"vault_keystone_kms_password": "m-secret", "vault_keystone_kms_password_tenant_a": "a-secret",
         "vault_keystone_kms_password_tenant_b": "b-secret"}


@pytest.fixture(name="runner", scope="module")
def fixture_runner(tmp_path_factory):
    return PlaybookRunner(tmp_path_factory.mktemp("clusters"))


def _derived(runner, inventory, extra_vars=None, play_vars=None):
    """The cluster list and the extra plugin users the site derives from ``inventory`` (a path or a dict)."""
    play = [{"name": "Derive", "hosts": "localhost", "gather_facts": False, "vars": play_vars or {},
             "vars_files": [str(REPO / "playbooks" / "vars" / "site.yml")],
             "tasks": [{"name": "clusters", "ansible.builtin.debug": {"var": "_teapot_kms_clusters"}},
                       {"name": "users", "ansible.builtin.debug": {
                           "msg": "{{ _teapot_kms_cluster_plugin_users | map(attribute='name') | list }}"}}]}]
    playbook = runner.workdir / "derive.yml"
    playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
    run = runner.run_playbook(playbook, inventory, extra_vars=extra_vars, timeout=120)
    assert run.returncode == 0, run.output[-3000:]
    return run.task("clusters")["_teapot_kms_clusters"], run.task("users")["msg"]


def _selected(runner, inventory, extra_vars=None, limit=None):
    """Run the stages' cluster selection, then report the hosts of the group it filled."""
    play = [{"ansible.builtin.import_playbook": str(REPO / "playbooks" / "_select_cluster.yml"),
             "vars": {"_select_cluster_group": "_selected", "_select_cluster_one": True}},
            {"name": "Selected", "hosts": "_selected", "gather_facts": False,
             "tasks": [{"name": "hosts", "ansible.builtin.debug": {"msg": "{{ ansible_play_hosts_all }}"},
                        "run_once": True}]}]
    playbook = runner.workdir / "select.yml"
    playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
    return runner.run_playbook(playbook, inventory, limit=limit, timeout=120, extra_vars={
        **VAULT, "ansible_connection": "local", "ansible_python_interpreter": sys.executable, **(extra_vars or {})})


def test_the_example_has_a_default_management_cluster_and_two_tenants(runner):
    clusters, users = _derived(runner, MULTICLUSTER_EXAMPLE, VAULT)
    summary = [(c["name"], c["default"], c["plugin_user"], c["kek_name"], len(c["hosts"])) for c in clusters]
    assert summary == [("mgmt", True, "kms-plugin", "mgmt-kek", 3),
                       ("tenant-a", False, "kms-plugin-tenant-a", "tenant-a-kek", 3),
                       ("tenant-b", False, "kms-plugin-tenant-b", "tenant-b-kek", 1)]
    # Keystone registers the tenants' users besides keystone_kms_user.
    assert users == ["kms-plugin-tenant-a", "kms-plugin-tenant-b"]


def test_a_single_cluster_keeps_the_names_of_a_single_cluster_site(runner):
    clusters, users = _derived(runner, REPO / "docs" / "inventory-example")
    assert [(c["name"], c["default"], c["plugin_user"], c["kek_name"]) for c in clusters] == [
        ("prod", True, "kms-plugin", "prod-kek")]
    assert users == []
    # No control-plane host at all: the default cluster, from the controller's variables.
    clusters, users = _derived(runner, {"all": {"vars": {"ansible_python_interpreter": sys.executable}}})
    assert [(c["name"], c["plugin_user"], c["kek_name"], c["vars_host"]) for c in clusters] == [
        ("kubernetes", "kms-plugin", "kubernetes-kek", "localhost")]


def test_a_cluster_overrides_its_user_and_key_names(runner):
    inventory = yaml.safe_load((MULTICLUSTER_EXAMPLE / "hosts.yml").read_text(encoding="utf-8"))
    tenant_b = inventory["all"]["children"]["kube_control_plane"]["children"]["tenant_b"]
    tenant_b["vars"] = {"teapot_kms_cluster_name": "tenant-b", "teapot_kms_cluster_plugin_user": "plugin-b",
                        "teapot_kms_cluster_kek_name": "b-key"}
    clusters, _users = _derived(runner, inventory)
    assert [(c["name"], c["plugin_user"], c["kek_name"]) for c in clusters] == [
        ("kubernetes", "kms-plugin", "kubernetes-kek"), ("tenant-b", "plugin-b", "b-key")]


def test_one_cluster_is_selected_and_limit_still_applies(runner):
    run = _selected(runner, MULTICLUSTER_EXAMPLE, {"cluster": "tenant-a"})
    assert run.returncode == 0, run.output[-3000:]
    assert run.task("hosts")["msg"] == [f"tenant-a-cp-{n}.example.org" for n in (1, 2, 3)]
    run = _selected(runner, MULTICLUSTER_EXAMPLE, {"cluster": "tenant-a"}, limit="tenant-a-cp-2.example.org")
    assert run.returncode == 0, run.output[-3000:]
    assert run.task("hosts")["msg"] == ["tenant-a-cp-2.example.org"]
    # --limit to one cluster's hosts is a run on one cluster, without -e cluster.
    run = _selected(runner, MULTICLUSTER_EXAMPLE, limit="tenant_b")
    assert run.returncode == 0, run.output[-3000:]
    assert run.task("hosts")["msg"] == ["tenant-b-cp-1.example.org"]


@pytest.mark.parametrize("extra_vars, message", [
    ({"cluster": "gamma"}, "There is no cluster gamma in the inventory; the clusters are mgmt, tenant-a, tenant-b"),
    ({}, "This run reaches several clusters (mgmt, tenant-a, tenant-b); this stage works on one cluster at a time: "
         "run it once per cluster with -e cluster=NAME."),
], ids=["unknown cluster", "several clusters"])
def test_a_run_that_cannot_tell_its_cluster_is_refused(runner, extra_vars, message):
    run = _selected(runner, MULTICLUSTER_EXAMPLE, extra_vars)
    assert run.returncode != 0
    assert message in run.output
    assert "hosts" not in [task for task, _result in run.results]


@pytest.mark.parametrize("tenant_b_vars, message", [
    ({"teapot_kms_cluster_name": "tenant-b", "keystone_kms_password": "{{ vault_keystone_kms_password_tenant_a }}"},
     "Two clusters' plugin users have the same password"),
    ({"teapot_kms_cluster_name": "tenant-b", "teapot_kms_cluster_kek_name": "tenant-a-kek",
      "keystone_kms_password": "{{ vault_keystone_kms_password_tenant_b }}"},
     "Clusters share a plugin user or a key-encryption key"),
    ({"teapot_kms_cluster_name": "tenant-b", "teapot_kms_cluster_plugin_user": "kms-plugin",
      "keystone_kms_password": "{{ vault_keystone_kms_password_tenant_b }}"},
     "Clusters share a plugin user or a key-encryption key"),
    ({"teapot_kms_cluster_name": "tenant-b", "teapot_kms_plugin_user_id": "0123abcd",
      "keystone_kms_password": "{{ vault_keystone_kms_password_tenant_b }}"},
     "Clusters share a plugin user or a key-encryption key"),
], ids=["password", "key", "user", "user id"])
def test_clusters_that_share_a_secret_user_or_key_are_refused(runner, tmp_path, tenant_b_vars, message):
    inventory_dir = tmp_path / "inventory"
    hosts = yaml.safe_load((MULTICLUSTER_EXAMPLE / "hosts.yml").read_text(encoding="utf-8"))
    inventory = copy.deepcopy(hosts)
    inventory["all"]["vars"] = yaml.safe_load((MULTICLUSTER_EXAMPLE / "group_vars" / "all" / "main.yml").read_text())
    inventory["all"]["vars"]["keystone_kms_password"] = "{{ vault_keystone_kms_password }}"
    if "teapot_kms_plugin_user_id" in tenant_b_vars:
        # One ID for every cluster, from group_vars/all: every key's ACL would name one user.
        inventory["all"]["vars"]["teapot_kms_plugin_user_id"] = tenant_b_vars["teapot_kms_plugin_user_id"]
    children = inventory["all"]["children"]["kube_control_plane"]["children"]
    children["tenant_a"]["vars"] = yaml.safe_load(
        (MULTICLUSTER_EXAMPLE / "group_vars" / "tenant_a" / "main.yml").read_text(encoding="utf-8"))
    children["tenant_b"]["vars"] = tenant_b_vars
    inventory_dir.mkdir()
    (inventory_dir / "hosts.yml").write_text(yaml.safe_dump(inventory), encoding="utf-8")
    run = _selected(runner, inventory_dir, {"cluster": "tenant-a"})
    assert run.returncode != 0
    assert message in run.output
    for secret in VAULT.values():
        assert secret not in run.output


def test_each_host_gets_its_own_clusters_login_and_key(runner):
    """What deploy_kms_plugin gives each node: its cluster's plugin login and key (the secret only through no_log)."""
    play = [{"name": "Per host", "hosts": "kube_control_plane", "gather_facts": False,
             "vars_files": [str(REPO / "playbooks" / "vars" / "site.yml")],
             "tasks": [{"name": "login", "ansible.builtin.debug": {
                 "msg": "{{ [_teapot_kms_cluster_name, _teapot_kms_plugin_auth.username, _teapot_kms_kek_name,"
                        " (kms_plugin_password | default(keystone_kms_password)) | hash('sha256')] }}"}}]}]
    playbook = runner.workdir / "per-host.yml"
    playbook.write_text(yaml.safe_dump(play), encoding="utf-8")
    run = runner.run_playbook(playbook, MULTICLUSTER_EXAMPLE, timeout=120, extra_vars={
        **VAULT, "ansible_connection": "local", "ansible_python_interpreter": sys.executable})
    assert run.returncode == 0, run.output[-3000:]
    by_host = {}
    for task in json.loads(run.stdout[run.stdout.find("{"):])["plays"][0]["tasks"]:
        by_host.update({host: result["msg"] for host, result in task["hosts"].items()})

    def expected(cluster, user, kek, password):
        return [cluster, user, kek, hashlib.sha256(password.encode()).hexdigest()]

    assert by_host["mgmt-cp-2.example.org"] == expected("mgmt", "kms-plugin", "mgmt-kek", "m-secret")
    assert by_host["tenant-a-cp-3.example.org"] == expected("tenant-a", "kms-plugin-tenant-a", "tenant-a-kek", "a-secret")
    assert by_host["tenant-b-cp-1.example.org"] == expected("tenant-b", "kms-plugin-tenant-b", "tenant-b-kek", "b-secret")


def test_a_single_cluster_takes_its_names_from_a_playbooks_vars(runner):
    """As a single-cluster site always did: a playbook that imports a stage with vars names the key and the user."""
    inventory = {"all": {"children": {"kube_control_plane": {"hosts": {"cp-1": {}, "cp-2": {}}}}}}
    clusters, users = _derived(runner, inventory, play_vars={
        "teapot_kms_kek_name": "kube-kek-from-play", "keystone_kms_user": "plugin-from-play"})
    assert [(c["default"], c["plugin_user"], c["kek_name"], c["hosts"]) for c in clusters] == [
        (True, "plugin-from-play", "kube-kek-from-play", ["cp-1", "cp-2"])]
    assert users == []
