"""Shared fixtures for the plugin's service-free tests.

Key material here comes from a dict instead of Barbican: these tests cover the
format, the cache logic and the transport; tests/integration covers Barbican.
"""

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
from teapot_kms_plugin import keyring  # noqa: E402
from teapot_kms_plugin import keyservice  # noqa: E402
from teapot_kms_plugin import transport  # noqa: E402
from teapot_kms_plugin.client import KmsClient  # noqa: E402
from daemon_testing import DictFetcher  # noqa: E402


@pytest.fixture
def fetcher():
    return DictFetcher()


@pytest.fixture
def two_keys(fetcher):
    """A loaded KeyCache with a primary and one decrypt-only key."""
    primary, older = fetcher.add(), fetcher.add()
    cache = keyring.KeyCache([primary, older], fetcher, refresh_interval=300, max_stale=3600)
    assert cache.refresh() == {}
    return cache


@pytest.fixture
def key_service(two_keys):
    return keyservice.KeyService(two_keys)


@pytest.fixture(scope="session")
def socket_server():
    """A real gRPC server on a real unix socket, serving a loaded keyring."""
    fetch = DictFetcher()
    ref = fetch.add()
    cache = keyring.KeyCache([ref], fetch, refresh_interval=300, max_stale=3600)
    cache.refresh()
    key_service = keyservice.KeyService(cache)
    with tempfile.TemporaryDirectory(prefix="kms-") as tmp:
        path = os.path.join(tmp, "run", "kms.sock")
        server = transport.start_server(transport.Servicer(key_service), path, workers=4)
        client = KmsClient(path, timeout=10)
        client.wait_ready(10)
        try:
            yield path, client, key_service
        finally:
            client.close()
            server.stop(2).wait()
