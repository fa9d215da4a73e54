#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: encryption_config
short_description: Write kube-apiserver's EncryptionConfiguration with a KMS v2 provider first
version_added: 0.1.0
description:
  - Writes the C(EncryptionConfiguration) (C(apiVersion apiserver.config.k8s.io/v1)) that kube-apiserver reads
    with C(--encryption-provider-config), mode C(0600) in a C(0700) directory.
  - One entry serves O(resources). Its providers are the KMS v2 provider O(kms) first; then every provider the
    current file already uses for those resources, in the order found (C(aescbc), C(aesgcm) and C(secretbox) keys,
    other KMS providers such as cloud-provider-openstack's barbican-kms-plugin); then C(identity).
    Entries for other resources are kept as they are.
  - A provider is removed only when listed in O(remove_providers), and only when O(audit) (the counts of
    M(teapot.kms.secret_encryption_info)) shows that no object of O(resources) uses it and it does not write
    new objects; otherwise the module fails, naming the provider and how many objects still need it.
  - With O(primary=false) the provider that writes now stays first and O(kms) comes right after it, so that
    every apiserver can read what O(kms) writes before any of them writes with it (the first step of a rollout
    over several apiservers).
  - Key material never appears in the result, the diff or an error message.
  - A file that cannot be parsed, or that holds an unknown provider type, makes the module fail without
    changing anything.
extends_documentation_fragment:
  - teapot.kms.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The secrets of static keys are shown as C(<redacted>).
options:
  path:
    description:
      - The EncryptionConfiguration file to write.
    type: path
    default: /etc/kubernetes/encryption/config.yaml
  resources:
    description:
      - The resources to encrypt, as Kubernetes names (V(secrets), V(configmaps), V(widgets.example.com)).
    type: list
    elements: str
    default: [secrets]
  kms:
    description:
      - The KMS v2 provider (C(apiVersion v2)).
    type: dict
    default: {}
    suboptions:
      name:
        description:
          - The provider name. It is part of every stored value (C(k8s:enc:kms:v2:NAME:)), so changing it later
            keeps the old name as a provider of its own.
        type: str
        default: teapot-kms
      endpoint:
        description:
          - The plugin's socket, as C(unix:///path).
        type: str
        default: unix:///run/teapot-kms/kms.sock
      timeout:
        description:
          - How long kube-apiserver waits for the plugin, as a Go duration.
        type: str
        default: 3s
  primary:
    description:
      - V(true) puts O(kms) first, so that it encrypts every object written from then on.
      - V(false) keeps the provider that writes now in front of O(kms); O(kms) only decrypts.
    type: bool
    default: true
  remove_providers:
    description:
      - Providers to take out, as V(aescbc) (every key), V(aescbc:KEYNAME) (also V(aesgcm), V(secretbox)),
        V(kms:NAME) or V(identity).
      - A provider that is not there is ignored. One that is there needs O(audit).
    type: list
    elements: str
    default: []
  audit:
    description:
      - The result of M(teapot.kms.secret_encryption_info) over O(resources); its C(counts) say how many objects
        each provider holds. Needed only to remove a provider.
      - It must cover every resource of O(resources) and classify every object (no C(unparseable) ones).
    type: dict
  previous_path:
    description:
      - The EncryptionConfiguration kube-apiserver loads now, when it is not O(path). Its providers are carried
        too (before those of O(path)), so that moving the file loses nothing.
    type: path
  sources:
    description:
      - The EncryptionConfigurations to carry providers from, in order, instead of O(path) and O(previous_path).
      - Used to bring nodes whose files differ to one file; giving every node the same list in the same order
        gives every node the same result.
    type: list
    elements: str
  header:
    description:
      - Text written as comment lines at the top of the file, for example C({{ ansible_managed }}).
    type: str
    default: ''
  backup:
    description:
      - Before changing the file, copy it into O(backup_dir), mode C(0600) since it holds keys.
    type: bool
    default: false
  backup_dir:
    description:
      - Where backups go.
    type: path
    default: /var/backups/teapot-kms
requirements:
  - PyYAML on the host
seealso:
  - module: teapot.kms.kube_apiserver_manifest
  - module: teapot.kms.kubeadm_config
  - module: teapot.kms.secret_encryption_info
  - name: Encrypting confidential data at rest
    description: The Kubernetes documentation of the EncryptionConfiguration.
    link: https://kubernetes.io/docs/tasks/administer-cluster/encrypt-data/
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Let every apiserver read what the teapot KMS plugin writes (step one of a rollout)
  teapot.kms.encryption_config:
    primary: false
    header: "{{ ansible_managed }}"

- name: Make the KMS provider encrypt Secrets and ConfigMaps
  teapot.kms.encryption_config:
    resources: [secrets, configmaps]
    kms:
      name: teapot-kms
      endpoint: unix:///run/teapot-kms/kms.sock
  register: encryption

- name: Count what etcd holds under each provider
  teapot.kms.secret_encryption_info:
    etcd:
      cacert: /etc/kubernetes/pki/etcd/ca.crt
      cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
      key: /etc/kubernetes/pki/apiserver-etcd-client.key
  register: audit

- name: Drop an old aescbc key once no object uses it
  teapot.kms.encryption_config:
    remove_providers: ["aescbc:key1"]
    audit: "{{ audit }}"
'''

RETURN = r'''
path:
  description: The file.
  returned: always
  type: str
  sample: /etc/kubernetes/encryption/config.yaml
sha256:
  description: The SHA-256 of the file's content after the run (in check mode, of the content it would have).
  returned: always
  type: str
previous_sha256:
  description: The SHA-256 of the file before the run, V(null) when it did not exist.
  returned: always
  type: str
providers:
  description: The providers of O(resources) after the run, in order, without secrets.
  returned: always
  type: list
  elements: dict
  sample: [{type: kms, name: teapot-kms, api_version: v2, endpoint: "unix:///run/teapot-kms/kms.sock"}, {type: aescbc, keys: [key1]}, {type: identity}]
writers:
  description: The providers that wrote O(resources) before the run (the first provider that applied to each).
  returned: always
  type: list
  elements: dict
removed:
  description: The providers of O(remove_providers) that were taken out.
  returned: always
  type: list
  elements: str
already_absent:
  description: The providers of O(remove_providers) that were not there.
  returned: always
  type: list
  elements: str
backup_file:
  description: The backup made before the change, or V(null).
  returned: always
  type: str
'''

import os
import re
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.teapot.kms.plugins.module_utils import _encryption_config as ec
from ansible_collections.teapot.kms.plugins.module_utils._host_files import backup_copy, read_text, write_atomically

_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


class EncryptionConfigModule:
    def __init__(self, module):
        self.module = module
        self.params = module.params

    def check_params(self):
        kms = self.params["kms"]
        if not kms["name"] or ":" in kms["name"]:
            raise ec.EncryptionConfigError(f"kms.name {kms['name']!r}: give a name without ':'")
        if not re.match(r"^unix:///[^\s]+$", kms["endpoint"] or ""):
            raise ec.EncryptionConfigError(
                f"kms.endpoint {kms['endpoint']!r}: give the plugin's socket as unix:///absolute/path")
        if kms["timeout"] and not _DURATION.match(kms["timeout"]):
            raise ec.EncryptionConfigError(f"kms.timeout {kms['timeout']!r}: give a Go duration such as 3s or 500ms")
        resources = self.params["resources"]
        if not resources or not all(resources):
            raise ec.EncryptionConfigError("resources: give at least one resource name, for example secrets")
        for reference in self.params["remove_providers"]:
            ec.parse_removal(reference)

    def sources(self, current):
        path = self.params["path"]
        if self.params["sources"] is not None:
            return [(f"sources[{index}]", ec.parse(text, f"sources[{index}]"))
                    for index, text in enumerate(self.params["sources"])]
        sources = []
        previous = self.params["previous_path"]
        if previous and os.path.realpath(previous) != os.path.realpath(path):
            text = read_text(previous)
            if text is not None:
                sources.append((previous, ec.parse(text, previous)))
        sources.append((path, ec.parse(current or "", path)))
        return sources

    def run(self):
        path = self.params["path"]
        self.check_params()
        current = read_text(path)
        kms = ec.kms_provider(**self.params["kms"])
        plan = ec.build(self.sources(current), self.params["resources"], kms,
                        removals=self.params["remove_providers"], usage=self.params["audit"],
                        primary=self.params["primary"])
        text = ec.render(plan["entries"], self.params["header"])
        content_changed = text != current
        mode_changed = current is not None and (os.stat(path).st_mode & 0o7777) != 0o600
        changed = content_changed or mode_changed
        result = {
            "changed": changed,
            "path": path,
            "sha256": ec.sha256(text),
            "previous_sha256": ec.sha256(current) if current is not None else None,
            "providers": [ec.describe(p) for p in plan["entries"][0]["providers"]],
            "writers": plan["writers"],
            "removed": plan["removed"],
            "already_absent": plan["already_absent"],
            "backup_file": None,
        }
        if self.module._diff:
            result["diff"] = {
                "before_header": path, "after_header": path,
                "before": ec.redact(current or ""), "after": ec.redact(text),
            }
        for warning in plan["warnings"]:
            self.module.warn(warning)
        if changed and not self.module.check_mode:
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700)
            if content_changed:
                if self.params["backup"] and current is not None:
                    result["backup_file"] = backup_copy(path, self.params["backup_dir"])
                write_atomically(path, text, 0o600)
            else:
                os.chmod(path, 0o600)
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/kubernetes/encryption/config.yaml"),
            resources=dict(type="list", elements="str", default=["secrets"]),
            kms=dict(type="dict", default={}, apply_defaults=True, options=dict(
                name=dict(type="str", default="teapot-kms"),
                endpoint=dict(type="str", default="unix:///run/teapot-kms/kms.sock"),
                timeout=dict(type="str", default="3s"),
            )),
            primary=dict(type="bool", default=True),
            remove_providers=dict(type="list", elements="str", default=[]),
            audit=dict(type="dict"),
            previous_path=dict(type="path"),
            sources=dict(type="list", elements="str", no_log=True),
            header=dict(type="str", default=""),
            backup=dict(type="bool", default=False),
            backup_dir=dict(type="path", default="/var/backups/teapot-kms"),
        ),
        mutually_exclusive=[("sources", "previous_path")],
        supports_check_mode=True,
    )
    if ec.yaml is None:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    try:
        EncryptionConfigModule(module).run()
    except ValueError as exc:  # EncryptionConfigError, or a file that is not UTF-8
        module.fail_json(msg=f"{exc}; nothing was changed")
    except OSError as exc:
        module.fail_json(msg=f"cannot write {module.params['path']}: {exc.strerror or exc}",
                         exception=traceback.format_exc())


if __name__ == "__main__":
    main()
