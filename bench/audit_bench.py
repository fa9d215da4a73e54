"""How long teapot.kms.secret_encryption_info takes to audit N Secrets, side by side with
``etcdctl get --prefix`` dumping the same keys.

Starts a real etcd 3.4 over TLS with client-certificate auth (the test harness's),
writes N Secrets as KMS v2 values built like kube-apiserver's (``encode_kms_v2``:
each object's data AES-256-GCM-encrypted under a key HKDF-expanded from one DEK
seed, a fresh 32-byte info and nonce per object, a wrapped seed and two
annotations; object sizes drawn between 300 B and 3 KiB), then, in interleaved
rounds, times:

- ``etcdctl``: ``etcdctl get --prefix /registry/secrets/`` with the same client
  certificate, output read to the end (the whole process: start, TLS, one range);
- ``grpc`` and ``json``: the module's core as the module runs it with
  ``transport: grpc`` and ``transport: json``: a fresh client (TLS set-up
  included; ``_etcd_grpc.EtcdGrpcClient`` over etcd's gRPC API, or
  ``_etcd.EtcdClient`` through its JSON gateway) and
  ``_encryption_audit.audit()`` over every page, classifying each object, in
  this process: the difference between the two is the transport alone;
- ``ansible``: ``ansible-playbook`` running one task of the module on localhost
  with the default ``transport: auto`` (gRPC here: this Python has grpcio), the
  whole process (Ansible start-up, module transfer, the audit, the result); its
  ``task`` figure is the task's own duration as the callback reports it.

Each is reported as wall time and as CPU seconds: the client's (this process's
threads, or the waited-for child processes) and the etcd server's (from
/proc).  On a busy machine the wall times follow the scheduler; the CPU
seconds do not.

Run from the repository root with the tools venv::

    $TEAPOT_KMS_CACHE/venv/bin/python bench/audit_bench.py [--objects 10000] [--rounds 5] [--page-size 1000]

The table (markdown) is printed and written with the raw figures (JSON) under
``$TEAPOT_KMS_CACHE/bench/``.  Timings are never asserted anywhere.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand  # noqa: E402

from tests.harness.cache import cache_dir  # noqa: E402
from tests.harness.collection import make_importable  # noqa: E402
from tests.harness.etcd import EtcdServer  # noqa: E402
from tests.harness.playbook import PlaybookRunner  # noqa: E402

make_importable()

from ansible_collections.teapot.kms.plugins.module_utils._encryption_audit import Expectation, audit  # noqa: E402
from ansible_collections.teapot.kms.plugins.module_utils._etcd import client_from_params  # noqa: E402
from ansible_collections.teapot.kms.plugins.module_utils._etcd_grpc import EtcdGrpcClient  # noqa: E402
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import encode_kms_v2  # noqa: E402

PROVIDER = "teapot"
KEY_ID = "barbican:5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60"
ANNOTATIONS = {"version.teapot.example.com": b"1", "kek.teapot.example.com": KEY_ID.encode()}


def kms_v2_value(etcd_key, seed, wrapped_seed, size, rng):
    """A KMS v2 value as kube-apiserver writes it, around ``size`` bytes of object."""
    info = rng.randbytes(32)
    nonce = rng.randbytes(12)
    data_key = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(seed)
    plaintext = b"k8s\x00" + rng.randbytes(size)
    encrypted = info + nonce + AESGCM(data_key).encrypt(nonce, plaintext, etcd_key.encode())
    return encode_kms_v2(PROVIDER, encrypted, KEY_ID, wrapped_seed, ANNOTATIONS)


def load(server, count):
    rng = random.Random(20261130)
    seed = rng.randbytes(32)
    wrapped_seed = rng.randbytes(12 + 32 + 16)
    items = []
    for number in range(count):
        key = f"/registry/secrets/ns-{number % 100:03d}/secret-{number:06d}"
        items.append((key, kms_v2_value(key, seed, wrapped_seed, rng.randint(300, 3072), rng)))
    client = server.client()

    def put(chunk):
        for key, value in chunk:
            client.put(key, value)

    chunks = [items[start::8] for start in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, chunks))
    return sum(len(value) for _key, value in items)


class CpuMeter:
    """CPU seconds spent by the etcd server, by this process and by its waited-for children, between two reads."""

    def __init__(self, server):
        self.stat_path = f"/proc/{server.process.popen.pid}/stat"
        self.ticks = os.sysconf("SC_CLK_TCK")

    def read(self):
        fields = pathlib.Path(self.stat_path).read_text(encoding="ascii").rsplit(")", 1)[1].split()
        times = os.times()
        return {"etcd": (int(fields[11]) + int(fields[12])) / self.ticks,
                "self": time.process_time(),
                "children": times.children_user + times.children_system}

    @staticmethod
    def spent(before, after):
        return {name: after[name] - before[name] for name in before}


def measured(meter, function, *args):
    """``(wall seconds, CPU seconds of the client, CPU seconds of etcd, function's result)``."""
    before = meter.read()
    started = time.perf_counter()
    value = function(*args)
    wall = time.perf_counter() - started
    spent = CpuMeter.spent(before, meter.read())
    return wall, spent["self"] + spent["children"], spent["etcd"], value


def time_etcdctl(server):
    started = time.perf_counter()
    with subprocess.Popen(["etcdctl", "get", "--prefix", "/registry/secrets/"], env=server.etcdctl_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        size = 0
        while True:
            chunk = process.stdout.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
        error = process.stderr.read()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"etcdctl failed: {error.decode(errors='replace')}")
    return elapsed, size


def time_core(server, page_size, count, transport):
    """The module's core with ``transport`` (grpc or json), as secret_encryption_info.run() builds it."""
    connection = dict(server.client_options(), timeout=30)
    started = time.perf_counter()
    client = client_from_params(connection, client_class=EtcdGrpcClient if transport == "grpc" else None)
    result = audit(client, ["secrets"], Expectation("kms-v2", PROVIDER, KEY_ID), page_size=page_size)
    client.close()
    elapsed = time.perf_counter() - started
    if result.total != count or result.unexpected:
        raise RuntimeError(f"the {transport} audit read {result.total} objects, {result.unexpected} unexpected; expected {count}, 0")
    return elapsed


def time_ansible(server, runner, page_size, count):
    task = {"name": "audit", "teapot.kms.secret_encryption_info": {
        "etcd": server.client_options(), "expected_provider": PROVIDER, "expected_key_id": KEY_ID, "page_size": page_size}}
    started = time.perf_counter()
    run = runner.run([task])
    elapsed = time.perf_counter() - started
    result = run.task("audit")
    if result.get("total") != count or result.get("unexpected") or result.get("transport") != "grpc":
        raise RuntimeError(f"the module failed or miscounted: {run.output[-2000:]}")
    return elapsed, _task_seconds(run.stdout)


def _task_seconds(stdout):
    document = json.loads(stdout[stdout.find("{"):])
    duration = document["plays"][0]["tasks"][0]["task"]["duration"]
    begin, end = (datetime.datetime.fromisoformat(duration[edge].replace("Z", "+00:00")) for edge in ("start", "end"))
    return (end - begin).total_seconds()


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--objects", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--no-ansible", action="store_true", help="skip the ansible-playbook runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="audit-bench-") as workdir:
        server = EtcdServer(pathlib.Path(workdir) / "etcd", cache_dir("logs", "bench"), name="audit-bench", tls=True).start()
        try:
            print(f"writing {args.objects} KMS v2 Secrets ...", flush=True)
            started = time.perf_counter()
            stored_bytes = load(server, args.objects)
            print(f"  {stored_bytes / 1e6:.1f} MB in {time.perf_counter() - started:.0f}s", flush=True)
            runner = PlaybookRunner(pathlib.Path(workdir) / "ansible")
            meter = CpuMeter(server)
            figures = {name: {"wall": [], "client_cpu": [], "etcd_cpu": []} for name in ("etcdctl", "grpc", "json", "ansible")}
            task_seconds = []
            runs = [("etcdctl", time_etcdctl, (server,))] + [
                (transport, time_core, (server, args.page_size, args.objects, transport)) for transport in ("grpc", "json")]
            # One untimed pass of each warms etcd's and the OS's caches alike.
            for _name, function, function_args in runs:
                function(*function_args)
            if not args.no_ansible:
                runs.append(("ansible", time_ansible, (server, runner, args.page_size, args.objects)))
            for round_number in range(args.rounds):
                for name, function, function_args in runs:
                    wall, client_cpu, etcd_cpu, value = measured(meter, function, *function_args)
                    figures[name]["wall"].append(wall)
                    figures[name]["client_cpu"].append(client_cpu)
                    figures[name]["etcd_cpu"].append(etcd_cpu)
                    if name == "etcdctl":
                        dump_size = value[1]
                    elif name == "ansible":
                        task_seconds.append(value[1])
                print(f"  round {round_number + 1}: " + ", ".join(
                    f"{name} {figures[name]['wall'][-1]:.3f}s wall, {figures[name]['client_cpu'][-1]:.2f}+"
                    f"{figures[name]['etcd_cpu'][-1]:.2f}s CPU" for name, _function, _args in runs), flush=True)
        finally:
            server.stop()

    results = {name: {measure: summary(values) for measure, values in measures.items()}
               for name, measures in figures.items() if measures["wall"]}
    if task_seconds:
        results["ansible"]["task"] = summary(task_seconds)
    floor = results["etcdctl"]
    floor_cpu = floor["client_cpu"]["median"] + floor["etcd_cpu"]["median"]
    labels = {
        "etcdctl": f"`etcdctl get --prefix /registry/secrets/` ({dump_size / 1e6:.1f} MB of output), whole process",
        "grpc": f"module core, transport grpc: EtcdGrpcClient + audit(), page_size {args.page_size}, in this process",
        "json": f"module core, transport json: EtcdClient + audit(), page_size {args.page_size}, in this process",
        "ansible": "ansible-playbook running one module task (transport auto: grpc), whole process",
    }
    lines = [
        f"{args.objects} KMS v2 Secrets ({stored_bytes / 1e6:.1f} MB stored), etcd {_etcd_version()} over TLS, "
        f"{args.rounds} rounds, {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "",
        "| what | wall median (min-max) | wall / etcdctl | CPU: client + etcd server | CPU / etcdctl |",
        "|---|---|---|---|---|",
    ]
    for name, label in labels.items():
        if name not in results:
            continue
        wall, client_cpu, etcd_cpu = (results[name][measure] for measure in ("wall", "client_cpu", "etcd_cpu"))
        cpu = client_cpu["median"] + etcd_cpu["median"]
        lines.append(f"| {label} | {wall['median']:.3f} s ({wall['min']:.3f}-{wall['max']:.3f}) | "
                     f"{wall['median'] / floor['wall']['median']:.2f}x | {client_cpu['median']:.2f} + {etcd_cpu['median']:.2f} s | "
                     f"{cpu / floor_cpu:.2f}x |")
    if task_seconds:
        task = results["ansible"]["task"]
        lines.append(f"| the module task alone, as the callback times it | {task['median']:.3f} s ({task['min']:.3f}-{task['max']:.3f}) | "
                     f"{task['median'] / floor['wall']['median']:.2f}x | | |")
    table = "\n".join(lines)
    print()
    print(table)
    out_dir = cache_dir("bench")
    out = out_dir / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"objects": args.objects, "page_size": args.page_size, "stored_bytes": stored_bytes,
                               "results": results, "table": table}, indent=2), encoding="utf-8")
    print(f"\nraw figures: {out}")


def _etcd_version():
    first = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
    return first[0].split(":", 1)[1].strip() if first else "?"


if __name__ == "__main__":
    main()
