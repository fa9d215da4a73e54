"""The stand-in as a child process for tests on this machine, and a kubelet stand-in that restarts it when its manifest changes.

``StandinProcess`` makes its own PKI (a throw-away CA, a serving certificate
for 127.0.0.1 and localhost), a bearer token in a ``--token-auth-file`` and a
kubeconfig, then runs ``python -m tests.harness.kube_apiserver_standin`` with
plain flags, or with ``--manifest`` when given a static pod manifest
(``write_static_pod_manifest`` writes a kubeadm-style one).  ``watch_manifest()``
restarts the process whenever the manifest's content changes and stops it
when the file goes away: what the kubelet does with a static pod, for tests
where no systemd runs (test hosts use the systemd units in ``kubelet/``).
"""

import contextlib
import hashlib
import json
import os
import pathlib
import secrets
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

import yaml

from tests.harness.procs import ManagedProcess, free_port, wait_for_port
from tests.harness.standin.collection import REPO
from tests.harness.pki import TestCA


def write_static_pod_manifest(path, flags, host_paths, image="registry.k8s.io/kube-apiserver:v1.32.0"):
    """A kubeadm-style kube-apiserver static pod at ``path``; ``host_paths`` are (name, path, type) mounted at the same path."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kube-apiserver", "namespace": "kube-system", "labels": {"component": "kube-apiserver", "tier": "control-plane"}},
        "spec": {
            "hostNetwork": True, "priorityClassName": "system-node-critical",
            "containers": [{
                "name": "kube-apiserver", "image": image, "command": ["kube-apiserver", *flags],
                "volumeMounts": [{"name": name, "mountPath": host_path, "readOnly": kind != "DirectoryOrCreate"}
                                 for name, host_path, kind in host_paths],
            }],
            "volumes": [{"name": name, "hostPath": {"path": host_path, "type": kind}} for name, host_path, kind in host_paths],
        },
    }
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(pod, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def _secure_port(argv_flags):
    for flag in argv_flags:
        if flag.startswith("--secure-port="):
            return int(flag.split("=", 1)[1])
    return None


class StandinProcess:
    """One stand-in process on 127.0.0.1 with its own PKI, token and kubeconfig under ``base_dir``."""

    def __init__(self, base_dir, etcd_endpoints, encryption_config=None, automatic_reload=True, kms_poll_interval=None,
                 kms_healthz_ttl=None, etcd_prefix="/registry", extra_flags=(), log_path=None, name="kube-apiserver-standin", python=sys.executable):
        self.base_dir = pathlib.Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = pathlib.Path(log_path) if log_path else self.base_dir / f"{name}.log"
        self.python = python
        self.pki = TestCA(self.base_dir / "pki", "kube-apiserver-standin-ca")
        self.cert_file, self.key_file = self.pki.issue("apiserver", "kube-apiserver", ips=["127.0.0.1"], dns_names=["localhost"],
                                                       server=True)
        self.token = secrets.token_urlsafe(24)
        self.token_file = self.base_dir / "tokens.csv"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(f'{self.token},teapot-test-admin,teapot-test-admin,"system:masters"\n')
        self.port = free_port()
        self.config_path = pathlib.Path(encryption_config) if encryption_config else None
        self.etcd_prefix = etcd_prefix
        self.flags = [
            f"--etcd-servers={','.join(etcd_endpoints)}",
            f"--etcd-prefix={etcd_prefix}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.cert_file}",
            f"--tls-private-key-file={self.key_file}",
            f"--token-auth-file={self.token_file}",
            f"--cert-dir={self.base_dir / 'certs'}",
        ]
        if encryption_config:
            self.flags.append(f"--encryption-provider-config={encryption_config}")
            if automatic_reload:
                self.flags.append("--encryption-provider-config-automatic-reload=true")
        self.flags.extend(extra_flags)
        self.standin_flags = []
        if kms_poll_interval is not None:
            self.standin_flags.append(f"--standin-kms-poll-interval={kms_poll_interval}")
        if kms_healthz_ttl is not None:
            self.standin_flags.append(f"--standin-kms-healthz-ttl={kms_healthz_ttl}")
        self.manifest = None
        self.process = None
        self.restarts = 0
        self._watcher = None
        self._ssl = ssl.create_default_context(cafile=str(self.pki.cert_path))
        self.kubeconfig = self.base_dir / "kubeconfig"
        self._write_kubeconfig()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def use_manifest(self, path, host_paths):
        """From now on run from a static pod manifest at ``path`` holding the current flags (``host_paths`` as in write_static_pod_manifest)."""
        self.manifest = write_static_pod_manifest(path, self.flags, host_paths)
        return self.manifest

    def argv(self):
        base = [self.python, "-m", "tests.harness.kube_apiserver_standin"]
        if self.manifest is not None:
            return base + [f"--manifest={self.manifest}", *self.standin_flags]
        return base + self.flags + self.standin_flags

    def _port_from_manifest(self):
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError, IndexError):
            pod = yaml.safe_load(self.manifest.read_text(encoding="utf-8"))
            port = _secure_port(pod["spec"]["containers"][0]["command"])
            if port:
                self.port = port

    def start(self, wait=True, timeout=60.0):
        """Start the process; with ``wait``, until it listens (raises with its log if it exits first)."""
        if self.manifest is not None:
            self._port_from_manifest()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.process = ManagedProcess(self.name, self.argv(), self.log_path, env=env, cwd=str(REPO)).start()
        if wait:
            wait_for_port("127.0.0.1", self.port, timeout=timeout, process=self.process)
        return self

    def wait_exit(self, timeout=60.0):
        """The exit status of a process expected to stop by itself (a refused start)."""
        return self.process.popen.wait(timeout)

    def running(self):
        return self.process is not None and self.process.running()

    def stop(self):
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self.process is not None:
            self.process.stop()

    def restart(self, wait=True):
        if self.process is not None:
            self.process.stop()
        self.restarts += 1
        return self.start(wait=wait)

    def log_tail(self, lines=60):
        return self.process.log_tail(lines) if self.process else ""

    # ------------------------------------------------------------ clients

    def request(self, method, path, body=None, token=True, timeout=30.0):
        """``(status, bytes)`` of one HTTPS request (``token=False``: anonymous)."""
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {self.token if token is True else token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:  # nosec: loopback
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, method, path, body=None):
        status, data = self.request(method, path, body)
        return status, json.loads(data) if data.startswith(b"{") else data.decode()

    def health(self, path="/healthz/kms-providers"):
        status, data = self.request("GET", path, token=False)
        return status, data.decode()

    def wait_health(self, path="/readyz", ok=True, timeout=60.0):
        """Wait until ``path`` answers 200 (``ok``) or not; return the last body."""
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            if self.process is not None and not self.process.running():
                raise RuntimeError(f"the stand-in exited with {self.process.popen.returncode}; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, body = self.health(path)
                if (status == 200) == ok:
                    return body
            time.sleep(0.2)
        raise TimeoutError(f"{path} did not turn {'ok' if ok else 'bad'} within {timeout:.0f}s (last answer {body!r}); "
                           f"log:\n{self.log_tail()}")

    def metrics_text(self):
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return data.decode()

    def metric_samples(self, name):
        """``[(labels dict, value)]`` of every sample called ``name`` on /metrics."""
        from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel

        return [(sample.labels, sample.value) for family in text_string_to_metric_families(self.metrics_text())
                for sample in family.samples if sample.name == name]

    def api_client(self):
        """A kubernetes.client.ApiClient for this stand-in (bearer token, the test CA)."""
        import kubernetes.client  # pylint: disable=import-outside-toplevel

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.pki.cert_path)
        configuration.api_key = {"authorization": self.token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    def _write_kubeconfig(self):
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url, "certificate-authority": str(self.pki.cert_path)}}],
            "users": [{"name": "standin-admin", "user": {"token": self.token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin-admin"}}],
        }
        fd = os.open(self.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            yaml.safe_dump(config, stream)

    # ------------------------------------------------------------ kubelet stand-in

    def watch_manifest(self, interval=0.5):
        """Restart on every change of the manifest's content; stop when it is removed (the kubelet's static pod rules)."""
        if self.manifest is None:
            raise RuntimeError("watch_manifest() needs use_manifest() first")
        self._watcher = _ManifestWatcher(self, interval)
        self._watcher.start()
        return self._watcher

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _digest(path):
    try:
        return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class _ManifestWatcher:
    def __init__(self, standin, interval):
        self.standin = standin
        self.interval = interval
        self.seen = _digest(standin.manifest)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-standin", daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            digest = _digest(self.standin.manifest)
            if digest == self.seen:
                continue
            self.seen = digest
            if digest is None:
                if self.standin.process is not None:
                    self.standin.process.stop()
                continue
            # Like the kubelet: a pod that fails to start is not waited for here.
            self.standin.restart(wait=False)

    def stop(self):
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.interval + 5)
