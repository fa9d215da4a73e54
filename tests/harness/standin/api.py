"""Routes of the stand-in: health, metrics, version, discovery, and the resource paths."""

import logging

from tests.harness.standin.server import VERSION
from tests.harness.standin.store import ApiError

LOG = logging.getLogger("kube-apiserver-standin.api")
_VERBS = ["create", "delete", "get", "list", "update"]


def _method_not_allowed(method, path):
    return ApiError(405, "MethodNotAllowed", f"the kube-apiserver stand-in does not serve {method} {path}")


class Api:
    """``handle(method, path, query, read_body)`` -> ``(code, body, content type)``; raises ApiError."""

    def __init__(self, standin):
        self.standin = standin

    # ------------------------------------------------------------ health

    def _checks(self, endpoint):
        checks = [("ping", lambda: None), ("etcd", self._etcd_check)]
        if endpoint != "livez":
            checks.extend(self.standin.encryption.health_checks())
        return checks

    def _etcd_check(self):
        try:
            self.standin.etcd.revision()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return str(exc)
        return None

    def health(self, endpoint, check_name, query):
        checks = self._checks(endpoint)
        if check_name:
            for name, check in checks:
                if name == check_name:
                    error = check()
                    if error:
                        return 500, f"internal server error: {error}\n", "text/plain; charset=utf-8"
                    return 200, "ok", "text/plain; charset=utf-8"
            raise ApiError(404, "NotFound", f"no {endpoint} check named {check_name}")
        excluded = set(query.get("exclude", "").split(",")) if "exclude" in query else set()
        lines, failed = [], False
        for name, check in checks:
            if name in excluded:
                lines.append(f"[+]{name} excluded: ok")
                continue
            error = check()
            if error:
                failed = True
                lines.append(f"[-]{name} failed: reason withheld")
                LOG.warning("%s check %s failed: %s", endpoint, name, error)
            else:
                lines.append(f"[+]{name} ok")
        if failed:
            return 500, "\n".join(lines + [f"{endpoint} check failed"]) + "\n", "text/plain; charset=utf-8"
        if "verbose" in query:
            return 200, "\n".join(lines + [f"{endpoint} check passed"]) + "\n", "text/plain; charset=utf-8"
        return 200, "ok", "text/plain; charset=utf-8"

    # ------------------------------------------------------------ discovery

    def _resource_list(self, group, version):
        resources = [resource for resource in self.standin.store.resources.values()
                     if resource.group == group and resource.version == version]
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": resources[0].api_version,
                "resources": [{"name": resource.plural, "singularName": resource.kind.lower(), "namespaced": resource.namespaced,
                               "kind": resource.kind, "verbs": _VERBS} for resource in resources]}

    def _groups(self):
        groups = {}
        for resource in self.standin.store.resources.values():
            if resource.group:
                groups.setdefault(resource.group, []).append(resource.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": group, "versions": [{"groupVersion": f"{group}/{version}", "version": version} for version in sorted(set(versions))],
             "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]}}
            for group, versions in sorted(groups.items())]}

    # ------------------------------------------------------------ routing

    def handle(self, method, path, query, read_body):
        parts = path.strip("/").split("/") if path != "/" else []
        if parts and parts[0] in ("healthz", "livez", "readyz") and len(parts) <= 2:
            if method != "GET":
                raise _method_not_allowed(method, path)
            return self.health(parts[0], parts[1] if len(parts) == 2 else None, query)
        if method == "GET" and path == "/metrics":
            return 200, self.standin.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8"
        if method == "GET" and path == "/version":
            return 200, VERSION, "application/json"
        if method == "GET" and path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.standin.host}:{self.standin.port}"}]}, "application/json"
        if method == "GET" and path == "/apis":
            return 200, self._groups(), "application/json"
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            if method != "GET":
                raise _method_not_allowed(method, path)
            return 200, self._resource_list(group, version), "application/json"
        return self._resource_request(method, path, group, version, rest, query, read_body)

    def _resource_request(self, method, path, group, version, rest, query, read_body):
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 2:
            raise ApiError(404, "NotFound", f"the kube-apiserver stand-in serves no subresource ({path})")
        store = self.standin.store
        resource = store.resource(group, version, rest[0])
        if resource is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if resource.namespaced and len(rest) == 2 and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if "watch" in query and query.get("watch", "").lower() not in ("", "0", "false"):
            raise ApiError(405, "MethodNotAllowed", "the kube-apiserver stand-in does not serve watch")
        if len(rest) == 1:
            if method == "GET":
                limit = query.get("limit") or "0"
                if not limit.isdigit():
                    raise ApiError(400, "BadRequest", f"limit {limit!r} is not a non-negative integer")
                return 200, store.list(resource, namespace, int(limit), query.get("continue"), query.get("labelSelector"),
                                       query.get("fieldSelector")), "application/json"
            if method == "POST" and (namespace is not None or not resource.namespaced):
                return 201, store.create(resource, namespace, read_body()), "application/json"
            raise _method_not_allowed(method, path)
        name = rest[1]
        if method == "GET":
            return 200, store.get(resource, namespace, name), "application/json"
        if method == "PUT":
            return 200, store.update(resource, namespace, name, read_body()), "application/json"
        if method == "DELETE":
            return 200, store.delete(resource, namespace, name, read_body()), "application/json"
        raise _method_not_allowed(method, path)
