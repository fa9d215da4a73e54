"""``teapot-kms-plugin serve --config PATH`` and ``teapot-kms-plugin status --socket PATH``."""

import argparse
import dataclasses
import gc
import json
import logging
import signal
import sys
import threading

import grpc

from . import __version__
from . import barbican
from . import config as config_module
from . import keyring
from . import logs
from . import keyservice
from . import transport
from .client import KmsClient
from .metrics import Metrics

LOG = logging.getLogger("teapot_kms_plugin")
_RESTART_ONLY = ("socket", "socket_group", "cache_mode", "metrics_listen", "workers")


def build_keys(cfg, fetch, metrics):
    if cfg.cache_mode == "per_call":
        return keyring.PerCallKeys(cfg.keys, fetch, metrics=metrics)
    return keyring.KeyCache(cfg.keys, fetch, cfg.refresh_interval, cfg.max_stale,
                            retry_interval=cfg.retry_interval, metrics=metrics)


class Daemon:
    """The serving process: keyring, gRPC server, metrics, signals."""

    def __init__(self, config_path, cfg):
        self.config_path = config_path
        self.cfg = cfg
        self.keys = None
        self.metrics = Metrics(lambda: self.keys)
        self.server = None
        self._wake = threading.Event()
        self._stop = False
        self._reload = False

    def _log_key_errors(self, errors, when):
        for key_id, error in errors.items():
            LOG.error("cannot load key %s %s; Status stays unhealthy and the fetch is retried every %gs",
                      key_id, when, self.cfg.retry_interval, extra={"key_id": key_id, "error": error})

    def run(self):
        cfg = self.cfg
        # First of all: a SIGHUP during a slow first fetch must not kill the process
        # (its default action), and a SIGTERM then still stops it cleanly.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.keys = build_keys(cfg, barbican.BarbicanFetcher(cfg.barbican), self.metrics)
        self._log_key_errors(self.keys.refresh(), "at start")
        self.server = transport.start_server(
            transport.Servicer(keyservice.KeyService(self.keys), self.metrics),
            cfg.socket, workers=cfg.workers, group=cfg.socket_group)
        if cfg.metrics_listen:
            host, port = cfg.metrics_listen
            try:
                self.metrics.serve(host, port)
            except OSError as exc:
                LOG.error("cannot serve metrics on %s:%s: %s", host, port, exc.strerror or type(exc).__name__)
                self.server.stop(0).wait()
                transport.remove_socket(cfg.socket)
                return 1
        self.keys.start()
        # Startup objects (libraries, config) never die: keep them out of the collector's way.
        gc.collect()
        gc.freeze()
        healthy, healthz, key_id = self.keys.status()
        LOG.info("serving KMS v2 on %s", cfg.socket, extra={
            "socket": cfg.socket, "key_id": key_id, "healthy": healthy, "healthz": healthz,
            "keys": len(cfg.keys), "cache_mode": cfg.cache_mode, "version": __version__})
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                break
            if self._reload:
                self._reload = False
                try:
                    self.reload()
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    # Serving goes on with what is loaded; the type only, as the text may quote a secret.
                    self.metrics.observe_reload("error")
                    LOG.error("reload failed, the running keyring stays", extra={"exception": type(exc).__name__})
        LOG.info("stopping: draining in-flight requests", extra={"grace_seconds": self.cfg.shutdown_grace})
        self.server.stop(self.cfg.shutdown_grace).wait()
        self.keys.stop()
        self.metrics.shutdown()
        transport.remove_socket(cfg.socket)
        LOG.info("stopped")
        return 0

    def _on_stop(self, _signum, _frame):
        self._stop = True
        self._wake.set()

    def _on_reload(self, _signum, _frame):
        self._reload = True
        self._wake.set()

    def reload(self):
        """Re-read the config; switch keyring and credentials, or keep the old ones with a reason."""
        try:
            cfg = config_module.load(self.config_path)
        except config_module.ConfigError as exc:
            self.metrics.observe_reload("config_error")
            LOG.error("reload refused, the running keyring stays: %s", exc)
            return
        for field in _RESTART_ONLY:
            if getattr(cfg, field) != getattr(self.cfg, field):
                LOG.warning("%s changed: it takes effect only after a restart", field)
        fetch = barbican.BarbicanFetcher(cfg.barbican)
        old_fetch = self.keys.fetcher
        self.keys.swap_fetcher(fetch)
        try:
            errors = self.keys.replace(cfg.keys)
        except keyring.KeyUnavailable as exc:
            self.keys.swap_fetcher(old_fetch)
            self.metrics.observe_reload("key_error")
            LOG.error("reload refused, the running keyring stays: %s", exc)
            return
        self._log_key_errors(errors, "after reload")
        if isinstance(self.keys, keyring.KeyCache):
            self.keys.refresh_interval = cfg.refresh_interval
            self.keys.max_stale = cfg.max_stale
            self.keys.retry_interval = cfg.retry_interval
        logs.set_level(cfg.log_level)
        self.cfg = dataclasses.replace(cfg, **{field: getattr(self.cfg, field) for field in _RESTART_ONLY})
        self.metrics.observe_reload("ok")
        _healthy, healthz, key_id = self.keys.status()
        LOG.info("reloaded", extra={"key_id": key_id, "healthz": healthz, "keys": len(cfg.keys)})


def serve(args):
    try:
        cfg = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"teapot-kms-plugin: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    try:
        return Daemon(args.config, cfg).run()
    except transport.SocketError as exc:
        LOG.error("cannot serve: %s", exc)
        return 1


def status(args):
    with KmsClient(args.socket, timeout=args.timeout) as client:
        try:
            response = client.status()
        except grpc.RpcError as exc:
            print(json.dumps({"healthz": f"unreachable: {exc.code().name}: {exc.details()}", "key_id": "", "version": ""}))
            return 2
    print(json.dumps({"healthz": response.healthz, "key_id": response.key_id, "version": response.version}))
    return 0 if response.healthz == "ok" else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="teapot-kms-plugin", description="Kubernetes KMS v2 plugin backed by OpenStack Barbican")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve KMS v2 on the configured unix socket")
    serve_parser.add_argument("--config", required=True, help="the YAML configuration file")
    serve_parser.set_defaults(func=serve)
    status_parser = commands.add_parser("status", help="call Status and print it as JSON; exit 1 when unhealthy")
    status_parser.add_argument("--socket", required=True, help="the plugin's unix socket")
    status_parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    status_parser.set_defaults(func=status)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
