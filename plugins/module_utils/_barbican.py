# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Barbican client shared by the teapot.kms modules.  Private to this collection: no stable API."""

import base64
import datetime
import ipaddress
import time
import traceback
import uuid
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from barbicanclient import client as barbican_client
    from barbicanclient import exceptions as barbican_exceptions
    from keystoneauth1 import exceptions as ks_exceptions
    from keystoneauth1 import loading as ks_loading
    from keystoneauth1 import session as ks_session
    import openstack.config
    import openstack.exceptions
except ImportError:
    HAS_CLIENT_LIBS = False
    CLIENT_LIBS_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CLIENT_LIBS = True
    CLIENT_LIBS_IMPORT_ERROR = None

# The key_id rule is the daemon's (daemon/src/teapot_kms_plugin/wrapping.py:key_id_for): this
# prefix, then the secret's UUID.  Mirrored here only for modules that run where the daemon is not
# installed (barbican_key on the controller); tests/unit/plugins/modules/test_barbican_key.py
# (test_key_id_rule_is_the_daemons) holds the two together.
KEY_ID_PREFIX = "barbican:"
PAYLOAD_CONTENT_TYPE = "application/octet-stream"
PAGE_SIZE = 100
_PROJECT_SCOPE_FIELDS = ("project_name", "project_id", "project_domain_name", "project_domain_id",
                         "domain_name", "domain_id", "tenant_name", "tenant_id")


AUTH_SECRET_FIELDS = ("password", "application_credential_secret", "token")
AUTH_FIELDS = ("auth_url", "username", "user_id", "password", "user_domain_name", "user_domain_id",
               "project_name", "project_id", "project_domain_name", "project_domain_id", "domain_name", "domain_id",
               "system_scope", "trust_id", "application_credential_id", "application_credential_name",
               "application_credential_secret", "token")

# A cloud given as a dict is a whole clouds.yaml entry: like openstack.cloud's
# modules, refuse these options next to it rather than pick a winner.
_CLOUD_DICT_EXCLUSIVE_OPTIONS = ("auth", "auth_type", "region_name", "validate_certs", "ca_cert", "client_cert",
                                 "client_key", "api_timeout")


def auth_argument_spec():
    """Connection options, named like openstack.cloud's.

    ``auth`` lists its fields so that only the secret ones are hidden from
    the output: a whole no_log dict would mask every string equal to the
    user or project name anywhere in the results.
    """
    auth_options = {field: dict(type="str", no_log=field in AUTH_SECRET_FIELDS) for field in AUTH_FIELDS}
    return dict(
        cloud=dict(type="raw"),
        auth=dict(type="dict", options=auth_options),
        auth_type=dict(type="str"),
        region_name=dict(type="str"),
        interface=dict(type="str", default="public", choices=["public", "internal", "admin"], aliases=["endpoint_type"]),
        validate_certs=dict(type="bool", aliases=["verify"]),
        ca_cert=dict(type="path", aliases=["cacert"]),
        client_cert=dict(type="path", aliases=["cert"]),
        client_key=dict(type="path", no_log=False, aliases=["key"]),
        api_timeout=dict(type="int"),
        endpoint_override=dict(type="str"),
        allow_insecure_http=dict(type="bool", default=False),
    )


def _is_loopback_host(host):
    if not host:
        return False
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def insecure_http_refusal(url, what):
    """Why ``url`` may not be used without allow_insecure_http, or None when it may."""
    parsed = urlsplit(url or "")
    if parsed.scheme.lower() != "http" or _is_loopback_host(parsed.hostname):
        return None
    return (f"{what} {url!r} is plain http to {parsed.hostname}: tokens, passwords and key payloads would cross "
            "the network in clear. Use the https:// URL (ca_cert for a private CA, such as the collection's "
            "tls_ca_dir/ca.crt), or set allow_insecure_http: true to accept plain http")


def secret_uuid(href):
    """The UUID at the end of a secret href, in canonical form."""
    return str(uuid.UUID(href.rstrip("/").rsplit("/", 1)[-1]))


def key_id_for(href):
    """The key_id the KMS plugin reports for the secret ``href``."""
    return KEY_ID_PREFIX + secret_uuid(href)


