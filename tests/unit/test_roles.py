"""Every role installs its Python software through the private role teapot.kms._python_venv, which alone
creates venvs and runs pip install on the hosts (with the package sources' index and pins)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A venv made by hand, a pip of a venv, or the pip module: each would bypass the package sources.
VENV_INSTALL = re.compile(r"-m venv\b|/bin/pip\b|\bansible\.builtin\.pip\s*:|^\s*pip\s*:", re.M)
PUBLIC_TASK_FILES = sorted(path for path in ROOT.glob("roles/*/tasks/*.yml") if path.parts[-3] != "_python_venv")


def test_the_private_role_installs():
    role = ROOT / "roles" / "_python_venv"
    found = VENV_INSTALL.findall((role / "tasks" / "main.yml").read_text(encoding="utf-8")
                                 + (role / "vars" / "main.yml").read_text(encoding="utf-8"))
    assert found == ["-m venv", "/bin/pip"]  # the pattern finds what it guards against


@pytest.mark.parametrize("tasks", PUBLIC_TASK_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_roles_install_through_the_private_role(tasks):
    found = VENV_INSTALL.findall(tasks.read_text(encoding="utf-8"))
    assert not found, (f"{tasks.relative_to(ROOT)} installs into a venv itself ({found}): "
                       "use ansible.builtin.include_role with name teapot.kms._python_venv")
