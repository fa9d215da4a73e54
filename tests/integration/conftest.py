"""Session-scoped fixtures that start real services on loopback when a test asks.

Nothing starts until a test requests it; everything started is stopped at
the end of the session.  Service logs stay under
``cache_dir("logs", <run id>)``; a failing test shows their last lines.

Fixtures: ``keystone``, ``barbican`` (simple_crypto on sqlite, the catalog's
key-manager endpoint), ``barbican_p11`` (p11_crypto on SoftHSM2, sqlite),
``barbican_factory(flavour=..., database=...)`` (a new instance per call),
the same over HTTPS only (``keystone_tls``, ``barbican_tls``,
``barbican_p11_tls``, ``barbican_tls_factory``, certificates of ``service_ca``),
``openbao`` (a real OpenBao: raft, TLS, initialised, unsealed, with Barbican's
KV v2 mount and AppRole), ``barbican_vault`` (Barbican's vault_plugin on it),
``mariadb``, ``postgresql``, ``etcd`` and ``etcd_tls`` (client certificates, as kubeadm sets it up).

Under pytest-xdist (``make integration`` runs ``-n 2 --dist loadgroup``) each
worker has its own session: every test that uses the session's Keystone (and
so its Barbican instances and databases) is put in one xdist group, so that
they are started once, on one worker, while the tests that need none of them
(the test hosts, etcd, a Keystone outage with services of its own) run on the
other, grouped by module so that a module's fixtures start once too.  The
workers share one run id; each logs below its own directory.
"""

import contextlib
import itertools
import os
import time
import warnings

import pytest

from tests.harness.barbican import BarbicanService
from tests.harness.cache import cache_dir
from tests.harness.databases import MariaDBServer, PostgreSQLServer
from tests.harness.etcd import EtcdServer
from tests.harness.keystone import KeystoneService
from tests.harness.openbao import OpenBaoServer
from tests.harness.pki import TestCA
from tests.harness.venvs import ensure_venvs

