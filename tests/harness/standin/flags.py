"""Command line of the stand-in: kube-apiserver's own flags, read from the command line or from a static pod manifest.

With ``--manifest``, the flags are the kube-apiserver container's ``command``
and ``args`` in a kubeadm-style static pod manifest, and every path they name
is a path *inside the container*: it is translated to the host path through
the pod's ``hostPath`` volumes and the container's ``volumeMounts``, as the
kubelet would mount them.  A file the container could not see makes the
stand-in exit (kube-apiserver would); a KMS socket directory that is not
mounted leaves the KMS provider unreachable (kube-apiserver starts, its
``/healthz/kms-providers`` fails).
"""

import argparse
import os
import pathlib
from typing import NamedTuple, Optional

import yaml

# kube-apiserver flags the stand-in uses; every other flag is accepted and ignored.
_FILE_FLAGS = ("encryption_provider_config", "etcd_cafile", "etcd_certfile", "etcd_keyfile", "tls_cert_file",
               "tls_private_key_file", "token_auth_file", "client_ca_file")


class StartupError(ValueError):
    """The stand-in cannot start as told; the message says what to fix (exit status 1)."""


def _bool(text):
    value = str(text).strip().lower()
    if value in ("true", "1", "t", "yes"):
        return True
    if value in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.kube_apiserver_standin",
        description="A kube-apiserver STAND-IN for tests: encryption at rest (EncryptionConfiguration, KMS v2 through the real "
                    "plugin), etcd storage and the Secrets/ConfigMaps/custom resources API. Not a kube-apiserver.")
    kube = parser.add_argument_group("kube-apiserver flags")
    kube.add_argument("--encryption-provider-config")
    kube.add_argument("--encryption-provider-config-automatic-reload", type=_bool, nargs="?", const=True, default=False)
    kube.add_argument("--etcd-servers", default="http://127.0.0.1:2379")
    kube.add_argument("--etcd-cafile")
    kube.add_argument("--etcd-certfile")
    kube.add_argument("--etcd-keyfile")
    kube.add_argument("--etcd-prefix", default="/registry")
    kube.add_argument("--secure-port", type=int, default=6443)
    kube.add_argument("--bind-address", default="0.0.0.0")
    kube.add_argument("--advertise-address")
    kube.add_argument("--tls-cert-file")
    kube.add_argument("--tls-private-key-file")
    kube.add_argument("--cert-dir", default="/var/run/kubernetes")
    kube.add_argument("--token-auth-file")
    kube.add_argument("--client-ca-file")
    kube.add_argument("--anonymous-auth", type=_bool, nargs="?", const=True, default=True)
    kube.add_argument("--feature-gates", default="")
    own = parser.add_argument_group("stand-in flags")
    own.add_argument("--manifest", help="a static pod manifest: take the kube-apiserver container's flags from it")
    own.add_argument("--standin-kms-poll-interval", type=float, default=60.0,
                     help="seconds between KMS v2 Status polls while healthy (kube-apiserver: 60)")
    own.add_argument("--standin-kms-healthz-ttl", type=float, default=20.0,
                     help="seconds a good KMS health answer is cached (kube-apiserver: 20)")
    own.add_argument("--standin-kms-write-ttl", type=float, default=180.0,
                     help="seconds writes go on with the last seed while the plugin fails (kube-apiserver: 180)")
    own.add_argument("--standin-encryption-watch-interval", type=float, default=1.0,
                     help="seconds between checks of the encryption configuration file for automatic reload")
    own.add_argument("--standin-custom-resource", action="append", default=[],
                     help="serve <plural>.<group>/<version>/<Kind>[/cluster] (kube-apiserver learns them from CRDs)")
    own.add_argument("--standin-log-level", default="INFO")
    return parser


class Options(NamedTuple):
    """What the stand-in was told, every path a host path."""

    args: argparse.Namespace
    ignored: tuple
    map_path: object
    manifest: Optional[str] = None


def _container(pod, manifest):
    containers = ((pod.get("spec") or {}).get("containers")) or []
    for container in containers:
        command = container.get("command") or []
        if container.get("name") == "kube-apiserver" or (command and os.path.basename(str(command[0])) == "kube-apiserver"):
            return container
    raise StartupError(f"{manifest}: no container named kube-apiserver (or running kube-apiserver) in spec.containers")


