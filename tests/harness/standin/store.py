"""Objects in etcd the way kube-apiserver's generic registry keeps them.

- key ``<etcd prefix>/<resource path>/<namespace>/<name>`` (``registry_prefix``
  of the collection's ``_kms_storage``), value = the encryption chain's
  transform of the encoded object;
- new objects are encoded as JSON (the stand-in behaves like
  ``--storage-media-type=application/json``); protobuf-encoded Secrets and
  ConfigMaps written by a real kube-apiserver are read too;
- resourceVersion = the etcd mod_revision; an update carrying another one is a
  409 Conflict; writes are compare-and-swap on the revision read;
- an update that changes nothing is not written, unless the stored value is
  stale (read by a provider that is not first, or under another KMS key_id):
  then it is written again under the first provider, which is what makes
  "read and write back unchanged" a re-encryption;
- lists are paged with ``limit`` / ``continue`` at one etcd revision.
"""

import base64
import binascii
import datetime
import json
import secrets as random_source
import uuid
from typing import NamedTuple

from tests.harness.standin import k8s_protobuf
from tests.harness.standin.collection import module_util
from tests.harness.standin.encryption import TransformError, parse_group_resource
from tests.harness.standin.etcdkv import EtcdError, is_compacted, prefix_end

storage = module_util("_kms_storage")


class ResourceType(NamedTuple):
    """A resource the stand-in serves."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def name(self):
        """As an EncryptionConfiguration names it: ``secrets``, ``widgets.example.com``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def builtin(self):
        return not self.group


BUILTIN_RESOURCES = (
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap"),
)


def parse_custom_resource(text):
    """``widgets.example.com/v1/Widget`` (namespaced) or ``.../Widget/cluster`` -> ResourceType."""
    parts = text.split("/")
    if len(parts) not in (3, 4) or "." not in parts[0] or not all(parts) or (len(parts) == 4 and parts[3] not in ("namespaced", "cluster")):
        raise ValueError(f"--standin-custom-resource {text!r}: write <plural>.<group>/<version>/<Kind>[/cluster]")
    group, plural = parse_group_resource(parts[0])
    return ResourceType(group, parts[1], plural, parts[2], len(parts) == 3 or parts[3] == "namespaced")


class ApiError(Exception):
    """An API error answered as a ``Status`` object."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self):
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def _not_found(resource, name):
    return ApiError(404, "NotFound", f'{resource.name} "{name}" not found', {"name": name, "group": resource.group, "kind": resource.plural})


def _conflict(resource, name):
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.name} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": name, "group": resource.group, "kind": resource.plural})


def _internal(error):
    return ApiError(500, "InternalError", f"Internal error occurred: {error}", {"causes": [{"message": str(error)}]})


def _bad_request(message):
    return ApiError(400, "BadRequest", message)


def _invalid(resource, name, message):
    return ApiError(422, "Invalid", f'{resource.kind} "{name}" is invalid: {message}', {"name": name, "group": resource.group, "kind": resource.kind})


def encode(obj):
    """The stored form: JSON, keys sorted, so that an unchanged object encodes to the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode(plaintext):
    if plaintext.startswith(k8s_protobuf.MAGIC):
        return k8s_protobuf.decode(plaintext)
    if plaintext.startswith(b"{"):
        return json.loads(plaintext)
    raise ValueError("the stored object is neither JSON nor protobuf (CBOR is not read by the stand-in)")


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generated_name(prefix):
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return prefix + "".join(random_source.choice(alphabet) for _position in range(5))


