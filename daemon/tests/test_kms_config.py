"""Configuration: a valid file loads; each bad field is one line that names it."""

import copy

import pytest
import yaml

from teapot_kms_plugin import config

KEY = "0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10"


@pytest.fixture
def valid(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("s3cret-value\n")
    return {
        "socket": "/var/lib/kms/kms.sock",
        "barbican": {
            "auth_type": "password",
            "auth": {"auth_url": "http://127.0.0.1:5000/v3", "username": "kms-plugin",
                     "password_file": str(password_file), "project_name": "kms"},
            "region_name": "RegionOne",
            "interface": "public",
        },
        "keys": [KEY, "https://kms.example:9311/v1/secrets/1a2b3c4d-0000-4000-8000-000000000001"],
        "cache": {"refresh_interval": 300, "max_stale": 86400},
        "metrics": {"listen": "127.0.0.1:9464"},
        "log_level": "info",
    }


def _load(tmp_path, data):
    path = tmp_path / "kms.yaml"
    path.write_text(yaml.safe_dump(data))
    return config.load(path)


def test_valid_config(tmp_path, valid):
    cfg = _load(tmp_path, valid)
    assert cfg.socket == "/var/lib/kms/kms.sock"
    assert cfg.barbican.auth["password"] == "s3cret-value"
    assert "password_file" not in cfg.barbican.auth
    assert cfg.barbican.auth["user_domain_name"] == "Default"
    assert [ref.key_id for ref in cfg.keys][0] == f"barbican:{KEY}"
    assert cfg.metrics_listen == ("127.0.0.1", 9464)
    assert "s3cret" not in repr(cfg)


def test_application_credential(tmp_path, valid):
    secret = tmp_path / "appcred"
    secret.write_text("app-secret")
    valid["barbican"] = {"auth_type": "v3applicationcredential",
                         "auth": {"auth_url": "http://127.0.0.1:5000/v3", "application_credential_id": "abc",
                                  "application_credential_secret_file": str(secret)}}
    cfg = _load(tmp_path, valid)
    assert cfg.barbican.auth["application_credential_secret"] == "app-secret"


def test_cloud_entry(tmp_path, valid):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds: {}\n")
    valid["barbican"] = {"cloud": "mycloud", "clouds_file": str(clouds)}
    assert _load(tmp_path, valid).barbican.cloud == "mycloud"


def _set(data, dotted, value):
    target = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    if value is _DELETE:
        target.pop(parts[-1], None)
    else:
        target[parts[-1]] = value


_DELETE = object()

BAD = [
    ("socket", _DELETE, "socket: required"),
    ("socket", "relative/kms.sock", "socket: 'relative/kms.sock' is not an absolute path"),
    ("socket", "/" + "x" * 120, "socket:"),
    ("keys", _DELETE, "keys: required"),
    ("keys", [], "keys: expected a non-empty list"),
    ("keys", [KEY, "not-a-uuid"], "keys[1]:"),
    ("keys", [KEY, KEY], "keys[1]: secret"),
    ("barbican", _DELETE, "barbican: required"),
    ("barbican.auth_type", "token", "barbican.auth_type: 'token' is not one of"),
    ("barbican.interface", "private", "barbican.interface:"),
    ("barbican.auth.auth_url", _DELETE, "barbican.auth.auth_url: required"),
    ("barbican.auth.password_file", "/nonexistent/password", "barbican.auth.password_file: cannot read /nonexistent/password"),
    ("barbican.auth.username", _DELETE, "barbican.auth.username: required"),
    ("barbican.auth.project_name", _DELETE, "barbican.auth.project_name: required"),
    ("barbican.auth.tenant", "x", "barbican.auth.tenant: unknown field"),
    ("barbican.cacert", "/nonexistent/ca.pem", "barbican.cacert: /nonexistent/ca.pem does not exist"),
    ("barbican.endpoint_override", "127.0.0.1:9311", "barbican.endpoint_override:"),
    ("barbican.cloud", "mycloud", "set either barbican.cloud or barbican.auth"),
    ("cache.refresh_interval", 0, "cache.refresh_interval: expected a positive number"),
    ("cache.max_stale", "1d", "cache.max_stale: expected a positive number"),
    ("cache.max_stale", float("nan"), "cache.max_stale: expected a positive number"),
    ("cache.max_stale", float("inf"), "cache.max_stale: expected a positive number"),
    ("cache.refresh_interval", 1e300, "cache.refresh_interval: expected a positive number of seconds up to 31622400"),
    ("barbican.timeout", -1, "barbican.timeout: expected a positive number"),
    ("cache.max_stale", 100, "cache.refresh_interval: 300s must be shorter than cache.max_stale"),
    ("cache.mode", "sometimes", "cache.mode:"),
    # The plugin always serves from its cache: per-call fetching lives in bench/ only.
    ("cache.mode", "per_call", "cache.mode: unknown field"),
    ("metrics.listen", "localhost", "metrics.listen: expected HOST:PORT"),
    ("metrics.listen", "example.com:9464", "metrics.listen: 'example.com' is not an IP address"),
    ("metrics.listen", "127.0.0.1:99999", "metrics.listen: '99999' is not a TCP port"),
    ("metrics.listen", "0.0.0.0:9464", "metrics.listen: 0.0.0.0 is not a loopback address; set metrics.allow_non_loopback"),
    ("metrics.listen", "[::]:9464", "metrics.listen: :: is not a loopback address"),
    ("metrics.allow_non_loopback", "yes", "metrics.allow_non_loopback: expected true or false"),
    ("log_level", "verbose", "log_level:"),
    ("sockett", "/x", "sockett: unknown field"),
    ("grpc.workers", 0, "grpc.workers:"),
]


@pytest.mark.parametrize("field, value, message", BAD, ids=[f"{item[0]}={item[1]!r}"[:60] for item in BAD])
def test_bad_field_is_named(tmp_path, valid, field, value, message):
    data = copy.deepcopy(valid)
    _set(data, field, value)
    with pytest.raises(config.ConfigError) as info:
        _load(tmp_path, data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert "s3cret" not in text


def test_password_inline_and_file_conflict(tmp_path, valid):
    valid["barbican"]["auth"]["password"] = "inline"
    with pytest.raises(config.ConfigError, match="set either password or password_file"):
        _load(tmp_path, valid)


def test_yaml_error_does_not_echo_content(tmp_path):
    path = tmp_path / "kms.yaml"
    path.write_text("socket: /x\nbarbican: {auth: {password: 's3cret\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert "not valid YAML" in str(info.value) and "s3cret" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.yaml")


def test_non_loopback_metrics_need_an_explicit_option(tmp_path, valid):
    valid["metrics"] = {"listen": "[::1]:9464"}
    assert _load(tmp_path, valid).metrics_listen == ("::1", 9464)
    valid["metrics"] = {"listen": "192.0.2.10:9464", "allow_non_loopback": True}
    assert _load(tmp_path, valid).metrics_listen == ("192.0.2.10", 9464)


@pytest.mark.parametrize("field, url", [
    ("barbican.auth.auth_url", "http://keystone.example:5000/v3"),
    ("barbican.auth.auth_url", "http://192.0.2.10:5000/v3"),
    ("barbican.endpoint_override", "http://barbican.example:9311"),
    ("barbican.endpoint_override", "http://[2001:db8::1]:9311"),
])
def test_plain_http_beyond_loopback_is_refused(tmp_path, valid, field, url):
    _set(valid, field, url)
    with pytest.raises(config.ConfigError, match=rf"^{field}: .* is plain http .*allow_insecure_http: true"):
        _load(tmp_path, valid)
    valid["barbican"]["allow_insecure_http"] = True
    cfg = _load(tmp_path, valid)
    assert cfg.barbican.allow_insecure_http is True


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:5000/v3", "http://127.8.9.10:5000/v3", "http://[::1]:5000/v3", "http://localhost:5000/v3",
    "https://keystone.example:5000/v3",
])
def test_https_and_loopback_http_are_accepted(tmp_path, valid, url):
    valid["barbican"]["auth"]["auth_url"] = url
    valid["barbican"]["endpoint_override"] = url.replace(":5000/v3", ":9311")
    assert _load(tmp_path, valid).barbican.allow_insecure_http is False


def test_allow_insecure_http_must_be_a_boolean(tmp_path, valid):
    valid["barbican"]["allow_insecure_http"] = "yes"
    with pytest.raises(config.ConfigError, match="barbican.allow_insecure_http: expected true or false"):
        _load(tmp_path, valid)
