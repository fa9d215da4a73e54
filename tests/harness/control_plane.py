"""One control-plane node for the rotation tests: a KMS plugin daemon and a kube-apiserver STAND-IN.

kube-apiserver cannot run here: the stand-in (tests/harness/kube_apiserver_standin.py)
stores objects in etcd in kube-apiserver's formats, encrypting through this
node's plugin (its own configuration, socket and state directory), and exports
the apiserver's KMS metrics.  ``host_vars()`` are the inventory variables that
let the collection's playbooks act on the node with a local connection.
"""

import json
import sys

import yaml

from tests.harness.plugin_daemon import PluginProcess, password_barbican_section, plugin_venv
from tests.harness.procs import free_port
from tests.harness.standin.process import StandinProcess

KMS_NAME = "teapot"


class ControlPlaneNode:
    """A plugin logged in with ``creds`` (password) and wrapping with ``kek``, and a stand-in on ``etcd``.

    ``quiet`` logs warnings only (for benchmarks of many objects); ``log_dir`` holds the stand-in's log.
    """

    def __init__(self, name, base_dir, creds, region_name, kek, etcd, resources, quiet=False, log_dir=None):
        self.name = name
        self.base_dir = base_dir
        section = password_barbican_section(creds, base_dir / "plugin", region_name=region_name)
        config = {"barbican": section, "keys": [kek], "metrics": {"listen": f"127.0.0.1:{free_port()}"},
                  "cache": {"refresh_interval": 300}}
        if quiet:
            config["log_level"] = "warning"
        self.plugin = PluginProcess(plugin_venv(), base_dir / "plugin", config, name=f"kms-plugin-{name}")
        self.encryption_config = base_dir / "encryption.yaml"
        document = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", "resources": [{
            "resources": list(resources), "providers": [
                {"kms": {"apiVersion": "v2", "name": KMS_NAME, "endpoint": f"unix://{self.plugin.socket}", "timeout": "5s"}},
                {"identity": {}}]}]}
        self.encryption_config.write_text(yaml.safe_dump(document), encoding="utf-8")
        self.encryption_config.chmod(0o600)
        self.standin = StandinProcess(
            base_dir / "standin", etcd.endpoints, self.encryption_config, kms_poll_interval=1, kms_healthz_ttl=1,
            name=f"kube-apiserver-standin-{name}", log_path=log_dir / f"standin-{name}.log" if log_dir else None,
            extra_flags=[f"--etcd-cafile={etcd.ca_path}", f"--etcd-certfile={etcd.client_cert}",
                         f"--etcd-keyfile={etcd.client_key}", *(["--standin-log-level=WARNING"] if quiet else [])])

    def start(self):
        self.plugin.start()
        self.standin.start()
        self.standin.wait_health("/readyz")
        return self

    def stop(self):
        self.standin.stop()
        self.plugin.stop()

    @property
    def state_file(self):
        return self.base_dir / "plugin" / "state" / "rotation.json"

    def state(self):
        return json.loads(self.state_file.read_text(encoding="utf-8"))

    def status(self):
        return self.plugin.status_command()[1]

    def keyring(self):
        return yaml.safe_load(self.plugin.config_path.read_text(encoding="utf-8"))["keys"]

    def host_vars(self):
        return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "kms_plugin_config_dir": str(self.plugin.base_dir), "kms_plugin_venv_path": str(self.plugin.venv),
                "kms_plugin_state_dir": self.plugin.config["state_dir"], "kms_plugin_health_delay": 1,
                "teapot_kms_rotation_apiserver": {"url": self.standin.url, "ca_cert": str(self.standin.pki.cert_path),
                                                  "tls_server_name": "localhost", "client_cert": "", "token": self.standin.token}}


def audit_counts(runner, etcd, resources):
    """The objects of ``resources`` in ``etcd`` per provider and key_id, from teapot.kms.secret_encryption_info."""
    run = runner.run([{"name": "audit", "teapot.kms.secret_encryption_info": {
        "etcd": etcd.client_options(), "resources": list(resources)}}])
    return run.task("audit")["counts"]
