"""The KMS plugin daemon as a real process: its venv, its config, its socket.

The venv is built the way hosts without internet install it: ``pip wheel``
collects the plugin and every dependency into a wheel directory, then a fresh
venv installs from that directory alone (``--no-index``).  Both live below the
cache, keyed by a hash of the plugin's sources.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.request

import yaml

from tests.harness.cache import cache_dir, file_lock
from tests.harness.procs import ManagedProcess, free_port, run

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "daemon"
_MARKER = ".teapot-complete"


def source_hash():
    digest = hashlib.sha256()
    files = [SOURCE / "pyproject.toml", SOURCE / "README.md", *sorted((SOURCE / "src").rglob("*.py"))]
    for path in files:
        digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(sys.version.split()[0].encode())
    return digest.hexdigest()[:12]


def plugin_venv(extras=()):
    """Build (once per source hash and extras) and return the venv with ``teapot-kms-plugin[extras]`` installed offline."""
    extras = sorted(extras)
    key = source_hash() + "".join(f"-{extra}" for extra in extras)
    with_extras = f"[{','.join(extras)}]" if extras else ""
    venv = cache_dir("venvs") / f"kms-plugin-{key}"
    if (venv / _MARKER).exists():
        return venv
    wheels = cache_dir("wheels", f"kms-plugin-{key}")
    with file_lock(f"{venv}.lock"):
        if (venv / _MARKER).exists():
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        with open(f"{venv}.build.log", "w", encoding="utf-8") as log:
            run([sys.executable, "-m", "pip", "wheel", "--quiet", f"{SOURCE}{with_extras}", "-w", wheels], log)
            run([sys.executable, "-m", "venv", venv], log)
            run([venv / "bin" / "pip", "install", "--quiet", "--no-index", "--find-links", wheels,
                 f"teapot-kms-plugin{with_extras}"], log)
        (venv / _MARKER).write_text(key + "\n", encoding="utf-8")
    return venv


def order_kek(barbican, creds, name):
    """Order a 256-bit AES key in Barbican; return the secret href."""
    client = barbican.client(creds)
    order = client.orders.create_key(name=name, algorithm="aes", bit_length=256, mode="gcm",
                                     payload_content_type="application/octet-stream")
    order_ref = order.submit()
    for _attempt in range(60):
        order = client.orders.get(order_ref)
        if order.status == "ACTIVE":
            return order.secret_ref
        if order.status == "ERROR":
            raise RuntimeError(f"order {order_ref} failed: {order.error_reason}")
        time.sleep(0.5)
    raise TimeoutError(f"order {order_ref} did not become ACTIVE")


def password_barbican_section(creds, secret_dir, **extra):
    """``barbican:`` config for password auth, the password in a 0600 file (and the CA of TLS credentials)."""
    secret_dir = pathlib.Path(secret_dir)
    secret_dir.mkdir(parents=True, exist_ok=True)
    password_file = secret_dir / "password"
    password_file.write_text(creds.password + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    auth = {key: value for key, value in creds.auth_dict().items() if key != "password"}
    auth["password_file"] = str(password_file)
    if creds.cacert:
        extra.setdefault("cacert", creds.cacert)
    return {"auth_type": "password", "auth": auth, **extra}


def first_status(creds, keys, base_dir, region_name):
    """Start a plugin that logs in with ``creds`` (password) and wraps with ``keys``; return
    ``(exit code, Status JSON, log tail)`` of its first ``status``, then stop it."""
    base_dir = pathlib.Path(base_dir)
    section = password_barbican_section(creds, base_dir / "secrets", region_name=region_name)
    plugin = PluginProcess(plugin_venv(), base_dir / "plugin",
                           {"barbican": section, "keys": list(keys), "metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    try:
        plugin.start()
        code, status = plugin.status_command()
    finally:
        plugin.stop()
    return code, status, plugin.log_tail()


class PluginProcess:
    """``teapot-kms-plugin serve`` on a socket in ``base_dir``, with its config file.

    ``command`` replaces ``teapot-kms-plugin`` (the benchmark's per-call variant).
    """

    def __init__(self, venv, base_dir, config, name="kms-plugin", command=None):
        self.venv = pathlib.Path(venv)
        self.base_dir = pathlib.Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.config.setdefault("socket", str(self.base_dir / "run" / "kms.sock"))
        self.config.setdefault("state_dir", str(self.base_dir / "state"))
        self.socket = self.config["socket"]
        self.config_path = self.base_dir / "kms-plugin.yaml"
        self.log_path = self.base_dir / f"{name}.log"
        command = command or [self.venv / "bin" / "teapot-kms-plugin"]
        self.process = ManagedProcess(name, [*command, "serve", "--config", self.config_path],
                                      self.log_path, env=self._env())
        self.write_config()

    @staticmethod
    def _env():
        env = {key: value for key, value in os.environ.items() if not key.startswith("OS_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def write_config(self, **changes):
        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self.config_path.chmod(0o600)

    def start(self, timeout=60.0):
        """Start and wait until the socket answers Status and the first fetch of every key has ended.

        The plugin opens its socket before that fetch (Status then says "not fetched yet"):
        the tests look at what the fetch did.
        """
        self.process.start()
        self.wait_for_socket(timeout)
        return self

    def wait_for_socket(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.running():
                raise RuntimeError(f"the plugin exited with {self.process.popen.returncode}; log:\n{self.log_tail()}")
            if os.path.exists(self.socket):
                with contextlib.suppress(subprocess.CalledProcessError):
                    _code, status = self.status_command()
                    if not any(key["last_error"] == "not fetched yet" for key in status["keys"] or ()):
                        return
            time.sleep(0.1)
        raise TimeoutError(f"the plugin did not answer on {self.socket} within {timeout:.0f}s; log:\n{self.log_tail()}")

    def status_command(self):
        """Run ``teapot-kms-plugin status``: ``(exit code, parsed JSON)``; raise if it cannot connect."""
        result = subprocess.run([str(self.venv / "bin" / "teapot-kms-plugin"), "status", "--socket", self.socket, "--timeout", "5"],
                                capture_output=True, text=True, check=False)
        if result.returncode == 2:
            raise subprocess.CalledProcessError(2, "status", result.stdout, result.stderr)
        return result.returncode, json.loads(result.stdout)

    def metrics_text(self):
        host, port = self.config["metrics"]["listen"].rsplit(":", 1)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:  # nosec: loopback only
            return response.read().decode()

    def reload(self):
        import signal  # pylint: disable=import-outside-toplevel

        self.process.signal(signal.SIGHUP)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=60):
        return self.process.log_tail(lines)

    def stop(self):
        self.process.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def running_plugin(keystone, barbican, base_dir, kek_prefix="test-kek"):
    """The plugin daemon, started, wrapping with a KEK just ordered in ``barbican`` for Keystone's plugin user."""
    kek = order_kek(barbican, keystone.plugin_user, f"{kek_prefix}-{time.time_ns()}")
    base_dir = pathlib.Path(base_dir)
    section = password_barbican_section(keystone.plugin_user, base_dir / "plugin-secrets", region_name=keystone.region_name)
    plugin = PluginProcess(plugin_venv(), base_dir / "plugin", {"barbican": section, "keys": [kek],
                                                                "metrics": {"listen": f"127.0.0.1:{free_port()}"}})
    plugin.start()
    try:
        yield plugin
    finally:
        plugin.stop()
