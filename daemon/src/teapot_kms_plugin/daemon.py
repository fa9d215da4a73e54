"""The serving process: keyring, gRPC server, metrics and signals, from start to stop."""

import dataclasses
import gc
import logging
import os
import signal
import threading
import time

from . import __version__
from . import barbican
from . import config as config_module
from . import keyring
from . import keyservice
from . import kubesecret
from . import logs
from . import pins
from . import transport
from .metrics import Metrics

LOG = logging.getLogger("teapot_kms_plugin")


def fetcher_for(cfg):
    """The fetcher of the configured source of keys: Barbican, or the data fields of a Kubernetes Secret."""
    if cfg.kubernetes_secret is not None:
        return kubesecret.KubernetesSecretFetcher(cfg.kubernetes_secret)
    return barbican.BarbicanFetcher(cfg.barbican)


def cache_keyring(cfg, fetch, metrics) -> keyring.Keyring:
    """The keyring the plugin serves with: keys cached in memory, refreshed in the background."""
    return keyring.KeyCache(cfg.keys, fetch, cfg.refresh_interval, cfg.max_stale,
                            retry_interval=cfg.retry_interval, metrics=metrics, key_pins=pins.open_pins(cfg.state_dir))


class Daemon:
    """``teapot-kms-plugin serve``: runs until SIGTERM or SIGINT, reloads on SIGHUP.

    ``make_keyring(cfg, fetch, metrics)`` builds the keyring; anything that
    implements :class:`keyring.Keyring` serves.
    """

    def __init__(self, config_path, cfg, make_keyring=cache_keyring):
        self.config_path = config_path
        self.cfg = cfg
        self.make_keyring = make_keyring
        self.keys = None
        self.metrics = Metrics(lambda: self.keys)
        self.server = None
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        # The last SIGHUP's outcome: {"time": unix seconds, "result": "ok"|"refused", "reason": str}.
        self.last_reload = None

    def report(self):
        """What ``teapot-kms-plugin status`` shows beyond Status: every key's state, the last reload and the pid.

        The pid is the process that answered on the socket: a reload (SIGHUP) goes to it whatever started
        the plugin, and the same pid afterwards shows that the socket was never dropped.
        """
        keys = self.keys
        return {
            "keys": [] if keys is None else [state._asdict() for state in keys.states()],
            "reload": self.last_reload,
            "pid": os.getpid(),
        }

    def _reload_done(self, result, reason):
        self.last_reload = {"time": time.time(), "result": "ok" if result == "ok" else "refused", "reason": reason}
        self.metrics.observe_reload(result)

    def run(self):
        cfg = self.cfg
        # First of all: a SIGHUP during a slow first fetch must not kill the process
        # (its default action), and a SIGTERM then still stops it cleanly.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        if cfg.barbican is not None and cfg.barbican.allow_insecure_http:
            LOG.warning("barbican.allow_insecure_http is true: Keystone and Barbican may be reached over plain http "
                        "beyond this host, sending tokens, passwords and keys in clear")
        self.keys = self.make_keyring(cfg, fetcher_for(cfg), self.metrics)
        # Metrics first: a port clash fails the start before the apiserver ever sees a socket.
        if cfg.metrics_listen:
            host, port = cfg.metrics_listen
            try:
                self.metrics.serve(host, port)
            except OSError as exc:
                LOG.error("cannot serve metrics on %s:%s: %s", host, port, exc.strerror or type(exc).__name__)
                return 1
        try:
            self.server = transport.start_server(
                transport.Servicer(keyservice.KeyService(self.keys), self.metrics),
                cfg.socket, workers=cfg.workers, group=cfg.socket_group, report=self.report)
        except transport.SocketError:
            self.metrics.shutdown()
            raise
        # The socket exists before the first fetch: Status answers "not loaded" until the keys
        # arrive, instead of the apiserver finding no socket while Barbican is slow.
        self.keys.start()
        # Startup objects (libraries, config) never die: keep them out of the collector's way.
        gc.collect()
        gc.freeze()
        state = self.keys.status()
        LOG.info("serving KMS v2 on %s", cfg.socket, extra={
            "socket": cfg.socket, "key_id": state.key_id, "healthy": state.healthy, "healthz": state.healthz,
            "keys": len(cfg.keys), "keyring": type(self.keys).__name__, "version": __version__})
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
                    self._reload_done("error", f"unexpected {type(exc).__name__}")
                    LOG.error("reload failed, the running keyring stays", extra={"exception": type(exc).__name__})
        LOG.info("stopping: draining in-flight requests", extra={"grace_seconds": self.cfg.shutdown_grace})
        self.server.stop(self.cfg.shutdown_grace).wait()
        # The unit allows shutdown_grace + 10s (TimeoutStopSec): a refresh hung on Barbican is not waited for.
        self.keys.stop(timeout=2.0)
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
            self._reload_done("config_error", f"invalid configuration: {exc}")
            LOG.error("reload refused, the running keyring stays: %s", exc)
            return
        for field in config_module.RESTART_ONLY:
            if getattr(cfg, field) != getattr(self.cfg, field):
                LOG.warning("%s changed: it takes effect only after a restart", field)
        # The keyring adopts the new fetcher only with a complete new keyring: a refused
        # reload leaves the running credentials in place.
        try:
            self.keys.replace(cfg.keys, fetcher_for(cfg))
        except keyring.KeyUnavailable as exc:
            self._reload_done("key_error", str(exc))
            LOG.error("reload refused, the running keyring stays: %s", exc)
            return
        self.keys.set_timings(cfg.refresh_interval, cfg.max_stale, cfg.retry_interval)
        logs.set_level(cfg.log_level)
        self.cfg = dataclasses.replace(cfg, **{field: getattr(self.cfg, field) for field in config_module.RESTART_ONLY})
        self._reload_done("ok", "")
        state = self.keys.status()
        LOG.info("reloaded", extra={"key_id": state.key_id, "healthz": state.healthz, "keys": len(cfg.keys)})
