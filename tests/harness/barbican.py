"""A real Barbican 23 API under uWSGI, authenticated by the harness Keystone.

Three flavours: ``simple_crypto`` (a Fernet KEK generated per instance),
``p11_crypto`` (a private SoftHSM2 token; MKEK and HMAC key checked, then
generated only when absent) and ``vault`` (the ``vault_plugin`` secret store
on a real OpenBao, tests/harness/openbao.py, logged in with an AppRole).  Three databases: sqlite, MariaDB and
PostgreSQL (the latter through the collection's shim,
``roles/barbican/files/teapot_barbican_pg_shim.py``).  ``[queue] enable =
False`` makes orders complete inside the POST, so no worker is needed.
"""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess

from barbicanclient import client as barbican_client
from cryptography.fernet import Fernet

from tests.harness.keystone import make_session
from tests.harness.procs import ManagedProcess, ProcessBacked, free_port
from tests.harness.softhsm import SoftHSMToken
from tests.harness.uwsgi import uwsgi_argv, wait_for_http

FLAVOURS = ("simple_crypto", "p11_crypto", "vault")
DATABASES = ("sqlite", "mariadb", "postgresql")
ROLE_FILES = pathlib.Path(__file__).resolve().parents[2] / "roles" / "barbican" / "files"

_UNSHIMMED_WSGI = '''\
import os

from paste import deploy

application = deploy.loadapp("config:" + os.environ["BARBICAN_PASTE_CONFIG"])
'''


