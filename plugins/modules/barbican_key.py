#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: barbican_key
short_description: Ensure a symmetric key exists in OpenStack Barbican, by name
version_added: 0.1.0
description:
  - Finds the symmetric key called O(name) in the project the credentials are scoped to.
    When there is none, orders one (AES, 256 bits by default) and waits until the order is C(ACTIVE).
  - Returns its href, UUID, creation time and the C(key_id) that the teapot KMS plugin reports for it.
    The key material is returned only with O(return_payload=true).
  - Optionally restricts reads to listed users (a Barbican ACL with project-wide access off) and
    registers consumers, so that Barbican refuses to delete the key without force.
  - A key's algorithm, size, mode and expiration cannot change in Barbican; when the existing key
    differs from the options, the module fails rather than order a second key of the same name.
extends_documentation_fragment:
  - teapot.kms.barbican
  - teapot.kms.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description:
      - The name of the key (the Barbican secret name). It must be unique in the project.
    type: str
    required: true
  state:
    description:
      - V(present) orders the key when it does not exist and brings its ACL and consumers in line.
      - V(absent) deletes it. Barbican refuses while consumers are registered, unless O(force=true).
    type: str
    default: present
    choices: [present, absent]
  algorithm:
    description:
      - The algorithm of the key.
    type: str
    default: aes
  bit_length:
    description:
      - The size of the key in bits. The KMS plugin needs 256.
    type: int
    default: 256
  mode:
    description:
      - The block cipher mode recorded with the key.
    type: str
    default: gcm
  expiration:
    description:
      - When the key expires, in ISO 8601 (for example V(2030-01-01T00:00:00Z)); a time without zone is UTC.
      - Set only when the key is ordered; Barbican cannot change it later.
      - Once expired, Barbican no longer returns the key, and a KMS plugin that uses it can no longer decrypt what
        it wrapped, so the cluster's Secrets become unreadable. The module refuses an expiration for a key in a KMS
        plugin's keyring (one that has, or is given, a consumer whose O(consumers[].resource_type) is V(kms-plugin)),
        and warns for any other key that expires.
    type: str
  acl:
    description:
      - Who may read the key besides the project's administrators and the user who ordered it.
      - When omitted, the key's ACL is left as it is.
    type: dict
    suboptions:
      users:
        description:
          - Keystone user IDs allowed to read the key.
        type: list
        elements: str
        default: []
      project_access:
        description:
          - Whether every member of the project may read the key. V(false) keeps it to O(acl.users).
        type: bool
        default: false
  consumers:
    description:
      - Consumers to register on the key. Registered consumers not listed here are kept.
    type: list
    elements: dict
    default: []
    suboptions:
      service:
        description: The consuming service, for example V(kubernetes).
        type: str
        required: true
      resource_type:
        description: The type of the consuming resource, for example V(kms-plugin).
        type: str
        required: true
      resource_id:
        description: The consuming resource, for example the cluster name.
        type: str
        required: true
  force:
    description:
      - With O(state=absent), delete the key even though consumers are registered.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for an order to become C(ACTIVE).
    type: int
    default: 180
  return_payload:
    description:
      - Return the key material (base64) in RV(key.payload). Use C(no_log) on such a task.
    type: bool
    default: false
seealso:
  - module: teapot.kms.barbican_key_info
  - module: teapot.kms.kms_plugin_info
author:
  - teapot.kms maintainers (@teapot-kms)
'''

EXAMPLES = r'''
- name: Order the key-encryption key of the cluster as the key custodian, readable only by the plugin's user
  teapot.kms.barbican_key:
    auth:
      auth_url: https://keystone.example:5000/v3
      username: kms-key-custodian
      password: "{{ kms_custodian_password }}"
      project_name: kms
      user_domain_name: Default
      project_domain_name: Default
    name: kube-kek-2025
    acl:
      users: ["{{ kms_plugin_user_id }}"]
      project_access: false
    consumers:
      - service: kubernetes
        resource_type: kms-plugin
        resource_id: prod-cluster
  register: kek

- name: Show what the plugin will report
  ansible.builtin.debug:
    msg: "{{ kek.key.key_id }} ({{ kek.key.href }})"

