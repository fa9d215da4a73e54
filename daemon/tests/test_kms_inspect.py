"""``teapot-kms-plugin inspect``: what the role and kms_plugin_info read instead of parsing the config themselves."""

import json

import yaml

from teapot_kms_plugin import cli
from teapot_kms_plugin import config
from teapot_kms_plugin import metrics

PRIMARY = "0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10"
OLDER_HREF = "https://kms.example:9311/v1/secrets/1a2b3c4d-0000-4000-8000-000000000001"


def _write(tmp_path, **changes):
    password_file = tmp_path / "password"
    password_file.write_text("s3cret-value\n")
    data = {
        "socket": "/run/teapot-kms/kms.sock",
        "barbican": {"auth": {"auth_url": "http://127.0.0.1:5000/v3", "username": "kms-plugin",
                              "password_file": str(password_file), "project_name": "kms"}},
        "keys": [PRIMARY, OLDER_HREF],
        **changes,
    }
    path = tmp_path / "kms-plugin.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _inspect(capsys, path):
    code = cli.main(["inspect", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_reports_effective_settings_without_secrets(tmp_path, capsys):
    path = _write(tmp_path)
    code, out, err = _inspect(capsys, path)
    assert code == 0 and err == ""
    assert "s3cret" not in out
    report = json.loads(out)
    assert report["config"] == str(path)
    assert report["socket"] == "/run/teapot-kms/kms.sock"
    assert report["keys"] == [
        {"key_id": f"barbican:{PRIMARY}", "secret": PRIMARY, "role": "primary", "source": "barbican"},
        {"key_id": "barbican:1a2b3c4d-0000-4000-8000-000000000001", "secret": OLDER_HREF, "role": "decrypt-only",
         "source": "barbican"},
    ]
    # Defaults filled in, as the daemon applies them.
    assert report["metrics"] == {"listen": "127.0.0.1:9464", "url": "http://127.0.0.1:9464/metrics", "names": metrics.NAMES}
    settings = report["settings"]
    assert settings["cache"] == {"refresh_interval": 300.0, "max_stale": 86400.0, "retry_interval": 10.0}
    assert settings["grpc"] == {"workers": 8, "shutdown_grace": 10.0}
    assert settings["barbican"]["auth"] == {"auth_url": "http://127.0.0.1:5000/v3", "username": "kms-plugin",
                                            "project_name": "kms", "project_domain_name": "Default",
                                            "user_domain_name": "Default"}
    assert set(report["restart_only"]) == set(config.RESTART_ONLY)
    assert report["restart_only"] == {"socket": "/run/teapot-kms/kms.sock", "socket_group": None,
                                      "metrics_listen": "127.0.0.1:9464", "workers": 8,
                                      "state_dir": "/var/lib/teapot-kms"}


def test_inspect_metrics_address(tmp_path, capsys):
    _code, out, _err = _inspect(capsys, _write(tmp_path, metrics={"listen": "0.0.0.0:9500", "allow_non_loopback": True}))
    assert json.loads(out)["metrics"]["url"] == "http://127.0.0.1:9500/metrics"
    _code, out, _err = _inspect(capsys, _write(tmp_path, metrics={"listen": "[::1]:9500"}))
    report = json.loads(out)
    assert report["metrics"]["listen"] == report["restart_only"]["metrics_listen"] == "[::1]:9500"
    assert report["metrics"]["url"] == "http://[::1]:9500/metrics"
    _code, out, _err = _inspect(capsys, _write(tmp_path, metrics={"listen": ""}))
    report = json.loads(out)
    assert report["metrics"] is None and report["restart_only"]["metrics_listen"] is None


def test_inspect_refuses_an_invalid_config_with_one_line(tmp_path, capsys):
    code, out, err = _inspect(capsys, _write(tmp_path, keys=[PRIMARY, "not-a-uuid"]))
    assert code == 2 and out == ""
    assert err.startswith("teapot-kms-plugin: invalid configuration: keys[1]:") and err.count("\n") == 1
    code, out, err = _inspect(capsys, tmp_path / "absent.yaml")
    assert code == 2 and "cannot read" in err
