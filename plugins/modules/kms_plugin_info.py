#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: kms_plugin_info
short_description: Report the state of the teapot KMS plugin on a host
version_added: 0.1.0
description:
  - Calls the plugin's KMS v2 C(Status) over its unix socket (C(teapot-kms-plugin status)) and reports
    C(healthz), C(key_id) and C(version), each configured key's state (loaded, age of its material, last error)
    and the outcome of the last reload.
  - Asks the plugin what its configuration means (C(teapot-kms-plugin inspect)) for its socket, the configured
    keys (as key_ids, primary first) and its metrics endpoint, and reads that endpoint for the keys currently
    loaded in memory.
  - Reports the systemd state of the plugin's service.
extends_documentation_fragment:
  - teapot.kms.attributes.INFO_MODULE
options:
  command:
    description:
      - The C(teapot-kms-plugin) executable, inside the plugin's venv.
    type: path
    default: /opt/teapot-kms/kms-plugin/bin/teapot-kms-plugin
  config:
    description:
      - The plugin's configuration file. Its C(socket) is used when O(socket) is not set.
      - When the plugin cannot read it, the result has a warning that says why, and without O(socket)
        no Status is asked.
    type: path
    default: /etc/teapot-kms/kms-plugin.yaml
  socket:
    description:
      - The plugin's unix socket. Defaults to the configuration's C(socket).
    type: path
  service:
    description:
      - The systemd unit of the plugin. Empty to skip the service state.
    type: str
    default: teapot-kms-plugin.service
  timeout:
    description:
      - Seconds to wait for the plugin to answer C(Status).
    type: int
    default: 5
requirements:
  - the plugin installed on the host (for example by the teapot.kms.kms_plugin role)
seealso:
  - module: teapot.kms.barbican_key
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Wait until the plugin is healthy with the new key
  teapot.kms.kms_plugin_info:
  register: kms_plugin
  until:
    - kms_plugin.status.healthy
    - kms_plugin.status.all_keys_loaded
    - kms_plugin.status.key_id == kms_plugin.configured_key_ids[0]
  retries: 30
  delay: 2

- name: Show what the plugin reports
  ansible.builtin.debug:
    msg: "{{ kms_plugin.status.key_id }} ({{ kms_plugin.status.healthz }}), service {{ kms_plugin.service.active_state }}"
'''

RETURN = r'''
status:
  description: The plugin's answer to C(Status).
  returned: always
  type: dict
  contains:
    reachable:
      description: Whether the socket answered.
      type: bool
    healthy:
      description:
        - Whether C(healthz) is C(ok), that is whether the primary key is usable, which is all the kube-apiserver checks.
        - A decrypt-only key may still be missing; see RV(status.all_keys_loaded).
      type: bool
    all_keys_loaded:
      description: Whether every configured key, decrypt-only ones included, is loaded and usable now.
      type: bool
    keys:
      description: Every configured key as the plugin holds it, primary first; V(null) when the plugin cannot tell.
      type: list
      elements: dict
      contains:
        key_id:
          description: The key_id.
          type: str
        role:
          description: C(primary) or C(decrypt-only).
          type: str
        loaded:
          description: Whether its material is in memory and not older than C(max_stale).
          type: bool
        age_seconds:
          description: Seconds since its source last confirmed its material; V(null) when never fetched.
          type: float
        last_error:
          description: Why the last fetch failed, or C(none).
          type: str
        source:
          description: Where its material is read, C(barbican) or C(kubernetes_secret) (a data field of a Kubernetes Secret).
          type: str
    reload:
      description: The outcome of the last reload (SIGHUP); V(null) when none happened since the start.
      type: dict
      contains:
        time:
          description: When it ended, in seconds since the epoch.
          type: float
        result:
          description: C(ok), or C(refused) when the running keyring stayed.
          type: str
        reason:
          description: Why it was refused; empty when applied.
          type: str
    healthz:
      description: C(ok), or why the plugin is unhealthy or unreachable.
      type: str
      sample: ok
    key_id:
      description: The key_id of the primary key.
      type: str
      sample: barbican:5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60
    version:
      description: The KMS API version.
      type: str
      sample: v2
    pid:
      description:
        - The process that answered on the socket, where a reload (SIGHUP) goes; V(null) when it cannot tell.
        - The same pid before and after a reload shows that the socket was never dropped.
      type: int
socket:
  description: The socket that was asked; empty when neither O(socket) nor the configuration gives one.
  returned: always
  type: str
  sample: /run/teapot-kms/kms.sock
configured_key_ids:
  description: The key_ids of the configured keys, primary first; empty when the configuration cannot be read.
  returned: always
  type: list
  elements: str
configured_keys:
  description: The configured keys as the configuration gives them, primary first; empty when it cannot be read.
  returned: always
  type: list
  elements: dict
  contains:
    key_id:
      description: The key_id.
      type: str
    secret:
      description:
        - The Barbican secret, as written in the configuration (UUID or href).
        - For a key read from a Kubernetes Secret, C(<namespace>/<name>/<field>).
      type: str
    role:
      description: C(primary) or C(decrypt-only).
      type: str
    source:
      description: Where the key's material is read, C(barbican) or C(kubernetes_secret).
      type: str
loaded_key_ids:
  description: The key_ids whose material the plugin holds, from its metrics; V(null) when the metrics cannot be read.
  returned: always
  type: list
  elements: str
