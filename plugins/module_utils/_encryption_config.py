# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""EncryptionConfiguration parsing, provider merge and rendering, without I/O.  Private to this collection: no stable API.

Nothing here ever puts a key's secret into a message: errors name the file, the
position (``resources[0].providers[1]``) and the key name only.
"""

import copy
import hashlib
import json

try:
    import yaml
except ImportError:  # the modules report missing_required_lib('PyYAML')
    yaml = None

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
# What kube-apiserver still reads from older files; written back in the current form.
LEGACY_API_VERSION = "v1"
LEGACY_KIND = "EncryptionConfig"
STATIC_KEY_TYPES = ("aescbc", "aesgcm", "secretbox")
PROVIDER_TYPES = STATIC_KEY_TYPES + ("kms", "identity")
REDACTED = "<redacted>"


class EncryptionConfigError(ValueError):
    """The configuration cannot be used; the message says where and what to fix, never a secret."""


def _yaml_error(source, exc):
    # PyYAML's own message quotes the offending line, which may be a key's secret: keep the position only.
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return EncryptionConfigError(f"{source}: not valid YAML{where}: {problem}")


def _require(condition, source, where, message):
    if not condition:
        raise EncryptionConfigError(f"{source}: {where}: {message}")


def provider_type(provider):
    return next(iter(provider))


def _check_provider(provider, source, where):
    _require(isinstance(provider, dict) and len(provider) == 1, source, where,
             f"a provider is a mapping with exactly one of {', '.join(PROVIDER_TYPES)}")
    kind = provider_type(provider)
    _require(kind in PROVIDER_TYPES, source, where,
             f"unknown provider type {kind!r} (known: {', '.join(PROVIDER_TYPES)}); it is not carried over blindly "
             "because objects may depend on it")
    body = provider[kind]
    if kind == "identity":
        _require(body is None or body == {}, source, where, "identity takes no settings: write 'identity: {}'")
        provider[kind] = {}
        return
    _require(isinstance(body, dict), source, f"{where}.{kind}", "expected a mapping")
    if kind in STATIC_KEY_TYPES:
        keys = body.get("keys")
        _require(isinstance(keys, list) and keys, source, f"{where}.{kind}.keys", "expected a non-empty list of keys")
        for index, key in enumerate(keys):
            at = f"{where}.{kind}.keys[{index}]"
            _require(isinstance(key, dict), source, at, "expected a mapping with name and secret")
            _require(isinstance(key.get("name"), str) and key["name"], source, at, "the key has no name")
            _require(isinstance(key.get("secret"), str) and key["secret"], source, at + f" ({key['name']})",
                     "the key has no secret")
        return
    # kms
    _require(isinstance(body.get("name"), str) and body["name"], source, f"{where}.kms.name", "a kms provider needs a name")
    _require(body.get("apiVersion", "v1") in ("v1", "v2"), source, f"{where}.kms.apiVersion",
             f"expected v1 or v2, got {body.get('apiVersion')!r}")
    _require(isinstance(body.get("endpoint"), str) and body["endpoint"], source, f"{where}.kms.endpoint",
             "a kms provider needs an endpoint")


def parse(text, source):
    """The ``resources`` entries of an EncryptionConfiguration text, validated; [] for an empty file."""
    if yaml is None:
        raise EncryptionConfigError("PyYAML is required to read an EncryptionConfiguration")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    if document is None:
        return []
    _require(isinstance(document, dict), source, "top level", "expected a mapping (apiVersion, kind, resources)")
    header = (document.get("apiVersion"), document.get("kind"))
    _require(header in ((API_VERSION, KIND), (LEGACY_API_VERSION, LEGACY_KIND)), source, "apiVersion/kind",
             f"expected apiVersion {API_VERSION} and kind {KIND}, got {header[0]!r} and {header[1]!r}")
    entries = document.get("resources") or []
    _require(isinstance(entries, list), source, "resources", "expected a list")
    names = {}
    for index, entry in enumerate(entries):
        where = f"resources[{index}]"
        _require(isinstance(entry, dict), source, where, "expected a mapping with resources and providers")
        resources = entry.get("resources")
        _require(isinstance(resources, list) and resources and all(isinstance(r, str) and r for r in resources),
                 source, f"{where}.resources", "expected a non-empty list of resource names")
        providers = entry.get("providers")
        _require(isinstance(providers, list) and providers, source, f"{where}.providers", "expected a non-empty list")
        for position, provider in enumerate(providers):
            _check_provider(provider, source, f"{where}.providers[{position}]")
            if provider_type(provider) == "kms":
                body = provider["kms"]
                previous = names.setdefault(body["name"], body)
                # kube-apiserver refuses two KMS providers of the same name with different settings.
                _require(previous == body, source, f"{where}.providers[{position}].kms.name",
                         f"the kms provider name {body['name']!r} is used with different settings")
    return entries


def group_of(resource):
    """The API group of a resource name as EncryptionConfiguration writes it ('secrets' -> '')."""
    return resource.split(".", 1)[1] if "." in resource else ""


def covers(pattern, resource):
    """Whether an entry's resource ``pattern`` (name, ``*.group``, ``*.`` or ``*.*``) applies to ``resource``."""
    if pattern == "*.*":
        return True
    if resource.startswith("*."):
        # A wildcard we manage overlaps every entry for a resource of its group.
        return pattern == resource or resource == "*.*" or group_of(pattern) == group_of(resource) or (
            resource == "*." and "." not in pattern)
    if pattern.startswith("*."):
        return group_of(resource) == pattern[2:]
    return pattern == resource


