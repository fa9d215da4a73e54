# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    """The etcd connection of the modules that read or maintain etcd (module_utils/_etcd.py)."""

    DOCUMENTATION = r'''
options:
  etcd:
    description:
      - How to reach etcd.
    type: dict
    default: {}
    suboptions:
      endpoints:
        description:
          - Client URLs of etcd members, tried in order until one answers.
        type: list
        elements: str
        default: [https://127.0.0.1:2379]
      cacert:
        description:
          - The CA certificate that signed etcd's server certificate. The system's CAs when not set.
          - kubeadm puts it at C(/etc/kubernetes/pki/etcd/ca.crt).
        type: path
      cert:
        description:
          - The client certificate etcd accepts; kubeadm gives kube-apiserver
            C(/etc/kubernetes/pki/apiserver-etcd-client.crt).
        type: path
      key:
        description:
          - The private key of O(etcd.cert); kubeadm puts it at C(/etc/kubernetes/pki/apiserver-etcd-client.key).
        type: path
      timeout:
        description:
          - Seconds to wait for each answer from etcd.
        type: int
        default: 30
notes:
  - The module talks to etcd's JSON gateway (C(/v3/...)), which etcd 3.4 and newer serve on their client URLs by
    default, so the host needs no etcdctl and no etcd client package; a module with a C(transport) option can read
    etcd over its gRPC API instead.
  - etcd's own user authentication (C(etcdctl auth enable)) is not supported; kubeadm clusters authenticate
    with client certificates only.
'''
