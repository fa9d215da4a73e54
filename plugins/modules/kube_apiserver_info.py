#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: kube_apiserver_info
short_description: Ask one kube-apiserver for its health and which configuration it runs, optionally waiting
version_added: 0.1.0
description:
  - Asks one kube-apiserver (by default the one on this node, at C(https://127.0.0.1:6443)) for C(/readyz),
    C(/healthz/kms-providers) and C(/metrics).
  - From the metrics it reports a RV(state) that changes when the apiserver restarts (C(process_start_time_seconds)),
    when it reloads its EncryptionConfiguration (C(apiserver_encryption_config_controller_automatic_reloads_total),
    or the older C(..._automatic_reload_success_total)) and when it loads another one
    (C(apiserver_encryption_config_controller_last_config_info)).
  - From the metrics it also reports in RV(kms_status_key_ids), per KMS provider, the hash of each key_id that the
    plugin's C(Status) returned and when it last did
    (C(apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds)).
  - With O(changed_from) (a RV(state) read before a change) it waits until the state differs, so that an answer of
    the previous process, or of the previous configuration, is never taken for the new one; it fails at once
    when the apiserver reports that it rejected the changed configuration (a failed automatic reload).
  - With O(wait_healthy=true) it waits until both health endpoints answer C(200 ok), and fails with what the
    apiserver answered last when they do not within O(timeout).
  - The server certificate is verified against O(ca_cert) for the name O(tls_server_name), so that the apiserver
    can be reached on a loopback address that its certificate does not name.
extends_documentation_fragment:
  - teapot.kms.attributes.INFO_MODULE
options:
  url:
    description:
      - The kube-apiserver to ask.
    type: str
    default: https://127.0.0.1:6443
  ca_cert:
    description:
      - The CA that signed the apiserver's serving certificate.
    type: path
    default: /etc/kubernetes/pki/ca.crt
  tls_server_name:
    description:
      - The name the serving certificate must carry. kubeadm's always carries V(kubernetes).
    type: str
    default: kubernetes
  client_cert:
    description:
      - A client certificate allowed to read C(/metrics) and C(/healthz/kms-providers). Empty for none.
    type: path
    default: /etc/kubernetes/pki/apiserver-kubelet-client.crt
  client_key:
    description:
      - The key of O(client_cert).
    type: path
    default: /etc/kubernetes/pki/apiserver-kubelet-client.key
  token:
    description:
      - A bearer token, instead of or besides O(client_cert).
    type: str
  kms_health:
    description:
      - Whether C(/healthz/kms-providers) counts towards RV(healthy). Turn off for an apiserver without KMS providers.
    type: bool
    default: true
  wait_healthy:
    description:
      - Wait until the apiserver is healthy; fail when it is not within O(timeout).
    type: bool
    default: false
  changed_from:
    description:
      - A RV(state) returned earlier. Wait until the apiserver's state differs from it (it restarted, or reloaded
        its EncryptionConfiguration); fail when it does not within O(timeout), or when it rejected a changed
        configuration.
      - Ignored when that state could not read the metrics (the apiserver was down).
    type: dict
  timeout:
    description:
      - Seconds to wait in all.
    type: int
    default: 300
  delay:
    description:
      - Seconds between two polls.
    type: int
    default: 2
  request_timeout:
    description:
      - Seconds per HTTP request.
    type: int
    default: 10
seealso:
  - module: teapot.kms.encryption_config
  - module: teapot.kms.kube_apiserver_manifest
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Remember what the apiserver runs now
  teapot.kms.kube_apiserver_info:
  register: before

- name: Wire the EncryptionConfiguration
  teapot.kms.kube_apiserver_manifest:
    flags:
      encryption-provider-config: /etc/kubernetes/encryption/config.yaml

- name: Wait for the restarted apiserver to be healthy
  teapot.kms.kube_apiserver_info:
    changed_from: "{{ before.state }}"
    wait_healthy: true
    timeout: 300
'''

RETURN = r'''
healthy:
  description: Whether C(/readyz) (and, with O(kms_health), C(/healthz/kms-providers)) answered 200.
  returned: always
  type: bool
readyz:
  description: What C(/readyz) answered.
  returned: always
  type: dict
  contains:
    status:
      description: The HTTP status, 0 when there was no answer.
      type: int
    body:
      description: The start of the answer, or why there was none.
      type: str
kms_providers:
  description: What C(/healthz/kms-providers) answered, like RV(readyz).
  returned: always
  type: dict
state:
  description: What identifies the running apiserver and its configuration; pass it to O(changed_from) later.
  returned: always
  type: dict
  contains:
    metrics_readable:
      description: Whether C(/metrics) could be read.
      type: bool
    process_start_time:
      description: C(process_start_time_seconds), V(null) when not exported.
      type: float
    reload_success:
      description: Successful automatic reloads of the EncryptionConfiguration.
      type: int
    reload_failure:
      description: Failed automatic reloads.
      type: int
    config_hashes:
      description: The C(hash) labels of C(apiserver_encryption_config_controller_last_config_info).
      type: list
      elements: str
kms_status_key_ids:
  description:
    - Per KMS v2 provider, the key_ids its plugin's C(Status) returned, as C(sha256:<hex>) of the key_id (the apiserver
      exports no key_id itself), with when the apiserver last received each; empty when the metrics cannot be read.
    - The key_id with the latest time is the one the apiserver encrypts new objects with.
  returned: always
  type: list
  elements: dict
  contains:
    provider_name:
      description: The provider's name in the EncryptionConfiguration.
      type: str
    key_id_hash:
      description: C(sha256:) and the hex SHA-256 of the key_id.
      type: str
    last_seconds:
      description: When C(Status) last returned it, in seconds since the epoch.
      type: float
