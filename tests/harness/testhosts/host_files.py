"""What each host's overlay gets before it boots: its name, SSH keys and a static address."""

import contextlib
import os

from tests.harness.procs import run


def write_host_files(merged, name, address, all_hosts, public_key, gateway, prefixlen):
    """Make ``merged`` (one host's overlay) that host: its name, SSH keys and static address."""
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
    run(["ssh-keygen", "-A", "-f", merged])
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


def known_hosts_lines(merged, names):
    """known_hosts lines for the host keys in ``merged``, under each of ``names``."""
    lines = []
    for pub in sorted((merged / "etc" / "ssh").glob("ssh_host_*_key.pub")):
        key_type, key = pub.read_text(encoding="utf-8").split()[:2]
        lines.append(f"{','.join(names)} {key_type} {key}")
    return lines
