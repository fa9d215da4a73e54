# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Kubernetes API access for the teapot.kms modules.  Private to this collection: no stable API.

The ``kubernetes`` Python client loads the kubeconfig (client certificates,
tokens, exec plugins) and carries the HTTPS requests; objects travel as
plain JSON dicts, never through the client's typed models, because a typed
round trip drops every field the model does not know and an unchanged update
would then change the object.
"""

import json
import re
import traceback
from urllib.parse import quote, urlencode

try:
    import urllib3
    from kubernetes import config as kube_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None

DEFAULT_KUBECONFIG = "/etc/kubernetes/admin.conf"
# kubectl's rule for `<resource>.<version>.<group>`.
_VERSION = re.compile(r"^v[0-9]+((alpha|beta)[0-9]+)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KubeError(Exception):
    """A request that failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message, status=0):
        super().__init__(message)
        self.status = status


class Resource:
    """A Kubernetes resource as the EncryptionConfiguration names it (``secrets``, ``widgets.example.com``)."""

    def __init__(self, name, group, version, plural):
        self.name = name
        self.group = group
        self.version = version
        self.plural = plural

    @classmethod
    def parse(cls, name):
        """``secrets`` (core), ``<plural>.<group>`` or ``<plural>.<version>.<group>``; version None = discover."""
        text = str(name).strip().lower()
        if not text or "*" in text:
            raise ValueError(f"resource {name!r}: name each resource (for example secrets or widgets.example.com); "
                             "wildcards are not expanded")
        plural, _dot, rest = text.partition(".")
        if not _DNS_LABEL.match(plural) or (rest and not all(_DNS_LABEL.match(part) for part in rest.split("."))):
            raise ValueError(f"resource {name!r} is not a resource name such as secrets, configmaps or widgets.example.com")
        if not rest:
            return cls(text, "", "v1", plural)
        head, _dot, tail = rest.partition(".")
        if tail and _VERSION.match(head):
            return cls(f"{plural}.{tail}", tail, head, plural)
        return cls(text, rest, None, plural)

    @property
    def api_prefix(self):
        return f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"

    def list_path(self):
        return f"{self.api_prefix}/{self.plural}"

    def object_path(self, namespace, name):
        if namespace:
            return f"{self.api_prefix}/namespaces/{quote(namespace, safe='')}/{self.plural}/{quote(name, safe='')}"
        return f"{self.api_prefix}/{self.plural}/{quote(name, safe='')}"


def object_key(obj):
    """``namespace/name`` (or ``name`` when cluster-scoped): the order in which the apiserver lists."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata.get('name')}" if namespace else str(metadata.get("name"))


def status_message(body):
    """The ``message`` of a Kubernetes ``Status`` body, or the body's start."""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or body)[:500]
    return str(body or "")[:500]


class KubeClient:
    """JSON requests to the API server named by a kubeconfig."""

    def __init__(self, kubeconfig=DEFAULT_KUBECONFIG, context=None, timeout=30):
        try:
            self.api_client = kube_config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            raise KubeError(f"cannot load the kubeconfig {kubeconfig}: {exc}; set kubeconfig (and context) to a "
                            "working configuration, for example /etc/kubernetes/admin.conf on a control-plane node") from None
        self.kubeconfig = kubeconfig
        self.configuration = self.api_client.configuration
        self.server = self.configuration.host
        self.timeout = timeout

    def _headers(self):
        headers = {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": "teapot.kms"}
        # auth_settings() asks the refresh hook (exec plugins, expiring tokens) for a current token.
        for setting in self.configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    def request(self, method, path, query=None, body=None):
        """``(status, parsed JSON body or None, headers)``; raises KubeError only when no answer came."""
        url = self.server + path
        if query:
            url += "?" + urlencode([(key, value) for key, value in query.items() if value not in (None, "")])
        try:
            response = self.api_client.rest_client.request(method, url, headers=self._headers(), body=body,
                                                           _request_timeout=self.timeout)
            status, headers = response.status, response.headers if hasattr(response, "headers") else response.getheaders()
            # Clients before 37 read the body themselves and raise on errors; 37 and later do neither.
            data = response.data if response.data is not None else response.read()
        except ApiException as exc:
            if not exc.status:
                raise KubeError(f"cannot reach the Kubernetes API at {self.server}: {exc.reason}") from None
            status, headers, data = exc.status, exc.headers or {}, exc.body
        except urllib3.exceptions.HTTPError as exc:
            raise KubeError(f"cannot reach the Kubernetes API at {self.server}: {exc}; check that kube-apiserver "
                            f"runs and that the server of {self.kubeconfig} is right") from None
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        if status in (401, 403):
            raise KubeError(f"the Kubernetes API at {self.server} answered {method} {path} with {status}: "
                            f"{status_message(parsed)}; the credentials of {self.kubeconfig} must allow list, get "
                            "and update on the resources", status)
        return status, parsed, headers

    def preferred_version(self, group, plural):
        """The preferred version of ``group``, from API discovery (``/apis``)."""
        status, body, _headers = self.request("GET", "/apis")
        if status == 200 and isinstance(body, dict):
            for entry in body.get("groups") or []:
                if entry.get("name") == group and (entry.get("preferredVersion") or {}).get("version"):
                    return entry["preferredVersion"]["version"]
            raise KubeError(f"the Kubernetes API at {self.server} does not serve the API group {group} of "
                            f"{plural}.{group}: check the resource name (is its CustomResourceDefinition installed?)", 404)
        raise KubeError(f"API discovery (/apis) at {self.server} answered {status}: {status_message(body)}; give the "
                        f"version in the resource name, as {plural}.<version>.{group}", status)