def isoformat(value):
    """A Barbican timestamp (datetime, string or None) as an ISO 8601 UTC string."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = parse_time(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).isoformat()


def parse_time(text):
    """Parse an ISO 8601 timestamp; a naive one is taken as UTC."""
    parsed = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed


def _hide_secrets(module, value):
    """Keep the secret fields of a clouds.yaml-style dict out of the module's output."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in AUTH_SECRET_FIELDS and isinstance(item, str) and item:
                module.no_log_values.add(item)
            else:
                _hide_secrets(module, item)
    elif isinstance(value, list):
        for item in value:
            _hide_secrets(module, item)


class BarbicanError(Exception):
    """A failure already described for the user."""


class BarbicanModule:
    """An AnsibleModule with a python-barbicanclient client on a keystoneauth1 session.

    A module subclasses this, sets ``argument_spec`` (merged with the
    connection options) and implements ``run()``.
    """

    argument_spec = {}
    module_kwargs = {}

    def __init__(self):
        spec = auth_argument_spec()
        spec.update(self.argument_spec)
        kwargs = dict(self.module_kwargs)
        kwargs.setdefault("supports_check_mode", True)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params
        if isinstance(self.params["cloud"], dict):
            _hide_secrets(self.module, self.params["cloud"])
        self._client = None
        self._cloud_region = None

    # -- connection ----------------------------------------------------------

    def _region_kwargs(self):
        params = self.params
        kwargs = {}
        if params["auth"]:
            kwargs["auth"] = {key: value for key, value in params["auth"].items() if value is not None}
        if params["auth_type"]:
            kwargs["auth_type"] = params["auth_type"]
        if params["region_name"]:
            kwargs["region_name"] = params["region_name"]
        kwargs["interface"] = params["interface"]
        if params["validate_certs"] is not None:
            kwargs["verify"] = params["validate_certs"]
        for option, name in (("ca_cert", "cacert"), ("client_cert", "cert"), ("client_key", "key"), ("api_timeout", "api_timeout")):
            if params[option] is not None:
                kwargs[name] = params[option]
        return kwargs

    def _refuse_options_beside_cloud_dict(self):
        params = self.params
        given = [name for name in _CLOUD_DICT_EXCLUSIVE_OPTIONS if params[name] is not None]
        if params["interface"] != "public":
            given.append("interface")
        if given:
            raise BarbicanError(
                f"cloud is a dict, a whole clouds.yaml entry, and cannot be combined with {', '.join(given)}: "
                "put those fields into the cloud dict, or give cloud as the name of a clouds.yaml entry "
                "(the options next to a name override the entry's)")

    def cloud_region(self):
        if self._cloud_region is None:
            cloud = self.params["cloud"]
            kwargs = self._region_kwargs()
            try:
                if isinstance(cloud, dict):
                    self._refuse_options_beside_cloud_dict()
                    kwargs.update(cloud)
                    cloud = None
                elif cloud is not None and not isinstance(cloud, str):
                    raise BarbicanError("cloud must be the name of a clouds.yaml entry or a dict of its fields")
                self._cloud_region = openstack.config.OpenStackConfig().get_one(cloud=cloud, **kwargs)
            except BarbicanError:
                raise
            except openstack.exceptions.ConfigException as exc:
                raise BarbicanError(f"cannot use the OpenStack configuration: {exc}") from None
            except ks_exceptions.MissingRequiredOptions as exc:
                names = ", ".join(sorted(option.dest for option in exc.options))
                raise BarbicanError(f"the auth options are incomplete: missing {names}") from None
            except ks_exceptions.ClientException as exc:
                raise BarbicanError(f"cannot use the auth options: {type(exc).__name__}: {exc}") from None
            if not self.params["allow_insecure_http"]:
                config = self._cloud_region.config
                for url, what in ((config.get("auth", {}).get("auth_url"), "auth.auth_url"),
                                  (self.params["endpoint_override"] or config.get("key_manager_endpoint_override"),
                                   "endpoint_override")):
                    refusal = insecure_http_refusal(url, what)
                    if refusal:
                        self._cloud_region = None
                        raise BarbicanError(refusal)
        return self._cloud_region

    @property
    def client(self):
        if self._client is None:
            region = self.cloud_region()
            session = region.get_session()
            endpoint = self.params["endpoint_override"] or region.config.get("key_manager_endpoint_override")
            try:
                # Building the client negotiates the API microversion: the first request.
                self._client = barbican_client.Client(
                    session=session,
                    endpoint=endpoint,
                    region_name=region.get_region_name("key-manager"),
                    interface=region.get_interface("key-manager") or self.params["interface"],
                    service_type="key-manager",
                )
            except Exception as exc:  # pylint: disable=broad-exception-caught
                raise BarbicanError(self.describe(exc, "connecting to Barbican")) from None
        return self._client

    def _auth_url(self):
        return self.cloud_region().config.get("auth", {}).get("auth_url", "(no auth_url)")

    def _scope_diagnosis(self):
        """After a 401: do the credentials work without the project scope?"""
        region = self.cloud_region()
        auth = dict(region.config.get("auth") or {})
        auth_type = region.config.get("auth_type") or "password"
        if auth_type not in ("password", "v3password") or not any(auth.get(name) for name in _PROJECT_SCOPE_FIELDS):
            return None
        project = auth.get("project_name") or auth.get("project_id") or auth.get("tenant_name") or auth.get("tenant_id")
        domain = auth.get("project_domain_name") or auth.get("project_domain_id") or "Default"
        for name in _PROJECT_SCOPE_FIELDS:
            auth.pop(name, None)
        try:
            plugin = ks_loading.get_plugin_loader("v3password").load_from_options(**auth)
            verify, cert = region.get_requests_verify_args()
            unscoped = ks_session.Session(auth=plugin, verify=verify, cert=cert)
            unscoped.get_token()
        except Exception:  # pylint: disable=broad-exception-caught
            return None
        return (f"Keystone at {self._auth_url()} accepted the credentials but refused a token for project {project!r} "
                f"(domain {domain!r}): the project does not exist or the user has no role on it; check auth.project_name")

    def describe(self, exc, action):
        """A one-line description of ``exc`` during ``action`` that carries no secret."""
        if isinstance(exc, BarbicanError):
            return str(exc)
        if isinstance(exc, (ks_exceptions.Unauthorized, barbican_exceptions.HTTPAuthError)):
            diagnosis = self._scope_diagnosis()
            if diagnosis:
                return f"{action} failed: {diagnosis}"
            return (f"{action} failed: Keystone at {self._auth_url()} rejected the credentials (HTTP 401): "
                    "check auth.username, auth.password and the domain names")
        if isinstance(exc, ks_exceptions.EndpointNotFound):
            return (f"{action} failed: the Keystone catalog has no key-manager endpoint for region "
                    f"{self.params['region_name'] or '(any)'} and interface {self.params['interface']}: "
                    "set region_name/interface or endpoint_override")
        if isinstance(exc, ks_exceptions.SSLError):
            return (f"{action} failed: the TLS handshake failed, most likely on a certificate that is not trusted: "
                    f"set ca_cert to the CA that signed the service's certificate: {exc}")
        if isinstance(exc, (ks_exceptions.ConnectFailure, ks_exceptions.ConnectTimeout, ks_exceptions.DiscoveryFailure)):
            return f"{action} failed: cannot reach the service: {exc}"
        if isinstance(exc, barbican_exceptions.SecretHasConsumers):
            return f"{action} failed: Barbican refuses to delete a secret that has consumers (use force: true)"
        if isinstance(exc, barbican_exceptions.HTTPError):
            status = getattr(exc, "status_code", None)
            if status == 403:
                return (f"{action} failed: Barbican refused it (HTTP 403): the user needs the member role "
                        f"in the project (or an ACL grant): {exc}")
            return f"{action} failed: Barbican answered HTTP {status}: {exc}"
        if isinstance(exc, ks_exceptions.HttpError):
            return f"{action} failed: Keystone answered HTTP {exc.http_status}: {exc.message}"
        if isinstance(exc, ks_exceptions.ClientException):
            return f"{action} failed: {type(exc).__name__}: {exc}"
        return f"{action} failed: unexpected {type(exc).__name__}: {exc}"

    def call(self, action, func, *args, **kwargs):
        """Run one client call; turn any failure into a BarbicanError that says what failed."""
        try:
            return func(*args, **kwargs)
        except BarbicanError:
            raise
        except Exception as exc:  # pylint: disable=broad-exception-caught
            raise BarbicanError(self.describe(exc, action)) from None

    # -- secrets -----------------------------------------------------------

    def find_secrets(self, name=None, secret_type=None):
        """Every secret of the project (with ``name`` exactly, when given), oldest first."""
        found = []
        offset = 0
        while True:
            page = self.call("listing secrets", self.client.secrets.list, limit=PAGE_SIZE, offset=offset,
                             name=name, secret_type=secret_type, sort="created:asc")
            found.extend(secret for secret in page if name is None or secret.name == name)
            if len(page) < PAGE_SIZE:
                return found
            offset += PAGE_SIZE

    def read_acl(self, href):
        acl = self.call(f"reading the ACL of {href}", self.client.acls.get, href)
        read = acl.get("read")
        if read is None:
            return {"users": [], "project_access": True}
        return {"users": sorted(read.users or []), "project_access": read.project_access is not False}

    def set_read_acl(self, href, users, project_access):
        acl = self.client.acls.create(entity_ref=href, users=list(users), project_access=project_access)
        self.call(f"setting the ACL of {href}", acl.submit)

    def list_consumers(self, href):
        consumers = []
        offset = 0
        while True:
            page = self.call(f"listing the consumers of {href}", self.client.secrets.list_consumers, href,
                             limit=PAGE_SIZE, offset=offset)
            consumers.extend({"service": item.service, "resource_type": item.resource_type, "resource_id": item.resource_id}
                             for item in page)
            if len(page) < PAGE_SIZE:
                return sorted(consumers, key=lambda item: (item["service"], item["resource_type"], item["resource_id"]))
            offset += PAGE_SIZE

    def register_consumer(self, href, consumer):
        self.call(f"registering consumer {consumer['service']}/{consumer['resource_type']}/{consumer['resource_id']} on {href}",
                  self.client.secrets.register_consumer, href, consumer["service"], consumer["resource_type"], consumer["resource_id"])

    def order_key(self, name, algorithm, bit_length, mode, expiration, timeout):
        """Order a symmetric key and wait until it is ACTIVE; return the secret href."""
        order = self.client.orders.create_key(name=name, algorithm=algorithm, bit_length=bit_length, mode=mode,
                                              payload_content_type=PAYLOAD_CONTENT_TYPE, expiration=expiration)
        order_ref = self.call(f"ordering key {name!r}", order.submit)
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            order = self.call(f"reading order {order_ref}", self.client.orders.get, order_ref)
            if order.status == "ACTIVE":
                return order.secret_ref
            if order.status == "ERROR":
                raise BarbicanError(f"order {order_ref} for key {name!r} failed in Barbican: "
                                    f"{order.error_status_code} {order.error_reason}")
            if time.monotonic() >= deadline:
                raise BarbicanError(f"order {order_ref} for key {name!r} is still {order.status} after {timeout}s; "
                                    "Barbican's worker may be down (raise timeout to wait longer)")
            time.sleep(delay)
            delay = min(delay * 2, 5)

    def read_payload(self, href):
        """The key bytes, base64-encoded."""
        secret = self.call(f"reading the payload of {href}", self.client.secrets.get, href, payload_content_type=PAYLOAD_CONTENT_TYPE)
        payload = self.call(f"reading the payload of {href}", lambda: secret.payload)
        if isinstance(payload, str):
            payload = payload.encode("latin-1")
        return base64.b64encode(payload).decode("ascii")

    def delete_secret(self, href, force):
        self.call(f"deleting {href}", self.client.secrets.delete, href, force=force)

    def describe_secret(self, secret, with_acl=True, with_consumers=True):
        """The non-secret facts of a Barbican secret, as the modules return them."""
        href = secret.secret_ref
        # A secret from secrets.get() loads its metadata lazily, on first attribute access.
        self.call(f"reading {href}", lambda: secret.name)
        info = {
            "name": secret.name,
            "href": href,
            "uuid": secret_uuid(href),
            "key_id": key_id_for(href),
            "created": isoformat(secret.created),
            "expiration": isoformat(secret.expiration),
            "algorithm": secret.algorithm,
            "bit_length": secret.bit_length,
            "mode": secret.mode,
            "secret_type": secret.secret_type,
            "status": secret.status,
        }
        if with_acl:
            info["acl"] = {"read": self.read_acl(href)}
        if with_consumers:
            info["consumers"] = self.list_consumers(href)
        return info

    # -- running -----------------------------------------------------------

    def run(self):
        raise NotImplementedError

    def __call__(self):
        if not HAS_CLIENT_LIBS:
            self.module.fail_json(msg=missing_required_lib("python-barbicanclient, keystoneauth1 and openstacksdk"),
                                  exception=CLIENT_LIBS_IMPORT_ERROR)
        try:
            self.run()
        except BarbicanError as exc:
            self.module.fail_json(msg=str(exc))
