"""Every playbook of the collection passes ``ansible-playbook --syntax-check``, by path and as ``teapot.kms.<name>``,
against the example inventory; site.yml runs the stages in order."""

import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from tests.harness.collection import make_importable

ROOT = pathlib.Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = pathlib.Path(sys.executable).with_name("ansible-playbook")
EXAMPLE_INVENTORY = ROOT / "docs" / "inventory-example"
# Playbooks are the YAML files directly in playbooks/ (vars/ and tasks/ hold what they load).
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yml"))
# The stages of site.yml, in the order they must run; those not written yet are skipped.
STAGES = ["deploy_keystone", "deploy_barbican", "order_key", "deploy_kms_plugin", "enable_encryption", "reencrypt", "verify"]


class _Loader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """Reads Ansible's !unsafe strings as plain strings."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _load(path):
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # nosec: a safe loader


def _syntax_check(target, inventory=EXAMPLE_INVENTORY):
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(make_importable()), ANSIBLE_LOCAL_TEMP=str(ROOT / ".ansible" / "tmp"),
               ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(ANSIBLE_PLAYBOOK), "--syntax-check", "-i", str(inventory), str(target)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False, timeout=120)


def test_playbooks_are_found():
    names = {path.stem for path in PLAYBOOKS}
    assert {"site", "deploy_keystone", "deploy_barbican", "order_key", "deploy_kms_plugin", "awx_setup"} <= names


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda path: path.name)
def test_syntax_check_by_path(playbook):
    result = _syntax_check(playbook)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda path: path.stem)
def test_syntax_check_as_collection_playbook(playbook):
    result = _syntax_check(f"teapot.kms.{playbook.stem}")
    assert result.returncode == 0, result.stdout + result.stderr


def test_syntax_check_catches_a_broken_playbook(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("- name: Broken\n  hosts: all\n  tasks:\n    - name: No module\n      not_a_keyword: {}\n", encoding="utf-8")
    result = _syntax_check(broken)
    assert result.returncode != 0


def test_site_imports_the_stages_in_order():
    site = _load(ROOT / "playbooks" / "site.yml")
    imported = [pathlib.Path(entry["ansible.builtin.import_playbook"]).stem for entry in site]
    written = [stage for stage in STAGES if (ROOT / "playbooks" / f"{stage}.yml").exists()]
    # The cluster check comes first, before any stage changes anything.
    assert imported == ["_select_cluster"] + written


def test_stage_hosts_are_the_documented_groups():
    allowed = {"localhost", "keystone", "barbican", "barbican_db", "kube_control_plane"}
    for playbook in PLAYBOOKS:
        selected = set()
        for play in _load(playbook):
            if pathlib.Path(play.get("ansible.builtin.import_playbook", "")).name == "_select_cluster.yml":
                # _select_cluster.yml fills this group with the hosts of kube_control_plane of the selected cluster.
                selected.add(play["vars"]["_select_cluster_group"])
            hosts = play.get("hosts")
            if hosts is None:
                continue
            if ":&" in hosts:
                # <documented group>:&<the group _select_cluster.yml filled>: the intersection keeps the
                # inventory's order, which a group filled in the order the hosts answered does not.
                hosts, group = hosts.split(":&", 1)
                assert group in selected, f"{playbook.name}: hosts {play['hosts']!r}"
            else:
                assert hosts not in selected, (
                    f"{playbook.name}: hosts {hosts!r} loses the inventory's order; write <group>:&{hosts}")
            # A playbook may let the inventory rename its group, defaulting to the documented one.
            default = hosts.split("default('", 1)[1].split("'", 1)[0] if "default('" in hosts else hosts
            # A union of documented groups (barbican:keystone) is documented too.
            assert set(default.split(":")) <= allowed, f"{playbook.name}: hosts {hosts!r}"
