"""Several Kubernetes clusters on one Keystone and one Barbican, each isolated from the others.

The inventory has two clusters, ``alpha`` and ``beta`` (child groups of
kube_control_plane whose hosts carry ``teapot_kms_cluster_name``, each with
its own plugin password in its group's vars).  The keystone role's
registration tasks (roles/keystone/tasks/register.yml, the code path of
teapot.kms.deploy_keystone; the rest of the role installs Keystone on a host,
which this test does not have) register each cluster's plugin user from the
list the site derives (playbooks/vars/site.yml); teapot.kms.order_key then
orders each cluster's key as the key custodian.  Keystone and Barbican are the
real services over TLS (tests/integration/conftest.py).  With each cluster's
plugin credentials, through keystoneauth1 and python-barbicanclient as the
plugin daemon uses them, a cluster reads its own key and gets 403 on
everything of the other's; the real plugin daemon of each cluster loads its
own key and cannot load the other's.

Then each cluster gets a control-plane node of its own (its plugin daemon and a
kube-apiserver STAND-IN, tests/harness/control_plane.py, on an etcd of its
own), and ``teapot.kms.rotate_key -e cluster=alpha`` rotates alpha's key with
the inventory of both clusters: alpha's objects move to the new key, which
only alpha's user can read; beta's plugin, keyring and objects stay as they
were (audited from both etcds).
"""

import base64
import secrets
import sys
import time
import uuid

import kubernetes.client
import pytest
import yaml

from tests.harness.control_plane import KMS_NAME, ControlPlaneNode, audit_counts
from tests.harness.keystone import Credentials, make_session
from tests.harness.playbook import REPO, PlaybookRunner
from tests.harness.plugin_daemon import first_status
from tests.harness.venvs import ensure_venv

pytestmark = pytest.mark.slow

ORDER_TASK = "Order the key (once) and let only the plugin's user read it"
CLUSTERS = ("alpha", "beta")


@pytest.fixture(scope="module")
def keystone(keystone_tls):
    return keystone_tls


@pytest.fixture(scope="module")
def barbican(barbican_tls):
    return barbican_tls


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multicluster")
    # The inventories below hold the clusters' passwords in their group vars.
    workdir.chmod(0o700)
    return PlaybookRunner(workdir)


def _inventory(keystone, passwords, beta_vars=None):
    """Two clusters, alpha (names derived from the cluster) and beta (its key named in its group vars)."""
    def cluster(name, extra=None):
        hosts = {f"{name}-cp-{number}": {} for number in (1, 2)}
        return {"hosts": hosts, "vars": {"teapot_kms_cluster_name": name, "keystone_kms_password": passwords[name],
                                         **(extra or {})}}

    return {"all": {
        "vars": {
            "ansible_python_interpreter": sys.executable,
            "teapot_kms_keystone_url": keystone.auth_url,
            "teapot_kms_region_name": keystone.region_name,
            "teapot_kms_ca_cert": keystone.cacert,
            "keystone_kms_custodian_user": keystone.key_custodian.username,
        },
        "children": {"kube_control_plane": {"children": {
            "alpha": cluster("alpha"),
            "beta": cluster("beta", {"teapot_kms_cluster_kek_name": "beta-tenant-kek", **(beta_vars or {})}),
        }}},
    }}


def _register_tasks(keystone):
    """The keystone role's registration, for the users the site derives from the inventory's clusters."""
    return [{
        "name": "Register the clusters' plugin users with the keystone role",
        "ansible.builtin.include_role": {"name": "teapot.kms.keystone", "tasks_from": "register"},
        "vars": {
            "keystone_install": False,
            "keystone_auth_url": keystone.auth_url,
            "keystone_region": keystone.region_name,
            "keystone_admin_password": keystone.admin.password,
            "keystone_barbican_password": keystone.service_user.password,
            "keystone_kms_user": keystone.reader_plugin_user.username,
            "keystone_kms_password": keystone.reader_plugin_user.password,
            "keystone_kms_custodian_user": keystone.key_custodian.username,
            "keystone_kms_custodian_password": keystone.key_custodian.password,
            "keystone_kms_cluster_users": "{{ _teapot_kms_cluster_plugin_users }}",
            "keystone_venv_path": str(ensure_venv("keystone-register")),
            "teapot_kms_tls_trusted_ca_file": keystone.cacert,
        },
    }]


