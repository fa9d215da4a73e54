"""The kms_plugin role's systemd unit, rendered from its template with the role's defaults.

Rendering uses ansible-core's Templar; ``systemd-analyze verify`` (offline) checks that
systemd knows every directive. Whether each directive works under systemd-nspawn is the
kms_plugin Molecule scenario's to prove.
"""

import pathlib
import shutil
import subprocess

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = pathlib.Path(__file__).resolve().parents[2] / "roles" / "kms_plugin"


def _render(**overrides):
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    variables.update(ansible_managed="Ansible managed", _kms_plugin_config_path="/etc/teapot-kms/kms-plugin.yaml",
                     **overrides)
    text = (ROLE / "templates" / "teapot-kms-plugin.service.j2").read_text(encoding="utf-8")
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(text))


def _directives(unit):
    pairs = [line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")]
    found = {}
    for key, value in pairs:
        found.setdefault(key, []).append(value)
    return found


def test_runs_as_its_own_user_without_capabilities():
    unit = _directives(_render())
    assert unit["User"] == ["teapot-kms"] and unit["Group"] == ["teapot-kms"]
    assert unit["CapabilityBoundingSet"] == [""] and unit["AmbientCapabilities"] == [""]
    assert "SupplementaryGroups" not in unit
    for key, value in {"LimitCORE": "0", "PrivateDevices": "yes", "ProtectProc": "invisible",
                       "MemoryDenyWriteExecute": "yes"}.items():
        assert unit[key] == [value], key


def test_writable_paths():
    default = _directives(_render())
    # The socket under /run/ is the RuntimeDirectory; the pins' directory is always writable.
    assert default["RuntimeDirectory"] == ["teapot-kms"] and default["RuntimeDirectoryMode"] == ["0700"]
    assert default["ReadWritePaths"] == ["/var/lib/teapot-kms"]
    elsewhere = _directives(_render(kms_plugin_socket="/var/lib/kms/kms.sock"))
    assert "RuntimeDirectory" not in elsewhere
    assert elsewhere["ReadWritePaths"] == ["/var/lib/teapot-kms", "/var/lib/kms"]


def test_socket_group():
    unit = _directives(_render(kms_plugin_socket_group="kube"))
    assert unit["SupplementaryGroups"] == ["kube"] and unit["RuntimeDirectoryMode"] == ["0710"]
    assert unit["CapabilityBoundingSet"] == [""]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("overrides", [{}, {"kms_plugin_socket_group": "kube", "kms_plugin_socket": "/srv/kms/kms.sock"}])
def test_systemd_knows_every_directive(tmp_path, overrides):
    path = tmp_path / "teapot-kms-plugin.service"
    path.write_text(_render(**overrides), encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    problems = [line for line in result.stderr.splitlines()
                if "Unknown key" in line or "Failed to parse" in line or "Invalid" in line]
    assert not problems, result.stderr
