"""Wall time of a key rotation (teapot.kms.rotate_key) of N objects on two control-plane "nodes".

Starts, through the test harness, a real Keystone and Barbican (simple_crypto,
sqlite), orders key A, runs two real KMS plugin daemons (one per node, each
with its own configuration, socket and state directory), a real etcd (TLS
with client certificates, as kubeadm sets it up) and one kube-apiserver
STAND-IN per node (tests/harness/kube_apiserver_standin.py; no kube-apiserver
can run here), creates ``--objects`` Secrets under key A, then runs the
``teapot.kms.rotate_key`` playbook once, from start to end, with
ansible-playbook: order B, B decrypt-only on both plugins, B primary (and both
stand-ins seen to receive it), every object rewritten, the etcd audit at zero
under A, A dropped from both keyrings.  The run is then checked: every object
under B, A in no keyring.

The figures: the playbook's wall time (Ansible's start-up included), and
within it the re-encryption module's own time and rate.

Run from the repository root with the tools venv::

    $TEAPOT_KMS_CACHE/venv/bin/python bench/rotation_bench.py [--objects 10000] [--page-size 500]

The table (markdown) is printed and written with the raw figures (JSON) under
``$TEAPOT_KMS_CACHE/bench/``.  Timings are never asserted anywhere.
"""

import argparse
import contextlib
import json
import os
import pathlib
import platform
import signal
import sys
import tempfile
import time


ROOT = pathlib.Path(__file__).resolve().parents[1]
REENCRYPT_TASK = "Rewrite every object through the API server"
AUDIT_TASK = "Phase 5, audit etcd until no object references the old key_id"


def controller(args):
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    # pylint: disable=import-outside-toplevel
    from reencrypt_bench import create_secrets
    from tests.harness.barbican import BarbicanService
    from tests.harness.cache import cache_dir
    from tests.harness.control_plane import KMS_NAME, ControlPlaneNode
    from tests.harness.etcd import EtcdServer
    from tests.harness.keystone import KeystoneService
    from tests.harness.playbook import PlaybookRunner
    from tests.harness.plugin_daemon import order_kek
    out_dir = cache_dir("bench")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = cache_dir("bench", f"logs-{stamp}")
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rotation-bench-")))
        keystone = KeystoneService(harness_venv("keystone"), tmp / "keystone", logs).start()
        stack.callback(keystone.stop)
        barbican = BarbicanService(harness_venv("barbican"), keystone, tmp / "barbican", logs).start()
        stack.callback(barbican.stop)
        keystone.register_key_manager(barbican.url)
        kek = order_kek(barbican, keystone.plugin_user, f"rotation-bench-a-{stamp}")
        etcd = EtcdServer(tmp / "etcd", logs, name="rotation-bench", tls=True).start()
        stack.callback(etcd.stop)
        nodes = {}
        for name in ("node1", "node2"):
            nodes[name] = ControlPlaneNode(name, tmp / name, keystone.plugin_user, keystone.region_name, kek, etcd, ["secrets"],
                                           quiet=True, log_dir=logs)
            stack.callback(nodes[name].stop)
            nodes[name].start()
        first_standin = nodes["node1"].standin

        started = time.perf_counter()
        create_secrets(first_standin, args.objects, args.data_bytes)
        print(f"created {args.objects} Secrets under key A in {time.perf_counter() - started:.1f}s", file=sys.stderr)

        runner = PlaybookRunner(tmp / "playbooks")
        inventory = {"all": {"children": {"kube_control_plane": {"hosts": {name: node.host_vars() for name, node in nodes.items()}}}}}
        extra_vars = {
            "teapot_kms_rotation_become": False, "teapot_kms_rotation_new_key_name": f"rotation-bench-b-{stamp}",
            "teapot_kms_keystone_url": keystone.auth_url, "teapot_kms_region_name": keystone.region_name,
            "keystone_kms_user": keystone.plugin_user.username, "keystone_kms_password": keystone.plugin_user.password,
            "keystone_kms_custodian_user": keystone.key_custodian.username,
            "keystone_kms_custodian_password": keystone.key_custodian.password,
            "teapot_kms_rotation_etcd": etcd.client_options(),
            "teapot_kms_reencrypt_install_client": False, "teapot_kms_reencrypt_python": sys.executable,
            "teapot_kms_reencrypt_become": False, "teapot_kms_reencrypt_kubeconfig": str(first_standin.kubeconfig),
            "teapot_kms_reencrypt_qps": 0, "teapot_kms_reencrypt_page_size": args.page_size, "teapot_kms_reencrypt_poll": 1,
            "teapot_kms_reencrypt_state_file": str(tmp / "reencrypt-state.json"),
            "teapot_kms_reencrypt_progress_log": str(tmp / "reencrypt.log"),
        }
        started = time.perf_counter()
        run = runner.run_playbook("teapot.kms.rotate_key", inventory, extra_vars=extra_vars, timeout=24 * 3600)
        wall = time.perf_counter() - started
        if run.returncode != 0:
            raise RuntimeError(f"the rotation failed:\n{run.output[-4000:]}")
        reencrypt = run.task(REENCRYPT_TASK)
        audit = run.task(AUDIT_TASK)
        state = nodes["node1"].state()
        new_key_id = state["new_key"]["key_id"]
        if audit["counts"]["secrets"] != {f"kms-v2/{KMS_NAME}/{new_key_id}": args.objects}:
            raise RuntimeError(f"the audit does not show every object under the new key: {audit['counts']}")
        for name, node in nodes.items():
            keys = node.keyring()
            if keys != [state["new_key"]["href"]]:
                raise RuntimeError(f"{name}'s keyring is {keys}, not the new key alone")

    result = {"objects": args.objects, "playbook_seconds": round(wall, 1), "reencrypt_seconds": reencrypt["elapsed_seconds"],
              "reencrypt_objects_per_second": reencrypt["objects_per_second"], "summary": reencrypt["summary"]}
    header = (f"Rotation benchmark {stamp}: {args.objects} Secrets of {args.data_bytes} random bytes, pages of {args.page_size}, "
              f"two nodes; {os.cpu_count()} CPUs, Python {platform.python_version()}, kube-apiserver stand-ins + KMS plugins + "
              f"etcd (TLS) on loopback, load average {os.getloadavg()[0]:.1f} at the end")
    text = "\n".join([
        "| objects | rotation wall time s (the whole playbook) | of which re-encryption s | re-encryption objects/s |",
        "|---|---|---|---|",
        f"| {args.objects} | {result['playbook_seconds']:.1f} | {result['reencrypt_seconds']:.1f} | "
        f"{result['reencrypt_objects_per_second']:.0f} |"])
    (out_dir / f"rotation-{stamp}.md").write_text(header + "\n\n" + text + "\n", encoding="utf-8")
    (out_dir / f"rotation-{stamp}.json").write_text(json.dumps({"args": vars(args), "result": result}, indent=1), encoding="utf-8")
    print(header + "\n\n" + text)
    print(f"\nwritten to {out_dir / f'rotation-{stamp}.md'} (service logs in {logs})", file=sys.stderr)


def harness_venv(name):
    from tests.harness.venvs import ensure_venv  # pylint: disable=import-outside-toplevel

    return ensure_venv(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--objects", type=int, default=10000, help="how many Secrets (default 10000)")
    parser.add_argument("--data-bytes", type=int, default=1024, help="random bytes of data per Secret (default 1024)")
    parser.add_argument("--page-size", type=int, default=500, help="the re-encryption's page_size option (default 500)")
    args = parser.parse_args()
    if args.objects < 1:
        parser.error("--objects must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    controller(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