- name: Delete an old key although it is still registered as consumed
  teapot.kms.barbican_key:
    cloud: kms
    name: kube-kek-2023
    state: absent
    force: true
'''

RETURN = r'''
key:
  description:
    - The key. After O(state=absent), the key that was deleted, or V(null).
    - In check mode, before the key is ordered, RV(key.href), RV(key.uuid), RV(key.key_id) and RV(key.created) are V(null).
  returned: always
  type: dict
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
      sample: "2025-01-31T12:00:00+00:00"
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
      sample: {"read": {"users": ["4d1c6f0e8a4b4d3c9c3f2b1a0e9d8c7b"], "project_access": false}}
    consumers:
      description: The consumers registered on the key.
      type: list
      elements: dict
      sample: [{"service": "kubernetes", "resource_type": "kms-plugin", "resource_id": "prod-cluster"}]
    payload:
      description: The key material, base64. Only with O(return_payload=true).
      type: str
      returned: when O(return_payload=true) and the key exists
'''

from ansible_collections.teapot.kms.plugins.module_utils._barbican import (
    BarbicanError,
    BarbicanModule,
    isoformat,
    parse_time,
)


# The consumer resource type that marks a key as being in a KMS plugin's keyring.
KEYRING_RESOURCE_TYPE = "kms-plugin"


def _consumer_key(consumer):
    return (consumer["service"], consumer["resource_type"], consumer["resource_id"])


class BarbicanKeyModule(BarbicanModule):
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        algorithm=dict(type="str", default="aes"),
        bit_length=dict(type="int", default=256),
        mode=dict(type="str", default="gcm"),
        expiration=dict(type="str"),
        acl=dict(type="dict", options=dict(
            users=dict(type="list", elements="str", default=[]),
            project_access=dict(type="bool", default=False),
        )),
        consumers=dict(type="list", elements="dict", default=[], options=dict(
            service=dict(type="str", required=True),
            resource_type=dict(type="str", required=True),
            resource_id=dict(type="str", required=True),
        )),
        force=dict(type="bool", default=False),
        timeout=dict(type="int", default=180),
        return_payload=dict(type="bool", default=False),
    )

    def _find(self):
        name = self.params["name"]
        found = self.find_secrets(name=name)
        if len(found) > 1:
            hrefs = ", ".join(secret.secret_ref for secret in found)
            raise BarbicanError(f"{len(found)} secrets are named {name!r} in this project ({hrefs}): "
                                "the name must be unique; delete the extra ones or choose another name")
        return found[0] if found else None

    def _expiration(self):
        text = self.params["expiration"]
        if not text:
            return None
        try:
            return isoformat(parse_time(text))
        except ValueError:
            raise BarbicanError(f"expiration {text!r} is not an ISO 8601 time such as 2030-01-01T00:00:00Z") from None

    def _check_expiration(self, current, expiration):
        """Refuse an expiring key in a KMS plugin's keyring; warn about any other expiring key."""
        expires = expiration or (current or {}).get("expiration")
        if not expires:
            return
        consumers = self.params["consumers"] + ((current or {}).get("consumers") or [])
        keyring = sorted({"/".join(_consumer_key(item)) for item in consumers if item["resource_type"] == KEYRING_RESOURCE_TYPE})
        if keyring:
            where = f"the existing key {self.params['name']!r} ({current['href']}) expires" if current and current.get("expiration") \
                else f"expiration {expires} is set for {self.params['name']!r}"
            raise BarbicanError(
                f"{where}, and the key is in a KMS plugin's keyring ({', '.join(keyring)}): once it expires Barbican no longer "
                "returns it and every object it encrypted becomes unreadable. Nothing was changed. Order the key without "
                "expiration, and rotate it by ordering a new key and re-encrypting (teapot.kms.reencrypt)")
        self.module.warn(f"key {self.params['name']!r} expires at {expires}: after that Barbican no longer returns it, and "
                         "whatever it encrypted can no longer be decrypted; do not put it in a KMS plugin's keyring")

    def _check_immutable(self, current, expiration):
        wanted = {
            "algorithm": self.params["algorithm"].lower(),
            "bit_length": self.params["bit_length"],
            "mode": self.params["mode"].lower() if self.params["mode"] else None,
        }
        have = {
            "algorithm": (current["algorithm"] or "").lower(),
            "bit_length": current["bit_length"],
            "mode": (current["mode"] or "").lower() or None,
        }
        if expiration is not None:
            wanted["expiration"] = expiration
            have["expiration"] = current["expiration"]
        different = [f"{field} is {have[field]!r}, not {wanted[field]!r}" for field in wanted if have[field] != wanted[field]]
        if current["secret_type"] != "symmetric":
            different.insert(0, f"secret_type is {current['secret_type']!r}, not 'symmetric'")
        if different:
            raise BarbicanError(f"the existing key {self.params['name']!r} ({current['href']}) differs and Barbican cannot change it: "
                                f"{'; '.join(different)}; choose another name, or delete the key first")

    def _desired(self, current):
        """The key as it should be, and what must change to get there."""
        acl = self.params["acl"]
        actions = []
        after = dict(current) if current else {
            "name": self.params["name"], "href": None, "uuid": None, "key_id": None, "created": None,
            "expiration": self._expiration(), "algorithm": self.params["algorithm"], "bit_length": self.params["bit_length"],
            "mode": self.params["mode"], "secret_type": "symmetric", "status": "ACTIVE",
            "acl": {"read": {"users": [], "project_access": True}}, "consumers": [],
        }
        if current is None:
            actions.append("order")
        if acl is not None:
            wanted_acl = {"users": sorted(set(acl["users"])), "project_access": acl["project_access"]}
            if after["acl"]["read"] != wanted_acl:
                actions.append("acl")
                after["acl"] = {"read": wanted_acl}
        registered = {_consumer_key(item) for item in after["consumers"]}
        missing = []
        for consumer in self.params["consumers"]:
            key = _consumer_key(consumer)
            if key not in registered:
                registered.add(key)
                missing.append(consumer)
        if missing:
            actions.append("consumers")
            after["consumers"] = [dict(zip(("service", "resource_type", "resource_id"), key)) for key in sorted(registered)]
        return after, actions, missing

    def present(self):
        expiration = self._expiration()
        # Refused before Barbican is asked anything when the options alone decide.
        if expiration is not None and any(item["resource_type"] == KEYRING_RESOURCE_TYPE for item in self.params["consumers"]):
            self._check_expiration(None, expiration)
        secret = self._find()
        before = self.describe_secret(secret) if secret else None
        if before:
            self._check_immutable(before, expiration)
        self._check_expiration(before, expiration)
        after, actions, missing = self._desired(before)
        if actions and not self.module.check_mode:
            href = before["href"] if before else None
            if "order" in actions:
                href = self.order_key(self.params["name"], self.params["algorithm"], self.params["bit_length"],
                                      self.params["mode"], expiration, self.params["timeout"])
            if "acl" in actions:
                self.set_read_acl(href, after["acl"]["read"]["users"], after["acl"]["read"]["project_access"])
            for consumer in missing:
                self.register_consumer(href, consumer)
            after = self.describe_secret(self.client.secrets.get(href))
        return before, after, bool(actions)

    def absent(self):
        secret = self._find()
        if secret is None:
            return None, None, False
        before = self.describe_secret(secret, with_acl=False)
        if before["consumers"] and not self.params["force"]:
            names = ", ".join("/".join(_consumer_key(item)) for item in before["consumers"])
            raise BarbicanError(f"key {self.params['name']!r} ({before['href']}) has {len(before['consumers'])} consumer(s) "
                                f"({names}): Barbican refuses to delete it; remove them or set force: true")
        if not self.module.check_mode:
            self.delete_secret(before["href"], force=self.params["force"])
        return before, None, True

    def run(self):
        if self.params["state"] == "present":
            before, after, changed = self.present()
            key = after
        else:
            before, after, changed = self.absent()
            key = before
        if key is not None and self.params["return_payload"] and key.get("href") and self.params["state"] == "present":
            key = dict(key, payload=self.read_payload(key["href"]))
        result = {"changed": changed, "key": key}
        if self.module._diff:  # pylint: disable=protected-access
            result["diff"] = {"before": before or {}, "after": after or {}}
        self.module.exit_json(**result)


def main():
    BarbicanKeyModule()()


if __name__ == "__main__":
    main()