def _overlaps(entry, resources):
    return any(covers(pattern, resource) for pattern in entry["resources"] for resource in resources)


def _writer(entries, resource):
    """The provider that writes ``resource`` under ``entries`` (the first of the first entry covering it)."""
    for entry in entries:
        if any(covers(pattern, resource) for pattern in entry["resources"]):
            return entry["providers"][0]
    return {"identity": {}}


def provider_ref(provider):
    """A short reference: 'kms:NAME', 'aescbc', 'identity' (static providers are referenced by type)."""
    kind = provider_type(provider)
    return f"kms:{provider['kms']['name']}" if kind == "kms" else kind


def describe(provider):
    """What can be said about a provider without its secrets."""
    kind = provider_type(provider)
    body = provider[kind]
    if kind in STATIC_KEY_TYPES:
        return {"type": kind, "keys": [key["name"] for key in body["keys"]]}
    if kind == "kms":
        return {"type": "kms", "name": body["name"], "api_version": body.get("apiVersion", "v1"),
                "endpoint": body["endpoint"]}
    return {"type": kind}


def parse_removal(reference):
    """'aescbc' | 'aescbc:KEY' | 'kms:NAME' | 'identity' -> (type, name or None)."""
    kind, _sep, name = reference.partition(":")
    if kind not in PROVIDER_TYPES or (kind == "kms" and not name) or (kind == "identity" and name):
        raise EncryptionConfigError(
            f"cannot remove {reference!r}: name a provider as aescbc, aescbc:KEYNAME (also aesgcm, secretbox), "
            "kms:NAME or identity")
    return kind, name or None


class _Carried:
    """Providers carried into the managed entry, in the order they first appear, merged by identity."""

    def __init__(self):
        self.providers = []
        self.warnings = []

    def add(self, provider, source):
        kind = provider_type(provider)
        for present in self.providers:
            if provider_type(present) != kind:
                continue
            if kind in STATIC_KEY_TYPES:
                self._merge_keys(present, provider, source)
                return
            if kind == "kms" and present["kms"]["name"] == provider["kms"]["name"]:
                if present != provider:
                    self.warnings.append(
                        f"the kms provider {provider['kms']['name']!r} has other settings in {source}: "
                        "the first one found is kept")
                return
        self.providers.append(copy.deepcopy(provider))

    @staticmethod
    def _merge_keys(present, provider, source):
        kind = provider_type(present)
        known = {key["name"]: key for key in present[kind]["keys"]}
        for key in provider[kind]["keys"]:
            if key["name"] not in known:
                present[kind]["keys"].append(copy.deepcopy(key))
                known[key["name"]] = key
            elif known[key["name"]]["secret"] != key["secret"]:
                # Either secret may be the one some objects were written with: only a person can decide.
                raise EncryptionConfigError(
                    f"{source}: the {kind} key {key['name']!r} has another secret than the same key elsewhere; "
                    "objects written with either would become unreadable: make the files agree by hand")


def _audit_counts(usage):
    """The counts of teapot.kms.secret_encryption_info: {resource: {'TYPE/NAME/KEY_ID': count}}."""
    counts = (usage or {}).get("counts")
    if not isinstance(counts, dict) or not all(isinstance(v, dict) for v in counts.values()):
        raise EncryptionConfigError(
            "audit: give the result of teapot.kms.secret_encryption_info (its counts per resource)")
    return counts


def _count_users(usage, kind, name):
    """Objects that the audit found under a provider (every key of a static type when name is None).

    The audit names each group ``TYPE/NAME/KEY_ID``; a prefix match may only
    count too many (a name with a slash in it), which refuses, never allows.
    """
    prefixes = [f"{t}/" + (f"{name}/" if name else "") for t in (("kms-v1", "kms-v2") if kind == "kms" else (kind,))]
    total, by_resource = 0, {}
    for resource, groups in _audit_counts(usage).items():
        for group, count in groups.items():
            if any(group.startswith(prefix) for prefix in prefixes) and int(count) > 0:
                total += int(count)
                by_resource[resource] = by_resource.get(resource, 0) + int(count)
    return total, by_resource


