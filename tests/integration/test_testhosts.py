"""systemd-nspawn test hosts: they boot, reach only each other, and leave nothing behind.

Real containers on a real bridge (root and systemd-nspawn required).  The
teardown tests kill things halfway, run ``down`` and then look at what the
kernel reports: /proc/self/mountinfo, ``ip link``, /proc/<pid> and the cgroups.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.harness.testhosts.state_file import alive
from tests.harness.testhosts.teardown import leftovers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"),
        reason="needs root, systemd-nspawn (systemd-container) and debootstrap",
    ),
]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ssh(state, host, command):
    key = state["private_key"]
    argv = [
        "ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={state['known_hosts']}", "-o", "ConnectTimeout=10",
        f"root@{host['address']}", command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def _link_exists(name):
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def _assert_nothing_left(state):
    """Nothing that ``state`` recorded exists any more."""
    assert not leftovers(state)


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "tests.harness.testhosts", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, **kwargs
    )


def test_hosts_boot_reach_each_other_and_nothing_else(tmp_path):
    state_path = tmp_path / "state.json"
    result = _cli("up", "--state", state_path, "--host", "alpha", "--host", "beta")
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        state = json.loads(result.stdout)
        alpha, beta = state["hosts"]
        assert _ssh(state, alpha, "hostname").strip() == "alpha"
        assert _ssh(state, alpha, "systemctl is-system-running || true").strip() in ("running", "degraded")
        # Names resolve to the bridge addresses, and each host reaches the other.
        assert beta["address"] in _ssh(state, alpha, "getent hosts beta")
        assert _ssh(state, alpha, "python3 -c \"import socket; socket.create_connection(('beta', 22), 5); print('ok')\"").strip() == "ok"
        # No route out: only the bridge's own subnet.
        routes = _ssh(state, beta, "ip -4 route show")
        assert "default" not in routes
        assert routes.split()[0] == state["subnet"]
        # Per-host SSH host keys (known_hosts is checked strictly above).
        assert len(set(pathlib.Path(state["known_hosts"]).read_text(encoding="utf-8").split())) > 4
    finally:
        down = _cli("down", "--state", state_path)
    assert down.returncode == 0, down.stderr
    _assert_nothing_left(state)
    assert not state_path.exists()


def test_down_cleans_up_after_killed_processes(tmp_path):
    state_path = tmp_path / "state.json"
    result = _cli("up", "--state", state_path, "--host", "gamma")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout)
    (host,) = state["hosts"]
    # SIGKILL the package server and the container manager: nothing shuts down cleanly.
    os.kill(state["servers"][0]["pid"], signal.SIGKILL)
    os.kill(host["pid"], signal.SIGKILL)
    down = _cli("down", "--state", state_path)
    assert down.returncode == 0, down.stderr
    _assert_nothing_left(state)
    # Idempotent: a second down finds nothing to do and succeeds.
    again = _cli("down", "--state", state_path)
    assert again.returncode == 0, again.stderr


def test_down_cleans_up_after_an_aborted_up(tmp_path):
    """``up`` is SIGKILLed while the containers boot; the state file it wrote is enough for down."""
    state_path = tmp_path / "state.json"
    # pylint: disable-next=consider-using-with
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.testhosts", "up", "--state", state_path, "--host", "delta", "--host", "epsilon"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    state = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except ValueError:
                state = None
            if state and len(state["hosts"]) == 2 and all(h.get("pid") for h in state["hosts"]):
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state is not None and all(h.get("pid") for h in state["hosts"]), "up never got as far as starting containers"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    assert _link_exists(state["bridge"])
    down = _cli("down", "--state", state_path)
    assert down.returncode == 0, down.stderr
    _assert_nothing_left(state)


def test_prune_cleans_up_runs_whose_state_file_was_lost(tmp_path):
    state_path = tmp_path / "state.json"
    result = _cli("up", "--state", state_path, "--host", "zeta")
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout)
    # A run that is up is never pruned.
    first = _cli("prune")
    assert first.returncode == 0, first.stderr
    assert state["run_id"] not in first.stdout.split()
    assert _link_exists(state["bridge"])
    # Its state file lost and its processes gone: prune finds it through the copy in its run directory.
    state_path.unlink()
    os.kill(state["servers"][0]["pid"], signal.SIGKILL)
    os.kill(state["hosts"][0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(state["hosts"][0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = _cli("prune")
    assert second.returncode == 0, second.stderr
    assert state["run_id"] in second.stdout.split()
    _assert_nothing_left(state)
