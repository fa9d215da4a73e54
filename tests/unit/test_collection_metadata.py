"""The collection's metadata agrees with itself: every role needs the Ansible that meta/runtime.yml requires."""

import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLE_METAS = sorted([*ROOT.glob("roles/*/meta/main.yml"), *ROOT.glob("molecule/*/roles/*/meta/main.yml")])


def _runtime_minimum():
    requires = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text(encoding="utf-8"))["requires_ansible"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)(?:\.\d+)?", requires)
    assert match, f"meta/runtime.yml: requires_ansible {requires!r} is not a '>=X.Y[.Z]' minimum"
    return match.group(1)


def test_every_role_is_checked():
    assert {path.parents[1].name for path in ROLE_METAS} >= {"_python_venv", "barbican", "dogtag", "keystone", "kms_plugin",
                                                             "package_sources"}


@pytest.mark.parametrize("meta", ROLE_METAS, ids=lambda path: str(path.parents[1].relative_to(ROOT)))
def test_role_requires_the_collections_ansible(meta):
    galaxy_info = yaml.safe_load(meta.read_text(encoding="utf-8"))["galaxy_info"]
    assert galaxy_info["min_ansible_version"] == _runtime_minimum(), (
        f"{meta.relative_to(ROOT)}: min_ansible_version must be {_runtime_minimum()}, as meta/runtime.yml requires")