def _register_playbook(runner, keystone, name):
    play = [{
        "name": "Register the clusters' plugin users",
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(REPO / "playbooks" / "vars" / "site.yml")],
        "tasks": _register_tasks(keystone),
    }]
    path = runner.workdir / name
    path.write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def site(runner, keystone, barbican):
    """Register alpha's and beta's plugin users (twice), then order their keys (twice, the second for alpha only)."""
    passwords = {name: secrets.token_urlsafe(18) for name in CLUSTERS}
    inventory = _inventory(keystone, passwords)
    custodian = {"keystone_kms_custodian_password": keystone.key_custodian.password}
    playbook = _register_playbook(runner, keystone, "register.yml")
    registered = [runner.run_playbook(playbook, inventory), runner.run_playbook(playbook, inventory)]
    ordered = runner.run_playbook("teapot.kms.order_key", inventory, extra_vars=custodian)
    alpha_again = runner.run_playbook("teapot.kms.order_key", inventory, extra_vars={**custodian, "cluster": "alpha"})
    creds = {name: Credentials(keystone.auth_url, f"kms-plugin-{name}", passwords[name], "kms", cacert=keystone.cacert)
             for name in CLUSTERS}
    return {"registered": registered, "ordered": ordered, "alpha_again": alpha_again, "creds": creds,
            "passwords": passwords, "inventory": inventory, "custodian": custodian}


def _keys(run):
    """The keys a run of teapot.kms.order_key ordered or found, by the cluster of their consumer."""
    ordered = [result["key"] for task, result in run.results if task == ORDER_TASK and "key" in result]
    return {key["consumers"][0]["resource_id"]: key for key in ordered}


def test_the_role_registers_each_clusters_plugin_user_as_reader(site):
    first, second = site["registered"]
    assert first.returncode == 0, first.output[-4000:]
    assert second.returncode == 0, second.output[-4000:]
    for name, creds in site["creds"].items():
        session = make_session(creds)
        access = session.auth.get_access(session)
        assert (access.project_name, access.role_names) == ("kms", ["reader"]), name
    # The second run finds every registration in place and changes nothing.
    assert not [task for task, result in second.results if result.get("changed")], second.results
    for password in site["passwords"].values():
        assert password not in first.output and password not in second.output


def test_each_cluster_gets_its_own_key_readable_by_its_own_user_only(site, keystone, barbican):
    ordered, alpha_again = site["ordered"], site["alpha_again"]
    assert ordered.returncode == 0, ordered.output[-4000:]
    assert alpha_again.returncode == 0, alpha_again.output[-4000:]
    keys = _keys(ordered)
    assert set(keys) == set(CLUSTERS)
    assert keys["alpha"]["name"] == "alpha-kek" and keys["beta"]["name"] == "beta-tenant-kek"
    assert keys["alpha"]["key_id"] != keys["beta"]["key_id"]
    custodian = barbican.client(keystone.key_custodian)
    for name, key in keys.items():
        user_id = make_session(site["creds"][name]).get_user_id()
        assert key["acl"] == {"read": {"users": [user_id], "project_access": False}}, name
        assert key["consumers"] == [{"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": name}]
        # What Barbican holds, read back as the custodian.
        assert custodian.acls.get(key["href"]).read.users == [user_id]
        assert custodian.acls.get(key["href"]).read.project_access is False
    # -e cluster=alpha: only alpha's key, found by name, nothing ordered.
    again = _keys(alpha_again)
    assert set(again) == {"alpha"} and again["alpha"]["href"] == keys["alpha"]["href"]
    assert [result["changed"] for task, result in alpha_again.results if task == ORDER_TASK] == [False]
    for password in site["passwords"].values():
        assert password not in ordered.output and password not in alpha_again.output


