#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: secret_encryption_info
short_description: Prove from etcd how every Secret (or other resource) is stored
version_added: 0.1.0
description:
  - Reads the raw value of every object of O(resources) from etcd, the way kube-apiserver stored it, and
    classifies it by provider type (C(identity), C(aescbc), C(aesgcm), C(secretbox), C(kms-v1), C(kms-v2)),
    provider name and, for KMS v2, the C(key_id) and annotations the KMS plugin returned.
  - Compares each object with O(expected_provider_type), O(expected_provider) and O(expected_key_id) and
    reports the ones that differ. A value that cannot be parsed is reported with provider type C(unparseable)
    and the reason, and counts as unexpected; it is never skipped.
  - Never decrypts anything and never returns an object's content.
  - Reads page by page (O(page_size) objects at a time, all pages at one etcd revision), so clusters with
    tens of thousands of objects are audited in bounded memory.
  - Reads etcd over its gRPC API when the Python that runs the module has C(grpcio), else through etcd's JSON
    gateway (C(/v3/kv/range)), which etcd 3.4 and newer serve on their client URLs by default; see O(transport).
    Both use the TLS client certificate of kube-apiserver, so the host needs no etcdctl; it must be able to read
    those certificates (a control-plane node, as root).
extends_documentation_fragment:
  - teapot.kms.attributes.INFO_MODULE
  - teapot.kms.etcd
options:
  resources:
    description:
      - The resources to audit, named as in an EncryptionConfiguration C(resources) list - the plural,
        with the API group outside the core group (V(secrets), V(configmaps), V(widgets.example.com)).
        Wildcards are not accepted.
    type: list
    elements: str
    default: [secrets]
  etcd_prefix:
    description:
      - kube-apiserver's C(--etcd-prefix).
    type: str
    default: /registry
  expected_provider_type:
    description:
      - The provider type every object should be stored with.
    type: str
    default: kms-v2
    choices: [identity, aescbc, aesgcm, secretbox, kms-v1, kms-v2]
  expected_provider:
    description:
      - The provider name every object should carry (the C(name) of the KMS provider, or of the key for
        C(aescbc), C(aesgcm) and C(secretbox)). Any name when not set.
    type: str
  expected_key_id:
    description:
      - The KMS v2 C(key_id) every object should carry. Any key_id when not set.
      - Only with O(expected_provider_type=kms-v2).
    type: str
  fail_on_plaintext:
    description:
      - Fail when any object is stored in plaintext (C(identity)). The results are returned all the same.
    type: bool
    default: false
  fail_on_unexpected:
    description:
      - Fail when any object is not as expected (plaintext and unparseable values included).
        The results are returned all the same.
    type: bool
    default: false
  list:
    description:
      - Which objects to return in RV(objects) - V(unexpected) ones only, or V(all).
    type: str
    default: unexpected
    choices: [unexpected, all]
  page_size:
    description:
      - How many objects to read from etcd at a time.
    type: int
    default: 1000
  transport:
    description:
      - How to read etcd.
      - V(grpc) reads over etcd's own gRPC API (C(KV/Range)) with the Python libraries C(grpcio) and C(protobuf);
        the module fails when the Python that runs it cannot import them. The KMS plugin's venv on every
        control-plane node has both (C(ansible_python_interpreter=/opt/teapot-kms/kms-plugin/bin/python), see
        the C(kms_plugin_venv_path) of the role teapot.kms.kms_plugin); the playbooks teapot.kms.verify and
        teapot.kms.rotate_key run the audit with it when it is there.
      - V(json) reads through etcd's JSON gateway with Python's standard library. etcd spends about four times
        the CPU on a JSON answer as on the same gRPC one, so on large clusters this is the slower choice.
      - V(auto) uses V(grpc) when C(grpcio) and C(protobuf) import, else V(json).
      - RV(transport) says which one was used.
    type: str
    default: auto
    choices: [auto, grpc, json]
