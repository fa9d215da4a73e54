"""What the stand-in needs of etcd v3, over etcd's JSON gateway (``/v3/kv/...``), TLS client certificates optional.

kube-apiserver reads ranges at a fixed revision for paged lists, writes with
a compare-and-swap on the mod_revision it read, and reports the revision a
write produced as the object's resourceVersion: those three calls are here.
"""

import base64
import json
import ssl
import urllib.error
import urllib.request


class EtcdError(RuntimeError):
    """etcd could not be used; the message names the endpoint and what failed."""


class EtcdCompacted(EtcdError):
    """The revision asked for has been compacted away."""


def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def prefix_end(prefix):
    """The first key after every key that starts with ``prefix``."""
    data = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


class EtcdKV:
    """An etcd v3 cluster at ``endpoints`` (http:// or https://; the first that answers is used)."""

    def __init__(self, endpoints, cacert=None, cert=None, key=None, timeout=10.0):
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        if not self.endpoints:
            raise EtcdError("no etcd endpoint given (--etcd-servers)")
        self.timeout = timeout
        self._context = None
        if any(endpoint.startswith("https://") for endpoint in self.endpoints):
            self._context = ssl.create_default_context(cafile=cacert)
            if cert:
                self._context.load_cert_chain(cert, key)

    def _call(self, path, body):
        errors = []
        for endpoint in self.endpoints:
            request = urllib.request.Request(f"{endpoint}/v3/{path}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:  # nosec: configured endpoints
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                if "compacted" in detail:
                    raise EtcdCompacted(f"etcd {endpoint}: {detail.strip()}") from None
                raise EtcdError(f"etcd {endpoint} refused {path}: HTTP {exc.code} {detail.strip()[:300]}") from None
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{endpoint}: {getattr(exc, 'reason', exc)}")
        raise EtcdError("no etcd endpoint answered (" + "; ".join(errors) + "): check --etcd-servers and the etcd client certificates")

    @staticmethod
    def _kvs(result):
        return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")), int(kv.get("mod_revision", 0)))
                for kv in result.get("kvs", [])]

    def range(self, start, end, limit=0, revision=0):
        """``(kvs, more, count, revision)``: kvs are ``(key, value, mod_revision)`` from ``start`` up to ``end`` (exclusive)."""
        body = {"key": _b64(start), "range_end": _b64(end)}
        if limit:
            body["limit"] = str(limit)
        if revision:
            body["revision"] = str(revision)
        result = self._call("kv/range", body)
        return (self._kvs(result), bool(result.get("more")), int(result.get("count", 0)),
                int(result.get("header", {}).get("revision", 0)))

    def get(self, key):
        """``(value, mod_revision)`` or None."""
        kvs = self._kvs(self._call("kv/range", {"key": _b64(key)}))
        return (kvs[0][1], kvs[0][2]) if kvs else None

    def revision(self):
        return int(self._call("kv/range", {"key": _b64("\0"), "limit": "1"}).get("header", {}).get("revision", 0))

    def put_if(self, key, value, mod_revision):
        """Write when the key's mod_revision is ``mod_revision`` (0: absent); the new revision, or None when it has moved."""
        result = self._call("kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
        })
        if not result.get("succeeded"):
            return None
        return int(result["header"]["revision"])

    def delete_if(self, key, mod_revision):
        """Delete when the key's mod_revision is ``mod_revision``; False when it has moved or gone."""
        result = self._call("kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        })
        return bool(result.get("succeeded"))
