"""Latency and throughput of the KMS plugin over its unix socket, side by side with
a no-op gRPC server (the floor) and the plugin fetching its key from Barbican on
every call (bench/kms_per_call_plugin.py, the upstream plugin's design).

Starts a real Keystone and Barbican (simple_crypto, sqlite) through the test
harness, orders a KEK, then for Status, Encrypt and Decrypt runs 1 and 8
concurrent client processes.  Each client process is connected to the floor
and to the plugin and switches between them every ``--slice`` seconds, all
clients on the same schedule, until each server had ``--seconds`` of load:
load from elsewhere on the machine then falls on both alike.  The per-call
mode, tens of times slower, runs alone for ``--seconds``.

Run from the repository root with the tools venv::

    $TEAPOT_KMS_CACHE/venv/bin/python bench/kms_plugin_bench.py [--seconds 6] [--slice 0.25]

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


# -- worker: one client process calling one method on one or more servers ----

def _calls(socket_path, method):
    from teapot_kms_plugin.client import KmsClient  # pylint: disable=import-outside-toplevel

    client = KmsClient(socket_path, timeout=60)
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
    return client, call


def worker(spec):
    """Call ``spec["method"]`` on each target in turn, one time slice each, on a schedule shared by all workers.

    Once connected and warmed up, the worker says ``ready`` on stdout and reads ``start_at``
    from stdin.  Slice ``k`` starts at ``start_at + k * slice`` and belongs to target
    ``k % len(targets)``; a call starts only inside its target's slice, so every worker (and
    any load from elsewhere on the machine) moves from server to server together.
    """
    targets = spec["targets"]
    clients = {name: _calls(path, spec["method"]) for name, path in targets}
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    results = {name: {"latencies": [], "elapsed": 0.0} for name, _path in targets}
    slice_seconds = spec["slice"]
    for index in range(spec["slices"] * len(targets)):
        name = targets[index % len(targets)][0]
        call = clients[name][1]
        begin = start_at + index * slice_seconds
        end = begin + slice_seconds
        while time.time() < begin:
            time.sleep(0.0005)
        latencies = results[name]["latencies"]
        while time.time() < end:
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        results[name]["elapsed"] += slice_seconds
    for client, _call in clients.values():
        client.close()
    json.dump(results, sys.stdout)


# -- controller ----------------------------------------------------------------

def run_load(python, targets, method, clients, seconds, slice_seconds):
    """``clients`` worker processes give each of ``targets`` (name, socket) ``seconds`` in slices.

    Returns ``{name: (latencies, elapsed)}``: the calls of all workers, and the time the
    target was under load.
    """
    slices = max(1, round(seconds / slice_seconds))
    spec = {"targets": targets, "method": method, "slice": slice_seconds, "slices": slices}
    procs = [subprocess.Popen([python, __file__, "--worker", json.dumps(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _client in range(clients)]
    # Every worker is connected and warmed up before the schedule starts, however slow the
    # machine (a per-call target spends its warm-up fetching from Barbican).
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"bench worker for {method} failed before it was ready ({proc.wait()})")
    start_at = time.time() + 0.5
    for proc in procs:
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    merged = {name: ([], slices * slice_seconds) for name, _path in targets}
    for proc in procs:
        out, _err = proc.communicate(timeout=seconds * len(targets) + 180)
        if proc.returncode != 0:
            raise RuntimeError(f"bench worker for {method} failed with {proc.returncode}")
        for name, result in json.loads(out).items():
            merged[name][0].extend(result["latencies"])
    return merged


def summarise(latencies, elapsed):
    """Percentiles over all calls of a cell, throughput over the time its server was under load."""
    latencies = sorted(latencies)
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
    from tests.harness.plugin_daemon import PluginProcess, order_kek, password_barbican_section, plugin_venv
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
        for target, command in (("plugin", None), ("per_call", [python, ROOT / "bench" / "kms_per_call_plugin.py"])):
            config = {
                "barbican": password_barbican_section(keystone.plugin_user, tmp / target / "secrets"),
                "keys": [href],
                "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                "log_level": "warning",
            }
            plugin = PluginProcess(venv, tmp / target, config, name=target, command=command).start()
            stack.callback(plugin.stop)
            sockets[target] = plugin.socket
        results = {}
        for method in METHODS:
            for clients in clients_list:
                # The floor and the plugin take turns in short slices inside the same client
                # processes, so that load from elsewhere on the machine falls on both alike.
                # Per-call fetching is slow enough (and far enough from its target) to run alone.
                measured = run_load(python, [("noop", sockets["noop"]), ("plugin", sockets["plugin"])],
                                    method, clients, args.seconds, args.slice)
                measured.update(run_load(python, [("per_call", sockets["per_call"])], method, clients, args.seconds, args.seconds))
                for target, (latencies, elapsed) in measured.items():
                    results[(target, method, clients)] = summarise(latencies, elapsed)
                    print(f"{target:9} {method:8} clients={clients}: {results[(target, method, clients)]}", file=sys.stderr)
    text = table(results, clients_list)
    header = (f"KMS plugin benchmark {stamp}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"{args.seconds:g}s per cell, floor and plugin interleaved in {args.slice:g}s slices, "
              f"Barbican simple_crypto/sqlite under uWSGI on loopback, load average {os.getloadavg()[0]:.1f} at the end")
    (out_dir / f"kms-plugin-{stamp}.md").write_text(header + "\n\n" + text + "\n", encoding="utf-8")
    (out_dir / f"kms-plugin-{stamp}.json").write_text(
        json.dumps({"/".join(map(str, key)): value for key, value in results.items()}, indent=1), encoding="utf-8")
    print(header + "\n\n" + text)
    print(f"\nwritten to {out_dir / f'kms-plugin-{stamp}.md'} (service logs in {logs})", file=sys.stderr)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per method, server and client count")
    parser.add_argument("--clients", default="1,8", help="concurrent client processes, comma-separated")
    parser.add_argument("--slice", type=float, default=0.25, help="seconds the floor and the plugin each get per turn")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    controller(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
