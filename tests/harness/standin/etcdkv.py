"""The collection's etcd client (``plugins/module_utils/_etcd.py``) with the three calls kube-apiserver adds.

kube-apiserver reports the revision a write produced as the object's
resourceVersion, deletes with a compare on the revision it read, and serves
a paged list from the continue key at the first page's revision: those are
here, on top of the collection's one etcd client.
"""

import base64

from tests.harness.standin.collection import module_util

_etcd = module_util("_etcd")
EtcdError = _etcd.EtcdError


def _b64(key):
    return base64.b64encode(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else bytes(key)).decode()


def prefix_end(prefix):
    """The first key after every key that starts with ``prefix``, as str."""
    return _etcd.prefix_range_end(prefix.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")


def is_compacted(error):
    return "compacted" in str(error)


class EtcdKV(_etcd.EtcdClient):
    """``EtcdClient`` plus ``range``, ``put_revision`` and ``delete_if``."""

    def range(self, start, end, limit=0, revision=0):
        """``(kvs, more, count, revision)`` from ``start`` up to ``end`` (exclusive); kvs are ``(key, value, mod_revision)``."""
        request = {"key": _b64(start), "range_end": _b64(end), "revision": int(revision or 0)}
        if limit:
            request["limit"] = int(limit)
        answer = self._call("/kv/range", request)
        kvs = [(base64.b64decode(kv["key"]).decode("utf-8", "surrogateescape"), base64.b64decode(kv.get("value", "")),
                int(kv.get("mod_revision", 0))) for kv in answer.get("kvs", ())]
        return kvs, bool(answer.get("more")), int(answer.get("count", 0)), int(answer["header"]["revision"])

    def _compare_and(self, key, mod_revision, operation):
        return self._call("/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": int(mod_revision)}],
            "success": [operation],
        })

    def put_revision(self, key, value, mod_revision):
        """``put_if`` that returns the revision of the write (the new resourceVersion), or None when the key has moved."""
        answer = self._compare_and(key, mod_revision, {"request_put": {"key": _b64(key), "value": base64.b64encode(bytes(value)).decode()}})
        return int(answer["header"]["revision"]) if answer.get("succeeded") else None

    def delete_if(self, key, mod_revision):
        """Delete ``key`` if it is still at ``mod_revision``; False when it has moved or gone."""
        return bool(self._compare_and(key, mod_revision, {"request_delete_range": {"key": _b64(key)}}).get("succeeded"))