def _mounts(pod, container, manifest):
    """``[(mount path, host path)]`` of the container's hostPath mounts, checked as the kubelet checks them."""
    volumes = {volume.get("name"): volume for volume in (pod.get("spec") or {}).get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name"))
        if volume is None:
            raise StartupError(f"{manifest}: volumeMount {mount.get('name')!r} names no volume in spec.volumes: the kubelet "
                               "would not start the pod; add the hostPath volume")
        host = volume.get("hostPath")
        if not host or not host.get("path"):
            continue
        host_path, kind = str(host["path"]), host.get("type") or ""
        if kind == "DirectoryOrCreate":
            os.makedirs(host_path, mode=0o755, exist_ok=True)
        elif kind == "Directory" and not os.path.isdir(host_path):
            raise StartupError(f"{manifest}: hostPath {host_path} (volume {volume['name']}, type Directory) is not a directory "
                               "on this host: the kubelet would not start the pod")
        elif kind == "File" and not os.path.isfile(host_path):
            raise StartupError(f"{manifest}: hostPath {host_path} (volume {volume['name']}, type File) is not a file on this host: "
                               "the kubelet would not start the pod")
        mounts.append((str(mount.get("mountPath", "")).rstrip("/") or "/", host_path.rstrip("/") or "/"))
    return mounts


def _mapper(mounts):
    def map_path(container_path):
        best = None
        for mount_path, host_path in mounts:
            if container_path == mount_path or container_path.startswith(mount_path.rstrip("/") + "/"):
                if best is None or len(mount_path) > len(best[0]):
                    best = (mount_path, host_path)
        if best is None:
            return None
        rest = container_path[len(best[0]):].lstrip("/")
        return str(pathlib.PurePosixPath(best[1]) / rest) if rest else best[1]
    return map_path


def _read_manifest(path):
    try:
        with open(path, encoding="utf-8") as stream:
            pod = yaml.safe_load(stream)
    except OSError as exc:
        raise StartupError(f"cannot read the static pod manifest {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StartupError(f"{path} is not YAML: {exc}") from None
    if not isinstance(pod, dict) or pod.get("kind") != "Pod":
        raise StartupError(f"{path} is not a static pod manifest (kind: Pod)")
    return pod


def parse(argv):
    """Options from ``argv`` (the stand-in's own command line). Raises StartupError."""
    parser = _parser()
    args, ignored = parser.parse_known_args(argv)
    if not args.manifest:
        return Options(args, tuple(ignored), lambda path: path)
    manifest = args.manifest
    pod = _read_manifest(manifest)
    container = _container(pod, manifest)
    command = [str(item) for item in (container.get("command") or []) + (container.get("args") or [])]
    if command and not command[0].startswith("--"):
        command = command[1:]
    pod_args, pod_ignored = parser.parse_known_args(command)
    if pod_args.manifest:
        raise StartupError(f"{manifest}: --manifest is a stand-in flag, not one for the container")
    map_path = _mapper(_mounts(pod, container, manifest))
    for flag in _FILE_FLAGS:
        value = getattr(pod_args, flag)
        if not value:
            continue
        host_path = map_path(value)
        if host_path is None:
            raise StartupError(f"{manifest}: --{flag.replace('_', '-')}={value} is not inside any volumeMount of the kube-apiserver "
                               "container, so kube-apiserver could not read it: add a hostPath volume for its directory and a "
                               "volumeMount at the same path")
        if not os.path.exists(host_path):
            raise StartupError(f"{manifest}: --{flag.replace('_', '-')}={value} is mounted from {host_path}, which does not exist "
                               "on this host")
        setattr(pod_args, flag, host_path)
    # kube-apiserver writes its self-signed certificate into --cert-dir: on the host, that is where the mount puts it.
    if pod_args.cert_dir and map_path(pod_args.cert_dir):
        pod_args.cert_dir = map_path(pod_args.cert_dir)
    for flag in ("standin_kms_poll_interval", "standin_kms_healthz_ttl", "standin_kms_write_ttl", "standin_encryption_watch_interval",
                 "standin_custom_resource", "standin_log_level"):
        setattr(pod_args, flag, getattr(args, flag))
    return Options(pod_args, tuple(pod_ignored), map_path, manifest=manifest)
