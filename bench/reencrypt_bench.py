"""Re-encryption throughput of teapot.kms.reencrypt: objects per second moved from plaintext to KMS v2.

Starts, through the test harness, a real Keystone and Barbican (simple_crypto,
sqlite), orders a KEK, runs the real KMS plugin daemon, a real etcd (TLS with
client certificates, as kubeadm sets it up) and the kube-apiserver STAND-IN
(tests/harness/kube_apiserver_standin.py; no kube-apiserver can run here).
It creates ``--objects`` Secrets in plaintext (``identity``), puts the KMS v2
provider first, then runs the ``teapot.kms.reencrypt`` playbook twice with
ansible-playbook:

1. every object stale: each is rewritten (read from the list, written back,
   encrypted by the stand-in with the plugin's DEK, a compare-and-swap in etcd);
2. every object current: the API server skips each write.

The figure is the module's own ``objects_per_second`` (objects submitted by
the run divided by its duration, listing included); the playbook's wall time,
with Ansible's start-up, is shown next to it.

Run from the repository root with the tools venv::

    $TEAPOT_KMS_CACHE/venv/bin/python bench/reencrypt_bench.py [--objects 10000] [--qps 0] [--page-size 500]

The table (markdown) is printed and written with the raw figures (JSON) under
``$TEAPOT_KMS_CACHE/bench/``.  Timings are never asserted anywhere.
"""

import argparse
import base64
import concurrent.futures
import contextlib
import json
import os
import pathlib
import platform
import signal
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
KMS_NAME = "teapot"


def write_config(path, providers):
    document = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                "resources": [{"resources": ["secrets"], "providers": providers}]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(document), encoding="utf-8")
    tmp.replace(path)


def wait_applied(standin, path, timeout=120.0):
    import hashlib  # pylint: disable=import-outside-toplevel

    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(labels.get("hash") == digest and value == 1 for labels, value in
               standin.metric_samples("apiserver_encryption_config_controller_last_config_info")):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the stand-in did not apply {path}; see {standin.log_path}")


def create_secrets(standin, count, data_bytes, threads=8):
    payload = base64.b64encode(os.urandom(data_bytes)).decode()

    def create(index):
        namespace = f"bench-{index % 20:02d}"
        status, body = standin.json("POST", f"/api/v1/namespaces/{namespace}/secrets",
                                    {"metadata": {"name": f"secret-{index:06d}"}, "data": {"payload": payload}})
        if status != 201:
            raise RuntimeError(f"creating secret {index} answered {status}: {body}")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(count)))


def run_reencrypt(runner, standin, work, args):
    extra_vars = {
        "teapot_kms_reencrypt_install_client": False, "teapot_kms_reencrypt_python": sys.executable,
        "teapot_kms_reencrypt_become": False, "teapot_kms_reencrypt_kubeconfig": str(standin.kubeconfig),
        "teapot_kms_reencrypt_state_file": str(work / "state.json"), "teapot_kms_reencrypt_progress_log": str(work / "progress.log"),
        "teapot_kms_reencrypt_qps": args.qps, "teapot_kms_reencrypt_page_size": args.page_size, "teapot_kms_reencrypt_poll": 1,
    }
    started = time.perf_counter()
    run = runner.run_playbook("teapot.kms.reencrypt", runner.local_inventory(["kube_control_plane"]), extra_vars=extra_vars,
                              timeout=24 * 3600)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"the playbook failed:\n{run.output[-4000:]}")
    result = run.task("Rewrite every object through the API server")
    return {"summary": result["summary"], "module_seconds": result["elapsed_seconds"],
            "objects_per_second": result["objects_per_second"], "playbook_seconds": round(wall, 2)}


