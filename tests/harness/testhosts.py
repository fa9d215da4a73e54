"""Boot Debian test hosts with systemd under systemd-nspawn, on a bridge of their own.

Library and command line::

    python -m tests.harness.testhosts rootfs
    python -m tests.harness.testhosts up --state STATE.json --host alpha --host beta \\
        [--deb curl ...] [--wheel prometheus-client ...] [--build-wheel NAME ...]
    python -m tests.harness.testhosts down --state STATE.json
    python -m tests.harness.testhosts prune

``up`` builds (once) a cached bookworm rootfs, creates a bridge that only this
run uses, boots one container per host on an overlay of that rootfs with a
static address, an SSH key authorised for root and per-host SSH host keys,
and serves a Debian repository and a wheel index on the bridge's host-side
address (see ``pkgrepo``).  It prints the state as JSON.

``down`` undoes everything that the state file records.  The state file is
written before each resource is created, so ``down`` also cleans up after an
aborted ``up``; running it twice is harmless.  ``prune`` does the same for
runs whose state file was lost but whose processes are all gone.  Console
and package-server logs stay in ``cache_dir("logs", "testhosts", RUN_ID)``.
The hosts have no route anywhere but their bridge.
"""

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from tests.harness.cache import cache_dir, file_lock
from tests.harness.procs import ManagedProcess, wait_for_port

SUITE = "bookworm"
ROOTFS_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "openssh-server",
    "iproute2",
    "sudo",
    "procps",
    "ca-certificates",
)
# Test networks are /24s carved out of this range, skipping any that overlap
# an address or route already on this machine.
TEST_NET_POOL = ipaddress.ip_network("10.213.0.0/16")
FIRST_HOST_OCTET = 10
SSH_WAIT_SECONDS = 60.0
POWEROFF_WAIT_SECONDS = 30.0


class TestHostError(RuntimeError):
    """A test host could not be built, booted or torn down."""


