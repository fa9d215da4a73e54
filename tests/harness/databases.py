"""SQL databases for Barbican: sqlite files, a MariaDB server, a PostgreSQL server.

The servers are the Debian packages' binaries, each with a private data
directory and socket, listening on 127.0.0.1 on a free port.  A server is
started once; ``create_database(name)`` gives every Barbican instance its
own database and user and returns an SQLAlchemy URL for it.
"""

import contextlib
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

from tests.harness.procs import ManagedProcess, free_port, wait_for_port

POSTGRESQL_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def sqlite_url(path):
    """SQLAlchemy URL of an sqlite file."""
    return f"sqlite:///{pathlib.Path(path).resolve()}"


def _check_identifier(name):
    if not _IDENTIFIER.match(name):
        raise ValueError(f"database name {name!r} must match {_IDENTIFIER.pattern}")
    return name


class MariaDBServer:
    """mariadbd with a private datadir, socket and pid file."""

    def __init__(self, base_dir, log_dir):
        self.base_dir = pathlib.Path(base_dir)
        self.datadir = self.base_dir / "data"
        self.socket = self.base_dir / "mysqld.sock"
        self.log_path = pathlib.Path(log_dir) / "mariadb.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.process = None

    def _user_args(self):
        # mariadbd refuses to run as root unless told so explicitly.
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self):
        self.datadir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=socket",
                 "--skip-test-db", *self._user_args()],
                stdout=log, stderr=subprocess.STDOUT, check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed; see {self.log_path}")
        argv = [
            shutil.which("mariadbd") or "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={self.datadir}",
            f"--bind-address={self.host}", f"--port={self.port}", f"--socket={self.socket}",
            f"--pid-file={self.base_dir / 'mysqld.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=64M",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci", *self._user_args(),
        ]
        self.process = ManagedProcess("mariadb", argv, self.log_path).start()
        wait_for_port(self.host, self.port, timeout=60, process=self.process)
        return self

    def execute(self, sql):
        """Run SQL as the server's root user over the private socket."""
        result = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root", "--batch", "--skip-column-names"],
            input=sql, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb client failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name):
        """Create database and user ``name``; return an SQLAlchemy URL (PyMySQL)."""
        name = _check_identifier(name)
        password = secrets.token_hex(16)
        self.execute(
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4;\n"
            f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{name}'@'127.0.0.1';\n"
        )
        return f"mysql+pymysql://{name}:{password}@{self.host}:{self.port}/{name}?charset=utf8mb4"

    def stop(self):
        if self.process is not None:
            self.process.stop()


def _unprivileged_user():
    """The account PostgreSQL runs as when the tests run as root."""
    for name in ("postgres", "teapot-test"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "teapot-test"],
        check=True, capture_output=True,
    )
    return pwd.getpwnam("teapot-test")


class PostgreSQLServer:
    """PostgreSQL 15 with a private data and socket directory.

    PostgreSQL refuses to run as root: as root, the server runs as the
    ``postgres`` account (or a ``teapot-test`` system account created on the
    spot), from a directory in /tmp that this account owns, since the cache
    below root's home is out of its reach.
    """

    def __init__(self, log_dir, bin_dir=POSTGRESQL_BIN):
        self.bin_dir = pathlib.Path(bin_dir)
        self.log_path = pathlib.Path(log_dir) / "postgresql.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.base_dir = pathlib.Path(tempfile.mkdtemp(prefix="teapot-kms-pg-"))
        self.datadir = self.base_dir / "data"
        self.socket_dir = self.base_dir
        self.process = None
        self._account = _unprivileged_user() if os.geteuid() == 0 else None

    def _as_account(self, argv):
        if self._account is None:
            return [str(arg) for arg in argv]
        return ["setpriv", f"--reuid={self._account.pw_uid}", f"--regid={self._account.pw_gid}", "--clear-groups",
                *[str(arg) for arg in argv]]

    def start(self):
        if self._account is not None:
            os.chown(self.base_dir, self._account.pw_uid, self._account.pw_gid)
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                self._as_account([self.bin_dir / "initdb", "-D", self.datadir, "-U", "postgres", "--auth-local=trust",
                                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
                stdout=log, stderr=subprocess.STDOUT, check=False, cwd=self.base_dir,
            )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed; see {self.log_path}")
        argv = self._as_account([
            self.bin_dir / "postgres", "-D", self.datadir, "-h", self.host, "-p", str(self.port),
            "-k", self.socket_dir, "-c", "fsync=off", "-c", "max_connections=200",
        ])
        self.process = ManagedProcess("postgresql", argv, self.log_path, cwd=self.base_dir).start()
        wait_for_port(self.host, self.port, timeout=60, process=self.process)
        self._wait_until_accepting(timeout=60)
        return self

    def _wait_until_accepting(self, timeout):
        """The port opens while the server is still starting up and refusing sessions: wait for pg_isready."""
        deadline = time.monotonic() + timeout
        argv = [self.bin_dir / "pg_isready", "-q", "-h", self.socket_dir, "-p", str(self.port), "-U", "postgres"]
        while subprocess.run([str(arg) for arg in argv], check=False).returncode != 0:
            if not self.process.running() or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:.0f}s; log:\n{self.process.log_tail()}")
            time.sleep(0.2)

    def execute(self, sql, database="postgres"):
        """Run SQL as the superuser over the private socket."""
        result = subprocess.run(
            [self.bin_dir / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
             "-U", "postgres", "-d", database, "-At"],
            input=sql, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name):
        """Create database and owner ``name``; return an SQLAlchemy URL (psycopg 3)."""
        name = _check_identifier(name)
        password = secrets.token_hex(16)
        self.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}';\nCREATE DATABASE {name} OWNER {name};\n")
        return f"postgresql+psycopg://{name}:{password}@{self.host}:{self.port}/{name}"

    def stop(self):
        if self.process is not None:
            # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients.
            self.process.signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.popen.wait(20)
            self.process.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
