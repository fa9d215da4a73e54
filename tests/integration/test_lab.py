"""The lab's hosts: ``make lab`` boots them once and reuses them, ``make lab-down`` leaves nothing behind.

Real containers on a real bridge (root and systemd-nspawn required), in a lab
directory of the test's own (TEAPOT_KMS_LAB_DIR), so a lab someone runs is
never touched.  Ansible connects to every host through the lab's inventory,
which leaves SSH connection masters running, as a playbook run does; then
``make lab-down`` runs and the test looks at what the kernel reports.
The playbooks themselves run in ``make lab`` (docs/lab.md), not here.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.harness.testhosts.teardown import leftovers
from tests.lab.__main__ import Lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"),
        reason="needs root, systemd-nspawn (systemd-container) and debootstrap",
    ),
]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


def _processes_mentioning(text):
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append((int(entry.name), cmdline))
    return found


def _lab(lab_dir, *args):
    env = dict(os.environ, TEAPOT_KMS_LAB_DIR=str(lab_dir))
    return subprocess.run([sys.executable, "-m", "tests.lab", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=1800)


@pytest.fixture
def lab_dir():
    """A short directory: SSH's control sockets live below it, and a unix socket path holds at most 107 bytes."""
    parent = pathlib.Path(tempfile.mkdtemp(prefix="tklab-"))
    yield parent / "lab"
    shutil.rmtree(parent, ignore_errors=True)


def test_lab_hosts_are_reused_and_lab_down_removes_everything(lab_dir):
    first = _lab(lab_dir, "up", "--hosts-only")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = json.loads((lab_dir / "testhosts.json").read_text(encoding="utf-8"))
    try:
        # The same run serves the second `make lab`: nothing reboots.
        again = _lab(lab_dir, "up", "--hosts-only")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "were up, reused" in again.stdout
        assert json.loads((lab_dir / "testhosts.json").read_text(encoding="utf-8"))["hosts"] == state["hosts"]

        # Every host answers through the lab's inventory, in the groups of the collection's playbooks.
        lab = Lab(lab_dir)
        ping = subprocess.run([str(BIN / "ansible"), "-i", str(lab.inventory), "all", "-m", "ansible.builtin.ping"],
                              cwd=lab_dir, env=lab.ansible_env(), capture_output=True, text=True, check=False, timeout=300)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert ping.stdout.count("SUCCESS") == len(state["hosts"]) == 3
        graph = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(lab.inventory), "--graph"], cwd=lab_dir,
                               env=lab.ansible_env(), capture_output=True, text=True, check=True).stdout
        for group in ("@keystone:", "@barbican:", "@kube_control_plane:"):
            assert group in graph
        assert (lab.inventory / "group_vars" / "all" / "secrets.yml").stat().st_mode & 0o777 == 0o600

        # What a running lab holds, so that the checks below can see it go.
        assert leftovers(state)
        assert _processes_mentioning(str(lab_dir))  # the SSH masters Ansible left
    finally:
        down = subprocess.run(["make", "--no-print-directory", "lab-down"], cwd=REPO_ROOT,
                              env=dict(os.environ, TEAPOT_KMS_LAB_DIR=str(lab_dir)),
                              capture_output=True, text=True, check=False, timeout=600)
    assert down.returncode == 0, down.stdout + down.stderr
    assert leftovers(state) == []
    assert _processes_mentioning(str(lab_dir)) == []
    assert not lab_dir.exists()
    assert not os.path.exists(state["log_dir"])
    # A second lab-down finds nothing and succeeds.
    again = subprocess.run(["make", "--no-print-directory", "lab-down"], cwd=REPO_ROOT,
                           env=dict(os.environ, TEAPOT_KMS_LAB_DIR=str(lab_dir)),
                           capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
