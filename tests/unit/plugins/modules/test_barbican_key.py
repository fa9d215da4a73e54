"""Error paths of teapot.kms.barbican_key and the shared Barbican client (no service needed)."""

import sys
import uuid

import pytest
from barbicanclient import exceptions as barbican_exceptions
from ansible.module_utils.testing import patch_module_args
from keystoneauth1 import exceptions as ks_exceptions

from ansible_collections.teapot.kms.plugins.module_utils import _barbican
from ansible_collections.teapot.kms.plugins.modules import barbican_key, barbican_key_info
from tests.harness.playbook import REPO
from tests.harness.procs import free_port

PASSWORD = "s3cret-" + uuid.uuid4().hex


def _auth(port=None):
    return {"auth_url": f"http://127.0.0.1:{port or free_port()}/v3", "username": "kms-plugin", "password": PASSWORD,
            "project_name": "kms", "user_domain_name": "Default", "project_domain_name": "Default"}


@pytest.fixture(autouse=True)
def no_openstack_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("OS_"):
            monkeypatch.delenv(name)
    # An empty clouds.yaml: nothing from the machine leaks into the tests.
    empty = tmp_path / "clouds.yaml"
    empty.write_text("clouds: {}\n", encoding="utf-8")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(empty))


def test_name_is_required(run_module):
    code, result = run_module(barbican_key.main, {"auth": _auth()})
    assert code == 1 and "missing required arguments: name" in result["msg"]


def test_unknown_auth_field_is_refused(run_module):
    code, result = run_module(barbican_key.main, {"name": "k", "auth": dict(_auth(), passwrd="x")})
    assert code == 1 and "passwrd" in result["msg"]


def test_bad_expiration(run_module):
    code, result = run_module(barbican_key.main, {"name": "k", "auth": _auth(), "expiration": "next tuesday"})
    assert code == 1
    assert result["msg"] == "expiration 'next tuesday' is not an ISO 8601 time such as 2030-01-01T00:00:00Z"