# Set by the first process that imports this file (the xdist controller, or a
# plain pytest), inherited by the workers it starts.
RUN_ID = os.environ.setdefault("TEAPOT_KMS_TEST_RUN_ID", f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")

# Tests whose fixtures include one of these share the session's Keystone
# (Barbican instances and their databases depend on it): one xdist group.
# Every other test is grouped with its module.
SHARED_SESSION_FIXTURES = frozenset({"keystone", "keystone_tls"})
SHARED_SESSION_GROUP = "keystone-session"

# Everything started in this session that has a log worth showing on failure.
_STARTED = []


def _track(service):
    _STARTED.append(service)
    return service


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks (--dist loadgroup)
def pytest_collection_modifyitems(items):
    for item in items:
        if SHARED_SESSION_FIXTURES & set(item.fixturenames):
            group = SHARED_SESSION_GROUP
        else:
            group = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Say so when pytest-xdist ignored the groups: every worker would start its own Keystone.

    pytest-xdist 3.8 marks a grouped test by appending ``@<group>`` to its node
    id, which pytest 9.2 no longer lets it do: hence the pin on pytest in
    tests/requirements.txt.
    """
    if not session.config.getoption("loadgroup", False):
        return
    ignored = [item.nodeid for item in session.items
               if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if ignored:
        warnings.warn(pytest.PytestWarning(
            f"pytest-xdist did not group {len(ignored)} tests (e.g. {ignored[0]}): each worker starts its own "
            "Keystone and Barbican; use the pytest version pinned in tests/requirements.txt"
        ))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
    report = yield
    if report.failed and _STARTED:
        for service in _STARTED:
            try:
                lines = service.log_path.read_text(errors="replace").splitlines()[-40:]
            except OSError:
                continue
            report.sections.append((f"log of {service.log_path.stem} ({service.log_path})", "\n".join(lines)))
    return report


class _Servers:
    """Database and etcd servers, each started on first use and stopped at session end."""

    def __init__(self, tmp_path_factory, log_dir):
        self._tmp = tmp_path_factory
        self._log_dir = log_dir
        self._servers = {}

    def _get(self, name, build):
        if name not in self._servers:
            server = build()
            self._servers[name] = server
            _track(server)
            server.start()
        return self._servers[name]

    def mariadb(self):
        return self._get("mariadb", lambda: MariaDBServer(self._tmp.mktemp("mariadb"), self._log_dir))

    def postgresql(self):
        return self._get("postgresql", lambda: PostgreSQLServer(self._log_dir))

    def etcd(self):
        return self._get("etcd", lambda: EtcdServer(self._tmp.mktemp("etcd"), self._log_dir))

    def etcd_tls(self, name="tls"):
        """A TLS etcd per ``name``: tests that need a store of their own ask for their own name."""
        return self._get(f"etcd_{name}", lambda: EtcdServer(self._tmp.mktemp(f"etcd-{name}"), self._log_dir, name=name, tls=True))

    def stop_all(self):
        for server in reversed(list(self._servers.values())):
            server.stop()


@pytest.fixture(scope="session")
def harness_log_dir():
    """Directory of this run's service logs (kept after the run), one per xdist worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return cache_dir("logs", RUN_ID, worker) if worker else cache_dir("logs", RUN_ID)


@pytest.fixture(scope="session")
def service_venvs():
    """The Keystone and Barbican venvs, built side by side on first use."""
    return ensure_venvs("keystone", "barbican")


@pytest.fixture(scope="session")
def harness_servers(tmp_path_factory, harness_log_dir):
    servers = _Servers(tmp_path_factory, harness_log_dir)
    yield servers
    servers.stop_all()


@pytest.fixture(scope="session")
def mariadb(harness_servers):
    """MariaDB server; ``create_database(name)`` returns an SQLAlchemy URL."""
    return harness_servers.mariadb()


@pytest.fixture(scope="session")
def postgresql(harness_servers):
    """PostgreSQL 15 server; ``create_database(name)`` returns an SQLAlchemy URL."""
    return harness_servers.postgresql()


@pytest.fixture(scope="session")
def etcd(harness_servers):
    """Single-member etcd; ``endpoints`` is a list of client URLs."""
    return harness_servers.etcd()


@pytest.fixture(scope="session")
def etcd_tls(harness_servers):
    """Single-member etcd over TLS that demands a client certificate; ``client_options()`` for the modules."""
    return harness_servers.etcd_tls()


@pytest.fixture(scope="session")
def keystone(service_venvs, tmp_path_factory, harness_log_dir):
    """Keystone with admin, kms-plugin, kms-other and an application credential (plain http on loopback)."""
    service = _track(KeystoneService(service_venvs["keystone"], tmp_path_factory.mktemp("keystone"), harness_log_dir))
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def service_ca(tmp_path_factory):
    """The CA that signs the TLS services' certificates (``cert_path`` is the trust anchor)."""
    return TestCA(tmp_path_factory.mktemp("service-ca"), "service-ca")


@pytest.fixture(scope="session")
def keystone_tls(service_venvs, service_ca, tmp_path_factory, harness_log_dir):
    """Like ``keystone``, over HTTPS only (``cacert``: its CA); its credentials carry the CA."""
    service = _track(KeystoneService(service_venvs["keystone"], tmp_path_factory.mktemp("keystone-tls"), harness_log_dir,
                                     tls_ca=service_ca, name="keystone-tls"))
    try:
        service.start()
        yield service
    finally:
        service.stop()


@contextlib.contextmanager
def _barbican_factory(request, service_venvs, keystone, harness_servers, tmp_path_factory, harness_log_dir, tls_ca=None):
    """A factory of Barbican instances behind ``keystone``; every instance it started is stopped on exit."""
    started = []
    numbers = itertools.count(1)
    prefix = "barbican-tls" if tls_ca else "barbican"

    def factory(flavour="simple_crypto", database="sqlite", pg_shim=True, register_in_catalog=False, vault=None):
        if flavour == "vault" and vault is None:
            vault = openbao_settings(request.getfixturevalue("openbao"))
        number = next(numbers)
        name = f"{prefix}-{number}-{flavour.replace('_', '-')}-{database}"
        database_url = None
        if database == "mariadb":
            database_url = harness_servers.mariadb().create_database(f"{prefix.replace('-', '_')}_{number}")
        elif database == "postgresql":
            database_url = harness_servers.postgresql().create_database(f"{prefix.replace('-', '_')}_{number}")
        service = BarbicanService(
            service_venvs["barbican"], keystone, tmp_path_factory.mktemp(name), harness_log_dir,
            flavour=flavour, database=database, database_url=database_url, name=name, pg_shim=pg_shim, tls_ca=tls_ca,
            vault=vault,
        )
        started.append(_track(service))
        service.start()
        if register_in_catalog:
            keystone.register_key_manager(service.url)
        return service

    try:
        yield factory
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture(scope="session")
def barbican_factory(request, service_venvs, keystone, harness_servers, tmp_path_factory, harness_log_dir):
    """Return a callable that starts a new Barbican instance, stopped at session end.

    ``barbican_factory(flavour="simple_crypto"|"p11_crypto"|"vault",
    database="sqlite"|"mariadb"|"postgresql", pg_shim=True,
    register_in_catalog=False, vault=None)``; ``vault`` (for the vault
    flavour) is ``{url, role_id, secret_id, mount, cacert}``, by default the
    session's ``openbao`` and its AppRole.
    """
    with _barbican_factory(request, service_venvs, keystone, harness_servers, tmp_path_factory, harness_log_dir) as factory:
        yield factory


@pytest.fixture(scope="session")
def barbican_tls_factory(request, service_venvs, keystone_tls, service_ca, harness_servers, tmp_path_factory,
                         harness_log_dir):
    """Like ``barbican_factory``, for Barbican instances over HTTPS only, behind ``keystone_tls``."""
    with _barbican_factory(request, service_venvs, keystone_tls, harness_servers, tmp_path_factory, harness_log_dir,
                           tls_ca=service_ca) as factory:
        yield factory


@pytest.fixture(scope="session")
def barbican_tls(barbican_tls_factory):
    """Barbican with simple_crypto on sqlite over HTTPS; the key-manager endpoint of ``keystone_tls``'s catalog."""
    return barbican_tls_factory("simple_crypto", "sqlite", register_in_catalog=True)


@pytest.fixture(scope="session")
def barbican_p11_tls(barbican_tls_factory):
    """Barbican with p11_crypto on a SoftHSM2 token, sqlite, over HTTPS behind ``keystone_tls``."""
    return barbican_tls_factory("p11_crypto", "sqlite")


@pytest.fixture(scope="session")
def barbican(barbican_factory):
    """Barbican with simple_crypto on sqlite; the catalog's key-manager endpoint."""
    return barbican_factory("simple_crypto", "sqlite", register_in_catalog=True)


@pytest.fixture(scope="session")
def barbican_p11(barbican_factory):
    """Barbican with p11_crypto on a SoftHSM2 token, sqlite."""
    return barbican_factory("p11_crypto", "sqlite")


@pytest.fixture(scope="session")
def openbao(tmp_path_factory, harness_log_dir):
    """OpenBao on raft with TLS, unsealed; ``approle`` holds Barbican's (role_id, secret_id)."""
    server = _track(OpenBaoServer(ensure_venvs("openbao")["openbao"], tmp_path_factory.mktemp("openbao"), harness_log_dir))
    try:
        server.start()
        server.approle = server.prepare_barbican()
        yield server
    finally:
        server.stop()


def openbao_settings(server):
    """The ``vault`` settings of a Barbican on ``server`` (an OpenBaoServer), logged in with its AppRole."""
    role_id, secret_id = server.approle
    return {"url": server.url, "role_id": role_id, "secret_id": secret_id, "mount": server.mount, "cacert": server.cacert}


@pytest.fixture(scope="session")
def barbican_vault(barbican_factory):
    """Barbican with the vault_plugin secret store on ``openbao``, logged in with its AppRole, sqlite."""
    return barbican_factory("vault", "sqlite")
