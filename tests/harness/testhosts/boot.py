"""``up``: boot the hosts of one run on a bridge of their own and serve their package sources."""

import os
import pathlib
import sys
import time
import uuid

from tests.harness import pkgrepo
from tests.harness.cache import cache_dir, file_lock
from tests.harness.procs import ManagedProcess, run
from tests.harness.testhosts import TestHostError
from tests.harness.testhosts.cgroups import cgroup_roots
from tests.harness.testhosts.host_files import known_hosts_lines, write_host_files
from tests.harness.testhosts.rootfs import build_rootfs, rootfs_key
from tests.harness.testhosts.ssh import wait_for_ssh
from tests.harness.testhosts.state_file import State, alive, process_start_time
from tests.harness.testhosts.subnets import pick_subnet
from tests.harness.testhosts.teardown import down

FIRST_HOST_OCTET = 10


def up(state_path, hosts, debs=(), wheels=(), build_wheels=(), log=sys.stderr, reuse=False):
    """Boot ``hosts`` (names) and serve the package sources; return the state dict.

    With ``reuse``, a run that ``state_path`` describes is returned as it is
    when it is complete and every one of its processes is alive, with the same
    hosts and package lists; any other run there is torn down first.
    """
    if not hosts:
        raise TestHostError("up needs at least one host name")
    if len(set(hosts)) != len(hosts):
        raise TestHostError(f"host names repeat: {hosts}")
    wanted = _requested(hosts, debs, wheels, build_wheels)
    existing = State.load(state_path)
    if existing is not None:
        if reuse and existing.data.get("requested") == wanted and _complete_and_alive(existing):
            print(f"testhosts: run {existing.data['run_id']} is up, reusing it", file=log)
            return existing.data
        if existing.processes_alive() and not reuse:
            raise TestHostError(f"{state_path} describes a run that is still up: run down first")
        if existing.processes_alive():
            print(f"testhosts: run {existing.data.get('run_id')} is incomplete, partly down or was made from other "
                  "lists: tearing it down", file=log)
        down(state_path, log=log)

    run_id = uuid.uuid4().hex[:8]
    run_dir = cache_dir("runs", run_id)
    with file_lock(run_dir / "up.lock"):
        return _up_locked(state_path, run_id, run_dir, wanted, log)


def _requested(hosts, debs, wheels, build_wheels):
    return {"hosts": list(hosts), "debs": list(debs), "wheels": list(wheels), "build_wheels": list(build_wheels)}


def _complete_and_alive(state):
    """Whether ``up`` finished this run and every process it started still runs."""
    records = state.data.get("hosts", []) + state.data.get("servers", [])
    return "package_sources" in state.data and bool(records) and all(alive(record) for record in records)


def _up_locked(state_path, run_id, run_dir, wanted, log):
    hosts, debs, wheels, build_wheels = wanted["hosts"], wanted["debs"], wanted["wheels"], wanted["build_wheels"]
    # Logs outlive the run (down removes run_dir): console output explains a failed converge.
    log_dir = cache_dir("logs", "testhosts", run_id)
    state = State(state_path, {"run_id": run_id, "run_dir": str(run_dir), "log_dir": str(log_dir), "hosts": [], "servers": [],
                               "requested": wanted})
    state.save()
    try:
        _up(state, run_dir, list(hosts), debs, wheels, build_wheels, log)
    except BaseException:
        print(f"testhosts: up failed, tearing down run {run_id}", file=log)
        down(state_path, log=log)
        raise
    return state.data


