# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    """The flags and hostPath volumes that the kube-apiserver wiring modules set."""

    DOCUMENTATION = r'''
options:
  flags:
    description:
      - kube-apiserver flags to set, name (without the leading C(--)) to value; for example the name
        C(encryption-provider-config) with the value C(/etc/kubernetes/encryption/config.yaml).
      - Each is set once; a flag already there gets the new value in place. Flags not listed are left alone.
    type: dict
    default: {}
  volumes:
    description:
      - hostPath volumes to mount into kube-apiserver. A volume of the same name is updated; a mount path
        already served by another volume from the same host path is left as it is; one served from another
        host path is refused.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The volume name.
        type: str
        required: true
      host_path:
        description: The directory on the node.
        type: str
        required: true
      mount_path:
        description: Where kube-apiserver sees it.
        type: str
        required: true
      read_only:
        description: Whether the mount is read-only.
        type: bool
        default: false
      path_type:
        description: The hostPath type.
        type: str
        default: DirectoryOrCreate
        choices: ['', DirectoryOrCreate, Directory, FileOrCreate, File, Socket]
'''
