"""A single-member etcd 3.4 cluster on loopback with a private data directory."""

import os
import pathlib
import platform
import shutil

from tests.harness.procs import ManagedProcess, free_port, wait_for_port

ETCD_BINARY = "/usr/bin/etcd"


class EtcdServer:
    """etcd listening on 127.0.0.1; ``endpoints`` lists its client URLs."""

    def __init__(self, base_dir, log_dir, name="teapot-test"):
        self.base_dir = pathlib.Path(base_dir)
        self.log_path = pathlib.Path(log_dir) / "etcd.log"
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoints = [f"http://127.0.0.1:{self.client_port}"]
        self.process = None

    def start(self):
        binary = shutil.which("etcd") or ETCD_BINARY
        data_dir = self.base_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        env = dict(os.environ)
        if platform.machine() not in ("x86_64", "AMD64"):
            # etcd 3.4 refuses to start on arches it calls unsupported unless told to.
            env["ETCD_UNSUPPORTED_ARCH"] = {"aarch64": "arm64"}.get(platform.machine(), platform.machine())
        argv = [
            binary,
            "--name", self.name,
            "--data-dir", data_dir,
            "--listen-client-urls", self.endpoints[0],
            "--advertise-client-urls", self.endpoints[0],
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--initial-cluster-state", "new",
            "--log-outputs", "stderr",
        ]
        self.process = ManagedProcess("etcd", argv, self.log_path, env=env).start()
        wait_for_port("127.0.0.1", self.client_port, timeout=60, process=self.process)
        return self

    def etcdctl_env(self):
        """Environment for ``etcdctl`` (API v3) aimed at this server."""
        return dict(os.environ, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=",".join(self.endpoints))

    def stop(self):
        if self.process is not None:
            self.process.stop()
