"""The Barbican fetcher's error reporting: where a failure happened, and never a secret.

The session and client are stand-ins here (no Keystone or Barbican runs in
these tests); tests/integration covers the real services, including Keystone
going away.
"""

import pytest
from keystoneauth1 import exceptions as ks_exceptions

from teapot_kms_plugin import barbican
from teapot_kms_plugin import config
from teapot_kms_plugin import keyring

PASSWORD = "pw-7f3e1c"
REF = keyring.KeyRef.parse("0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10")


class _Session:
    catalog_endpoint = "https://barbican.example:9311"

    def __init__(self, auth_error=None):
        self.auth_error = auth_error
        self.auth_calls = 0

    def get_endpoint(self, service_type=None, region_name=None, interface=None):
        assert service_type == "key-manager"
        return _Session.catalog_endpoint

    def get_auth_headers(self):
        self.auth_calls += 1
        if self.auth_error is not None:
            raise self.auth_error
        return {"X-Auth-Token": "token"}


class _Secret:
    def __init__(self, payload):
        self.payload = payload


class _Client:
    payload = b"\x00" * 32
    error = None

    def __init__(self, **_kwargs):
        self.secrets = self

    def get(self, _ref, payload_content_type=None):
        assert payload_content_type == "application/octet-stream"
        if _Client.error is not None:
            raise _Client.error
        return _Secret(_Client.payload)


@pytest.fixture
def fetcher(monkeypatch):
    sessions = []

    def new_session(_cfg):
        sessions.append(_Session(sessions[-1].auth_error if sessions else None))
        return sessions[-1], "http://127.0.0.1:9311", None, "public"

    monkeypatch.setattr(barbican, "_session", new_session)
    monkeypatch.setattr(barbican.barbican_client, "Client", _Client)
    monkeypatch.setattr(_Client, "error", None)
    monkeypatch.setattr(_Client, "payload", b"\x00" * 32)
    cfg = config.BarbicanConfig(auth={"auth_url": "https://admin:hunter2@keystone.example:5000/v3", "username": "kms",
                                      "password": PASSWORD, "project_name": "kms"})
    fetch = barbican.BarbicanFetcher(cfg)
    fetch.sessions = sessions
    return fetch


def _fail(fetch):
    with pytest.raises(keyring.FetchError) as info:
        fetch(REF)
    return info.value


def test_payload_is_returned(fetcher):
    assert fetcher(REF) == b"\x00" * 32


def test_keystone_unreachable_is_named_and_redacted(fetcher):
    fetcher(REF)
    fetcher.sessions[-1].auth_error = ks_exceptions.ConnectFailure(f"Unable to establish connection: echoing {PASSWORD}")
    error = _fail(fetcher)
    assert str(error).startswith("authenticating with Keystone at https://keystone.example:5000/v3 failed: cannot connect")
    assert error.reason == "keystone_unreachable"
    assert PASSWORD not in str(error) and "hunter2" not in str(error) and "***" in str(error)
    # A fresh session next time: keystoneauth1 may have cached the failed discovery.
    _fail(fetcher)
    assert len(fetcher.sessions) == 2 and fetcher.sessions[-1].auth_calls == 1


def test_wrong_credentials_are_a_keystone_error(fetcher):
    fetcher.sessions.append(_Session(ks_exceptions.Unauthorized("The request you have made requires authentication.")))
    error = _fail(fetcher)
    assert "authenticating with Keystone" in str(error) and "rejected the credentials (HTTP 401)" in str(error)
    assert error.reason == "unauthorized"


def test_barbican_errors_are_named(fetcher, monkeypatch):
    monkeypatch.setattr(_Client, "error", ks_exceptions.ConnectFailure("Unable to establish connection to http://127.0.0.1:9311"))
    error = _fail(fetcher)
    assert str(error).startswith(f"fetching secret {REF.ref} from Barbican failed: cannot connect")
    assert error.reason == "unreachable"


def test_unexpected_error_text_is_not_repeated(fetcher, monkeypatch):
    monkeypatch.setattr(_Client, "error", RuntimeError("key bytes 0xdeadbeef"))
    error = _fail(fetcher)
    assert "unexpected RuntimeError" in str(error) and "deadbeef" not in str(error)


def test_text_payload_is_refused_without_quoting_it(fetcher, monkeypatch):
    monkeypatch.setattr(_Client, "payload", "\u20ac" + "k" * 31)
    error = _fail(fetcher)
    assert error.reason == "bad_key" and "text payload" in str(error)
    assert "\u20ac" not in str(error) and "kkkk" not in str(error)


@pytest.mark.parametrize("catalog_endpoint, refused", [
    ("http://barbican.example:9311", True),
    ("https://barbican.example:9311", False),
    ("http://127.0.0.1:9311", False),
])
def test_plain_http_catalog_endpoint_is_refused(monkeypatch, catalog_endpoint, refused):
    monkeypatch.setattr(_Session, "catalog_endpoint", catalog_endpoint)
    monkeypatch.setattr(barbican, "_session", lambda _cfg: (_Session(), None, "RegionOne", "public"))
    monkeypatch.setattr(barbican.barbican_client, "Client", _Client)
    monkeypatch.setattr(_Client, "error", None)
    cfg = config.BarbicanConfig(auth={"auth_url": "https://keystone.example:5000/v3", "username": "kms",
                                      "password": PASSWORD, "project_name": "kms"})
    fetch = barbican.BarbicanFetcher(cfg)
    if not refused:
        assert fetch(REF) == _Client.payload
        return
    error = _fail(fetch)
    assert error.reason == "config"
    assert "the Keystone catalog's key-manager endpoint: 'http://barbican.example:9311' is plain http" in str(error)
    assert PASSWORD not in str(error)


def test_plain_http_catalog_endpoint_allowed_when_asked(monkeypatch):
    monkeypatch.setattr(_Session, "catalog_endpoint", "http://barbican.example:9311")
    monkeypatch.setattr(barbican, "_session", lambda _cfg: (_Session(), None, "RegionOne", "public"))
    monkeypatch.setattr(barbican.barbican_client, "Client", _Client)
    monkeypatch.setattr(_Client, "error", None)
    cfg = config.BarbicanConfig(auth={"auth_url": "https://keystone.example:5000/v3", "username": "kms",
                                      "password": PASSWORD, "project_name": "kms"}, allow_insecure_http=True)
    assert barbican.BarbicanFetcher(cfg)(REF) == _Client.payload
