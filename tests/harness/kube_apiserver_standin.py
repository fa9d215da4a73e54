"""A kube-apiserver STAND-IN for tests: no kube-apiserver can be installed here.

It does, the way kube-apiserver does, only what teapot.kms depends on:
EncryptionConfiguration (kms v2 through the real plugin, aescbc, aesgcm,
secretbox, identity, kms v1 read-only; automatic reload), objects in etcd in
the exact stored formats, and the Secrets / ConfigMaps / custom resources API
over HTTPS with health and metrics.  See tests/harness/standin/README.md.

Run it as a process::

    python -m tests.harness.kube_apiserver_standin --manifest /etc/kubernetes/manifests/kube-apiserver.yaml
    python -m tests.harness.kube_apiserver_standin --encryption-provider-config=... --etcd-servers=... [kube-apiserver flags]

or in a test: ``KubeApiserverStandin`` (in this process) or
``StandinProcess`` (a child process, optionally restarted when its manifest
changes, as the kubelet does).
"""

import logging
import signal
import sys
import threading

from tests.harness.standin.app import KubeApiserverStandin
from tests.harness.standin.flags import StartupError, parse
from tests.harness.standin.process import StandinProcess

__all__ = ["KubeApiserverStandin", "StandinProcess", "StartupError", "main", "parse"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse(argv)
    except StartupError as exc:
        print(f"kube-apiserver-standin: error: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=getattr(logging, str(options.args.standin_log_level).upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping = threading.Event()
    # Handlers first: a SIGTERM during start-up still stops cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    standin = KubeApiserverStandin(options)
    try:
        standin.start()
    except StartupError as exc:
        print(f"kube-apiserver-standin: error: {exc}", file=sys.stderr)
        return 1
    try:
        stopping.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
