#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: kube_apiserver_manifest
short_description: Set kube-apiserver flags and hostPath volumes in its static pod manifest
version_added: 0.1.0
description:
  - Edits the kube-apiserver static pod manifest that kubeadm writes (C(/etc/kubernetes/manifests/kube-apiserver.yaml)).
    It sets O(flags) in the container's command, adds O(volumes) to the Pod and mounts them into the container.
  - The edit is structural; every other field is kept. A manifest that already has the flags and volumes is not
    rewritten.
  - Before a change, the manifest is copied to O(backup_dir) with a UTC timestamp. That directory must be outside
    the manifests directory, since the kubelet runs every file it finds there.
  - The new manifest replaces the old one in a single rename; the kubelet then restarts kube-apiserver.
  - A manifest that cannot be parsed, or without the O(container) container, makes the module fail without
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
  path:
    description:
      - The static pod manifest.
    type: path
    default: /etc/kubernetes/manifests/kube-apiserver.yaml
  container:
    description:
      - The name of the kube-apiserver container in the Pod.
    type: str
    default: kube-apiserver
  backup_dir:
    description:
      - Where the copy of the manifest goes before a change. Must not be inside the directory of O(path).
    type: path
    default: /var/backups/teapot-kms
  read_flags:
    description:
      - More flags whose current values to return in RV(previous_flags), without setting them.
    type: list
    elements: str
    default: []
requirements:
  - PyYAML on the host
seealso:
  - module: teapot.kms.encryption_config
  - module: teapot.kms.kubeadm_config
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Point kube-apiserver at the EncryptionConfiguration and the KMS plugin's socket
  teapot.kms.kube_apiserver_manifest:
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
  register: manifest

- name: Ask which EncryptionConfiguration kube-apiserver uses now
  teapot.kms.kube_apiserver_manifest:
    read_flags: [encryption-provider-config]
  check_mode: true
  register: current
'''

RETURN = r'''
path:
  description: The manifest.
  returned: always
  type: str
  sample: /etc/kubernetes/manifests/kube-apiserver.yaml
previous_flags:
  description: The values the flags of O(flags) and O(read_flags) had before the run; V(null) for an absent flag.
  returned: always
  type: dict
  sample: {encryption-provider-config: null}
backup_file:
  description: The copy made before the change, or V(null).
  returned: always
  type: str
  sample: /var/backups/teapot-kms/kube-apiserver.yaml.20250131T120000Z
sha256:
  description: The SHA-256 of the manifest after the run (in check mode, of the content it would have).
  returned: always
  type: str
'''

import copy
import hashlib
import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.teapot.kms.plugins.module_utils import _kube_apiserver as ka
from ansible_collections.teapot.kms.plugins.module_utils._host_files import backup_copy, inside, read_text, write_atomically


def run(module):
    params = module.params
    path = params["path"]
    if inside(params["backup_dir"], os.path.dirname(path)):
        raise ka.WiringError(f"backup_dir {params['backup_dir']} is inside {os.path.dirname(path)}: the kubelet "
                             "would run the backup as a second kube-apiserver; choose a directory outside it")
    flags = ka.flag_values(params["flags"])
    ka.check_volumes(params["volumes"])
    current = read_text(path)
    if current is None:
        raise ka.WiringError(f"{path} does not exist: is this a kubeadm control-plane node?")
    manifest = ka.load_yaml(current, path)
    names = list(flags) + [name for name in params["read_flags"] if name not in flags]
    previous = ka.manifest_flags(manifest, params["container"], names, path)
    edited = copy.deepcopy(manifest)
    changed = ka.wire_manifest(edited, params["container"], flags, params["volumes"], path)
    text = ka.dump_yaml(edited) if changed else current
    result = {
        "changed": changed,
        "path": path,
        "previous_flags": previous,
        "backup_file": None,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    if module._diff:
        result["diff"] = {"before_header": path, "after_header": path, "before": current, "after": text}
    if changed and not module.check_mode:
        result["backup_file"] = backup_copy(path, params["backup_dir"])
        write_atomically(path, text, os.stat(path).st_mode & 0o7777)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/kubernetes/manifests/kube-apiserver.yaml"),
            container=dict(type="str", default="kube-apiserver"),
            backup_dir=dict(type="path", default="/var/backups/teapot-kms"),
            read_flags=dict(type="list", elements="str", default=[]),
            **ka.WIRING_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    if ka.yaml is None:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    try:
        run(module)
    except ValueError as exc:  # WiringError, or a manifest that is not UTF-8
        module.fail_json(msg=f"{exc}; nothing was changed")
    except OSError as exc:
        module.fail_json(msg=f"cannot update {module.params['path']}: {exc.strerror or exc}",
                         exception=traceback.format_exc())


if __name__ == "__main__":
    main()
