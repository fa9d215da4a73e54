# -*- coding: utf-8 -*-
# Copyright (c) teapot.kms contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Classify every stored object of some resources by provider and key_id, page by page.  Private to this collection: no stable API.

The core of teapot.kms.secret_encryption_info: it reads values from etcd
through ``_etcd_grpc.EtcdGrpcClient`` or ``_etcd.EtcdClient`` and parses them
with ``_kms_storage``; it never decrypts and never keeps or returns an
object's content.
"""

import base64
from typing import NamedTuple, Optional

from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import (
    DEFAULT_ETCD_PREFIX,
    StorageFormatError,
    parse_stored_value,
    registry_prefix,
    split_object_key,
)

UNPARSEABLE = "unparseable"
NOT_APPLICABLE = "-"


class Expectation(NamedTuple):
    """How every object should be stored; None matches anything."""

    provider_type: Optional[str] = "kms-v2"
    provider_name: Optional[str] = None
    key_id: Optional[str] = None

    def mismatch(self, stored):
        """Why ``stored`` (a StoredValue) is not as expected, or None."""
        if self.provider_type is not None and stored.provider_type != self.provider_type:
            if stored.provider_type == "identity":
                return f"stored in plaintext, expected {self.provider_type}"
            return f"encrypted by {stored.provider_type}, expected {self.provider_type}"
        if self.provider_name is not None and stored.provider_name != self.provider_name:
            return f"provider {stored.provider_name}, expected {self.provider_name}"
        if self.key_id is not None and stored.key_id != self.key_id:
            return f"key_id {stored.key_id}, expected {self.key_id}"
        return None


def counts_key(provider_type, provider_name=None, key_id=None):
    """``<provider_type>/<provider_name>/<key_id>``, with '-' for a part that does not apply."""
    return f"{provider_type}/{provider_name or NOT_APPLICABLE}/{key_id or NOT_APPLICABLE}"


def _printable(key):
    """A key read with surrogateescape, safe for JSON (undecodable bytes become U+FFFD)."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class AuditResult:
    """Running totals of an audit; ``as_dict()`` gives the module's return values."""

    def __init__(self, resources, keep_all):
        self.counts = {resource: {} for resource in resources}
        self.objects = []
        self.total = 0
        self.unexpected = 0
        self.plaintext = 0
        self.revision = None
        self.keep_all = keep_all

    def add(self, key, resource, prefix, value, expectation):
        try:
            namespace, name = split_object_key(key, prefix)
        except ValueError as exc:
            namespace = name = None
            key_problem = str(exc)
        else:
            key_problem = None
        try:
            stored = parse_stored_value(value)
        except StorageFormatError as exc:
            stored = None
            reason = f"cannot be parsed: {exc}"
            tally = counts_key(UNPARSEABLE)
        else:
            reason = expectation.mismatch(stored)
            tally = counts_key(stored.provider_type, stored.provider_name, stored.key_id)
            if stored.provider_type == "identity":
                self.plaintext += 1
        if key_problem and not reason:
            reason = key_problem
        self.total += 1
        resource_counts = self.counts[resource]
        resource_counts[tally] = resource_counts.get(tally, 0) + 1
        if reason:
            self.unexpected += 1
        if reason or self.keep_all:
            self.objects.append(_describe(key, resource, namespace, name, stored, reason))

    def as_dict(self):
        return {
            "counts": self.counts,
            "objects": self.objects,
            "total": self.total,
            "unexpected": self.unexpected,
            "plaintext": self.plaintext,
            "revision": self.revision,
        }


def _describe(key, resource, namespace, name, stored, reason):
    if stored is None:
        provider_type, provider_name, key_id, annotations, dek_source_type = UNPARSEABLE, None, None, {}, None
    else:
        provider_type, provider_name, key_id = stored.provider_type, stored.provider_name, stored.key_id
        annotations = {akey: base64.b64encode(stored.annotations[akey]).decode("ascii") for akey in sorted(stored.annotations)}
        dek_source_type = stored.dek_source_type
    return {
        "key": _printable(key),
        "resource": resource,
        "namespace": namespace,
        "name": name,
        "provider_type": provider_type,
        "provider_name": provider_name,
        "key_id": key_id,
        "annotations": annotations,
        "dek_source_type": dek_source_type,
        "reason": reason,
    }


def audit(client, resources, expectation, list_all=False, page_size=1000, etcd_prefix=DEFAULT_ETCD_PREFIX):
    """Read every object of ``resources`` at one etcd revision and classify it; return an AuditResult.

    ``client`` is an ``_etcd.EtcdClient`` or ``_etcd_grpc.EtcdGrpcClient``; ``resources`` Kubernetes resource
    names (ValueError for one that is not); only one page of values is held
    in memory at a time.
    """
    resources = list(dict.fromkeys(resources))
    prefixes = [(resource, registry_prefix(resource, etcd_prefix)) for resource in resources]
    result = AuditResult(resources, list_all)
    result.revision = client.revision()
    for resource, prefix in prefixes:
        for page in client.range_pages(prefix, page_size=page_size, revision=result.revision):
            for key, value, _mod_revision in page:
                result.add(key, resource, prefix, value, expectation)
    return result