@pytest.mark.parametrize("own, other", [("alpha", "beta"), ("beta", "alpha")])
def test_a_cluster_reads_its_own_key_and_nothing_of_the_others(site, keystone, barbican, own, other):
    keys = _keys(site["ordered"])
    creds = site["creds"][own]
    payload = barbican.client(creds).secrets.get(keys[own]["href"], payload_content_type="application/octet-stream").payload
    assert len(payload) == 32

    session = make_session(creds)
    href = keys[other]["href"]
    refused = {
        "payload": session.get(f"{href}/payload", headers={"Accept": "application/octet-stream"}, raise_exc=False),
        "metadata": session.get(href, raise_exc=False),
        "acl": session.get(f"{href}/acl", raise_exc=False),
        "acl put": session.put(f"{href}/acl", json={"read": {"users": [session.get_user_id()], "project-access": True}},
                               raise_exc=False),
        "order": session.post(f"{barbican.url}/v1/orders", raise_exc=False, json={
            "type": "key", "meta": {"name": f"kek-by-{own}-{uuid.uuid4().hex[:8]}", "algorithm": "aes",
                                    "bit_length": 256, "mode": "gcm",
                                    "payload_content_type": "application/octet-stream"}}),
    }
    assert {call: response.status_code for call, response in refused.items()} == dict.fromkeys(refused, 403)
    # The other cluster's key is as the custodian left it.
    acl = barbican.client(keystone.key_custodian).acls.get(href)
    assert acl.read.users == [make_session(site["creds"][other]).get_user_id()] and acl.read.project_access is False


def test_each_clusters_plugin_loads_its_own_key_only(site, keystone, tmp_path):
    keys = _keys(site["ordered"])
    for own, other in (("alpha", "beta"), ("beta", "alpha")):
        creds = site["creds"][own]
        code, status, log_tail = first_status(creds, [keys[own]["href"]], tmp_path / own, keystone.region_name)
        assert (code, status["healthz"]) == (0, "ok"), log_tail
        assert status["key_id"] == keys[own]["key_id"]
        assert (status["keys"][0]["loaded"], status["keys"][0]["last_error"]) == (True, "none"), status
        # The other cluster's key, configured in this cluster's plugin: Barbican refuses it the payload.
        code, status, log_tail = first_status(creds, [keys[other]["href"]], tmp_path / f"{own}-other", keystone.region_name)
        assert code == 1 and status["all_keys_loaded"] is False and status["healthz"] != "ok", log_tail
        assert [(key["key_id"], key["loaded"]) for key in status["keys"]] == [(keys[other]["key_id"], False)], status
        assert "HTTP 403" in status["keys"][0]["last_error"], status


def test_an_unknown_cluster_is_refused_with_the_known_ones(site, runner, keystone):
    run = runner.run_playbook("teapot.kms.order_key", site["inventory"], extra_vars={**site["custodian"], "cluster": "gamma"})
    assert run.returncode != 0
    assert "There is no cluster gamma in the inventory; the clusters are alpha, beta" in run.output
    assert ORDER_TASK not in [task for task, _result in run.results]


def test_two_clusters_with_one_password_are_refused(site, runner, keystone):
    inventory = _inventory(keystone, site["passwords"], beta_vars={"keystone_kms_password": site["passwords"]["alpha"]})
    run = runner.run_playbook("teapot.kms.order_key", inventory, extra_vars=site["custodian"])
    assert run.returncode != 0
    assert "Two clusters' plugin users have the same password" in run.output
    assert site["passwords"]["alpha"] not in run.output


