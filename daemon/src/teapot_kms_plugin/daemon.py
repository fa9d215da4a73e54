"""The serving process: keyring, gRPC server, metrics and signals, from start to stop."""

import dataclasses
import gc
import logging
import signal
import threading

from . import __version__
from . import barbican
from . import config as config_module
from . import keyring
from . import keyservice
from . import logs
from . import transport
from .metrics import Metrics

LOG = logging.getLogger("teapot_kms_plugin")


def cache_keyring(cfg, fetch, metrics) -> keyring.Keyring:
    """The keyring the plugin serves with: keys cached in memory, refreshed in the background."""
    return keyring.KeyCache(cfg.keys, fetch, cfg.refresh_interval, cfg.max_stale,
                            retry_interval=cfg.retry_interval, metrics=metrics)


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
        self.keys = self.make_keyring(cfg, barbican.BarbicanFetcher(cfg.barbican), self.metrics)
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
        for field in config_module.RESTART_ONLY:
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
        self.keys.set_timings(cfg.refresh_interval, cfg.max_stale, cfg.retry_interval)
        logs.set_level(cfg.log_level)
        self.cfg = dataclasses.replace(cfg, **{field: getattr(self.cfg, field) for field in config_module.RESTART_ONLY})
        self.metrics.observe_reload("ok")
        state = self.keys.status()
        LOG.info("reloaded", extra={"key_id": state.key_id, "healthz": state.healthz, "keys": len(cfg.keys)})
