"""Waiting until a booted host accepts SSH, and its journal when it does not."""

import pathlib
import subprocess
import time

from tests.harness.procs import wait_for_port
from tests.harness.testhosts import TestHostError

SSH_WAIT_SECONDS = 60.0


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


def wait_for_ssh(host, key, known_hosts, process):
    """Wait until root logs in on ``host`` with ``key`` and its systemd has booted; return its state."""
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
