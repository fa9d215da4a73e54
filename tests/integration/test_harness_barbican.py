"""The harness's real Barbican: every flavour (simple_crypto, p11_crypto, vault on OpenBao) on every database.

Each case orders AES-256 keys as ``kms-plugin`` (Keystone password auth,
python-barbicanclient on a keystoneauth1 session) and reads the payloads
back.  The second order in the same project reuses the project KEK stored in
the database: that is where a database that mangles the stored KEK shows.
"""

import subprocess

import pytest
from barbicanclient import exceptions as barbican_exceptions

from tests.harness.barbican import DATABASES, FLAVOURS

pytestmark = pytest.mark.slow


def order_aes256(client, name):
    """Order an AES-256 key, check the order is ACTIVE, return its secret's payload."""
    order = client.orders.create_key(
        name=name, algorithm="aes", bit_length=256, mode="gcm", payload_content_type="application/octet-stream"
    )
    order_ref = order.submit()
    order = client.orders.get(order_ref)
    assert order.status == "ACTIVE", f"order {order_ref} is {order.status}: {order.error_reason}"
    return client.secrets.get(order.secret_ref).payload


_INSTANCES = {}


@pytest.fixture(name="instance")
def fixture_instance(request, barbican_factory):
    """One Barbican per (flavour, database), shared by the tests of this module."""
    flavour, database = request.param
    if (flavour, database) == ("simple_crypto", "sqlite"):
        return request.getfixturevalue("barbican")
    if (flavour, database) == ("p11_crypto", "sqlite"):
        return request.getfixturevalue("barbican_p11")
    if (flavour, database) == ("vault", "sqlite"):
        return request.getfixturevalue("barbican_vault")
    if request.param not in _INSTANCES:
        _INSTANCES[request.param] = barbican_factory(flavour, database)
    return _INSTANCES[request.param]


MATRIX = [pytest.param((flavour, database), id=f"{flavour}-{database}") for flavour in FLAVOURS for database in DATABASES]


@pytest.mark.parametrize("instance", MATRIX, indirect=True)
def test_two_orders_read_back_32_bytes(instance, keystone):
    assert (instance.flavour, instance.database) in [p.values[0] for p in MATRIX]
    client = instance.client(keystone.plugin_user)
    first = order_aes256(client, "harness-first")
    second = order_aes256(client, "harness-second")
    assert isinstance(first, bytes) and len(first) == 32
    assert isinstance(second, bytes) and len(second) == 32
    assert first != second


def test_application_credential_orders_a_key(barbican, keystone):
    client = barbican.client(keystone.plugin_app_cred)
    assert len(order_aes256(client, "harness-app-cred")) == 32


def test_other_member_reads_project_secret(barbican, keystone):
    order = barbican.client(keystone.plugin_user).orders.create_key(
        name="harness-shared", algorithm="aes", bit_length=256, payload_content_type="application/octet-stream"
    )
    secret_ref = barbican.client(keystone.plugin_user).orders.get(order.submit()).secret_ref
    payload = barbican.client(keystone.other_member).secrets.get(secret_ref).payload
    assert len(payload) == 32


def test_catalog_points_at_barbican(barbican, keystone):
    session = barbican.session(keystone.plugin_user)
    endpoint = session.get_endpoint(service_type="key-manager", interface="public", region_name=keystone.region_name)
    assert endpoint.rstrip("/") == barbican.url


def test_restart_keeps_database_and_keys(barbican_factory, keystone):
    instance = barbican_factory("p11_crypto", "sqlite")
    client = instance.client(keystone.plugin_user)
    before = order_aes256(client, "harness-before-restart")
    secrets_before = {s.secret_ref for s in client.secrets.list(name="harness-before-restart")}
    instance.stop()
    assert not instance.running()
    instance.start()
    client = instance.client(keystone.plugin_user)
    (secret_ref,) = secrets_before
    assert client.secrets.get(secret_ref).payload == before
    assert len(order_aes256(client, "harness-after-restart")) == 32


def test_postgresql_without_shim_breaks_and_shim_repairs(barbican_factory, keystone):
    """Barbican 23 unpatched on PostgreSQL: what it stored as text comes back as \\x<hex>.

    The first order still completes (the project KEK is still in memory), but
    its payload no longer decodes, and the next order cannot decrypt the
    project KEK read back from the database.  The shimmed instances above
    pass the same steps.
    """
    instance = barbican_factory("simple_crypto", "postgresql", pg_shim=False)
    client = instance.client(keystone.plugin_user)
    order = client.orders.get(
        client.orders.create_key(
            name="unshimmed-first", algorithm="aes", bit_length=256, payload_content_type="application/octet-stream"
        ).submit()
    )
    assert order.status == "ACTIVE"
    with pytest.raises(barbican_exceptions.HTTPServerError):
        client.secrets.get(order.secret_ref).payload  # pylint: disable=expression-not-assigned
    second = client.orders.get(
        client.orders.create_key(
            name="unshimmed-second", algorithm="aes", bit_length=256, payload_content_type="application/octet-stream"
        ).submit()
    )
    assert second.status == "ERROR"
    log = instance.log_path.read_text(errors="replace")
    assert "binascii.Error: Invalid base64-encoded string" in log
    assert "cryptography.fernet.InvalidToken" in log

    # The shim also reads back the rows written without it.
    instance.stop()
    instance.set_pg_shim(True)
    instance.start()
    client = instance.client(keystone.plugin_user)
    assert len(client.secrets.get(order.secret_ref).payload) == 32
    assert len(order_aes256(client, "shimmed-after-unshimmed")) == 32


def test_etcd_put_get(etcd):
    env = etcd.etcdctl_env()
    put = subprocess.run(["etcdctl", "put", "/teapot/harness", "value-1"], env=env, capture_output=True, text=True, check=False)
    assert put.returncode == 0, put.stderr
    get = subprocess.run(["etcdctl", "get", "--print-value-only", "/teapot/harness"], env=env, capture_output=True, text=True, check=False)
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == "value-1"