def _check_usage_covers(usage, resources, reference):
    if usage is None:
        raise EncryptionConfigError(
            f"refusing to remove {reference}: no audit given; run teapot.kms.secret_encryption_info over "
            f"{', '.join(resources)} and pass its result, so that no provider still in use is dropped")
    counts = _audit_counts(usage)
    missing = [resource for resource in resources if resource not in counts]
    if missing:
        raise EncryptionConfigError(
            f"refusing to remove {reference}: the audit did not cover {', '.join(missing)}; audit every resource "
            "the provider serves")
    unparseable = sum(int(groups.get("unparseable/-/-", 0)) for groups in counts.values())
    if unparseable:
        raise EncryptionConfigError(
            f"refusing to remove {reference}: the audit could not classify {unparseable} stored object(s), which may "
            "need it; look at them (the audit's objects list) first")


def _apply_removals(carried, identity_present, removals, usage, resources, writers, ours):
    """Drop what was asked for, after checking the audit; returns (carried, removed, absent)."""
    removed, absent = [], []
    for reference in removals:
        kind, name = parse_removal(reference)
        if kind == "kms" and name == ours:
            raise EncryptionConfigError(
                f"cannot remove kms:{ours}: it is the provider this configuration is written for")
        if kind == "identity":
            present = identity_present
        elif kind == "kms":
            present = any(provider_ref(p) == reference for p in carried)
        else:
            present = any(provider_type(p) == kind and (name is None or name in [k["name"] for k in p[kind]["keys"]])
                          for p in carried)
        if not present:
            absent.append(reference)
            continue
        for writer in writers:
            if provider_type(writer) == kind and (kind != "kms" or writer["kms"]["name"] == name) and (
                    kind not in STATIC_KEY_TYPES or name is None or writer[kind]["keys"][0]["name"] == name):
                raise EncryptionConfigError(
                    f"refusing to remove {reference}: it still writes new objects; make the kms provider primary "
                    "on every node first, re-encrypt, audit, then remove it")
        _check_usage_covers(usage, resources, reference)
        total, by_resource = _count_users(usage, kind, name)
        if total:
            detail = ", ".join(f"{count} {resource}" for resource, count in sorted(by_resource.items()))
            raise EncryptionConfigError(
                f"refusing to remove {reference}: {total} object(s) still need it ({detail}); re-encrypt them "
                "(teapot.kms.reencrypt), audit again, then remove it")
        if kind == "identity":
            pass  # never carried: appended last unless removed
        elif kind == "kms" or name is None:
            carried = [p for p in carried if not (provider_type(p) == kind and (kind != "kms" or p["kms"]["name"] == name))]
        else:
            for provider in carried:
                if provider_type(provider) == kind:
                    provider[kind]["keys"] = [k for k in provider[kind]["keys"] if k["name"] != name]
            carried = [p for p in carried if provider_type(p) != kind or p[kind]["keys"]]
        removed.append(reference)
    return carried, removed, absent


def kms_provider(name, endpoint, timeout=None):
    body = {"apiVersion": "v2", "name": name, "endpoint": endpoint}
    if timeout:
        body["timeout"] = timeout
    return {"kms": body}


def _remaining(entries, resources):
    """The entries for other resources, with the managed resources taken out of explicit lists."""
    kept = []
    for entry in entries:
        names = [name for name in entry["resources"] if name not in resources]
        if names:
            rest = copy.deepcopy(entry)
            rest["resources"] = names
            kept.append(rest)
    return kept


def _identity_present(sources, resources):
    """Whether the sources read plaintext for a managed resource (identity listed, or no entry covering it)."""
    with_entries = [entries for _name, entries in sources if entries]
    if not with_entries:
        return True
    for entries in with_entries:
        for resource in resources:
            covering = [e for e in entries if any(covers(pattern, resource) for pattern in e["resources"])]
            if not covering or any(provider_type(p) == "identity" for e in covering for p in e["providers"]):
                return True
    return False


def _check_unique_kms(entries, resources):
    # kube-apiserver with automatic reload refuses a KMS provider name used twice anywhere in the file.
    seen = {}
    for index, entry in enumerate(entries):
        for provider in entry["providers"]:
            if provider_type(provider) != "kms":
                continue
            name = provider["kms"]["name"]
            if name in seen and seen[name] != index:
                others = [r for r in entry["resources"] if r not in resources]
                raise EncryptionConfigError(
                    f"the kms provider {name!r} would appear twice (for {', '.join(resources)} and for "
                    f"{', '.join(others or entry['resources'])}); a KMS provider may appear only once in the file: "
                    "add those resources to the managed resources")
            seen[name] = index


