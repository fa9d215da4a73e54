"""The plugin's YAML configuration, validated at start with one-line errors."""

import dataclasses
import importlib.util
import ipaddress
import os
import pathlib
import re
import urllib.parse

import yaml

from .keyring import KeyRef, SecretFieldRef

AUTH_TYPES = ("password", "v3applicationcredential")
INTERFACES = ("public", "internal", "admin")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_METRICS_LISTEN = ("127.0.0.1", 9464)
# Where the plugin keeps what it must remember across restarts (the key pins).
DEFAULT_STATE_DIR = "/var/lib/teapot-kms"
# Config fields (of Config) read only at start: a reload keeps the running values.
RESTART_ONLY = ("socket", "socket_group", "metrics_listen", "workers", "state_dir")
# Read from their files into BarbicanConfig.auth; never shown.
SECRET_AUTH_FIELDS = ("password", "application_credential_secret")

_PASSWORD_FIELDS = {"auth_url", "username", "user_id", "password", "password_file", "project_name", "project_id",
                    "user_domain_name", "user_domain_id", "project_domain_name", "project_domain_id"}
_APP_CRED_FIELDS = {"auth_url", "application_credential_id", "application_credential_name",
                    "application_credential_secret", "application_credential_secret_file",
                    "username", "user_id", "user_domain_name", "user_domain_id"}


class ConfigError(ValueError):
    """A configuration problem; the message names the field."""


@dataclasses.dataclass(frozen=True)
class BarbicanConfig:
    cloud: str = None
    clouds_file: str = None
    auth_type: str = "password"
    # Options for keystoneauth1's loader, secrets already read from their files.
    auth: dict = dataclasses.field(default_factory=dict, repr=False)
    region_name: str = None
    interface: str = "public"
    cacert: str = None
    endpoint_override: str = None
    timeout: float = 10.0
    # Plain http:// to Keystone or Barbican beyond this host (the daemon warns at start).
    allow_insecure_http: bool = False


@dataclasses.dataclass(frozen=True)
class KubernetesSecretConfig:
    """The keys are data fields of one Secret, read through a kubeconfig (``kubernetes_secret:``)."""

    kubeconfig: str
    namespace: str
    name: str
    context: str = None
    timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    socket: str
    barbican: BarbicanConfig
    keys: tuple
    socket_group: str = None
    refresh_interval: float = 300.0
    max_stale: float = 86400.0
    retry_interval: float = 10.0
    metrics_listen: tuple = DEFAULT_METRICS_LISTEN
    log_level: str = "info"
    shutdown_grace: float = 10.0
    workers: int = 8
    state_dir: str = DEFAULT_STATE_DIR
    # Set instead of barbican (then None) when the keys come from a Kubernetes Secret.
    kubernetes_secret: KubernetesSecretConfig = None


def _mapping(value, field):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{field}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(mapping, allowed, field):
    extra = sorted(set(mapping) - set(allowed))
    if extra:
        prefix = f"{field}." if field else ""
        raise ConfigError(f"{prefix}{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def _string(value, field, required=False):
    if value is None:
        if required:
            raise ConfigError(f"{field}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field}: expected a non-empty string")
    return value.strip()


def _choice(value, field, choices, default):
    if value is None:
        return default
    if value not in choices:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(choices)}")
    return value


# A year: longer waits overflow the thread timers and mean nothing for a key cache.
MAX_SECONDS = 366 * 86400


def _seconds(value, field, default):
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_SECONDS:
        raise ConfigError(f"{field}: expected a positive number of seconds up to {MAX_SECONDS}, got {value!r}")
    return float(value)


def _read_secret(path, field):
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{field}: {path} is empty")
    return text


LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def is_loopback_host(host):
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def insecure_http_refusal(url, field):
    """Why ``url`` may not be used without allow_insecure_http, or None when it may.

    Tokens, passwords and the key-encryption keys cross this connection: plain
    http is accepted only on this host (loopback).
    """
    parsed = urllib.parse.urlsplit(url or "")
    if parsed.scheme.lower() != "http" or is_loopback_host(parsed.hostname):
        return None
    return (f"{field}: {url!r} is plain http to {parsed.hostname}, which would send tokens, passwords and keys "
            "in clear: use https:// (with barbican.cacert for a private CA), or set "
            "barbican.allow_insecure_http: true to accept it")


