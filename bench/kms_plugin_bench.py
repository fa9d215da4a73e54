"""Latency and throughput of the KMS plugin over its unix socket, side by side with
a no-op gRPC server (the floor) and the plugin fetching its key from Barbican on
every call (``cache: {mode: per_call}``, the upstream plugin's design).

Starts a real Keystone and Barbican (simple_crypto, sqlite) through the test
harness, orders a KEK, then for Status, Encrypt and Decrypt runs 1 and 8
concurrent client processes against each server for a fixed time.

Run from the repository root with the tools venv::

    $TEAPOT_KMS_CACHE/venv/bin/python bench/kms_plugin_bench.py [--seconds 5]

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
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("Status", "Encrypt", "Decrypt")
SEED = bytes(range(32))


# -- worker: one client process hammering one method -------------------------

def worker(socket_path, method, start_at, seconds):
    from teapot_kms_plugin.client import KmsClient  # pylint: disable=import-outside-toplevel

    client = KmsClient(socket_path, timeout=30)
    client.wait_ready(30)
    made = client.encrypt(SEED, uid="bench")
    ciphertext, key_id, annotations = made.ciphertext, made.key_id, dict(made.annotations)
    calls = {
        "Status": client.status,
        "Encrypt": lambda: client.encrypt(SEED, uid="bench"),
        "Decrypt": lambda: client.decrypt(ciphertext, key_id, annotations, uid="bench"),
    }
    call = calls[method]
    for _warmup in range(20):
        call()
    while time.time() < start_at:
        time.sleep(0.001)
    latencies = []
    began = time.perf_counter()
    stop = began + seconds
    while True:
        started = time.perf_counter()
        if started >= stop:
            break
        call()
        latencies.append(time.perf_counter() - started)
    elapsed = time.perf_counter() - began
    client.close()
    json.dump({"latencies": latencies, "elapsed": elapsed}, sys.stdout)


# -- controller ----------------------------------------------------------------

def run_load(python, socket_path, method, clients, seconds):
    """Run ``clients`` worker processes for ``seconds``; return their latencies and elapsed time."""
    start_at = time.time() + 1.5 + 0.2 * clients
    procs = [
        subprocess.Popen([python, __file__, "--worker", socket_path, method, repr(start_at), repr(seconds)],
                         stdout=subprocess.PIPE, text=True)
        for _client in range(clients)
    ]
    latencies = []
    elapsed = 0.0
    for proc in procs:
        out, _err = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"bench worker for {method} on {socket_path} failed with {proc.returncode}")
        result = json.loads(out)
        latencies.extend(result["latencies"])
        elapsed = max(elapsed, result["elapsed"])
    return latencies, elapsed


def summarise(runs):
    """Merge the rounds of one cell: percentiles over all calls, throughput over all time."""
    latencies = sorted(latency for run_latencies, _elapsed in runs for latency in run_latencies)
    elapsed = sum(run_elapsed for _latencies, run_elapsed in runs)
    return {
        "calls": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "throughput": len(latencies) / elapsed,
    }


def table(results, clients_list):
    lines = ["| method | clients | no-op floor p50 / p99 ms | plugin p50 / p99 ms | per-call fetch p50 / p99 ms "
             "| no-op / plugin / per-call calls/s | plugin ÷ floor (p50) | per-call ÷ plugin (p50) |",
             "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for clients in clients_list:
            noop, plugin, per_call = (results[(target, method, clients)] for target in ("noop", "plugin", "per_call"))
            lines.append(
                f"| {method} | {clients} "
                f"| {noop['p50_ms']:.3f} / {noop['p99_ms']:.3f} "
                f"| {plugin['p50_ms']:.3f} / {plugin['p99_ms']:.3f} "
                f"| {per_call['p50_ms']:.3f} / {per_call['p99_ms']:.3f} "
                f"| {noop['throughput']:.0f} / {plugin['throughput']:.0f} / {per_call['throughput']:.0f} "
                f"| {plugin['p50_ms'] / noop['p50_ms']:.2f}× "
                f"| {per_call['p50_ms'] / plugin['p50_ms']:.1f}× |"
            )
    return "\n".join(lines)


def controller(args):
    sys.path.insert(0, str(ROOT))
    # pylint: disable=import-outside-toplevel
    from tests.harness.barbican import BarbicanService
    from tests.harness.cache import cache_dir
    from tests.harness.keystone import KeystoneService
    from tests.harness.kms_plugin import PluginProcess, order_kek, password_barbican_section, plugin_venv
    from tests.harness.procs import ManagedProcess, free_port
    from tests.harness.venvs import ensure_venv

    clients_list = [int(item) for item in args.clients.split(",")]
    venv = plugin_venv()
    python = str(venv / "bin" / "python")
    out_dir = cache_dir("bench")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = cache_dir("bench", f"logs-{stamp}")
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kms-bench-")))
        keystone = KeystoneService(ensure_venv("keystone"), tmp / "keystone", logs).start()
        stack.callback(keystone.stop)
        barbican = BarbicanService(ensure_venv("barbican"), keystone, tmp / "barbican", logs).start()
        stack.callback(barbican.stop)
        keystone.register_key_manager(barbican.url)
        href = order_kek(barbican, keystone.plugin_user, "bench-kek")
        sockets = {}

        noop_socket = str(tmp / "noop" / "kms.sock")
        os.makedirs(os.path.dirname(noop_socket), mode=0o700)
        noop = ManagedProcess("noop", [python, ROOT / "bench" / "kms_noop_server.py", noop_socket], logs / "noop.log").start()
        stack.callback(noop.stop)
        sockets["noop"] = noop_socket
        for target, mode in (("plugin", "cached"), ("per_call", "per_call")):
            config = {
                "barbican": password_barbican_section(keystone.plugin_user, tmp / target / "secrets"),
                "keys": [href],
                "cache": {"mode": mode},
                "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                "log_level": "warning",
            }
            plugin = PluginProcess(venv, tmp / target, config, name=target).start()
            stack.callback(plugin.stop)
            sockets[target] = plugin.socket
        results = {}
        for method in METHODS:
            for clients in clients_list:
                # Targets take turns in short rounds, so that load from elsewhere on the
                # machine falls on all of them alike.
                runs = {target: [] for target in sockets}
                for _round in range(args.rounds):
                    for target, path in sockets.items():
                        runs[target].append(run_load(python, path, method, clients, args.seconds / args.rounds))
                for target in sockets:
                    results[(target, method, clients)] = summarise(runs[target])
                    print(f"{target:9} {method:8} clients={clients}: {results[(target, method, clients)]}", file=sys.stderr)
    text = table(results, clients_list)
    header = (f"KMS plugin benchmark {stamp}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{args.seconds:g}s per cell in {args.rounds} interleaved rounds, Barbican simple_crypto/sqlite under uWSGI on loopback")
    (out_dir / f"kms-plugin-{stamp}.md").write_text(header + "\n\n" + text + "\n", encoding="utf-8")
    (out_dir / f"kms-plugin-{stamp}.json").write_text(
        json.dumps({"/".join(map(str, key)): value for key, value in results.items()}, indent=1), encoding="utf-8")
    print(header + "\n\n" + text)
    print(f"\nwritten to {out_dir / f'kms-plugin-{stamp}.md'} (service logs in {logs})", file=sys.stderr)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per method, server and client count")
    parser.add_argument("--clients", default="1,8", help="concurrent client processes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server takes per cell (interleaved)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    controller(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