changed:
  description: Always V(false); the module only reads.
  returned: always
  type: bool
'''

import http.client
import re
import socket
import ssl
import time
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule

_PREFIX = "apiserver_encryption_config_controller_"
_KMS_STATUS_KEY_ID = "apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class _Connection(http.client.HTTPSConnection):
    """HTTPS to an address, with the certificate checked for another name (kubeadm's certificates name no loopback)."""

    def __init__(self, host, port, context, server_name, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._server_name = server_name
        self._tls_context = context

    def connect(self):
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self._server_name)


def parse_state(text):
    """The parts of a Prometheus exposition that identify the process and its EncryptionConfiguration."""
    state = {"metrics_readable": True, "process_start_time": None, "reload_success": 0, "reload_failure": 0,
             "config_hashes": []}
    current, deprecated = {"success": 0, "failure": 0}, {"success": 0, "failure": 0}
    seen_current = False
    for match in _SAMPLE.finditer(text):
        name, value = match.group("name"), match.group("value")
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        try:
            number = float(value)
        except ValueError:
            continue
        if name == "process_start_time_seconds":
            state["process_start_time"] = number
        elif name == _PREFIX + "automatic_reloads_total" and labels.get("status") in current:
            seen_current = True
            current[labels["status"]] += int(number)
        elif name == _PREFIX + "automatic_reload_success_total":
            deprecated["success"] += int(number)
        elif name in (_PREFIX + "automatic_reload_failure_total", _PREFIX + "automatic_reload_failures_total"):
            deprecated["failure"] += int(number)
        elif name == _PREFIX + "last_config_info" and number == 1 and "hash" in labels:
            state["config_hashes"].append(labels["hash"])
    # 1.30 to 1.33 export both names: count one of them.
    counts = current if seen_current else deprecated
    state["reload_success"], state["reload_failure"] = counts["success"], counts["failure"]
    state["config_hashes"].sort()
    return state


def parse_kms_status_key_ids(text):
    """Per provider, the key_id hashes that Status returned and when it last did."""
    found = []
    for match in _SAMPLE.finditer(text):
        if match.group("name") != _KMS_STATUS_KEY_ID:
            continue
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        try:
            seconds = float(match.group("value"))
        except ValueError:
            continue
        found.append({"provider_name": labels.get("provider_name", ""), "key_id_hash": labels.get("key_id_hash", ""),
                      "last_seconds": seconds})
    return sorted(found, key=lambda item: (item["provider_name"], item["last_seconds"]))


def compare(before, now):
    """('changed' | 'rejected' | None, why) for a state read after a change, against one read before it."""
    if not before or not before.get("metrics_readable"):
        return "changed", "the apiserver was not answering before the change"
    if not now.get("metrics_readable"):
        return None, "its metrics cannot be read"
    if before.get("process_start_time") is not None and now.get("process_start_time") is not None \
            and before["process_start_time"] != now["process_start_time"]:
        return "changed", "it restarted"
    if now["reload_success"] < before["reload_success"] or now["reload_failure"] < before["reload_failure"]:
        return "changed", "it restarted (its counters started again)"
    if now["reload_success"] > before["reload_success"]:
        return "changed", "it reloaded its EncryptionConfiguration"
    if now["config_hashes"] != before["config_hashes"]:
        return "changed", "it loaded another EncryptionConfiguration"
    if now["reload_failure"] > before["reload_failure"]:
        return "rejected", "it rejected the changed EncryptionConfiguration (automatic reload failed)"
    return None, "it still runs as before the change (no restart, no reload yet)"


class ApiserverInfo:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        parts = urlsplit(self.params["url"])
        if parts.scheme != "https" or not parts.hostname:
            module.fail_json(msg=f"url {self.params['url']!r}: give https://HOST:PORT")
        self.host, self.port = parts.hostname, parts.port or 443
        self.context = self._tls_context()

    def _tls_context(self):
        params = self.params
        try:
            context = ssl.create_default_context(cafile=params["ca_cert"])
            if params["client_cert"]:
                context.load_cert_chain(params["client_cert"], params["client_key"] or None)
        except (OSError, ssl.SSLError) as exc:
            self.module.fail_json(msg=f"cannot use the CA {params['ca_cert']} or the client certificate "
                                      f"{params['client_cert']}: {exc}")
        return context

    def get(self, path):
        """(status, body); status 0 with the reason when there was no answer."""
        connection = _Connection(self.host, self.port, self.context, self.params["tls_server_name"],
                                 self.params["request_timeout"])
        headers = {"Accept": "text/plain"}
        if self.params["token"]:
            headers["Authorization"] = f"Bearer {self.params['token']}"
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            return 0, f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    def read(self):
        ready = self.get("/readyz")
        kms = self.get("/healthz/kms-providers") if self.params["kms_health"] else (200, "not checked")
        metrics_status, metrics = self.get("/metrics")
        if metrics_status == 200:
            state = parse_state(metrics)
        else:
            state = {"metrics_readable": False, "process_start_time": None, "reload_success": 0, "reload_failure": 0,
                     "config_hashes": []}
        return {
            "healthy": ready[0] == 200 and kms[0] == 200,
            "readyz": {"status": ready[0], "body": ready[1][:2000]},
            "kms_providers": {"status": kms[0], "body": kms[1][:2000]},
            "state": state,
            "kms_status_key_ids": parse_kms_status_key_ids(metrics) if metrics_status == 200 else [],
            "metrics": (metrics_status, metrics[:300]),
        }

    def run(self):
        params = self.params
        deadline = time.monotonic() + params["timeout"]
        before = params["changed_from"]
        waiting_for_change = before is not None and before.get("metrics_readable")
        while True:
            answer = self.read()
            verdict, why = compare(before, answer["state"]) if waiting_for_change else ("changed", "")
            if verdict == "rejected":
                self.finish(answer, failed=f"kube-apiserver at {params['url']}: {why}")
            done = verdict == "changed" and (answer["healthy"] or not params["wait_healthy"])
            if done or (not params["wait_healthy"] and not waiting_for_change):
                self.finish(answer)
            if time.monotonic() + params["delay"] > deadline:
                if verdict != "changed":
                    problem = why if answer["state"]["metrics_readable"] else \
                        f"its metrics cannot be read (HTTP {answer['metrics'][0]}: {answer['metrics'][1].strip()[:200]})"
                    self.finish(answer, failed=f"kube-apiserver at {params['url']} did not take the change within "
                                               f"{params['timeout']} s: {problem}")
                self.finish(answer, failed=f"kube-apiserver at {params['url']} is not healthy after "
                                           f"{params['timeout']} s: {self.describe(answer)}")
            time.sleep(params["delay"])

    @staticmethod
    def describe(answer):
        problems = []
        for name, path in (("readyz", "/readyz"), ("kms_providers", "/healthz/kms-providers")):
            status, body = answer[name]["status"], answer[name]["body"].strip()
            if status != 200:
                problems.append(f"{path} answered {status or 'nothing'}: {body[-600:]}")
        return "; ".join(problems)

    def finish(self, answer, failed=None):
        result = {key: value for key, value in answer.items() if key != "metrics"}
        if failed:
            self.module.fail_json(msg=failed, **result)
        self.module.exit_json(changed=False, **result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="https://127.0.0.1:6443"),
            ca_cert=dict(type="path", default="/etc/kubernetes/pki/ca.crt"),
            tls_server_name=dict(type="str", default="kubernetes"),
            client_cert=dict(type="path", default="/etc/kubernetes/pki/apiserver-kubelet-client.crt"),
            client_key=dict(type="path", default="/etc/kubernetes/pki/apiserver-kubelet-client.key"),
            token=dict(type="str", no_log=True),
            kms_health=dict(type="bool", default=True),
            wait_healthy=dict(type="bool", default=False),
            changed_from=dict(type="dict"),
            timeout=dict(type="int", default=300),
            delay=dict(type="int", default=2),
            request_timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    ApiserverInfo(module).run()


if __name__ == "__main__":
    main()
