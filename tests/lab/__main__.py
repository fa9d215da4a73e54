"""``python -m tests.lab {up,down}``: see the package docstring."""

import argparse
import base64
import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import time

import yaml

from tests.harness.cache import cache_root
from tests.harness.playbook import BIN, PlaybookRunner
from tests.harness.procs import CommandError
from tests.harness.testhosts import TestHostError
from tests.harness.testhosts.boot import up as testhosts_up
from tests.harness.testhosts.inventory import ansible_inventory
from tests.harness.testhosts.state_file import State
from tests.harness.testhosts.teardown import down as testhosts_down

SOURCE = pathlib.Path(__file__).resolve().parent
REPO = SOURCE.parents[1]
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
                   r"failed=(?P<failed>\d+)")
# Throw-away secrets of one lab, drawn when it is first made.
SECRETS = {
    **{name: lambda: secrets.token_hex(12) for name in (
        "keystone_admin_password", "keystone_barbican_password", "keystone_kms_password",
        "keystone_kms_custodian_password", "barbican_pkcs11_pin", "barbican_softhsm_so_pin")},
    # The aescbc key of the cluster the lab starts from (32 bytes).
    "kp_aescbc_secret": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
}
STANDIN_PYTHON = "/opt/kube-apiserver-standin/venv/bin/python"


class LabError(RuntimeError):
    """A step of the lab failed; the message says which and where its log is."""


def lab_dir():
    return pathlib.Path(os.environ.get("TEAPOT_KMS_LAB_DIR") or cache_root() / "lab")


def say(message):
    print(f"lab: {message}", flush=True)