def build(sources, resources, kms, removals=(), usage=None, primary=True):
    """Compute the ``resources`` entries to write.

    ``sources`` is a list of ``(name, entries)``; the first one with entries is
    what the apiservers load now.  One entry serves the managed resources:
    ``kms`` first, then every provider the sources use for them (in their
    order, keys of one type merged), then identity.  With ``primary=False``
    the provider that writes the managed resources now stays first and ``kms``
    comes right after it: every apiserver can then read what ``kms`` will
    write before any of them writes with it.
    """
    ours = kms["kms"]["name"]
    resources = list(dict.fromkeys(resources))
    active = next((entries for _name, entries in sources if entries), [])
    carried = _Carried()
    for name, entries in sources:
        for entry in entries:
            if not _overlaps(entry, resources):
                continue
            for provider in entry["providers"]:
                kind = provider_type(provider)
                if kind == "identity" or (kind == "kms" and provider["kms"]["name"] == ours):
                    continue
                carried.add(provider, name)

    writers = []
    for resource in resources:
        writer = _writer(active, resource)
        if writer not in writers:
            writers.append(writer)
    foreign_writers = [w for w in writers if not _same_provider(w, kms)]
    providers, removed, absent = _apply_removals(
        carried.providers, _identity_present(sources, resources), list(removals), usage, resources,
        foreign_writers, ours)
    # identity is always last, unless its removal was asked for (and allowed, or it was already gone).
    tail = providers + ([] if "identity" in removed + absent else [{"identity": {}}])

    warnings = list(carried.warnings)
    head = [copy.deepcopy(kms)]
    if not primary and foreign_writers:
        if len(writers) == 1:
            writer = next((p for p in tail if _same_provider(p, writers[0])), {"identity": {}})
            head = [writer, copy.deepcopy(kms)]
        else:
            # One KMS provider name may appear only once in the file, so resources that different providers
            # write now cannot each keep their writer in one entry.
            warnings.append(
                f"{', '.join(resources)} are written by different providers now "
                f"({', '.join(provider_ref(w) for w in writers)}): kms:{ours} becomes primary at once; until every "
                "node is updated, objects written through an updated apiserver cannot be read through the others")
    rest = [p for p in tail if not any(_same_provider(p, h) for h in head)]
    managed = {"resources": resources, "providers": copy.deepcopy(head + rest)}

    remaining, remaining_from = None, None
    for name, entries in sources:
        if not entries:
            continue
        mine = _remaining(entries, resources)
        if remaining is None:
            remaining, remaining_from = mine, name
        elif mine != remaining:
            raise EncryptionConfigError(
                f"{name} and {remaining_from} configure resources other than {', '.join(resources)} differently; "
                "make those entries agree by hand")
    result_entries = [managed] + (remaining or [])
    _check_unique_kms(result_entries, resources)
    return {
        "entries": result_entries,
        "removed": removed,
        "already_absent": absent,
        "writers": [describe(w) for w in writers],
        "warnings": warnings,
    }


def _same_provider(left, right):
    """Same provider: same kms name, same static type (keys are merged), or both identity."""
    if provider_type(left) != provider_type(right):
        return False
    if provider_type(left) == "kms":
        return left["kms"]["name"] == right["kms"]["name"]
    return True


def render(entries, header=""):
    """The file text: the header as comment lines, then the document (stable key order, no line wrapping)."""
    lines = []
    for line in (header or "").splitlines():
        lines.append(line if line.startswith("#") else ("# " + line).rstrip())
    document = {"apiVersion": API_VERSION, "kind": KIND, "resources": entries}
    body = yaml.safe_dump(document, default_flow_style=False, sort_keys=False, width=10000, allow_unicode=True)
    return "".join(line + "\n" for line in lines) + body


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def redact(text):
    """``text`` with every static key's secret replaced, formatting kept; a placeholder when it cannot be parsed."""
    if not text:
        return text
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return "# (not valid YAML: content not shown, it may hold key material)\n"
    spans = []

    def walk(node):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == "secret" and isinstance(value, yaml.ScalarNode):
                    spans.append((value.start_mark.index, value.end_mark.index))
                else:
                    walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    if root is not None:
        walk(root)
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + REDACTED + text[end:]
    return text


def canonical(entries):
    """A comparable form of entries (for tests and equality checks)."""
    return json.dumps(entries, sort_keys=True)