def _auth(raw, auth_type):
    raw = _mapping(raw, "barbican.auth")
    allowed = _PASSWORD_FIELDS if auth_type == "password" else _APP_CRED_FIELDS
    _unknown(raw, allowed, "barbican.auth")
    auth = {}
    for key, value in raw.items():
        auth[key] = _string(value, f"barbican.auth.{key}")
    _string(auth.get("auth_url"), "barbican.auth.auth_url", required=True)
    secret_name = "password" if auth_type == "password" else "application_credential_secret"
    file_name = f"{secret_name}_file"
    if auth.get(secret_name) and auth.get(file_name):
        raise ConfigError(f"barbican.auth.{file_name}: set either {secret_name} or {file_name}, not both")
    if auth.get(file_name):
        auth[secret_name] = _read_secret(auth.pop(file_name), f"barbican.auth.{file_name}")
    if not auth.get(secret_name):
        raise ConfigError(f"barbican.auth.{file_name}: required (or barbican.auth.{secret_name})")
    if auth_type == "password":
        if not (auth.get("username") or auth.get("user_id")):
            raise ConfigError("barbican.auth.username: required (or barbican.auth.user_id)")
        if not (auth.get("project_name") or auth.get("project_id")):
            raise ConfigError("barbican.auth.project_name: required (or barbican.auth.project_id)")
        if auth.get("project_name") and not (auth.get("project_domain_name") or auth.get("project_domain_id")):
            auth["project_domain_name"] = "Default"
        if auth.get("username") and not (auth.get("user_domain_name") or auth.get("user_domain_id")):
            auth["user_domain_name"] = "Default"
    elif not (auth.get("application_credential_id") or auth.get("application_credential_name")):
        raise ConfigError("barbican.auth.application_credential_id: required (or application_credential_name with username)")
    return auth


def _barbican(raw):
    raw = _mapping(raw, "barbican")
    if not raw:
        raise ConfigError("barbican: required")
    _unknown(raw, {"cloud", "clouds_file", "auth_type", "auth", "region_name", "interface", "cacert",
                   "endpoint_override", "timeout", "allow_insecure_http"}, "barbican")
    allow_insecure_http = raw.get("allow_insecure_http", False)
    if not isinstance(allow_insecure_http, bool):
        raise ConfigError(f"barbican.allow_insecure_http: expected true or false, got {allow_insecure_http!r}")
    cloud = _string(raw.get("cloud"), "barbican.cloud")
    clouds_file = _string(raw.get("clouds_file"), "barbican.clouds_file")
    auth_type = _choice(raw.get("auth_type"), "barbican.auth_type", AUTH_TYPES, "password")
    if cloud:
        if raw.get("auth") or raw.get("auth_type"):
            raise ConfigError("barbican.auth: set either barbican.cloud or barbican.auth, not both")
        if clouds_file and not os.path.isfile(clouds_file):
            raise ConfigError(f"barbican.clouds_file: {clouds_file} does not exist")
        auth = {}
    else:
        if clouds_file:
            raise ConfigError("barbican.clouds_file: only meaningful with barbican.cloud")
        if raw.get("auth") is None:
            raise ConfigError("barbican.auth: required unless barbican.cloud names a clouds.yaml entry")
        auth = _auth(raw.get("auth"), auth_type)
    cacert = _string(raw.get("cacert"), "barbican.cacert")
    if cacert and not os.path.isfile(cacert):
        raise ConfigError(f"barbican.cacert: {cacert} does not exist")
    endpoint = _string(raw.get("endpoint_override"), "barbican.endpoint_override")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"barbican.endpoint_override: {endpoint!r} is not an http(s) URL")
    if not allow_insecure_http:
        for url, field in ((auth.get("auth_url"), "barbican.auth.auth_url"), (endpoint, "barbican.endpoint_override")):
            refusal = insecure_http_refusal(url, field)
            if refusal:
                raise ConfigError(refusal)
    return BarbicanConfig(
        cloud=cloud,
        clouds_file=clouds_file,
        auth_type=auth_type,
        auth=auth,
        region_name=_string(raw.get("region_name"), "barbican.region_name"),
        interface=_choice(raw.get("interface"), "barbican.interface", INTERFACES, "public"),
        cacert=cacert,
        endpoint_override=endpoint,
        timeout=_seconds(raw.get("timeout"), "barbican.timeout", 10),
        allow_insecure_http=allow_insecure_http,
    )


