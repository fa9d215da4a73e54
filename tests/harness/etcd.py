"""A single-member etcd 3.4 cluster on loopback with a private data directory.

``EtcdServer(..., tls=True)`` serves its clients over TLS and demands a client
certificate signed by its own test CA, as kubeadm's etcd does; it then also
has a client certificate from a second, unrelated CA, for the wrong-certificate
cases.
"""

import os
import pathlib
import platform
import shutil
import subprocess

from tests.harness.collection import make_importable
from tests.harness.pki import TestCA
from tests.harness.procs import ManagedProcess, free_port, wait_for_port

ETCD_BINARY = "/usr/bin/etcd"


class EtcdServer:
    """etcd listening on 127.0.0.1; ``endpoints`` lists its client URLs.

    With ``tls``: ``ca_path`` verifies the server, ``client_cert``/``client_key``
    are accepted, ``foreign_ca_path``/``foreign_client_cert``/``foreign_client_key``
    come from a CA etcd does not trust.
    """

    def __init__(self, base_dir, log_dir, name="teapot-test", tls=False):
        self.base_dir = pathlib.Path(base_dir)
        self.log_path = pathlib.Path(log_dir) / f"etcd-{name}.log"
        self.name = name
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls else "http"
        self.endpoints = [f"{scheme}://127.0.0.1:{self.client_port}"]
        self.process = None
        self.restore_from = None
        self.ca_path = self.client_cert = self.client_key = None
        self.foreign_ca_path = self.foreign_client_cert = self.foreign_client_key = None
        self._server_cert = self._server_key = None
        if tls:
            self._make_pki(self.base_dir / "pki")

    def _make_pki(self, directory):
        """The layout kubeadm gives a control-plane node: etcd's CA, its server pair, the apiserver's client pair."""
        ca = TestCA(directory / "etcd", "ca")
        self.ca_path = ca.cert_path
        self._server_cert, self._server_key = ca.issue("server", "teapot-test-etcd", ips=["127.0.0.1"],
                                                       dns_names=["localhost"], server=True, client=True)
        self.client_cert, self.client_key = ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client",
                                                     organization="system:masters", client=True)
        foreign = TestCA(directory / "foreign", "foreign-ca")
        self.foreign_ca_path = foreign.cert_path
        self.foreign_client_cert, self.foreign_client_key = foreign.issue(
            "client", "kube-apiserver-etcd-client", organization="system:masters", client=True)

    def start(self):
        binary = shutil.which("etcd") or ETCD_BINARY
        data_dir = self.base_dir / "data"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        env = dict(os.environ)
        if self.restore_from is not None and not data_dir.exists():
            # A snapshot becomes this member's data directory, as an operator restores a backup.
            subprocess.run(["etcdctl", "snapshot", "restore", str(self.restore_from), "--data-dir", str(data_dir),
                            "--name", self.name, "--initial-cluster", f"{self.name}={peer_url}",
                            "--initial-advertise-peer-urls", peer_url], env=dict(env, ETCDCTL_API="3"),
                           check=True, capture_output=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)
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
        if self.tls:
            argv += [
                "--cert-file", self._server_cert,
                "--key-file", self._server_key,
                "--trusted-ca-file", self.ca_path,
                "--client-cert-auth",
            ]
        self.process = ManagedProcess("etcd", argv, self.log_path, env=env).start()
        wait_for_port("127.0.0.1", self.client_port, timeout=60, process=self.process)
        return self

    def client_options(self):
        """The connection options of teapot.kms modules (``etcd:``) for this server."""
        return {"endpoints": list(self.endpoints), "cacert": _str(self.ca_path), "cert": _str(self.client_cert),
                "key": _str(self.client_key)}

    def client(self, **overrides):
        """The collection's own etcd client (module_utils/_etcd.py) for this server; ``overrides`` replace client_options()."""
        make_importable()
        # pylint: disable-next=import-outside-toplevel
        from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdClient

        return EtcdClient(**dict(self.client_options(), **overrides))

    def etcdctl_env(self):
        """Environment for ``etcdctl`` (API v3) aimed at this server."""
        env = dict(os.environ, ETCDCTL_API="3", ETCDCTL_ENDPOINTS=",".join(self.endpoints))
        if self.tls:
            env.update(ETCDCTL_CACERT=str(self.ca_path), ETCDCTL_CERT=str(self.client_cert), ETCDCTL_KEY=str(self.client_key))
        return env

    def snapshot(self, path):
        """Save a snapshot of the keyspace to ``path`` with etcdctl, as a backup of a control plane does."""
        subprocess.run(["etcdctl", "snapshot", "save", str(path)], env=self.etcdctl_env(), check=True, capture_output=True)
        return pathlib.Path(path)

    def stop(self):
        if self.process is not None:
            self.process.stop()


def _str(path):
    return None if path is None else str(path)