class Lab:
    def __init__(self, path):
        self.dir = pathlib.Path(path)
        self.state = self.dir / "testhosts.json"
        self.inventory = self.dir / "inventory"
        self.logs = self.dir / "logs"
        self.ansible_dir = self.dir / "ansible"
        self.config = yaml.safe_load((SOURCE / "lab.yml").read_text(encoding="utf-8"))

    # ----------------------------------------------------------------- hosts

    def groups(self):
        groups = {}
        for host, host_groups in self.config["hosts"].items():
            for group in host_groups:
                groups.setdefault(group, []).append(host)
        return groups

    def boot(self):
        """Boot the hosts (or reuse them when they are up) and write the inventory; True when reused."""
        self.dir.mkdir(parents=True, exist_ok=True)
        before = State.load(self.state)
        packages = self.config["packages"]
        data = testhosts_up(self.state, list(self.config["hosts"]), packages["debs"], packages["wheels"],
                            packages["build_wheels"], log=sys.stdout, reuse=True)
        self.write_inventory(data)
        return before is not None and before.data.get("run_id") == data["run_id"]

    def write_inventory(self, data):
        group_vars = self.inventory / "group_vars" / "all"
        group_vars.mkdir(parents=True, exist_ok=True)
        (self.inventory / "hosts.yml").write_text(
            "# Written by python -m tests.lab: the lab's hosts.\n" + yaml.safe_dump(ansible_inventory(data, self.groups())),
            encoding="utf-8")
        shutil.copyfile(SOURCE / "group_vars" / "all.yml", group_vars / "lab.yml")
        # Where the kubeadm-style cluster the lab starts from (cluster_playbook) finds its pieces.
        (group_vars / "cluster.yml").write_text("# Written by python -m tests.lab: the cluster the lab starts from.\n" + yaml.safe_dump({
            "kp_repo_root": str(REPO),
            "kp_pki_dir": str(self.dir / "kubeadm-pki"),
            "kp_secrets_before": 5,
            "kube_apiserver_standin_repo": str(REPO),
            "kube_apiserver_standin_python": STANDIN_PYTHON,
            # The collection's CA of this lab (TLS for Keystone and Barbican), removed with it.
            "teapot_kms_tls_ca_dir": str(self.dir / "tls-ca"),
        }), encoding="utf-8")
        secrets_file = group_vars / "secrets.yml"
        values = yaml.safe_load(secrets_file.read_text(encoding="utf-8")) if secrets_file.exists() else {}
        missing = {name: draw() for name, draw in SECRETS.items() if name not in values}
        if missing:
            secrets_file.unlink(missing_ok=True)
            with open(os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
                handle.write("# The lab's own secrets, drawn when it was made.\n" + yaml.safe_dump({**values, **missing}))

    # --------------------------------------------------------------- ansible

    def ansible_env(self):
        env = PlaybookRunner(self.ansible_dir).env()
        env.pop("ANSIBLE_REMOTE_TEMP", None)
        env.update(
            ANSIBLE_STDOUT_CALLBACK="default",
            ANSIBLE_PIPELINING="1",
            ANSIBLE_FORKS="10",
            # Facts are gathered once per host and run, not once per play.
            ANSIBLE_GATHERING="smart",
            # Connections persist between tasks; down closes them (stop_ssh_masters).
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.ansible_dir / "cp"),
        )
        return env

    def playbook(self, playbook, log_name, stream=True, extra_vars=None):
        """Run ``playbook`` against the lab's inventory; return the per-host recap. Output is logged, and shown when ``stream``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{log_name}.log"
        argv = [str(BIN / "ansible-playbook"), "-i", str(self.inventory), str(playbook)]
        for name, value in (extra_vars or {}).items():
            argv += ["-e", f"{name}={value}"]
        recap = {}
        with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.ansible_env(), cwd=self.dir,
        ) as process:
            for line in process.stdout:
                log.write(line)
                if stream:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                match = RECAP.match(line)
                if match:
                    recap[match["host"]] = {key: int(value) for key, value in match.groupdict().items() if key != "host"}
        if process.returncode != 0:
            tail = "" if stream else "\n" + "".join(log_path.read_text(encoding="utf-8").splitlines(True)[-40:])
            raise LabError(f"ansible-playbook {playbook} failed (exit {process.returncode}); its output: {log_path}{tail}")
        return recap

    def stop_ssh_masters(self):
        """End the SSH connections Ansible kept open to the lab's hosts (its ControlPersist masters)."""
        control_dir = self.ansible_dir / "cp"
        if not control_dir.is_dir():
            return
        for socket_path in control_dir.iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "lab-host"],
                           capture_output=True, check=False, timeout=30)

    # ------------------------------------------------------------------- up

    def up(self, hosts_only=False):
        timings = {}
        started = time.monotonic()
        say("1/4 boot the hosts (systemd-nspawn) and serve their offline package sources")
        reused = self.boot()
        timings["hosts"] = time.monotonic() - started
        say(f"hosts {'were up, reused' if reused else 'booted'} in {timings['hosts']:.0f}s; inventory: {self.inventory}")
        if hosts_only:
            return 0

        say("2/4 a kubeadm-style cluster to start from: PKI, etcd, an aescbc EncryptionConfiguration, Secrets, "
            "and the kube-apiserver STAND-IN run from its static pod manifest")
        step = time.monotonic()
        marker = self.dir / "cluster.done"
        run_id = State.load(self.state).data["run_id"]
        if reused and marker.is_file() and marker.read_text(encoding="utf-8").strip() == run_id:
            say("   made by an earlier run on these hosts: left as it is (teapot.kms.site has changed it since)")
            cluster_changed = 0
        else:
            self.playbook(SOURCE / "kubeadm_hosts.yml", "kubeadm-hosts")
            cluster_recap = self.playbook(REPO / self.config["cluster_playbook"], "cluster")
            cluster_changed = sum(host["changed"] for host in cluster_recap.values())
            marker.write_text(run_id + "\n", encoding="utf-8")
        timings["cluster"] = time.monotonic() - step

        say("3/4 ansible-playbook -i " + str(self.inventory) + " teapot.kms.site")
        step = time.monotonic()
        recap = self.playbook("teapot.kms.site", "site")
        timings["site"] = time.monotonic() - step
        changed = sum(host["changed"] for host in recap.values())

        say("4/4 the summary")
        step = time.monotonic()
        summary_path = self.dir / "summary.txt"
        self.playbook(SOURCE / "summary.yml", "summary", stream=False, extra_vars={"lab_summary_path": summary_path})
        timings["summary"] = time.monotonic() - step
        timings["total"] = time.monotonic() - started
        self.record(reused, timings, {"cluster": cluster_changed, "site": changed})

        print()
        print(summary_path.read_text(encoding="utf-8"), end="")
        print()
        say(f"hosts {timings['hosts']:.0f}s ({'reused' if reused else 'booted'}), cluster with the kube-apiserver STAND-IN "
            f"{timings['cluster']:.0f}s (changed={cluster_changed}), teapot.kms.site {timings['site']:.0f}s "
            f"(changed={changed}{': converged, nothing to change' if changed == 0 else ''}), "
            f"summary {timings['summary']:.0f}s, total {timings['total']:.0f}s")
        say(f"run any stage again: ansible-playbook -i {self.inventory} teapot.kms.<stage>  "
            f"(with ANSIBLE_COLLECTIONS_PATH={self.ansible_dir / 'collections'})")
        say("remove the lab: make lab-down")
        return 0

    def record(self, reused, timings, changed):
        with open(self.dir / "timings.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hosts_reused": reused,
                                     "seconds": {key: round(value, 1) for key, value in timings.items()},
                                     "changed": changed}) + "\n")

    # ----------------------------------------------------------------- down

    def down(self):
        state = State.load(self.state)
        self.stop_ssh_masters()
        if state is not None:
            say(f"powering off the hosts of run {state.data.get('run_id')}, removing their bridge and mounts")
            testhosts_down(self.state, log=sys.stdout)
            log_dir = state.data.get("log_dir")
            if log_dir:
                shutil.rmtree(log_dir, ignore_errors=True)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        say(f"removed {self.dir}")
        return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="boot (or reuse) the lab, run teapot.kms.site, print the summary")
    up_parser.add_argument("--hosts-only", action="store_true", help="only boot the hosts and write the inventory")
    sub.add_parser("down", help="remove the lab: hosts, bridge, mounts, processes and files")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: run as root: the lab boots systemd-nspawn hosts on a bridge of its own", file=sys.stderr)
        return 2
    lab = Lab(lab_dir())
    try:
        if args.command == "up":
            return lab.up(hosts_only=args.hosts_only)
        return lab.down()
    except (LabError, TestHostError, CommandError) as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