def test_rotating_one_cluster_leaves_the_other_as_it_was(site, keystone, barbican, runner, harness_servers, tmp_path):
    keys = _keys(site["ordered"])
    etcds = {name: harness_servers.etcd_tls(f"multicluster-{name}") for name in CLUSTERS}
    nodes = {}
    try:
        for name in CLUSTERS:
            nodes[name] = ControlPlaneNode(f"{name}-cp-1", tmp_path / name, site["creds"][name], keystone.region_name,
                                           keys[name]["href"], etcds[name], ["secrets"]).start()
        expected = {}
        for name, node in nodes.items():
            core = kubernetes.client.CoreV1Api(node.standin.api_client())
            for index in range(5):
                marker = f"MARKER-{name}-{index}"
                core.create_namespaced_secret("app", kubernetes.client.V1Secret(
                    metadata=kubernetes.client.V1ObjectMeta(name=f"obj-{index}"), string_data={"marker": marker}))
                expected[(name, f"obj-{index}")] = {"marker": base64.b64encode(marker.encode()).decode()}
        for name in CLUSTERS:
            assert audit_counts(runner, etcds[name], ["secrets"]) == {"secrets": {f"kms-v2/{KMS_NAME}/{keys[name]['key_id']}": 5}}
        beta_before = {"status": nodes["beta"].status(), "keyring": nodes["beta"].keyring(),
                       "config": nodes["beta"].plugin.config_path.read_bytes()}

        # Both clusters in the inventory, each node with its own plugin paths, stand-in and etcd.
        inventory = _inventory(keystone, site["passwords"])
        for name, node in nodes.items():
            group = inventory["all"]["children"]["kube_control_plane"]["children"][name]
            group["hosts"] = {node.name: node.host_vars()}
            group["vars"].update({
                "teapot_kms_rotation_etcd": etcds[name].client_options(),
                "teapot_kms_reencrypt_kubeconfig": str(node.standin.kubeconfig),
                "teapot_kms_reencrypt_state_file": str(tmp_path / f"{name}-reencrypt-state.json"),
                "teapot_kms_reencrypt_progress_log": str(tmp_path / f"{name}-reencrypt.log")})
        new_name = f"alpha-kek-{time.time_ns()}"
        run = runner.run_playbook("teapot.kms.rotate_key", inventory, extra_vars={
            **site["custodian"], "cluster": "alpha", "teapot_kms_rotation_new_key_name": new_name,
            "teapot_kms_rotation_become": False, "teapot_kms_rotation_audit_delay": 1, "kube_encryption_resources": ["secrets"],
            "teapot_kms_reencrypt_install_client": False, "teapot_kms_reencrypt_python": sys.executable,
            "teapot_kms_reencrypt_become": False, "teapot_kms_reencrypt_qps": 0, "teapot_kms_reencrypt_poll": 1})
        assert run.returncode == 0, run.output[-4000:]
        for password in site["passwords"].values():
            assert password not in run.output

        # alpha: the new key everywhere, its objects rewritten under it, readable by alpha's user only.
        state = nodes["alpha"].state()
        new_key_id, new_href = state["new_key"]["key_id"], state["new_key"]["href"]
        assert state["phase"] == 6 and new_key_id != keys["alpha"]["key_id"]
        assert nodes["alpha"].status()["key_id"] == new_key_id and nodes["alpha"].keyring() == [new_href]
        assert audit_counts(runner, etcds["alpha"], ["secrets"]) == {"secrets": {f"kms-v2/{KMS_NAME}/{new_key_id}": 5}}
        custodian = barbican.client(keystone.key_custodian)
        assert custodian.acls.get(new_href).read.users == [make_session(site["creds"]["alpha"]).get_user_id()]
        beta_session = make_session(site["creds"]["beta"])
        refused = beta_session.get(f"{new_href}/payload", headers={"Accept": "application/octet-stream"}, raise_exc=False)
        assert refused.status_code == 403

        # beta: the same plugin process, key, keyring, configuration and objects; no rotation state.
        beta_status = nodes["beta"].status()
        assert (beta_status["pid"], beta_status["key_id"]) == (beta_before["status"]["pid"], keys["beta"]["key_id"])
        assert nodes["beta"].keyring() == beta_before["keyring"] == [keys["beta"]["href"]]
        assert nodes["beta"].plugin.config_path.read_bytes() == beta_before["config"]
        assert not nodes["beta"].state_file.exists()
        assert audit_counts(runner, etcds["beta"], ["secrets"]) == {"secrets": {f"kms-v2/{KMS_NAME}/{keys['beta']['key_id']}": 5}}

        # Every object of both clusters reads back through its own cluster's stand-in.
        for name, node in nodes.items():
            api = kubernetes.client.CoreV1Api(node.standin.api_client())
            for index in range(5):
                assert api.read_namespaced_secret(f"obj-{index}", "app").data == expected[(name, f"obj-{index}")]
    finally:
        for node in nodes.values():
            node.stop()