service:
  description: The systemd state of the plugin's unit; V(null) when O(service) is empty.
  returned: always
  type: dict
  contains:
    name:
      description: The unit.
      type: str
    exists:
      description: Whether systemd knows the unit.
      type: bool
    active_state:
      description: C(ActiveState), for example C(active).
      type: str
    sub_state:
      description: C(SubState), for example C(running).
      type: str
    unit_file_state:
      description: C(UnitFileState), for example C(enabled).
      type: str
    main_pid:
      description: The main process ID, 0 when not running.
      type: int
    restarts:
      description: How many times systemd restarted the service.
      type: int
    active_since:
      description: C(ActiveEnterTimestamp).
      type: str
'''

import json
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


class PluginInfo:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.warnings = []

    def inspect(self):
        """What the plugin makes of its config (``teapot-kms-plugin inspect``); {} when it cannot tell."""
        path = self.params["config"]
        command = self.params["command"]
        if not path or not os.path.exists(path) or not os.path.exists(command):
            return {}
        rc, out, err = self.module.run_command([command, "inspect", "--config", path])
        try:
            report = json.loads(out) if rc == 0 else None
        except ValueError:
            report = None
        if not isinstance(report, dict):
            # The plugin's one-line refusal (exit 2) names the field and never quotes a secret; anything
            # else (a traceback) is not known to be free of secrets.
            refusal = err.strip() if rc == 2 and err.startswith("teapot-kms-plugin: ") and "\n" not in err.strip() else ""
            self.warnings.append(f"cannot read {path}: {refusal or f'teapot-kms-plugin inspect failed with exit code {rc}'}")
            return {}
        return report

    def status(self, socket):
        command = self.params["command"]
        unknown = {"reachable": False, "healthy": False, "key_id": "", "version": "",
                   "all_keys_loaded": False, "keys": None, "reload": None, "pid": None}
        if not os.path.exists(command):
            return dict(unknown, healthz=f"{command} does not exist")
        if not socket:
            return dict(unknown, healthz=f"no socket to ask: set socket, or give a readable config (now {self.params['config']})")
        rc, out, err = self.module.run_command([command, "status", "--socket", socket, "--timeout", str(self.params["timeout"])])
        try:
            answer = json.loads(out)
        except ValueError:
            message = (err or out).strip().splitlines()
            return dict(unknown, healthz=f"status failed ({rc}): {message[-1] if message else ''}")
        return {
            "reachable": rc in (0, 1),
            "healthy": rc in (0, 1) and answer.get("healthz") == "ok",
            "healthz": answer.get("healthz", ""),
            "key_id": answer.get("key_id", ""),
            "version": answer.get("version", ""),
            "all_keys_loaded": bool(answer.get("all_keys_loaded")),
            "keys": answer.get("keys"),
            "reload": answer.get("reload"),
            "pid": answer.get("pid"),
        }

    def loaded_key_ids(self, metrics):
        if not metrics:
            return None
        url = metrics["url"]
        try:
            response = open_url(url, timeout=self.params["timeout"], validate_certs=False, use_proxy=False)
            text = response.read().decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            self.warnings.append(f"cannot read the plugin's metrics at {url}: {exc}")
            return None
        age = re.compile(rf'^{re.escape(metrics["names"]["key_cache_age"])}\{{key_id="([^"]+)"\}}\s', re.MULTILINE)
        return sorted(set(age.findall(text)))

    def service(self):
        name = self.params["service"]
        if not name:
            return None
        systemctl = self.module.get_bin_path("systemctl")
        if systemctl is None:
            self.warnings.append("systemctl is not available: no service state")
            return None
        fields = "LoadState,ActiveState,SubState,UnitFileState,MainPID,NRestarts,ActiveEnterTimestamp"
        rc, out, err = self.module.run_command([systemctl, "show", name, "--property", fields])
        if rc != 0:
            self.warnings.append(f"systemctl show {name} failed: {err.strip()}")
            return None
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

        def number(key):
            value = props.get(key, "")
            return int(value) if value.isdigit() else 0

        return {
            "name": name,
            "exists": props.get("LoadState") not in (None, "not-found"),
            "active_state": props.get("ActiveState", ""),
            "sub_state": props.get("SubState", ""),
            "unit_file_state": props.get("UnitFileState", ""),
            "main_pid": number("MainPID"),
            "restarts": number("NRestarts"),
            "active_since": props.get("ActiveEnterTimestamp", ""),
        }

    def run(self):
        report = self.inspect()
        socket = self.params["socket"] or report.get("socket") or ""
        result = {
            "changed": False,
            "socket": socket,
            "status": self.status(socket),
            "configured_key_ids": [key["key_id"] for key in report.get("keys", [])],
            "configured_keys": report.get("keys", []),
            "loaded_key_ids": self.loaded_key_ids(report.get("metrics")),
            "service": self.service(),
        }
        for warning in self.warnings:
            self.module.warn(warning)
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="path", default="/opt/teapot-kms/kms-plugin/bin/teapot-kms-plugin"),
            config=dict(type="path", default="/etc/teapot-kms/kms-plugin.yaml"),
            socket=dict(type="path"),
            service=dict(type="str", default="teapot-kms-plugin.service"),
            timeout=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    PluginInfo(module).run()


if __name__ == "__main__":
    main()