def _run(argv, **kwargs):
    """Run a command; on failure raise with its output."""
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, check=False, **kwargs
    )
    if result.returncode != 0:
        raise TestHostError(
            f"{' '.join(str(a) for a in argv)} exited with {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


# --------------------------------------------------------------------------
# The Debian mirror this machine's apt uses


def _sources_entries(etc):
    """Yield (uris, suites, components) of every enabled apt source below ``etc``."""
    etc = pathlib.Path(etc)
    one_line_files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for path in one_line_files:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            if words and words[0].startswith("["):
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2:
                yield [words[0]], [words[1]], words[2:]
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"])[0].lower() == "no":
                continue
            if "deb" not in fields.get("types", []):
                continue
            yield fields.get("uris", []), fields.get("suites", []), fields.get("components", [])


def debian_mirror(suite=SUITE, apt_etc="/etc/apt"):
    """Return the URI of the mirror that apt on this machine uses for ``suite`` main."""
    override = os.environ.get("TEAPOT_KMS_DEBIAN_MIRROR")
    if override:
        return override
    for uris, suites, components in _sources_entries(apt_etc):
        if suite in suites and "main" in components and uris:
            return uris[0]
    raise TestHostError(
        f"no apt source for '{suite} main' in /etc/apt/sources.list(.d); "
        "set TEAPOT_KMS_DEBIAN_MIRROR to a Debian mirror URI"
    )


# --------------------------------------------------------------------------
# The cached rootfs


def rootfs_key(packages=ROOTFS_PACKAGES, suite=SUITE):
    digest = hashlib.sha256(json.dumps([suite, sorted(packages)]).encode()).hexdigest()
    return f"{suite}-{digest[:12]}"


def build_rootfs(packages=ROOTFS_PACKAGES, suite=SUITE, log=None):
    """Return the cached rootfs for ``packages``, building it first if needed.

    A lock keeps two runs from building the same rootfs at once; the build
    happens in a temporary directory that is renamed into place when it is
    complete, so a directory under its final name is always whole.
    """
    base = cache_dir("rootfs")
    key = rootfs_key(packages, suite)
    final = base / key
    if final.is_dir():
        return final
    with file_lock(base / f"{key}.lock"):
        if final.is_dir():
            return final
        for stale in base.glob(f".build-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=base))
        try:
            mirror = debian_mirror(suite)
            argv = [
                "debootstrap", "--variant=minbase", f"--include={','.join(sorted(packages))}",
                suite, tmp, mirror,
            ]
            with open(log or os.devnull, "a", encoding="utf-8") as out:
                result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                raise TestHostError(f"debootstrap failed with {result.returncode}; see {log}")
            os.chmod(tmp, 0o755)  # mkdtemp made it 0700: it becomes the hosts' /
            _prepare_rootfs(tmp)
            (tmp / ".teapot-kms-rootfs.json").write_text(
                json.dumps({"suite": suite, "packages": sorted(packages), "mirror": mirror}) + "\n",
                encoding="utf-8",
            )
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _prepare_rootfs(root):
    """Make the debootstrapped tree a neutral template for many hosts."""
    # Each host gets its own SSH host keys and machine id.
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("", encoding="utf-8")
    for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    # No console to log in on, and no hardware clock to sync.
    wants = root / "etc" / "systemd" / "system"
    for unit in ("getty@tty1.service", "console-getty.service", "systemd-timesyncd.service"):
        with contextlib.suppress(FileExistsError):
            (wants / unit).symlink_to("/dev/null")


# --------------------------------------------------------------------------
# State file


class State:
    """The JSON record of one run: written before each resource is created."""

    def __init__(self, path, data=None):
        self.path = pathlib.Path(path)
        self.data = data if data is not None else {}

    @property
    def copy_path(self):
        """A copy inside the run directory, so that ``prune`` finds runs whose state file was lost."""
        run_dir = self.data.get("run_dir")
        return pathlib.Path(run_dir) / "state.json" if run_dir else None

    @classmethod
    def load(cls, path):
        path = pathlib.Path(path)
        if not path.exists():
            return None
        return cls(path, json.loads(path.read_text(encoding="utf-8")))

    def save(self):
        for path in (self.path, self.copy_path):
            if path is None or (path != self.path and not path.parent.is_dir()):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, path)

    def processes_alive(self):
        return any(_alive(record) for record in self.data.get("hosts", []) + self.data.get("servers", []))


def _process_start_time(pid):
    """The kernel's start time of ``pid`` (to tell it from a reused PID), or None."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(record):
    """True while the process that ``record`` describes is still the same, unfinished process."""
    pid = record.get("pid")
    if not pid or _process_start_time(pid) != record.get("start_time"):
        return False
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        # Finished: reap it if it is our child (when down runs in the process that ran up).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


# --------------------------------------------------------------------------
# Network


def _used_networks():
    used = []
    for cmd in (["ip", "-j", "-4", "addr"], ["ip", "-j", "-4", "route", "show", "table", "all"]):
        for entry in json.loads(_run(cmd) or "[]"):
            for info in entry.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
            dst = entry.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.ip_network(dst, strict=False))
    return used


def _pick_subnet():
    used = _used_networks()
    candidates = list(TEST_NET_POOL.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise TestHostError(f"no free /24 left in {TEST_NET_POOL}")


def _link_exists(name):
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


# --------------------------------------------------------------------------
# Mounts


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


def _processes_rooted_below(path):
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


# --------------------------------------------------------------------------
# Cgroups


def _cgroup_roots():
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


def _kill_cgroups(groups, timeout=30.0):
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


def _remove_cgroup(group):
    """rmdir a cgroup and every cgroup below it (they must be empty of processes)."""
    if not os.path.isdir(group):
        return
    for dirpath, _dirnames, _filenames in os.walk(group, topdown=False):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dirpath)


# --------------------------------------------------------------------------
# Host setup


def _host_files(merged, name, address, all_hosts, public_key, gateway, prefixlen):
    etc = merged / "etc"
    (etc / "hostname").write_text(name + "\n", encoding="utf-8")
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{host['address']} {host['name']}" for host in all_hosts]
    (etc / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ssh_dir = merged / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key, encoding="utf-8")
    os.chmod(keys, 0o600)
    _run(["ssh-keygen", "-A", "-f", merged])
    script = merged / "usr" / "local" / "sbin" / "teapot-testhost-network"
    script.write_text(
        "#!/bin/sh\n"
        "# Static address of this test host on its bridge; no default route.\n"
        "set -eu\n"
        "ip link set dev lo up\n"
        "tries=0\n"
        "until ip link show dev host0 >/dev/null 2>&1; do\n"
        "    tries=$((tries + 1))\n"
        "    if [ \"$tries\" -gt 300 ]; then echo 'host0 did not appear' >&2; ip link >&2; exit 1; fi\n"
        "    sleep 0.1\n"
        "done\n"
        f"ip address replace {address}/{prefixlen} dev host0\n"
        "ip link set dev host0 up\n"
        "ip -brief address show dev host0\n",
        encoding="utf-8",
    )
    os.chmod(script, 0o755)
    unit = etc / "systemd" / "system" / "teapot-testhost-network.service"
    unit.write_text(
        "[Unit]\n"
        "Description=Static address of this test host on its bridge\n"
        "Before=network.target ssh.service\n"
        "Wants=network.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "ExecStart=/usr/local/sbin/teapot-testhost-network\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n",
        encoding="utf-8",
    )
    wants = etc / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    del gateway  # the hosts get no default route: the bridge is all they reach


def _host_known_hosts(merged, names):
    lines = []
    for pub in sorted((merged / "etc" / "ssh").glob("ssh_host_*_key.pub")):
        key_type, key = pub.read_text(encoding="utf-8").split()[:2]
        lines.append(f"{','.join(names)} {key_type} {key}")
    return lines


def _children(pid):
    try:
        text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except OSError:
        return []
    return [int(child) for child in text.split()]


def container_journal(host, units=("teapot-testhost-network.service", "ssh.service"), lines=40):
    """The end of a running host's journal for ``units`` (for error messages), or ''."""
    # systemd-nspawn -> its namespace child -> the container's systemd
    for child in _children(host.get("pid", 0)):
        for init in _children(child) or [child]:
            argv = ["nsenter", "-t", str(init), "-a", "journalctl", "-b", "--no-pager", "-n", str(lines)]
            for unit in units:
                argv += ["-u", unit]
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return result.stdout
    return ""


def _wait_for_ssh(host, key, known_hosts, process):
    try:
        wait_for_port(host["address"], 22, SSH_WAIT_SECONDS, process)
    except TimeoutError as error:
        raise TestHostError(f"{host['name']}: {error}\njournal:\n{container_journal(host)}") from error
    deadline = time.monotonic() + SSH_WAIT_SECONDS
    argv = [
        "ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=5",
        f"root@{host['address']}", "systemctl is-system-running --wait || true",
    ]
    while True:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return result.stdout.strip()
        if time.monotonic() > deadline or not process.running():
            raise TestHostError(
                f"no SSH login on {host['name']} ({host['address']}): {result.stderr}\n"
                f"console:\n{process.log_tail()}"
            )
        time.sleep(0.5)


# --------------------------------------------------------------------------
# up / down


def up(state_path, hosts, debs=(), wheels=(), build_wheels=(), log=sys.stderr):
    """Boot ``hosts`` (names) and serve the package sources; return the state dict."""
    if not hosts:
        raise TestHostError("up needs at least one host name")
    if len(set(hosts)) != len(hosts):
        raise TestHostError(f"host names repeat: {hosts}")
    existing = State.load(state_path)
    if existing is not None:
        if existing.processes_alive():
            raise TestHostError(f"{state_path} describes a run that is still up: run down first")
        down(state_path, log=log)

    run_id = uuid.uuid4().hex[:8]
    run_dir = cache_dir("runs", run_id)
    with file_lock(run_dir / "up.lock"):
        return _up_locked(state_path, run_id, run_dir, hosts, debs, wheels, build_wheels, log)


def _up_locked(state_path, run_id, run_dir, hosts, debs, wheels, build_wheels, log):
    # Logs outlive the run (down removes run_dir): console output explains a failed converge.
    log_dir = cache_dir("logs", "testhosts", run_id)
    state = State(state_path, {"run_id": run_id, "run_dir": str(run_dir), "log_dir": str(log_dir), "hosts": [], "servers": []})
    state.save()
    try:
        _up(state, run_dir, list(hosts), debs, wheels, build_wheels, log)
    except BaseException:
        print(f"testhosts: up failed, tearing down run {run_id}", file=log)
        down(state_path, log=log)
        raise
    return state.data


def _up(state, run_dir, names, debs, wheels, build_wheels, log):
    # Imported here: pkgrepo uses this module's helpers.
    from tests.harness import pkgrepo  # pylint: disable=import-outside-toplevel

    started = time.monotonic()
    log_dir = pathlib.Path(state.data["log_dir"])
    rootfs = build_rootfs(log=log_dir / "debootstrap.log")
    print(f"testhosts: rootfs {rootfs} ready after {time.monotonic() - started:.0f}s", file=log)
    sources = pkgrepo.prepare(rootfs, debs=debs, wheels=wheels, build_wheels=build_wheels, log=log)
    print(f"testhosts: package sources ready after {time.monotonic() - started:.0f}s", file=log)

    run_id = state.data["run_id"]
    key = run_dir / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"teapot-kms-testhosts-{run_id}", "-f", key])
    public_key = (run_dir / "id_ed25519.pub").read_text(encoding="utf-8")
    state.data["private_key"] = str(key)

    with file_lock(cache_dir("runs") / "network.lock"):
        subnet = _pick_subnet()
        gateway = next(subnet.hosts())
        bridge = f"tkms-{run_id}"
        state.data.update({"bridge": bridge, "subnet": str(subnet), "gateway": str(gateway)})
        state.save()
        _run(["ip", "link", "add", "name", bridge, "type", "bridge"])
    _run(["ip", "address", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge])
    _run(["ip", "link", "set", "dev", bridge, "up"])

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
        _run([
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={rootfs},upperdir={host_dir / 'upper'},workdir={host_dir / 'work'}", merged,
        ])
        _host_files(merged, host["name"], host["address"], hosts, public_key, gateway, subnet.prefixlen)
        known_hosts += _host_known_hosts(merged, [host["name"], host["address"]])
    known_hosts_path = run_dir / "known_hosts"
    known_hosts_path.write_text("\n".join(known_hosts) + "\n", encoding="utf-8")
    state.data["known_hosts"] = str(known_hosts_path)

    processes = {}
    for host in hosts:
        # Each container's systemd needs a cgroup of its own: two in one cgroup remove each other's units.
        host["cgroups"] = [str(pathlib.Path(root) / f"teapot-kms-{host['machine']}") for root in _cgroup_roots()]
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
        host["start_time"] = _process_start_time(process.popen.pid)
        state.save()
        processes[host["name"]] = process

    server = pkgrepo.serve(sources, str(gateway), run_dir, state, log_dir)
    state.data["package_sources"] = server
    state.save()

    for host in hosts:
        status = _wait_for_ssh(host, key, known_hosts_path, processes[host["name"]])
        print(f"testhosts: {host['name']} at {host['address']} up ({status}) after "
              f"{time.monotonic() - started:.0f}s", file=log)
    state.save()