def controller(args):
    sys.path.insert(0, str(ROOT))
    # pylint: disable=import-outside-toplevel
    from tests.harness.barbican import BarbicanService
    from tests.harness.cache import cache_dir
    from tests.harness.etcd import EtcdServer
    from tests.harness.keystone import KeystoneService
    from tests.harness.playbook import PlaybookRunner
    from tests.harness.plugin_daemon import PluginProcess, order_kek, password_barbican_section, plugin_venv
    from tests.harness.procs import free_port
    from tests.harness.standin.process import StandinProcess
    from tests.harness.venvs import ensure_venv

    out_dir = cache_dir("bench")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = cache_dir("bench", f"logs-{stamp}")
    results = {}
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reencrypt-bench-")))
        keystone = KeystoneService(ensure_venv("keystone"), tmp / "keystone", logs).start()
        stack.callback(keystone.stop)
        barbican = BarbicanService(ensure_venv("barbican"), keystone, tmp / "barbican", logs).start()
        stack.callback(barbican.stop)
        keystone.register_key_manager(barbican.url)
        href = order_kek(barbican, keystone.plugin_user, "reencrypt-bench-kek")
        plugin = PluginProcess(plugin_venv(), tmp / "plugin", {
            "barbican": password_barbican_section(keystone.plugin_user, tmp / "plugin" / "secrets"), "keys": [href],
            "metrics": {"listen": f"127.0.0.1:{free_port()}"}, "log_level": "warning"}).start()
        stack.callback(plugin.stop)
        etcd = EtcdServer(tmp / "etcd", logs, name="reencrypt-bench", tls=True).start()
        stack.callback(etcd.stop)
        config = tmp / "encryption.yaml"
        write_config(config, [{"identity": {}}])
        standin = StandinProcess(tmp / "standin", etcd.endpoints, config, log_path=logs / "standin.log", extra_flags=[
            f"--etcd-cafile={etcd.ca_path}", f"--etcd-certfile={etcd.client_cert}", f"--etcd-keyfile={etcd.client_key}",
            "--standin-log-level=WARNING"])
        standin.start()
        stack.callback(standin.stop)
        standin.wait_health("/readyz")

        started = time.perf_counter()
        create_secrets(standin, args.objects, args.data_bytes)
        print(f"created {args.objects} Secrets in plaintext in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        write_config(config, [{"kms": {"apiVersion": "v2", "name": KMS_NAME, "endpoint": f"unix://{plugin.socket}",
                                       "timeout": "5s"}}, {"identity": {}}])
        wait_applied(standin, config)

        runner = PlaybookRunner(tmp / "playbooks")
        for phase in ("stale", "current"):
            results[phase] = run_reencrypt(runner, standin, tmp, args)
            print(f"{phase}: {results[phase]}", file=sys.stderr)
        expected = {"stale": "rewritten", "current": "already_current"}
        for phase, counter in expected.items():
            if results[phase]["summary"][counter] != args.objects:
                raise RuntimeError(f"{phase} pass: expected {args.objects} {counter}, got {results[phase]['summary']}")

    header = (f"Re-encryption benchmark {stamp}: {args.objects} Secrets of {args.data_bytes} random bytes, qps "
              f"{args.qps or 'unlimited'}, pages of {args.page_size}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"kube-apiserver stand-in + KMS plugin + etcd 3.4 (TLS) on loopback, load average {os.getloadavg()[0]:.1f} at the end")
    lines = ["| pass | objects | rewritten | already current | module time s | objects/s | playbook wall time s |",
             "|---|---|---|---|---|---|---|"]
    for phase, label in (("stale", "plaintext → KMS v2"), ("current", "already KMS v2")):
        result = results[phase]
        lines.append(f"| {label} | {result['summary']['total']} | {result['summary']['rewritten']} | "
                     f"{result['summary']['already_current']} | {result['module_seconds']:.1f} | "
                     f"{result['objects_per_second']:.0f} | {result['playbook_seconds']:.1f} |")
    text = "\n".join(lines)
    (out_dir / f"reencrypt-{stamp}.md").write_text(header + "\n\n" + text + "\n", encoding="utf-8")
    (out_dir / f"reencrypt-{stamp}.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1), encoding="utf-8")
    print(header + "\n\n" + text)
    print(f"\nwritten to {out_dir / f'reencrypt-{stamp}.md'} (service logs in {logs})", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--objects", type=int, default=10000, help="how many Secrets (default 10000)")
    parser.add_argument("--data-bytes", type=int, default=1024, help="random bytes of data per Secret (default 1024)")
    parser.add_argument("--qps", type=float, default=0, help="the module's qps option (default 0: no limit)")
    parser.add_argument("--page-size", type=int, default=500, help="the module's page_size option (default 500)")
    args = parser.parse_args()
    if args.objects < 1:
        parser.error("--objects must be at least 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    controller(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
