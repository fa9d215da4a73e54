#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: barbican_key_info
short_description: List the symmetric keys of a Barbican project with their ACLs and consumers
version_added: 0.1.0
description:
  - Lists the symmetric keys (Barbican secrets of type C(symmetric)) in the project the credentials are scoped to,
    with the C(key_id) the teapot KMS plugin reports for each, their read ACL and their consumers.
  - Never returns key material.
extends_documentation_fragment:
  - teapot.kms.barbican
  - teapot.kms.attributes.INFO_MODULE
options:
  name:
    description:
      - Only the keys with this name.
    type: str
seealso:
  - module: teapot.kms.barbican_key
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: List the keys of the kms project
  teapot.kms.barbican_key_info:
    cloud: kms
  register: kms_keys

- name: Show the key_ids
  ansible.builtin.debug:
    msg: "{{ kms_keys.barbican_keys | map(attribute='key_id') | list }}"
'''

RETURN = r'''
barbican_keys:
  description: The keys, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The name of the key.
      type: str
      sample: kube-kek-2025
    href:
      description: The secret href.
      type: str
      sample: https://barbican.example:9311/v1/secrets/5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60
    uuid:
      description: The secret UUID.
      type: str
      sample: 5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60
    key_id:
      description: The key_id the teapot KMS plugin reports while this key is its primary.
      type: str
      sample: barbican:5e7a0c1e-3f5b-4c4e-9a55-0b0c2d1e4f60
    created:
      description: When the secret was created (ISO 8601, UTC).
      type: str
    expiration:
      description: When the secret expires (ISO 8601, UTC), or V(null).
      type: str
    algorithm:
      description: The algorithm of the key.
      type: str
      sample: aes
    bit_length:
      description: The size of the key in bits.
      type: int
      sample: 256
    mode:
      description: The mode recorded with the key.
      type: str
      sample: gcm
    secret_type:
      description: The Barbican secret type.
      type: str
      sample: symmetric
    status:
      description: The Barbican status of the secret.
      type: str
      sample: ACTIVE
    acl:
      description: The read ACL of the key.
      type: dict
      sample: {"read": {"users": [], "project_access": true}}
    consumers:
      description: The consumers registered on the key.
      type: list
      elements: dict
'''

from ansible_collections.teapot.kms.plugins.module_utils._barbican import BarbicanModule


class BarbicanKeyInfoModule(BarbicanModule):
    argument_spec = dict(
        name=dict(type="str"),
    )

    def run(self):
        secrets = self.find_secrets(name=self.params["name"], secret_type="symmetric")
        self.module.exit_json(changed=False, barbican_keys=[self.describe_secret(secret) for secret in secrets])


def main():
    BarbicanKeyInfoModule()()


if __name__ == "__main__":
    main()