def _stop_record(record, grace, log):
    """SIGTERM the process a record names (only if it is still that process), then SIGKILL."""
    if not _alive(record):
        return
    pid = record["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(record) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(record):
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
    for server in data.get("servers", []):
        _stop_record(server, 10.0, log)
    for host in data.get("hosts", []):
        _stop_record(host, POWEROFF_WAIT_SECONDS, log)
    for host in data.get("hosts", []):
        merged = host.get("merged")
        if not merged:
            continue
        for _attempt in range(50):
            pids = _processes_rooted_below(merged)
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
        while _alive(host) and time.monotonic() < deadline:
            time.sleep(0.1)
    for host in data.get("hosts", []):
        _kill_cgroups(host.get("cgroups", []))
        for group in host.get("cgroups", []):
            _remove_cgroup(group)
    run_dir = data.get("run_dir")
    if run_dir:
        _unmount_below(run_dir)
    bridge = data.get("bridge")
    for host in data.get("hosts", []):
        for veth in (f"vb-{host.get('machine', '')}"[:15],):
            if _link_exists(veth):
                subprocess.run(["ip", "link", "delete", veth], capture_output=True, check=False)
    if bridge and _link_exists(bridge):
        _run(["ip", "link", "delete", bridge])
    if run_dir and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    state.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Command line


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.harness.testhosts", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rootfs", help="build the cached rootfs and print its path")
    up_parser = sub.add_parser("up", help="boot hosts and serve package sources")
    up_parser.add_argument("--state", required=True, help="JSON state file to write")
    up_parser.add_argument("--host", action="append", required=True, help="host name (repeat)")
    up_parser.add_argument("--deb", action="append", default=[], help="Debian package for the repository (repeat)")
    up_parser.add_argument("--wheel", action="append", default=[], help="requirement to download as a wheel (repeat)")
    up_parser.add_argument("--build-wheel", action="append", default=[], help="requirement to build with pip wheel (repeat)")
    down_parser = sub.add_parser("down", help="tear down what a state file records")
    down_parser.add_argument("--state", required=True)
    sub.add_parser("prune", help="tear down runs whose processes are all gone (their state file may be lost)")
    args = parser.parse_args(argv)
    try:
        if args.command == "rootfs":
            print(build_rootfs(log=cache_dir("rootfs") / "debootstrap.log"))
        elif args.command == "up":
            data = up(args.state, args.host, args.deb, args.wheel, args.build_wheel)
            print(json.dumps(data, indent=2, sort_keys=True))
        elif args.command == "prune":
            for run_id in prune():
                print(run_id)
        else:
            down(args.state)
    except TestHostError as error:
        print(f"testhosts: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run the importable module, so that pkgrepo and this entry point share one TestHostError.
    from tests.harness import testhosts as _testhosts  # pylint: disable=import-self

    sys.exit(_testhosts.main())
