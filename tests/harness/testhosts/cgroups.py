"""The cgroups each container's systemd runs in: created before boot, emptied and removed at teardown."""

import contextlib
import os
import pathlib
import signal
import time

from tests.harness.testhosts import TestHostError


def cgroup_roots():
    """This process's cgroup in the hierarchies a container's systemd uses (name=systemd v1, and v2)."""
    own = {}
    for line in pathlib.Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines():
        _hid, controllers, path = line.split(":", 2)
        own[controllers] = path
    roots = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3]
            point = fields[4]
            if fstype == "cgroup2" and "" in own:
                roots.append(point + own[""].rstrip("/"))
            elif fstype == "cgroup" and "name=systemd" in options.split(","):
                roots.append(point + own.get("name=systemd", "/").rstrip("/"))
    return roots


def _cgroup_pids(groups):
    pids = set()
    for group in groups:
        for dirpath, _dirnames, filenames in os.walk(group):
            if "cgroup.procs" in filenames:
                with contextlib.suppress(FileNotFoundError):
                    pids.update(int(pid) for pid in pathlib.Path(dirpath, "cgroup.procs").read_text(encoding="utf-8").split())
    return pids


def kill_cgroups(groups, timeout=30.0):
    """SIGKILL every process in ``groups`` (a container whose nspawn died leaves its systemd there)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = _cgroup_pids(groups)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise TestHostError(f"processes in {groups} survive SIGKILL: {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def remove_cgroup(group):
    """rmdir a cgroup and every cgroup below it (they must be empty of processes)."""
    if not os.path.isdir(group):
        return
    for dirpath, _dirnames, _filenames in os.walk(group, topdown=False):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dirpath)
