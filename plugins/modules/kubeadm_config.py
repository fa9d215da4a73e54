#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: kubeadm_config
short_description: Set kube-apiserver flags and volumes in kubeadm's ClusterConfiguration
version_added: 0.1.0
description:
  - Edits the C(ClusterConfiguration) held in the C(kubeadm-config) ConfigMap of C(kube-system), so that
    C(kubeadm upgrade) and C(kubeadm join --control-plane) write kube-apiserver manifests that keep O(flags) and
    O(volumes).
  - Sets C(apiServer.extraArgs) (a map in C(kubeadm.k8s.io/v1beta3), a list of C(name)/C(value) pairs in
    C(kubeadm.k8s.io/v1beta4)) and C(apiServer.extraVolumes); every other field is kept.
  - Reads and replaces the ConfigMap through the Kubernetes API with the C(kubernetes) Python client
    (CoreV1Api), with the ConfigMap's resourceVersion, so that a concurrent change is never overwritten; the read
    and the edit are retried on a conflict.
  - A ClusterConfiguration that cannot be parsed or has another apiVersion makes the module fail without
    changing anything.
extends_documentation_fragment:
  - teapot.kms.attributes
  - teapot.kms.kube_apiserver_wiring
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  kubeconfig:
    description:
      - The kubeconfig to reach the API with, allowed to update ConfigMaps in O(namespace).
    type: path
    default: /etc/kubernetes/admin.conf
  context:
    description:
      - The kubeconfig context; its current context when omitted.
    type: str
  namespace:
    description:
      - The namespace of the ConfigMap.
    type: str
    default: kube-system
  name:
    description:
      - The name of the ConfigMap.
    type: str
    default: kubeadm-config
  timeout:
    description:
      - Seconds per API request.
    type: int
    default: 30
requirements:
  - kubernetes (the Python client) and PyYAML where the module runs
seealso:
  - module: teapot.kms.kube_apiserver_manifest
  - name: kubeadm configuration (v1beta4)
    description: The ClusterConfiguration reference.
    link: https://kubernetes.io/docs/reference/config-api/kubeadm-config.v1beta4/
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Keep the encryption flags across kubeadm upgrade
  teapot.kms.kubeadm_config:
    flags:
      encryption-provider-config: /etc/kubernetes/encryption/config.yaml
      encryption-provider-config-automatic-reload: "true"
    volumes:
      - name: teapot-kms-encryption-config
        host_path: /etc/kubernetes/encryption
        mount_path: /etc/kubernetes/encryption
        read_only: true
      - name: teapot-kms-socket
        host_path: /run/teapot-kms
        mount_path: /run/teapot-kms
  run_once: true
'''

RETURN = r'''
api_version:
  description: The apiVersion of the ClusterConfiguration.
  returned: always
  type: str
  sample: kubeadm.k8s.io/v1beta4
previous_flags:
  description: The values the flags of O(flags) had in C(apiServer.extraArgs) before the run; V(null) for an absent flag.
  returned: always
  type: dict
'''

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.teapot.kms.plugins.module_utils import _kube_apiserver as ka

try:
    import kubernetes
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException
    import urllib3.exceptions
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None

DATA_KEY = "ClusterConfiguration"
CONFLICT_RETRIES = 3


class KubeadmConfig:
    def __init__(self, module, api_client):
        self.module = module
        self.params = module.params
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.where = f"{self.params['namespace']}/{self.params['name']}"

    def read(self):
        config_map = self.core.read_namespaced_config_map(
            self.params["name"], self.params["namespace"], _request_timeout=self.params["timeout"])
        text = (config_map.data or {}).get(DATA_KEY)
        if not text:
            raise ka.WiringError(f"ConfigMap {self.where} has no {DATA_KEY}: is this cluster managed by kubeadm?")
        return config_map, text

    def attempt(self, flags):
        config_map, text = self.read()
        source = f"{DATA_KEY} in ConfigMap {self.where}"
        document = ka.load_yaml(text, source)
        previous = ka.cluster_configuration_flags(document, list(flags), source)
        version, changed = ka.wire_cluster_configuration(document, flags, self.params["volumes"], source)
        new_text = ka.dump_yaml(document) if changed else text
        result = {"changed": changed, "api_version": version, "previous_flags": previous}
        if self.module._diff:
            result["diff"] = {"before_header": source, "after_header": source, "before": text, "after": new_text}
        if changed and not self.module.check_mode:
            config_map.data[DATA_KEY] = new_text
            # The body carries the resourceVersion read above: a change made since then answers 409.
            self.core.replace_namespaced_config_map(self.params["name"], self.params["namespace"], config_map,
                                                    _request_timeout=self.params["timeout"])
        return result

    def run(self):
        flags = ka.flag_values(self.params["flags"])
        ka.check_volumes(self.params["volumes"])
        for attempt in range(CONFLICT_RETRIES):
            try:
                return self.attempt(flags)
            except ApiException as exc:
                if exc.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")


def api_error(exc, where):
    status = getattr(exc, "status", None)
    hints = {
        401: "the kubeconfig's credentials were refused",
        403: "the kubeconfig's user may not read and update this ConfigMap",
        404: "it does not exist: is this cluster managed by kubeadm?",
        409: "it kept changing while it was being updated; run again",
    }
    return f"ConfigMap {where}: HTTP {status} {hints.get(status, getattr(exc, 'reason', ''))}"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            kubeconfig=dict(type="path", default="/etc/kubernetes/admin.conf"),
            context=dict(type="str"),
            namespace=dict(type="str", default="kube-system"),
            name=dict(type="str", default="kubeadm-config"),
            timeout=dict(type="int", default=30),
            **ka.WIRING_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_IMPORT_ERROR)
    if ka.yaml is None:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    where = f"{module.params['namespace']}/{module.params['name']}"
    try:
        api_client = kubernetes.config.new_client_from_config(
            config_file=module.params["kubeconfig"], context=module.params["context"])
    except (ConfigException, OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot use the kubeconfig {module.params['kubeconfig']}: {exc}")
    try:
        with api_client:
            result = KubeadmConfig(module, api_client).run()
    except ka.WiringError as exc:
        module.fail_json(msg=f"{exc}; nothing was changed")
    except ApiException as exc:
        module.fail_json(msg=f"{api_error(exc, where)}; nothing was changed")
    except urllib3.exceptions.HTTPError as exc:
        module.fail_json(msg=f"cannot reach the API server {api_client.configuration.host} named in "
                             f"{module.params['kubeconfig']}: {type(exc).__name__}: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