def _keys(raw):
    if raw is None:
        raise ConfigError("keys: required (a list of Barbican secret UUIDs or hrefs, the first is primary)")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("keys: expected a non-empty list of Barbican secret UUIDs or hrefs")
    refs = []
    seen = {}
    for index, item in enumerate(raw):
        try:
            ref = KeyRef.parse(item)
        except ValueError as exc:
            raise ConfigError(f"keys[{index}]: {exc}") from None
        if ref.uuid in seen:
            raise ConfigError(f"keys[{index}]: secret {ref.uuid} is already keys[{seen[ref.uuid]}]")
        seen[ref.uuid] = index
        refs.append(ref)
    return tuple(refs)


# Kubernetes' own rules: a namespace is a DNS label, a Secret's name a DNS subdomain, a data key [-._a-zA-Z0-9]+.
_K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_K8S_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")
KUBERNETES_SECRET_FIELDS = ("kubeconfig", "context", "namespace", "name", "timeout")


def _kubernetes_secret(raw):
    raw = _mapping(raw, "kubernetes_secret")
    _unknown(raw, KUBERNETES_SECRET_FIELDS, "kubernetes_secret")
    kubeconfig = _string(raw.get("kubeconfig"), "kubernetes_secret.kubeconfig", required=True)
    if not os.path.isabs(kubeconfig):
        raise ConfigError(f"kubernetes_secret.kubeconfig: {kubeconfig!r} is not an absolute path")
    if not os.path.isfile(kubeconfig):
        raise ConfigError(f"kubernetes_secret.kubeconfig: {kubeconfig} does not exist")
    namespace = _string(raw.get("namespace"), "kubernetes_secret.namespace", required=True)
    if not _K8S_LABEL.fullmatch(namespace):
        raise ConfigError(f"kubernetes_secret.namespace: {namespace!r} is not a Kubernetes namespace name "
                          "(lower-case letters, digits and '-', at most 63)")
    name = _string(raw.get("name"), "kubernetes_secret.name", required=True)
    if len(name) > 253 or not _K8S_SUBDOMAIN.fullmatch(name):
        raise ConfigError(f"kubernetes_secret.name: {name!r} is not a Kubernetes Secret name "
                          "(lower-case letters, digits, '-' and '.', at most 253)")
    if importlib.util.find_spec("kubernetes") is None:
        raise ConfigError("kubernetes_secret: the kubernetes client is not installed; "
                          "install the plugin as teapot-kms-plugin[kubernetes]")
    return KubernetesSecretConfig(
        kubeconfig=kubeconfig,
        namespace=namespace,
        name=name,
        context=_string(raw.get("context"), "kubernetes_secret.context"),
        timeout=_seconds(raw.get("timeout"), "kubernetes_secret.timeout", 10),
    )


def _secret_fields(raw, section):
    """The keys of a kubernetes_secret source: data fields of its Secret, the first is primary."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("keys: expected a non-empty list of data fields of the Secret "
                          f"{section.namespace}/{section.name}, the first is primary")
    refs = []
    seen = {}
    for index, item in enumerate(raw):
        if not isinstance(item, str) or len(item) > 253 or not _K8S_DATA_KEY.fullmatch(item):
            raise ConfigError(f"keys[{index}]: {item!r} is not a Secret data field name ([-._a-zA-Z0-9], at most 253)")
        if item in seen:
            raise ConfigError(f"keys[{index}]: field {item} is already keys[{seen[item]}]")
        seen[item] = index
        refs.append(SecretFieldRef.of(section.namespace, section.name, item))
    return tuple(refs)


def _source(data):
    """``(barbican, kubernetes_secret, keys)``: the one source of the keyring's keys and its keys."""
    if data.get("kubernetes_secret") is None:
        return _barbican(data.get("barbican")), None, _keys(data.get("keys"))
    if data.get("barbican") is not None:
        raise ConfigError("kubernetes_secret: set either barbican or kubernetes_secret, not both (one source of keys)")
    section = _kubernetes_secret(data.get("kubernetes_secret"))
    return None, section, _secret_fields(data.get("keys"), section)


