"""The files kubeadm leaves on control-plane nodes, made for test hosts: PKI under /etc/kubernetes/pki and admin.conf.

    python -m tests.harness.kubeadm_pki OUT --node cp-1=10.0.0.11 --node cp-2=10.0.0.12 --etcd etcd-1=10.0.0.10

writes, once (a second run with the same arguments keeps what is there):

- ``OUT/<node>/etc/kubernetes/pki/``: ``ca.crt``; ``apiserver.crt``/``.key``
  (serving; names as kubeadm gives them: ``kubernetes``, ``kubernetes.default``,
  ..., the node name, its address and 10.96.0.1, but not 127.0.0.1);
  ``apiserver-kubelet-client.crt``/``.key`` (group ``kubeadm:cluster-admins``);
  ``apiserver-etcd-client.crt``/``.key`` and ``etcd/ca.crt``;
- ``OUT/<node>/etc/kubernetes/admin.conf``: a kubeconfig for the node's own
  address with the admin's client certificate inside;
- ``OUT/<etcd>/etc/etcd/pki/``: ``ca.crt``, ``server.crt``/``.key`` (for its address).

Keys are ECDSA P-256 from the throw-away CAs of ``tests.harness.pki``.
"""

import argparse
import base64
import json
import pathlib
import shutil
import sys

import yaml

from tests.harness.pki import TestCA

SERVICE_IP = "10.96.0.1"
API_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
ADMINS = "kubeadm:cluster-admins"


def _pair(ca, stem, target_dir, target_stem, **kwargs):
    cert, key = ca.issue(stem, **kwargs)
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cert, target_dir / f"{target_stem}.crt")
    shutil.copyfile(key, target_dir / f"{target_stem}.key")
    return cert, key


def _b64(path):
    return base64.b64encode(pathlib.Path(path).read_bytes()).decode()


def admin_kubeconfig(server, ca_cert, client_cert, client_key):
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "kubernetes-admin@kubernetes", "preferences": {},
        "clusters": [{"name": "kubernetes", "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": "kubernetes-admin", "user": {"client-certificate-data": _b64(client_cert),
                                                        "client-key-data": _b64(client_key)}}],
        "contexts": [{"name": "kubernetes-admin@kubernetes", "context": {"cluster": "kubernetes", "user": "kubernetes-admin"}}],
    }


def build(out, nodes, etcd_members):
    """Write the trees below ``out`` unless a previous run with the same hosts did; returns the stamp."""
    out = pathlib.Path(out)
    stamp = out / "hosts.json"
    wanted = {"nodes": nodes, "etcd": etcd_members}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return stamp
    if out.exists():
        shutil.rmtree(out)
    work = out / "ca"
    kubernetes_ca = TestCA(work, "kubernetes-ca")
    etcd_ca = TestCA(work, "etcd-ca")
    for name, address in nodes.items():
        pki = out / name / "etc" / "kubernetes" / "pki"
        _pair(kubernetes_ca, f"{name}-apiserver", pki, "apiserver", common_name="kube-apiserver", server=True,
              ips=[address, SERVICE_IP], dns_names=[*API_NAMES, name])
        _pair(kubernetes_ca, f"{name}-kubelet-client", pki, "apiserver-kubelet-client",
              common_name="kube-apiserver-kubelet-client", organization=ADMINS, client=True)
        _pair(etcd_ca, f"{name}-etcd-client", pki, "apiserver-etcd-client", common_name="kube-apiserver-etcd-client",
              client=True)
        admin_cert, admin_key = kubernetes_ca.issue(f"{name}-admin", common_name="kubernetes-admin",
                                                    organization=ADMINS, client=True)
        shutil.copyfile(kubernetes_ca.cert_path, pki / "ca.crt")
        (pki / "etcd").mkdir(exist_ok=True)
        shutil.copyfile(etcd_ca.cert_path, pki / "etcd" / "ca.crt")
        kubeconfig = admin_kubeconfig(f"https://{address}:6443", kubernetes_ca.cert_path, admin_cert, admin_key)
        (pki.parent / "admin.conf").write_text(yaml.safe_dump(kubeconfig, sort_keys=False), encoding="utf-8")
    for name, address in etcd_members.items():
        pki = out / name / "etc" / "etcd" / "pki"
        _pair(etcd_ca, f"{name}-etcd-server", pki, "server", common_name=name, server=True, client=True,
              ips=[address, "127.0.0.1"], dns_names=[name, "localhost"])
        shutil.copyfile(etcd_ca.cert_path, pki / "ca.crt")
    stamp.write_text(json.dumps(wanted, sort_keys=True), encoding="utf-8")
    return stamp


def _pairs(values, option):
    result = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or not name or not address:
            raise SystemExit(f"{option} {value!r}: give NAME=ADDRESS")
        result[name] = address
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.harness.kubeadm_pki", description=__doc__.split("\n", 1)[0])
    parser.add_argument("out")
    parser.add_argument("--node", action="append", default=[], help="a control-plane node, NAME=ADDRESS")
    parser.add_argument("--etcd", action="append", default=[], help="an etcd member, NAME=ADDRESS")
    args = parser.parse_args(argv)
    build(args.out, _pairs(args.node, "--node"), _pairs(args.etcd, "--etcd"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