def _up(state, run_dir, names, debs, wheels, build_wheels, log):
    started = time.monotonic()
    log_dir = pathlib.Path(state.data["log_dir"])
    if not (cache_dir("rootfs") / rootfs_key()).is_dir():
        print(f"testhosts: building the hosts' Debian 12 rootfs with debootstrap (once per cache; log: {log_dir / 'debootstrap.log'})",
              file=log, flush=True)
    rootfs = build_rootfs(log=log_dir / "debootstrap.log")
    print(f"testhosts: rootfs {rootfs} ready after {time.monotonic() - started:.0f}s", file=log)
    sources = pkgrepo.prepare(rootfs, debs=debs, wheels=wheels, build_wheels=build_wheels, log=log)
    print(f"testhosts: package sources ready after {time.monotonic() - started:.0f}s", file=log)

    run_id = state.data["run_id"]
    key = run_dir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"teapot-kms-testhosts-{run_id}", "-f", key])
    public_key = (run_dir / "id_ed25519.pub").read_text(encoding="utf-8")
    state.data["private_key"] = str(key)

    with file_lock(cache_dir("runs") / "network.lock"):
        subnet = pick_subnet()
        gateway = next(subnet.hosts())
        bridge = f"tkms-{run_id}"
        state.data.update({"bridge": bridge, "subnet": str(subnet), "gateway": str(gateway)})
        state.save()
        run(["ip", "link", "add", "name", bridge, "type", "bridge"])
    run(["ip", "address", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge])
    run(["ip", "link", "set", "dev", bridge, "up"])

    hosts = []
    for index, name in enumerate(names):
        hosts.append({
            "name": name,
            "machine": f"tk{run_id}-{index}",
            "address": str(subnet.network_address + FIRST_HOST_OCTET + index),
            "dir": str(run_dir / "hosts" / name),
        })
    known_hosts = []
    for host in hosts:
        host_dir = pathlib.Path(host["dir"])
        merged = host_dir / "merged"
        for sub in ("upper", "work", "merged"):
            (host_dir / sub).mkdir(parents=True, exist_ok=True)
        host["merged"] = str(merged)
        host["log"] = str(log_dir / f"{host['name']}-console.log")
        state.data["hosts"].append(host)
        state.save()
        run([
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={rootfs},upperdir={host_dir / 'upper'},workdir={host_dir / 'work'}", merged,
        ])
        write_host_files(merged, host["name"], host["address"], hosts, public_key, gateway, subnet.prefixlen)
        known_hosts += known_hosts_lines(merged, [host["name"], host["address"]])
    known_hosts_path = run_dir / "known_hosts"
    known_hosts_path.write_text("\n".join(known_hosts) + "\n", encoding="utf-8")
    state.data["known_hosts"] = str(known_hosts_path)

    processes = {}
    for host in hosts:
        # Each container's systemd needs a cgroup of its own: two in one cgroup remove each other's units.
        host["cgroups"] = [str(pathlib.Path(root) / f"teapot-kms-{host['machine']}") for root in cgroup_roots()]
        state.save()
        for group in host["cgroups"]:
            os.mkdir(group)
        process = ManagedProcess(
            f"nspawn-{host['name']}",
            [
                "sh", "-c", 'for group in $TEAPOT_KMS_CGROUPS; do echo $$ > "$group/cgroup.procs"; done; exec "$@"', "sh",
                "systemd-nspawn", "--quiet", "-D", host["merged"], "-M", host["machine"],
                f"--hostname={host['name']}", "--register=no", "--keep-unit", "--boot",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                f"--network-bridge={state.data['bridge']}", "--console=read-only",
            ],
            host["log"],
            env=dict(os.environ, TEAPOT_KMS_CGROUPS=" ".join(host["cgroups"])),
        ).start()
        host["pid"] = process.popen.pid
        host["start_time"] = process_start_time(process.popen.pid)
        state.save()
        processes[host["name"]] = process

    server = pkgrepo.serve(sources, str(gateway), run_dir, state, log_dir)
    state.data["package_sources"] = server
    state.save()

    for host in hosts:
        status = wait_for_ssh(host, key, known_hosts_path, processes[host["name"]])
        print(f"testhosts: {host['name']} at {host['address']} up ({status}) after "
              f"{time.monotonic() - started:.0f}s", file=log)
    state.save()