class BarbicanService(ProcessBacked):
    """One Barbican API instance with its own config, database and keys."""

    def __init__(self, venv, keystone, base_dir, log_dir, flavour="simple_crypto", database="sqlite",
                 database_url=None, name="barbican", pg_shim=True, tls_ca=None, vault=None):
        """``tls_ca`` (a tests.harness.pki.TestCA): serve HTTPS only, with a certificate it signs."""
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        if (flavour == "vault") != (vault is not None):
            raise ValueError("the vault flavour, and only it, needs vault={url, role_id, secret_id, mount, cacert}")
        self.vault = vault
        if database not in DATABASES:
            raise ValueError(f"database must be one of {DATABASES}, not {database!r}")
        self.venv = pathlib.Path(venv)
        self.keystone = keystone
        self.base_dir = pathlib.Path(base_dir)
        self.home = self.base_dir / "home"
        self.conf_path = self.home / "barbican.conf"
        self.paste_path = self.base_dir / "barbican-api-paste.ini"
        self.log_path = pathlib.Path(log_dir) / f"{name}.log"
        self.name = name
        self.flavour = flavour
        self.database = database
        self.database_url = database_url or f"sqlite:///{self.base_dir / 'barbican.db'}"
        self.pg_shim = pg_shim
        self.port = free_port()
        self.tls = tls_ca.issue(name, ips=["127.0.0.1"], dns_names=["localhost"], server=True) if tls_ca else None
        self.cacert = str(tls_ca.cert_path) if tls_ca else None
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{self.port}"
        self.token = SoftHSMToken(self.base_dir / "softhsm", name[:32]) if flavour == "p11_crypto" else None
        self.process = None
        self._prepared = False

    def __repr__(self):
        return f"BarbicanService({self.name}: {self.flavour} on {self.database} at {self.url})"

    # -- configuration -----------------------------------------------------

    def _env(self):
        env = dict(os.environ, HOME=str(self.home), BARBICAN_PASTE_CONFIG=str(self.paste_path))
        if self.token is not None:
            env.update(self.token.env())
        return env

    def _store_section(self):
        if self.flavour == "vault":
            return (
                "[secretstore]\nenabled_secretstore_plugins = vault_plugin\n"
                "[vault_plugin]\n"
                f"vault_url = {self.vault['url']}\n"
                f"approle_role_id = {self.vault['role_id']}\n"
                f"approle_secret_id = {self.vault['secret_id']}\n"
                f"kv_mountpoint = {self.vault['mount']}\n"
                "kv_version = 2\n"
                f"ssl_ca_crt_file = {self.vault['cacert']}\n"
            )
        store = "[secretstore]\nenabled_secretstore_plugins = store_crypto\n"
        if self.flavour == "simple_crypto":
            return store + (
                "[crypto]\nenabled_crypto_plugins = simple_crypto\n"
                f"[simple_crypto_plugin]\nkek = {Fernet.generate_key().decode('ascii')}\n"
            )
        return store + (
            "[crypto]\nenabled_crypto_plugins = p11_crypto\n"
            "[p11_crypto_plugin]\n"
            f"library_path = {self.token.library_path}\n"
            f"token_labels = {self.token.label}\n"
            f"login = {self.token.pin}\n"
            "mkek_label = teapot_mkek\n"
            "mkek_length = 32\n"
            "hmac_label = teapot_hmac\n"
            "encryption_mechanism = CKM_AES_GCM\n"
            "key_wrap_mechanism = CKM_AES_KEY_WRAP_PAD\n"
            "key_wrap_generate_iv = False\n"
            "hmac_key_type = CKK_GENERIC_SECRET\n"
            "hmac_keygen_mechanism = CKM_GENERIC_SECRET_KEY_GEN\n"
            "hmac_mechanism = CKM_SHA256_HMAC\n"
        )

    def _write_config(self):
        self.home.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o700)
        service = self.keystone.service_user
        text = (
            "[DEFAULT]\n"
            f"host_href = {self.url}\n"
            "debug = false\n"
            "use_stderr = true\n"
            "[database]\n"
            f"connection = {self.database_url}\n"
            "[queue]\n"
            "enable = false\n"
            "[keystone_authtoken]\n"
            "auth_type = password\n"
            f"auth_url = {service.auth_url}\n"
            f"www_authenticate_uri = {service.auth_url}\n"
            f"username = {service.username}\n"
            f"password = {service.password}\n"
            f"project_name = {service.project_name}\n"
            f"user_domain_name = {service.user_domain_name}\n"
            f"project_domain_name = {service.project_domain_name}\n"
            f"region_name = {self.keystone.region_name}\n"
            "interface = public\n"
            + (f"cafile = {self.keystone.cacert}\n" if self.keystone.cacert else "")
            + self._store_section()
        )
        # The file holds the KEK, PIN or AppRole secret id and the service password: owner only.
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        paste = (self.venv / "etc" / "barbican" / "barbican-api-paste.ini").read_text(encoding="utf-8")
        paste = paste.replace("/etc/barbican/healthcheck_disable", str(self.base_dir / "healthcheck_disable"))
        self.paste_path.write_text(paste, encoding="utf-8")
        self._write_wsgi_entry()

    def _write_wsgi_entry(self):
        if self.pg_shim:
            for file_name in ("barbican_wsgi.py", "teapot_barbican_pg_shim.py", "teapot_barbican_openssl.py"):
                shutil.copy(ROLE_FILES / file_name, self.base_dir / file_name)
        else:
            (self.base_dir / "barbican_wsgi.py").write_text(_UNSHIMMED_WSGI, encoding="utf-8")

    def set_pg_shim(self, enabled):
        """Serve with or without the PostgreSQL shim from the next start()."""
        self.pg_shim = enabled
        if self._prepared:
            self._write_wsgi_entry()

    def _manage(self, *args, check=True):
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [str(self.venv / "bin" / "barbican-manage"), "--config-file", str(self.conf_path), *args],
                stdout=log, stderr=subprocess.STDOUT, env=self._env(), cwd=self.base_dir, check=False,
            )
        if check and result.returncode != 0:
            raise RuntimeError(f"barbican-manage {' '.join(args)} failed for {self.name}; see {self.log_path}")
        return result.returncode == 0

    def _prepare(self):
        self._write_config()
        # The schema and the HSM keys are independent: prepare them side by side.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            upgrade = pool.submit(self._manage, "db", "upgrade")
            if self.token is not None:
                self.token.initialise()
                for key in ("mkek", "hmac"):
                    # gen_* refuses an existing label: generate only what is missing.
                    if not self._manage("hsm", f"check_{key}", check=False):
                        self._manage("hsm", f"gen_{key}")
            upgrade.result()
        self._prepared = True

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """Start (or restart after stop()) with the same database and keys."""
        if self.process is not None and self.process.running():
            return self
        if not self._prepared:
            self._prepare()
        argv = uwsgi_argv(self.venv, self.port, ["--wsgi-file", str(self.base_dir / "barbican_wsgi.py")],
                          extra=["--chdir", str(self.base_dir)], tls=self.tls)
        self.process = ManagedProcess(self.name, argv, self.log_path, env=self._env(), cwd=self.base_dir).start()
        wait_for_http(self.url + "/", timeout=180, process=self.process, verify=self.cacert or True)
        return self

    # -- clients -----------------------------------------------------------

    def session(self, creds):
        """A keystoneauth1 session for Credentials or AppCredential (verified with their CA, if any)."""
        return make_session(creds)

    def client(self, creds):
        """A python-barbicanclient v1 client talking to this instance."""
        return barbican_client.Client(session=self.session(creds), endpoint=self.url)
