"""A real Keystone 30 (sqlite, Fernet tokens) under uWSGI on loopback.

``KeystoneService.start()`` bootstraps Keystone and creates what Barbican and
the KMS plugin tests need: the ``service`` project with the ``barbican``
service user, the ``kms`` project with two members (``kms-plugin`` and
``kms-other``), an application credential for ``kms-plugin``, and the
least-privilege pair the collection's playbooks deploy: ``kms-key-custodian``
(member: orders keys, sets their ACLs) and ``kms-plugin-reader`` (only
``reader``: reads a key its ACL grants it).
"""

import dataclasses
import getpass
import grp
import os
import pathlib
import secrets
import subprocess

import openstack.connection
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from tests.harness.procs import ManagedProcess, free_port, wait_for_port
from tests.harness.uwsgi import uwsgi_argv

REGION = "RegionOne"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Password authentication for one user scoped to one project."""

    auth_url: str
    username: str
    password: str = dataclasses.field(repr=False)
    project_name: str
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    # The CA that verifies Keystone (and Barbican) over TLS; None: plain http on loopback.
    cacert: str = None

    def auth_dict(self):
        """The ``auth:`` dict of keystoneauth1 / openstack.cloud."""
        return {
            "auth_url": self.auth_url,
            "username": self.username,
            "password": self.password,
            "project_name": self.project_name,
            "user_domain_name": self.user_domain_name,
            "project_domain_name": self.project_domain_name,
        }

    def auth_plugin(self):
        return v3.Password(**self.auth_dict())


@dataclasses.dataclass(frozen=True)
class AppCredential:
    """An application credential (id and secret)."""

    auth_url: str
    id: str  # pylint: disable=invalid-name
    secret: str = dataclasses.field(repr=False)
    name: str
    cacert: str = None

    def auth_dict(self):
        return {
            "auth_url": self.auth_url,
            "application_credential_id": self.id,
            "application_credential_secret": self.secret,
        }

    def auth_plugin(self):
        return v3.ApplicationCredential(**self.auth_dict())


def make_session(creds):
    """A keystoneauth1 session for Credentials or AppCredential (verified with their CA, if any)."""
    return ks_session.Session(auth=creds.auth_plugin(), verify=creds.cacert or True)


class KeystoneService:
    """Keystone with the users and projects the tests rely on."""

    region_name = REGION

    def __init__(self, venv, base_dir, log_dir, tls_ca=None, name="keystone"):
        """``tls_ca`` (a tests.harness.pki.TestCA): serve HTTPS only, with a certificate it signs."""
        self.venv = pathlib.Path(venv)
        self.base_dir = pathlib.Path(base_dir)
        self.log_path = pathlib.Path(log_dir) / f"{name}.log"
        self.name = name
        self.port = free_port()
        self.tls = tls_ca.issue(name, ips=["127.0.0.1"], dns_names=["localhost"], server=True) if tls_ca else None
        self.cacert = str(tls_ca.cert_path) if tls_ca else None
        self.auth_url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{self.port}/v3"
        self.conf_path = self.base_dir / "keystone.conf"
        self.process = None

        def credentials(username, project):
            return Credentials(self.auth_url, username, secrets.token_urlsafe(18), project, cacert=self.cacert)

        self.admin = credentials("admin", "admin")
        self.service_user = credentials("barbican", "service")
        self.plugin_user = credentials("kms-plugin", "kms")
        self.other_member = credentials("kms-other", "kms")
        self.key_custodian = credentials("kms-key-custodian", "kms")
        self.reader_plugin_user = credentials("kms-plugin-reader", "kms")
        self.plugin_app_cred = None
        self._key_manager_service_id = None

    def _env(self):
        env = dict(os.environ, OS_KEYSTONE_CONFIG_FILES=str(self.conf_path))
        env.pop("OS_CLOUD", None)
        return env

    def _manage(self, *args, env=None):
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [str(self.venv / "bin" / "keystone-manage"), "--config-file", str(self.conf_path), *args],
                stdout=log, stderr=subprocess.STDOUT, env=env or self._env(), cwd=self.base_dir, check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"keystone-manage {args[0]} failed; see {self.log_path}")

    def _write_config(self):
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o700)
        self.conf_path.write_text(
            "[DEFAULT]\n"
            "use_stderr = true\n"
            "[database]\n"
            f"connection = sqlite:///{self.base_dir / 'keystone.db'}\n"
            "[token]\n"
            "provider = fernet\n"
            "[fernet_tokens]\n"
            f"key_repository = {self.base_dir / 'fernet-keys'}\n"
            "[fernet_receipts]\n"
            f"key_repository = {self.base_dir / 'fernet-keys'}\n"
            "[credential]\n"
            f"key_repository = {self.base_dir / 'credential-keys'}\n"
            "[cache]\n"
            "enabled = false\n",
            encoding="utf-8",
        )

    def start(self):
        """Bootstrap (first time only) and serve Keystone; provision users."""
        first = self.process is None
        if first:
            self._write_config()
            user = getpass.getuser()
            group = grp.getgrgid(os.getgid()).gr_name
            self._manage("db_sync")
            self._manage("fernet_setup", "--keystone-user", user, "--keystone-group", group)
            self._manage("credential_setup", "--keystone-user", user, "--keystone-group", group)
            # The password travels in the environment, not on a command line.
            self._manage(
                "bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
                "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
                "--bootstrap-region-id", REGION, "--bootstrap-public-url", f"{self.auth_url}/",
                env=dict(self._env(), OS_BOOTSTRAP_PASSWORD=self.admin.password),
            )
        argv = uwsgi_argv(self.venv, self.port, ["--module", "keystone.wsgi.api:application"], tls=self.tls)
        self.process = ManagedProcess(self.name, argv, self.log_path, env=self._env(), cwd=self.base_dir).start()
        wait_for_port("127.0.0.1", self.port, timeout=120, process=self.process)
        if first:
            self._provision()
        return self

    def connection(self, creds=None):
        """An openstacksdk connection (admin by default)."""
        creds = creds or self.admin
        return openstack.connection.Connection(session=make_session(creds), region_name=REGION, identity_interface="public")

    def _provision(self):
        conn = self.connection()
        identity = conn.identity
        roles = {role.name: role for role in identity.roles()}
        for name in ("service", "member", "reader"):
            if name not in roles:
                roles[name] = identity.create_role(name=name)
        service_project = identity.create_project(name="service", domain_id="default")
        kms_project = identity.create_project(name="kms", domain_id="default")

        def user(creds, project, role_names):
            created = identity.create_user(
                name=creds.username, password=creds.password, domain_id="default", default_project_id=project.id
            )
            for role_name in role_names:
                identity.assign_project_role_to_user(project, created, roles[role_name])
            return created

        user(self.service_user, service_project, ("service", "admin"))
        plugin_user = user(self.plugin_user, kms_project, ("member",))
        user(self.other_member, kms_project, ("member",))
        user(self.key_custodian, kms_project, ("member",))
        user(self.reader_plugin_user, kms_project, ("reader",))
        # Keystone lets only the user itself create its application credentials.
        plugin_conn = self.connection(self.plugin_user)
        app_cred = plugin_conn.identity.create_application_credential(
            user=plugin_user.id, name="kms-plugin", description="teapot.kms integration tests"
        )
        self.plugin_app_cred = AppCredential(self.auth_url, app_cred.id, app_cred.secret, app_cred.name, cacert=self.cacert)
        self._key_manager_service_id = identity.create_service(name="barbican", type="key-manager", is_enabled=True).id

    def register_key_manager(self, url):
        """Make ``url`` the catalog's public key-manager endpoint in RegionOne."""
        identity = self.connection().identity
        for endpoint in identity.endpoints(service_id=self._key_manager_service_id):
            identity.delete_endpoint(endpoint)
        identity.create_endpoint(service_id=self._key_manager_service_id, interface="public", url=url, region_id=REGION)

    def stop(self):
        if self.process is not None:
            self.process.stop()