def test_expiration_refused_for_a_key_given_to_a_kms_plugin(run_module):
    # Refused from the options alone: no Barbican listens on the auth port.
    code, result = run_module(barbican_key.main, {
        "name": "k", "auth": _auth(), "expiration": "2040-01-01T00:00:00Z",
        "consumers": [{"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "prod"}]})
    assert code == 1
    assert "expiration 2040-01-01T00:00:00+00:00 is set for 'k'" in result["msg"]
    assert "KMS plugin's keyring (kubernetes/kms-plugin/prod)" in result["msg"]


def test_cloud_must_be_a_name_or_a_dict(run_module):
    code, result = run_module(barbican_key.main, {"name": "k", "cloud": 5})
    assert code == 1 and "cloud must be the name of a clouds.yaml entry or a dict" in result["msg"]


@pytest.mark.parametrize("option, value", [
    ("auth", {"username": "other"}),
    ("auth_type", "v3applicationcredential"),
    ("region_name", "RegionTwo"),
    ("validate_certs", False),
    ("ca_cert", "/etc/ssl/certs/ca-certificates.crt"),
    ("client_cert", "/etc/teapot-kms/client.pem"),
    ("client_key", "/etc/teapot-kms/client.key"),
    ("api_timeout", 30),
    ("interface", "internal"),
])
def test_cloud_dict_refuses_explicit_options(run_module, option, value):
    code, result = run_module(barbican_key_info.main, {"cloud": {"auth": _auth()}, option: value})
    assert code == 1
    assert result["msg"] == (
        f"cloud is a dict, a whole clouds.yaml entry, and cannot be combined with {option}: put those fields into the "
        "cloud dict, or give cloud as the name of a clouds.yaml entry (the options next to a name override the entry's)")
    assert PASSWORD not in str(result)


def test_cloud_dict_refusal_names_every_option(run_module):
    code, result = run_module(barbican_key.main, {"name": "k", "cloud": {"auth": _auth()}, "auth": _auth(),
                                                  "verify": False, "endpoint_type": "admin"})
    assert code == 1 and "cannot be combined with auth, validate_certs, interface:" in result["msg"]
    assert PASSWORD not in str(result)


def test_cloud_dict_alone_is_used(run_module):
    # Past the refusal: the dict's auth is used, and its Keystone is unreachable.
    code, result = run_module(barbican_key_info.main, {"cloud": {"auth": _auth(), "region_name": "RegionOne"},
                                                       "endpoint_override": "http://127.0.0.1:9/"})
    assert code == 1 and "cannot reach the service" in result["msg"]


def test_options_next_to_a_cloud_name_override_the_entry(monkeypatch, tmp_path):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n  kms:\n    region_name: RegionOne\n    auth:\n"
        + "".join(f"      {key}: {value}\n" for key, value in _auth().items()),
        encoding="utf-8")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    with patch_module_args({"cloud": "kms", "auth": {"username": "other-user"}, "interface": "internal",
                            "api_timeout": 7}):
        region = barbican_key_info.BarbicanKeyInfoModule().cloud_region()
    assert region.config["auth"]["username"] == "other-user"
    assert region.config["auth"]["password"] == PASSWORD
    assert region.config["auth"]["project_name"] == "kms"
    assert region.config["interface"] == "internal" and region.config["api_timeout"] == 7
    assert region.get_region_name("key-manager") == "RegionOne"


def test_unknown_cloud(run_module):
    code, result = run_module(barbican_key_info.main, {"cloud": "nowhere"})
    assert code == 1 and "cannot use the OpenStack configuration" in result["msg"] and "nowhere" in result["msg"]


def test_incomplete_auth(run_module):
    code, result = run_module(barbican_key_info.main, {"auth": {"username": "kms-plugin", "password": PASSWORD}})
    assert code == 1 and "auth_url" in result["msg"]
    assert PASSWORD not in str(result)


@pytest.mark.parametrize("main", [barbican_key.main, barbican_key_info.main])
def test_keystone_unreachable(run_module, main):
    args = {"auth": _auth(), "region_name": "RegionOne"}
    if main is barbican_key.main:
        args["name"] = "k"
    code, result = run_module(main, args)
    assert code == 1
    assert "cannot reach the service" in result["msg"]
    assert PASSWORD not in str(result)
    assert result["invocation"]["module_args"]["auth"]["password"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


@pytest.mark.parametrize("main", [barbican_key.main, barbican_key_info.main])
@pytest.mark.parametrize("args, what", [
    ({"auth": dict(_auth(), auth_url="http://192.0.2.10:5000/v3")}, "auth.auth_url"),
    ({"auth": dict(_auth(), auth_url="http://keystone.example:5000/v3")}, "auth.auth_url"),
    ({"auth": _auth(), "endpoint_override": "http://barbican.example:9311"}, "endpoint_override"),
    ({"cloud": {"auth": dict(_auth(), auth_url="http://192.0.2.10:5000/v3")}}, "auth.auth_url"),
])
def test_plain_http_beyond_loopback_is_refused(run_module, main, args, what):
    args = dict(args, region_name="RegionOne") if "cloud" not in args else dict(args)
    if main is barbican_key.main:
        args["name"] = "k"
    code, result = run_module(main, args)
    assert code == 1
    assert result["msg"].startswith(f"{what} 'http://")
    assert "is plain http" in result["msg"] and "allow_insecure_http: true" in result["msg"]
    assert PASSWORD not in str(result)


def test_plain_http_accepted_when_allowed(run_module):
    # Past the refusal: the module tries to reach the (absent) Keystone.
    code, result = run_module(barbican_key_info.main, {
        "auth": dict(_auth(), auth_url=f"http://192.0.2.10:{free_port()}/v3"), "allow_insecure_http": True,
        "api_timeout": 1})
    assert code == 1
    assert "plain http" not in result["msg"] and "cannot reach the service" in result["msg"]


def test_secrets_of_a_cloud_dict_are_hidden(run_module):
    code, result = run_module(barbican_key_info.main, {"cloud": {"auth": _auth()}})
    assert code == 1 and PASSWORD not in str(result)


def test_missing_libraries(run_module, monkeypatch):
    monkeypatch.setattr(_barbican, "HAS_CLIENT_LIBS", False)
    monkeypatch.setattr(_barbican, "CLIENT_LIBS_IMPORT_ERROR", "ImportError: no module named barbicanclient")
    code, result = run_module(barbican_key.main, {"name": "k", "auth": _auth()})
    assert code == 1 and "python-barbicanclient" in result["msg"]


class _Params(_barbican.BarbicanModule):
    """The error mapping without a module run."""

    def __init__(self):  # pylint: disable=super-init-not-called
        self.params = {"region_name": "RegionOne", "interface": "internal"}
        self._cloud_region = None

    def _scope_diagnosis(self):
        return None

    def _auth_url(self):
        return "http://127.0.0.1:5000/v3"


@pytest.mark.parametrize("exc, expected", [
    (ks_exceptions.Unauthorized(), "listing failed: Keystone at http://127.0.0.1:5000/v3 rejected the credentials (HTTP 401)"),
    (barbican_exceptions.HTTPAuthError("no"), "rejected the credentials (HTTP 401)"),
    (ks_exceptions.EndpointNotFound(), "no key-manager endpoint for region RegionOne and interface internal"),
    (barbican_exceptions.HTTPClientError("Forbidden", 403), "Barbican refused it (HTTP 403): the user needs the member role"),
    (barbican_exceptions.HTTPClientError("Not Found", 404), "Barbican answered HTTP 404: Not Found"),
    (barbican_exceptions.HTTPServerError("boom", 500), "Barbican answered HTTP 500: boom"),
    (barbican_exceptions.SecretHasConsumers(), "refuses to delete a secret that has consumers (use force: true)"),
    (ks_exceptions.ConnectFailure("refused"), "cannot reach the service: refused"),
    (ks_exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"),
     "the TLS handshake failed, most likely on a certificate that is not trusted: set ca_cert to the CA that signed"),
    (RuntimeError("odd"), "listing failed: unexpected RuntimeError: odd"),
])
def test_error_messages(exc, expected):
    assert expected in _Params().describe(exc, "listing")


def test_call_wraps_failures():
    with pytest.raises(_barbican.BarbicanError, match="ordering failed: Barbican answered HTTP 400: bad"):
        _Params().call("ordering", _raise, barbican_exceptions.HTTPClientError("bad", 400))


def _raise(exc):
    raise exc


def test_key_id_rule_is_the_daemons():
    sys.path.insert(0, str(REPO / "daemon" / "src"))
    try:
        from teapot_kms_plugin import wrapping  # pylint: disable=import-outside-toplevel,import-error
    finally:
        sys.path.remove(str(REPO / "daemon" / "src"))
    for _attempt in range(50):
        secret = uuid.uuid4()
        href = f"https://barbican.example:9311/v1/secrets/{secret}"
        assert _barbican.key_id_for(href) == wrapping.key_id_for(secret)
        assert _barbican.key_id_for(href.upper().replace("HTTPS://BARBICAN.EXAMPLE:9311/V1/SECRETS", "https://b/v1/secrets") + "/") \
            == wrapping.key_id_for(secret)


@pytest.mark.parametrize("text, expected", [
    ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00+00:00"),
    ("2030-01-01T02:00:00+02:00", "2030-01-01T00:00:00+00:00"),
    ("2030-01-01T00:00:00", "2030-01-01T00:00:00+00:00"),
])
def test_times_are_utc(text, expected):
    assert _barbican.isoformat(text) == expected
