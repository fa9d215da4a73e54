"""``teapot-kms-plugin serve|inspect --config PATH`` and ``teapot-kms-plugin status --socket PATH``."""

import argparse
import dataclasses
import json
import logging
import sys

import grpc

from . import __version__
from . import config as config_module
from . import logs
from . import metrics
from . import pins
from . import transport
from .client import KmsClient
from .daemon import Daemon, cache_keyring
from .keyring import SecretFieldRef

LOG = logging.getLogger("teapot_kms_plugin")


def _load(path):
    """The validated config, or None after saying on stderr what to fix."""
    try:
        return config_module.load(path)
    except config_module.ConfigError as exc:
        print(f"teapot-kms-plugin: invalid configuration: {exc}", file=sys.stderr)
        return None


def serve(args, make_keyring=cache_keyring):
    cfg = _load(args.config)
    if cfg is None:
        return 2
    logs.setup(cfg.log_level)
    try:
        return Daemon(args.config, cfg, make_keyring).run()
    except (transport.SocketError, pins.PinStoreError) as exc:
        LOG.error("cannot serve: %s", exc)
        return 1


def status(args):
    """Status as the apiserver sees it, plus every key's state, the last reload and the serving pid; exit 0 only when all are well."""
    with KmsClient(args.socket, timeout=args.timeout) as client:
        try:
            response = client.status()
        except grpc.RpcError as exc:
            print(json.dumps({"healthz": f"unreachable: {exc.code().name}: {exc.details()}", "key_id": "", "version": "",
                              "keys": None, "reload": None, "pid": None, "all_keys_loaded": False}))
            return 2
        try:
            report = client.report()
        except grpc.RpcError as exc:
            report = {"keys": None, "reload": None, "pid": None, "report_error": f"{exc.code().name}: {exc.details()}"}
    keys = report.get("keys")
    all_loaded = bool(keys) and all(key["loaded"] for key in keys)
    print(json.dumps(dict(report, healthz=response.healthz, key_id=response.key_id, version=response.version,
                          all_keys_loaded=all_loaded)))
    return 0 if response.healthz == "ok" and all_loaded else 1


def _listen_text(listen):
    if listen is None:
        return None
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _source_settings(cfg):
    """The settings of the configured source of keys, without secrets: ``{"barbican": ...}`` or ``{"kubernetes_secret": ...}``."""
    if cfg.kubernetes_secret is not None:
        return {"kubernetes_secret": dataclasses.asdict(cfg.kubernetes_secret)}
    barbican = cfg.barbican
    auth = {name: value for name, value in sorted(barbican.auth.items()) if name not in config_module.SECRET_AUTH_FIELDS}
    return {"barbican": {
        "cloud": barbican.cloud,
        "clouds_file": barbican.clouds_file,
        "auth_type": barbican.auth_type,
        "auth": auth,
        "region_name": barbican.region_name,
        "interface": barbican.interface,
        "cacert": barbican.cacert,
        "endpoint_override": barbican.endpoint_override,
        "timeout": barbican.timeout,
    }}


def inspection(path, cfg):
    """What ``inspect`` prints: the effective settings without secrets, and what tools need to find the plugin."""
    listen = _listen_text(cfg.metrics_listen)
    restart_only = {field: getattr(cfg, field) for field in config_module.RESTART_ONLY}
    restart_only["metrics_listen"] = listen
    return {
        "config": str(path),
        "socket": cfg.socket,
        "metrics": None if cfg.metrics_listen is None else {
            "listen": listen, "url": metrics.scrape_url(*cfg.metrics_listen), "names": metrics.NAMES},
        "keys": [{"key_id": ref.key_id, "secret": ref.ref, "role": "primary" if index == 0 else "decrypt-only",
                  "source": ref.source} for index, ref in enumerate(cfg.keys)],
        "restart_only": restart_only,
        "settings": {
            "socket": cfg.socket,
            "socket_group": cfg.socket_group,
            **_source_settings(cfg),
            "keys": [ref.field if isinstance(ref, SecretFieldRef) else ref.ref for ref in cfg.keys],
            "cache": {"refresh_interval": cfg.refresh_interval, "max_stale": cfg.max_stale,
                      "retry_interval": cfg.retry_interval},
            "metrics": {"listen": listen},
            "log_level": cfg.log_level,
            "state_dir": cfg.state_dir,
            "grpc": {"workers": cfg.workers, "shutdown_grace": cfg.shutdown_grace},
        },
    }


def inspect(args):
    cfg = _load(args.config)
    if cfg is None:
        return 2
    print(json.dumps(inspection(args.config, cfg), indent=1, sort_keys=True))
    return 0


def main(argv=None, make_keyring=cache_keyring):
    """The command line; ``make_keyring`` replaces the cached keyring of ``serve`` (see :class:`daemon.Daemon`)."""
    parser = argparse.ArgumentParser(prog="teapot-kms-plugin", description="Kubernetes KMS v2 plugin backed by OpenStack Barbican")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve KMS v2 on the configured unix socket")
    serve_parser.add_argument("--config", required=True, help="the YAML configuration file")
    serve_parser.set_defaults(func=lambda args: serve(args, make_keyring))
    inspect_parser = commands.add_parser(
        "inspect", help="validate the configuration and print, as JSON, the effective settings (no secrets), the socket, "
                        "the metrics address, the keys with their roles and the settings that need a restart; exit 2 when invalid")
    inspect_parser.add_argument("--config", required=True, help="the YAML configuration file")
    inspect_parser.set_defaults(func=inspect)
    status_parser = commands.add_parser(
        "status", help="call Status and print it as JSON with every key's state (loaded, age, last error) and the last "
                       "reload's outcome; exit 1 when Status is not ok or a configured key is not loaded, 2 when unreachable")
    status_parser.add_argument("--socket", required=True, help="the plugin's unix socket")
    status_parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    status_parser.set_defaults(func=status)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
