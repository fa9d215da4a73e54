"""teapot.kms._python_venv, the venv install of every role, run for real on this machine.

A local wheel rebuilt with the same version is the case the Molecule
scenarios do not reach: pip keeps the installed copy, so the role must
force it in, and notify the caller's handler each time something changed.
The Debian packages step is left out (an empty list): it would change this
machine's apt state.
"""

import base64
import hashlib
import subprocess
import zipfile

import pytest

from tests.harness.playbook import PlaybookRunner

pytestmark = pytest.mark.slow

NAME, VERSION = "teapot_venv_probe", "1.0"
ROLE = "teapot.kms._python_venv : "


def _build_wheel(directory, content):
    """A pure-Python wheel whose module holds ``content``."""
    wheel = directory / f"{NAME}-{VERSION}-py3-none-any.whl"
    dist_info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}.py": f"CONTENT = {content!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: teapot.kms tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            data = text.encode()
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _install(venv, wheel, reinstall):
    return [{
        "name": "venv",
        "ansible.builtin.include_role": {"name": "teapot.kms._python_venv"},
        "vars": {
            "_python_venv_path": str(venv),
            "_python_venv_packages": [str(wheel)],
            "_python_venv_pip_args": ["--no-index", "--find-links", str(wheel.parent)],
            "_python_venv_system_packages": [],
            "_python_venv_reinstall": [str(wheel)] if reinstall else [],
            "_python_venv_notify": ["probe changed"],
        },
    }]


HANDLERS = [{"name": "Record the notification", "ansible.builtin.debug": {"msg": "notified"}, "listen": "probe changed"}]


def _content(venv):
    return subprocess.run([str(venv / "bin" / "python"), "-c", f"import {NAME}; print({NAME}.CONTENT)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _names(run):
    return [name for name, _result in run.results]


@pytest.fixture
def runner(tmp_path):
    return PlaybookRunner(tmp_path / "playbooks")


def test_install_then_reinstall_a_rebuilt_wheel(runner, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    venv = tmp_path / "opt" / "probe"

    wheel = _build_wheel(wheels, "first build")
    run = runner.run(_install(venv, wheel, reinstall=False), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert run.task(ROLE + "Install the pinned packages into the venv")["changed"] is True
    assert run.task(ROLE + "Reinstall the local wheels that changed").get("skipped") is True
    assert "Record the notification" in _names(run)
    assert _content(venv) == "first build"

    # Same name and version, other content: pip alone would keep the first build.
    wheel = _build_wheel(wheels, "second build")
    run = runner.run(_install(venv, wheel, reinstall=True), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert run.task(ROLE + "Install the pinned packages into the venv")["changed"] is False
    assert run.task(ROLE + "Reinstall the local wheels that changed")["changed"] is True
    assert "Record the notification" in _names(run)
    assert _content(venv) == "second build"

    # Nothing changed: nothing done, nobody notified.
    run = runner.run(_install(venv, wheel, reinstall=False), handlers=HANDLERS)
    assert run.returncode == 0, run.output
    assert run.task(ROLE + "Create the venv")["changed"] is False
    assert run.task(ROLE + "Install the pinned packages into the venv")["changed"] is False
    assert "Record the notification" not in _names(run)
    assert _content(venv) == "second build"
