"""KubeApiserverStandin: etcd, the encryption controller, the object store and HTTPS, started and stopped together."""

import logging
import os
import pathlib
import socket
import uuid

from tests.harness.standin import encryption as encryption_module
from tests.harness.standin.api import Api
from tests.harness.standin.encryption import ConfigError, EncryptionController, KmsTimings
from tests.harness.standin.etcdkv import EtcdError, EtcdKV
from tests.harness.standin.flags import StartupError, parse
from tests.harness.standin.metrics import StandinMetrics
from tests.harness.standin.server import HTTPSServer, ServingThread, load_token_file, tls_context
from tests.harness.standin.store import BUILTIN_RESOURCES, ObjectStore, parse_custom_resource

LOG = logging.getLogger("kube-apiserver-standin")


class _NoEncryption:
    """No ``--encryption-provider-config``: everything is stored as it is (identity)."""

    def __init__(self, reload):
        self.reload = reload

    def health_checks(self):
        return [("kms-providers", lambda: None)] if self.reload else []

    @staticmethod
    def chain_for(group, resource):  # pylint: disable=unused-argument
        return encryption_module.IDENTITY_ONLY

    def close(self):
        pass


class KubeApiserverStandin:
    """The stand-in in this process. ``options`` come from ``flags.parse``; ``start()`` raises StartupError."""

    def __init__(self, options):
        self.options = options
        self.args = options.args
        self.apiserver_id = f"kube-apiserver-standin-{uuid.uuid4()}"
        self.metrics = StandinMetrics(self.apiserver_id)
        self.etcd = None
        self.encryption = None
        self.store = None
        self.api = Api(self)
        self.tokens = {}
        self.client_ca = None
        self.anonymous_auth = bool(self.args.anonymous_auth)
        self.host = self.args.bind_address
        self.port = None
        self._serving = None

    @classmethod
    def from_flags(cls, argv):
        """A stand-in for this process from a command line (kube-apiserver flags, or --manifest)."""
        return cls(parse(argv))

    def _tls_files(self):
        if self.args.tls_cert_file and self.args.tls_private_key_file:
            return self.args.tls_cert_file, self.args.tls_private_key_file
        if self.args.tls_cert_file or self.args.tls_private_key_file:
            raise StartupError("give both --tls-cert-file and --tls-private-key-file, or neither")
        # kube-apiserver makes itself a self-signed serving certificate in --cert-dir; so does the stand-in.
        cert_dir = pathlib.Path(self.args.cert_dir)
        cert_path, key_path = cert_dir / "apiserver.crt", cert_dir / "apiserver.key"
        if not (cert_path.exists() and key_path.exists()):
            from tests.harness.pki import TestCA  # pylint: disable=import-outside-toplevel

            ca = TestCA(cert_dir, "kube-apiserver-standin-ca")
            cert_path, key_path = ca.issue("apiserver", "kube-apiserver", ips=["127.0.0.1"],
                                           dns_names=["localhost", socket.gethostname()], server=True)
        return str(cert_path), str(key_path)

    def start(self):
        args = self.args
        try:
            if args.token_auth_file:
                self.tokens = load_token_file(args.token_auth_file)
            self.client_ca = args.client_ca_file
            cert_file, key_file = self._tls_files()
            context = tls_context(cert_file, key_file, self.client_ca)
            self.etcd = EtcdKV(args.etcd_servers.split(","), args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
            resources = list(BUILTIN_RESOURCES) + [parse_custom_resource(text) for text in args.standin_custom_resource]
            timings = KmsTimings(args.standin_kms_poll_interval, args.standin_kms_healthz_ttl, args.standin_kms_write_ttl)
            kms_v1 = any(gate.strip() in ("KMSv1=true", "KMSv1=True") for gate in args.feature_gates.split(","))
            if args.encryption_provider_config:
                self.encryption = EncryptionController(
                    args.encryption_provider_config, self.metrics, timings, args.encryption_provider_config_automatic_reload,
                    kms_v1, self.options.map_path, args.standin_encryption_watch_interval).start()
            else:
                self.encryption = _NoEncryption(args.encryption_provider_config_automatic_reload)
            self.store = ObjectStore(self.etcd, self.encryption, resources, args.etcd_prefix)
            server = HTTPSServer((args.bind_address, args.secure_port), self, context)
        except (ConfigError, EtcdError, ValueError, OSError) as exc:
            self.stop()
            if isinstance(exc, StartupError):
                raise
            if isinstance(exc, ConfigError):
                raise StartupError(f"failed to load the encryption configuration: {exc}") from None
            raise StartupError(str(exc)) from None
        self.port = server.server_address[1]
        self._serving = ServingThread(server).start()
        LOG.info("kube-apiserver stand-in (pid %d) serving https://%s:%d, etcd %s", os.getpid(), self.host, self.port,
                 args.etcd_servers)
        if self.options.ignored:
            LOG.info("flags the stand-in does not use: %s", " ".join(self.options.ignored))
        return self

    @property
    def url(self):
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        return f"https://{host}:{self.port}"

    def stop(self):
        if self._serving is not None:
            self._serving.stop()
            self._serving = None
        if self.encryption is not None:
            self.encryption.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
