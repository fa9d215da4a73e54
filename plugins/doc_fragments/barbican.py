# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    """Connection options of the Barbican modules (named like openstack.cloud's)."""

    DOCUMENTATION = r'''
options:
  cloud:
    description:
      - The name of an entry in C(clouds.yaml) (standard search path, or E(OS_CLIENT_CONFIG_FILE)),
        or a dict with the fields of such an entry.
      - With a name, the options given next to O(cloud) override the entry's, field by field (a field of O(auth)
        replaces the same field of the entry's C(auth)).
      - A dict is a whole entry, as in the openstack.cloud modules. The modules refuse it together with O(auth),
        O(auth_type), O(region_name), O(validate_certs), O(ca_cert), O(client_cert), O(client_key), O(api_timeout)
        or an O(interface) other than V(public); put those fields into the dict instead.
      - Prefer O(auth) for secrets; the secret fields of a dict are hidden from the output as well.
    type: raw
  auth:
    description:
      - Authentication for keystoneauth1, as in C(clouds.yaml), for example C(auth_url), C(username),
        C(password), C(project_name), C(user_domain_name), C(project_domain_name), or
        C(application_credential_id) and C(application_credential_secret).
      - Keys are ordered and read in the project the credentials are scoped to.
      - Only O(auth.password), O(auth.application_credential_secret) and O(auth.token) are hidden in the output.
    type: dict
    suboptions:
      auth_url:
        description:
          - The Keystone URL, for example V(https://keystone.example:5000/v3).
        type: str
      username:
        description:
          - The user name.
        type: str
      user_id:
        description:
          - The user ID, instead of O(auth.username).
        type: str
      password:
        description:
          - The password of the user.
        type: str
      user_domain_name:
        description:
          - The domain of the user, by name.
        type: str
      user_domain_id:
        description:
          - The domain of the user, by ID.
        type: str
      project_name:
        description:
          - The project the token is scoped to; keys are ordered and found there.
        type: str
      project_id:
        description:
          - The project ID, instead of O(auth.project_name).
        type: str
      project_domain_name:
        description:
          - The domain of the project, by name.
        type: str
      project_domain_id:
        description:
          - The domain of the project, by ID.
        type: str
      domain_name:
        description:
          - A domain scope, by name.
        type: str
      domain_id:
        description:
          - A domain scope, by ID.
        type: str
      system_scope:
        description:
          - A system scope, for example V(all).
        type: str
      trust_id:
        description:
          - A trust to authenticate with.
        type: str
      application_credential_id:
        description:
          - An application credential ID (with O(auth_type=v3applicationcredential)).
        type: str
      application_credential_name:
        description:
          - An application credential name, with O(auth.username) or O(auth.user_id).
        type: str
      application_credential_secret:
        description:
          - The secret of the application credential.
        type: str
      token:
        description:
          - An existing token (with O(auth_type=v3token)).
        type: str
  auth_type:
    description:
      - The keystoneauth1 plugin, for example V(password) (the default) or V(v3applicationcredential).
    type: str
  region_name:
    description:
      - The region whose C(key-manager) endpoint is used.
    type: str
  interface:
    description:
      - The endpoint interface of the Keystone catalog.
    type: str
    default: public
    choices: [public, internal, admin]
    aliases: [endpoint_type]
  validate_certs:
    description:
      - Whether to verify TLS certificates. Defaults to the cloud's setting, which defaults to V(true).
    type: bool
    aliases: [verify]
  ca_cert:
    description:
      - A CA bundle to verify Keystone and Barbican with.
    type: path
    aliases: [cacert]
  client_cert:
    description:
      - A client certificate for TLS client authentication.
    type: path
    aliases: [cert]
  client_key:
    description:
      - The key of O(client_cert).
    type: path
    aliases: [key]
  api_timeout:
    description:
      - Seconds to wait for one HTTP request.
    type: int
  endpoint_override:
    description:
      - The Barbican URL, for example V(https://barbican.example:9311), instead of the catalog's C(key-manager) endpoint.
    type: str
  allow_insecure_http:
    description:
      - Accept a plain C(http://) O(auth.auth_url) or O(endpoint_override) on a host other than this one's loopback
        (C(127.0.0.0/8), C(::1), C(localhost)). Without it the module refuses such a URL, since tokens, passwords and
        key payloads would cross the network in clear.
    type: bool
    default: false
requirements:
  - python-barbicanclient
  - keystoneauth1
  - openstacksdk
'''