def _listen(raw, allow_non_loopback):
    if raw is None:
        return DEFAULT_METRICS_LISTEN
    if raw is False or raw == "":
        return None
    if not isinstance(raw, str) or ":" not in raw:
        raise ConfigError(f"metrics.listen: expected HOST:PORT, got {raw!r}")
    host, _sep, port = raw.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"metrics.listen: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics.listen: {port!r} is not a TCP port")
    # The metrics name the keys and tell when Barbican fails: not for the whole network by accident.
    if not ipaddress.ip_address(host).is_loopback and allow_non_loopback is not True:
        raise ConfigError(f"metrics.listen: {host} is not a loopback address; set metrics.allow_non_loopback: true "
                          "to serve the metrics beyond this host")
    return (host, int(port))


def parse(data):
    """Validate a parsed YAML document; return a :class:`Config`."""
    data = _mapping(data, "config")
    _unknown(data, {"socket", "socket_group", "barbican", "kubernetes_secret", "keys", "cache", "metrics", "log_level", "grpc",
                    "state_dir"}, "")
    socket_path = _string(data.get("socket"), "socket", required=True)
    if not os.path.isabs(socket_path):
        raise ConfigError(f"socket: {socket_path!r} is not an absolute path")
    if len(socket_path.encode()) > 107:
        raise ConfigError(f"socket: {socket_path!r} is longer than a unix socket path may be (107 bytes)")
    cache = _mapping(data.get("cache"), "cache")
    _unknown(cache, {"refresh_interval", "max_stale", "retry_interval"}, "cache")
    refresh = _seconds(cache.get("refresh_interval"), "cache.refresh_interval", 300)
    max_stale = _seconds(cache.get("max_stale"), "cache.max_stale", 86400)
    if refresh >= max_stale:
        raise ConfigError(f"cache.refresh_interval: {refresh:g}s must be shorter than cache.max_stale ({max_stale:g}s)")
    retry = _seconds(cache.get("retry_interval"), "cache.retry_interval", min(10.0, refresh))
    metrics = _mapping(data.get("metrics"), "metrics")
    _unknown(metrics, {"listen", "allow_non_loopback"}, "metrics")
    allow_non_loopback = metrics.get("allow_non_loopback", False)
    if not isinstance(allow_non_loopback, bool):
        raise ConfigError(f"metrics.allow_non_loopback: expected true or false, got {allow_non_loopback!r}")
    grpc_options = _mapping(data.get("grpc"), "grpc")
    _unknown(grpc_options, {"workers", "shutdown_grace"}, "grpc")
    workers = grpc_options.get("workers", 8)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ConfigError(f"grpc.workers: expected an integer from 1 to 256, got {workers!r}")
    state_dir = _string(data.get("state_dir"), "state_dir") or DEFAULT_STATE_DIR
    if not os.path.isabs(state_dir):
        raise ConfigError(f"state_dir: {state_dir!r} is not an absolute path")
    group = data.get("socket_group")
    if group is not None and not isinstance(group, (str, int)):
        raise ConfigError("socket_group: expected a group name or id")
    barbican, kubernetes_secret, keys = _source(data)
    return Config(
        socket=socket_path,
        socket_group=None if group is None else str(group),
        barbican=barbican,
        keys=keys,
        refresh_interval=refresh,
        max_stale=max_stale,
        retry_interval=retry,
        metrics_listen=_listen(metrics.get("listen"), allow_non_loopback),
        log_level=_choice(data.get("log_level"), "log_level", LOG_LEVELS, "info"),
        shutdown_grace=_seconds(grpc_options.get("shutdown_grace"), "grpc.shutdown_grace", 10),
        workers=workers,
        state_dir=state_dir,
        kubernetes_secret=kubernetes_secret,
    )


def load(path):
    """Read and validate the YAML file at ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse(data)