def _parse_selector(text, what):
    """Equality-based selector terms: ``(key, op, value)`` with op in =, !=, exists, !exists."""
    terms = []
    for raw in filter(None, (part.strip() for part in (text or "").split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in raw:
            key, value = raw.split("==", 1) if "==" in raw else raw.split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        elif raw.startswith("!"):
            terms.append((raw[1:].strip(), "!exists", None))
        elif what == "label":
            terms.append((raw, "exists", None))
        else:
            raise _bad_request(f"invalid field selector {text!r}: use field=value or field!=value")
    return terms


def _matches(terms, values):
    for key, op, value in terms:
        present = key in values
        if (op == "=" and values.get(key) != value) or (op == "!=" and values.get(key) == value) \
                or (op == "exists" and not present) or (op == "!exists" and present):
            return False
    return True


class ObjectStore:
    """CRUD on etcd through the encryption chain of each resource."""

    def __init__(self, etcd, encryption, resources, etcd_prefix="/registry"):
        self.etcd = etcd
        self.encryption = encryption
        self.resources = {(resource.group, resource.plural): resource for resource in resources}
        self.etcd_prefix = etcd_prefix
        self.writes = 0

    def resource(self, group, version, plural):
        resource = self.resources.get((group, plural))
        if resource is None or resource.version != version:
            return None
        return resource

    def prefix(self, resource, namespace=None):
        prefix = storage.registry_prefix(resource.name, self.etcd_prefix)
        return f"{prefix}{namespace}/" if namespace and resource.namespaced else prefix

    def key(self, resource, namespace, name):
        return f"{self.prefix(resource, namespace)}{name}"

    def _chain(self, resource):
        return self.encryption.chain_for(resource.group, resource.plural)

    def read_value(self, resource, key, value):
        """``(object, plaintext, stale, stored)`` of one stored value; ApiError 500 when it cannot be read."""
        try:
            plaintext, stale, stored = self._chain(resource).read(value, key)
            obj = decode(plaintext)
        except (TransformError, ValueError) as exc:
            raise _internal(f"unable to transform key {key!r}: {exc}") from None
        return obj, plaintext, stale, stored

    def _present(self, resource, obj, mod_revision, in_list=False):
        obj = dict(obj)
        obj["metadata"] = dict(obj.get("metadata") or {})
        obj["metadata"]["resourceVersion"] = str(mod_revision)
        if in_list and resource.builtin:
            obj.pop("apiVersion", None)
            obj.pop("kind", None)
        else:
            obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        return obj

    # ------------------------------------------------------------ reads

    def get(self, resource, namespace, name):
        key = self.key(resource, namespace, name)
        found = self.etcd.get(key)
        if found is None:
            raise _not_found(resource, name)
        obj, _plaintext, _stale, _stored = self.read_value(resource, key, found[0])
        return self._present(resource, obj, found[1])

    def list(self, resource, namespace=None, limit=0, continue_token=None, label_selector=None, field_selector=None):
        prefix = self.prefix(resource, namespace)
        end = prefix_end(prefix)
        revision = 0
        start = prefix
        if continue_token:
            start, revision = self._decode_continue(continue_token, prefix)
        labels = _parse_selector(label_selector, "label")
        fields = _parse_selector(field_selector, "field")
        items, next_key, remaining = [], None, None
        while True:
            try:
                kvs, more, count, header_revision = self.etcd.range(start, end, limit=limit, revision=revision)
            except EtcdError as exc:
                if not is_compacted(exc):
                    raise
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent list result. "
                               "You can start a new list without the continue parameter.") from None
            revision = revision or header_revision
            for index, (key, value, mod_revision) in enumerate(kvs):
                obj, _plaintext, _stale, _stored = self.read_value(resource, key, value)
                meta = obj.get("metadata") or {}
                field_values = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}
                if _matches(labels, meta.get("labels") or {}) and _matches(fields, field_values):
                    items.append(self._present(resource, obj, mod_revision, in_list=True))
                if limit and len(items) >= limit and (more or index < len(kvs) - 1):
                    next_key = key
                    if not (labels or fields):
                        remaining = count - index - 1
                    break
            if next_key is not None or not more or not kvs:
                break
            start = kvs[-1][0] + "\0"
        metadata = {"resourceVersion": str(revision)}
        if next_key is not None:
            metadata["continue"] = self._encode_continue(next_key + "\0", prefix, revision)
            if remaining:
                metadata["remainingItemCount"] = remaining
        return {"kind": f"{resource.kind}List", "apiVersion": resource.api_version, "metadata": metadata, "items": items}

    @staticmethod
    def _encode_continue(key, prefix, revision):
        token = {"v": "meta.k8s.io/v1", "rv": revision, "start": key[len(prefix):]}
        return base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token, prefix):
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            start, revision = data["start"], int(data["rv"])
            if data.get("v") != "meta.k8s.io/v1" or ".." in start or start.startswith("/") or revision <= 0:
                raise ValueError
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _bad_request("continue key is not valid: start a new list without the continue parameter") from None
        return prefix + start, revision

    # ------------------------------------------------------------ writes

    def _write(self, resource, key, obj, mod_revision):
        value = self._chain(resource).write(encode(obj), key)
        new_revision = self.etcd.put_revision(key, value, mod_revision)
        if new_revision is not None:
            self.writes += 1
        return new_revision

    def create(self, resource, namespace, body):
        obj = self._checked_body(resource, namespace, body)
        meta = obj["metadata"]
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _invalid(resource, "", "metadata.name: Required value: name or generateName is required")
            meta["name"] = _generated_name(meta["generateName"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if not resource.builtin:
            meta["generation"] = 1
        self._default(resource, obj)
        key = self.key(resource, namespace, meta["name"])
        try:
            revision = self._write(resource, key, obj, 0)
        except TransformError as exc:
            raise _internal(exc) from None
        if revision is None:
            raise ApiError(409, "AlreadyExists", f'{resource.name} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": resource.group, "kind": resource.plural})
        return self._present(resource, obj, revision)

    def update(self, resource, namespace, name, body):
        obj = self._checked_body(resource, namespace, body)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise _bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        wanted_revision = (body.get("metadata") or {}).get("resourceVersion")
        key = self.key(resource, namespace, name)
        found = self.etcd.get(key)
        if found is None:
            raise _not_found(resource, name)
        current, _plaintext, stale, _stored = self.read_value(resource, key, found[0])
        if wanted_revision and str(wanted_revision) != str(found[1]):
            raise _conflict(resource, name)
        current_meta = current.get("metadata") or {}
        if meta.get("uid") and current_meta.get("uid") and meta["uid"] != current_meta["uid"]:
            raise _invalid(resource, name, "metadata.uid: Invalid value: field is immutable")
        for field in ("uid", "creationTimestamp", "generation"):
            if field in current_meta:
                meta[field] = current_meta[field]
        if current.get("immutable") and any(obj.get(field) != current.get(field) for field in ("data", "binaryData", "immutable")):
            raise _invalid(resource, name, "data: Forbidden: field is immutable when `immutable` is set")
        self._default(resource, obj)
        if not resource.builtin and {k: v for k, v in obj.items() if k not in ("metadata", "status")} != \
                {k: v for k, v in current.items() if k not in ("metadata", "status")}:
            meta["generation"] = int(current_meta.get("generation") or 0) + 1
        # kube-apiserver compares the new encoding with the stored one; the stand-in encodes JSON where a real
        # apiserver may have stored protobuf, so it compares the decoded objects' canonical encodings.
        if not stale and encode(obj) == encode(current):
            return self._present(resource, current, found[1])
        try:
            revision = self._write(resource, key, obj, found[1])
        except TransformError as exc:
            raise _internal(exc) from None
        if revision is None:
            raise _conflict(resource, name)
        return self._present(resource, obj, revision)

    def delete(self, resource, namespace, name, options=None):
        key = self.key(resource, namespace, name)
        found = self.etcd.get(key)
        if found is None:
            raise _not_found(resource, name)
        current, _plaintext, _stale, _stored = self.read_value(resource, key, found[0])
        preconditions = (options or {}).get("preconditions") or {}
        uid = (current.get("metadata") or {}).get("uid")
        if preconditions.get("resourceVersion") and str(preconditions["resourceVersion"]) != str(found[1]):
            raise _conflict(resource, name)
        if preconditions.get("uid") and preconditions["uid"] != uid:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.name} "{name}": Precondition failed: '
                           f"UID in precondition: {preconditions['uid']}, UID in object meta: {uid}")
        if not self.etcd.delete_if(key, found[1]):
            raise _conflict(resource, name)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": uid}}

    def _checked_body(self, resource, namespace, body):
        if not isinstance(body, dict):
            raise _bad_request("the request body is not a JSON object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if (kind and kind != resource.kind) or (api_version and api_version != resource.api_version):
            raise _bad_request(f"the body is a {api_version} {kind}, the URL is for {resource.api_version} {resource.kind}")
        obj = json.loads(json.dumps(body))
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        for field in ("resourceVersion", "selfLink", "managedFields"):
            meta.pop(field, None)
        if resource.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
        return obj

    @staticmethod
    def _default(resource, obj):
        if resource.builtin and resource.kind == "Secret":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                obj["data"] = dict(obj.get("data") or {})
                for key, value in string_data.items():
                    obj["data"][key] = base64.b64encode(str(value).encode()).decode()
            for key, value in (obj.get("data") or {}).items():
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise _invalid(resource, obj["metadata"].get("name", ""), f"data[{key}]: Invalid value: not base64") from None
        for field in ("data", "binaryData", "stringData"):
            if field in obj and not obj[field]:
                del obj[field]