requirements:
  - the Python library C(protobuf) on the host that runs the module (C(python3-protobuf) on Debian and Ubuntu),
    to read KMS v2 values
  - for O(transport=grpc), the Python library C(grpcio) too (the KMS plugin's venv has both)
  - for O(transport=json), etcd 3.4 or newer with its JSON gateway on (the default; C(--enable-grpc-gateway))
notes:
  - An object created or rewritten after the audit's revision is not seen; RV(revision) says which one was read.
seealso:
  - module: teapot.kms.kms_plugin_info
  - name: The audit and playbook teapot.kms.verify
    description: docs/verify.md in the collection.
    link: https://github.com/teapot-kms/kms/blob/main/docs/verify.md
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Audit Secrets and ConfigMaps on a kubeadm control-plane node
  teapot.kms.secret_encryption_info:
    etcd:
      cacert: /etc/kubernetes/pki/etcd/ca.crt
      cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
      key: /etc/kubernetes/pki/apiserver-etcd-client.key
    resources: [secrets, configmaps]
    expected_provider: teapot
    expected_key_id: "barbican:5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60"
  become: true
  run_once: true
  register: audit

- name: Show the counts per provider and key_id
  ansible.builtin.debug:
    var: audit.counts

- name: Fail while any Secret is still in plaintext
  teapot.kms.secret_encryption_info:
    etcd:
      endpoints: [https://10.0.0.11:2379, https://10.0.0.12:2379]
      cacert: /etc/kubernetes/pki/etcd/ca.crt
      cert: /etc/kubernetes/pki/apiserver-etcd-client.crt
      key: /etc/kubernetes/pki/apiserver-etcd-client.key
    fail_on_plaintext: true
  become: true
'''

RETURN = r'''
counts:
  description:
    - Per resource, how many objects are stored under each C(<provider_type>/<provider_name>/<key_id>)
      (C(-) where a part does not apply, for example C(identity/-/-) or C(aescbc/key1/-));
      C(unparseable/-/-) counts values that could not be parsed.
  returned: always
  type: dict
  sample:
    secrets:
      kms-v2/teapot/barbican:5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60: 9998
      identity/-/-: 2
objects:
  description:
    - The objects that are not as expected, or all of them with O(list=all).
  returned: always
  type: list
  elements: dict
  contains:
    key:
      description: The etcd key.
      type: str
      sample: /registry/secrets/default/db-password
    resource:
      description: The resource, as given in O(resources).
      type: str
      sample: secrets
    namespace:
      description: The namespace; V(null) for cluster-scoped objects.
      type: str
    name:
      description: The object's name.
      type: str
    provider_type:
      description: C(identity), C(aescbc), C(aesgcm), C(secretbox), C(kms-v1), C(kms-v2) or C(unparseable).
      type: str
      sample: identity
    provider_name:
      description: The KMS provider's name or the static key's name; V(null) for identity and unparseable values.
      type: str
    key_id:
      description: The KMS v2 key_id; V(null) for other providers.
      type: str
    annotations:
      description: The KMS v2 annotations (stored in plaintext), values base64-encoded; empty for other providers.
      type: dict
      sample: {"version.teapot.example.com": "MQ=="}
    dek_source_type:
      description:
        - The KMS v2 C(encryptedDEKSourceType) - 1 (HKDF_SHA256_XNONCE_AES_GCM_SEED) for everything current
          apiservers write, 0 (AES_GCM_KEY) for values of older ones; V(null) for other providers.
      type: int
    reason:
      description: Why the object is not as expected (for unparseable values, what is wrong); V(null) when it is.
      type: str
      sample: stored in plaintext, expected kms-v2
total:
  description: How many objects were read.
  returned: always
  type: int
unexpected:
  description: How many objects are not as expected (plaintext and unparseable ones included).
  returned: always
  type: int
plaintext:
  description: How many objects are stored in plaintext (C(identity)).
  returned: always
  type: int
revision:
  description: The etcd revision that was read.
  returned: always
  type: int
transport:
  description: How etcd was read - V(grpc) (etcd's gRPC API) or V(json) (etcd's JSON gateway); see O(transport).
  returned: always
  type: str
  sample: grpc
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.teapot.kms.plugins.module_utils._encryption_audit import Expectation, audit
from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdError, client_from_params, etcd_argument_spec
from ansible_collections.teapot.kms.plugins.module_utils._etcd_grpc import EtcdGrpcClient, grpc_import_error
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import (
    HAS_PROTOBUF,
    PROTOBUF_IMPORT_ERROR,
    PROVIDER_TYPES,
)


def _objects(count):
    return f"{count} object is" if count == 1 else f"{count} objects are"


def choose_transport(module):
    """``grpc`` or ``json``, as O(transport) asks and the Python running the module can; fails for grpc without grpcio."""
    requested = module.params["transport"]
    if requested == "json":
        return "json"
    error = grpc_import_error()
    if error is None:
        return "grpc"
    if requested == "grpc":
        module.fail_json(msg=missing_required_lib(
            "grpcio", reason="for transport=grpc: run the module with a Python that has grpcio and protobuf, such as the "
                             "KMS plugin's venv (ansible_python_interpreter=/opt/teapot-kms/kms-plugin/bin/python), "
                             "or set transport=json"), exception=error)
    return "json"


def run(module):
    params = module.params
    if params["expected_key_id"] is not None and params["expected_provider_type"] != "kms-v2":
        module.fail_json(msg="expected_key_id applies to expected_provider_type=kms-v2 only")
    if params["page_size"] < 1:
        module.fail_json(msg="page_size must be at least 1")
    connection = params["etcd"]
    expectation = Expectation(params["expected_provider_type"], params["expected_provider"], params["expected_key_id"])
    transport = choose_transport(module)
    try:
        client = client_from_params(connection, client_class=EtcdGrpcClient if transport == "grpc" else None)
        try:
            result = audit(client, params["resources"], expectation, list_all=params["list"] == "all",
                           page_size=params["page_size"], etcd_prefix=params["etcd_prefix"])
        finally:
            client.close()
    except EtcdError as exc:
        module.fail_json(msg=f"cannot read the objects from etcd: {exc}", transport=transport)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    values = dict(changed=False, transport=transport, **result.as_dict())
    if params["fail_on_plaintext"] and result.plaintext:
        plaintext = {resource: per_type.get("identity/-/-", 0) for resource, per_type in result.counts.items()}
        module.fail_json(msg=f"{_objects(result.plaintext)} stored in plaintext ("
                             + ", ".join(f"{resource}: {count}" for resource, count in plaintext.items() if count)
                             + "): rewrite them (teapot.kms.reencrypt) once an encrypting provider comes first",
                         **values)
    if params["fail_on_unexpected"] and result.unexpected:
        module.fail_json(msg=f"{_objects(result.unexpected)} not stored as expected (of {result.total}): "
                             f"expected {expectation.provider_type}, provider {expectation.provider_name or 'any'}, "
                             f"key_id {expectation.key_id or 'any'}; objects lists each one and why",
                         **values)
    module.exit_json(**values)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            etcd=etcd_argument_spec(),
            resources=dict(type="list", elements="str", default=["secrets"]),
            etcd_prefix=dict(type="str", default="/registry"),
            expected_provider_type=dict(type="str", default="kms-v2", choices=list(PROVIDER_TYPES)),
            expected_provider=dict(type="str"),
            expected_key_id=dict(type="str", no_log=False),
            fail_on_plaintext=dict(type="bool", default=False),
            fail_on_unexpected=dict(type="bool", default=False),
            list=dict(type="str", default="unexpected", choices=["unexpected", "all"]),
            page_size=dict(type="int", default=1000),
            transport=dict(type="str", default="auto", choices=["auto", "grpc", "json"]),
        ),
        supports_check_mode=True,
    )
    if not HAS_PROTOBUF:
        module.fail_json(msg=missing_required_lib("protobuf", reason="to read KMS v2 values (python3-protobuf on Debian and Ubuntu)"),
                         exception=PROTOBUF_IMPORT_ERROR)
    run(module)


if __name__ == "__main__":
    main()
