"""``down`` and ``prune``: remove everything a run's state file records, whatever state it was left in."""

import contextlib
import fcntl
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from tests.harness.cache import cache_dir
from tests.harness.procs import run
from tests.harness.testhosts import TestHostError
from tests.harness.testhosts.cgroups import kill_cgroups, remove_cgroup
from tests.harness.testhosts.state_file import State, alive

POWEROFF_WAIT_SECONDS = 30.0


def _mounts_below(path):
    """Mount points at or below ``path``, deepest first."""
    path = os.path.realpath(path)
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path or point.startswith(path + "/"):
                points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _unmount_below(path):
    for point in _mounts_below(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    left = _mounts_below(path)
    if left:
        raise TestHostError(f"still mounted below {path}: {left}")


def processes_rooted_below(path):
    """PIDs whose root directory lies in ``path`` (processes inside our containers)."""
    path = os.path.realpath(path)
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            root = os.readlink(entry / "root")
        except OSError:
            continue
        if root == path or root.startswith(path + "/"):
            pids.append(int(entry.name))
    return pids


def _link_exists(name):
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def _stop_records(records, grace, log):
    """SIGTERM every process the records name (only those still alive), wait up to ``grace`` for all, then SIGKILL.

    All at once: each host's clean poweroff runs while the others' do, so a
    run's teardown takes as long as its slowest host, not the sum of them.
    """
    records = [record for record in records if alive(record)]
    for record in records:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(record) for record in records) and time.monotonic() < deadline:
        time.sleep(0.2)
    for record in records:
        if alive(record):
            pid = record["pid"]
            print(f"testhosts: {record.get('name')} (pid {pid}) ignored SIGTERM, killing it", file=log)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def prune(log=sys.stderr):
    """Tear down runs that nothing uses any more: no ``up`` in progress and none of their processes alive.

    For runs whose state file went away (a deleted Molecule ephemeral directory,
    for instance); a run that is still up is never touched.
    """
    pruned = []
    for run_dir in sorted(cache_dir("runs").iterdir()):
        copy = run_dir / "state.json"
        if not run_dir.is_dir() or not copy.is_file():
            continue
        with open(run_dir / "up.lock", "a", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # up is running
            state = State.load(copy)
            if state is None or state.processes_alive():
                continue
            print(f"testhosts: pruning run {run_dir.name}", file=log)
            down(copy, log=log)
            pruned.append(run_dir.name)
    return pruned


def down(state_path, log=sys.stderr):
    """Tear down everything the state file records; safe to run again."""
    state = State.load(state_path)
    if state is None:
        return
    data = state.data
    _stop_records(data.get("servers", []), 10.0, log)
    _stop_records(data.get("hosts", []), POWEROFF_WAIT_SECONDS, log)
    for host in data.get("hosts", []):
        merged = host.get("merged")
        if not merged:
            continue
        for _attempt in range(50):
            pids = processes_rooted_below(merged)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        else:
            raise TestHostError(f"processes inside {merged} survive SIGKILL: {pids}")
        # Wait for the nspawn parent to be reaped (its pid leaves /proc).
        deadline = time.monotonic() + 10
        while alive(host) and time.monotonic() < deadline:
            time.sleep(0.1)
    for host in data.get("hosts", []):
        kill_cgroups(host.get("cgroups", []))
        for group in host.get("cgroups", []):
            remove_cgroup(group)
    run_dir = data.get("run_dir")
    if run_dir:
        _unmount_below(run_dir)
    bridge = data.get("bridge")
    for host in data.get("hosts", []):
        for veth in (f"vb-{host.get('machine', '')}"[:15],):
            if _link_exists(veth):
                subprocess.run(["ip", "link", "delete", veth], capture_output=True, check=False)
    if bridge and _link_exists(bridge):
        run(["ip", "link", "delete", bridge])
    if run_dir and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    state.path.unlink(missing_ok=True)


def leftovers(data):
    """What of the run ``data`` (its state) still exists: mounts, links, processes, cgroups, files; [] when nothing."""
    found = []
    run_dir = data.get("run_dir")
    if run_dir and _mounts_below(run_dir):
        found.append(f"mounts below {run_dir}: {_mounts_below(run_dir)}")
    if data.get("bridge") and _link_exists(data["bridge"]):
        found.append(f"bridge {data['bridge']}")
    for host in data.get("hosts", []):
        veth = f"vb-{host.get('machine', '')}"[:15]
        if host.get("machine") and _link_exists(veth):
            found.append(f"link {veth}")
        if alive(host):
            found.append(f"systemd-nspawn of {host.get('name')} (pid {host.get('pid')})")
        if host.get("merged") and processes_rooted_below(host["merged"]):
            found.append(f"processes inside {host.get('name')}: {processes_rooted_below(host['merged'])}")
        found += [f"cgroup {group}" for group in host.get("cgroups", []) if os.path.exists(group)]
    found += [f"{server.get('name')} (pid {server.get('pid')})" for server in data.get("servers", []) if alive(server)]
    if run_dir and os.path.exists(run_dir):
        found.append(f"directory {run_dir}")
    return found
