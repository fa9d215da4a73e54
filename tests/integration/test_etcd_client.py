"""module_utils/_etcd.py against a real etcd 3.4, plain and over TLS with client certificates."""

import subprocess
import uuid

import pytest

from tests.harness.collection import make_importable
from tests.harness.procs import free_port

make_importable()

# pylint: disable=wrong-import-position
from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdClient, EtcdError, prefix_range_end  # noqa: E402

pytestmark = pytest.mark.slow


def _prefix():
    return f"/teapot-test/{uuid.uuid4().hex}/"


def test_prefix_range_end():
    assert prefix_range_end(b"/registry/secrets/") == b"/registry/secrets0"
    assert prefix_range_end(b"a\xff\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\x00"


@pytest.mark.parametrize("server_name", ["etcd", "etcd_tls"])
def test_key_value_operations(request, server_name):
    server = request.getfixturevalue(server_name)
    client = server.client()
    prefix = _prefix()
    key = prefix + "k"
    assert client.get(key) is None
    assert client.put_if(key, b"first", 0) is True
    value, revision = client.get(key)
    assert value == b"first"
    assert client.put_if(key, b"lost", 0) is False
    assert client.put_if(key, b"stale", revision - 1) is False
    assert client.put_if(key, b"second\x00\xff", revision) is True
    assert client.get(key)[0] == b"second\x00\xff"
    assert client.put(key, b"third") > revision
    assert client.revision() >= client.get(key)[1]
    assert client.delete(key) == 1 and client.delete(key) == 0 and client.get(key) is None
    client.close()


def test_range_pages_are_one_snapshot(etcd_tls):
    client = etcd_tls.client()
    prefix = _prefix()
    keys = [f"{prefix}{number:03d}" for number in range(23)]
    for key in keys:
        client.put(key, key.encode())
    client.put(prefix[:-1] + "0-outside", b"x")  # the key right after the prefix's range
    snapshot = client.revision()
    pages = client.range_pages(prefix, page_size=5)
    first = next(pages)
    client.put(keys[-1], b"changed after the first page")
    client.put(prefix + "999-new", b"written after the first page")
    rest = list(pages)
    all_pages = [first] + rest
    assert [len(page) for page in all_pages] == [5, 5, 5, 5, 3]
    assert [key for page in all_pages for key, _value, _rev in page] == keys
    assert all(value == key.encode() and mod_revision <= snapshot for page in all_pages for key, value, mod_revision in page)
    keys_only = [entry for page in client.range_pages(prefix, page_size=100, keys_only=True) for entry in page]
    assert len(keys_only) == 24 and all(value == b"" for _key, value, _rev in keys_only)
    assert list(client.range_pages(prefix + "nothing-here/")) == []


def test_compact_defragment_and_compacted_snapshot(etcd):
    client = etcd.client()
    prefix = _prefix()
    for number in range(4):
        client.put(f"{prefix}{number}", b"v")
    old = client.revision()
    client.put(prefix + "0", b"newer")
    client.compact(client.revision())
    client.defragment()
    with pytest.raises(EtcdError, match="compacted.*run again"):
        list(client.range_pages(prefix, page_size=2, revision=old))


def test_failover_to_the_next_endpoint(etcd_tls):
    dead = f"https://127.0.0.1:{free_port()}"
    client = etcd_tls.client(endpoints=[dead] + etcd_tls.endpoints)
    assert client.revision() > 0


def test_unreachable(etcd_tls):
    dead = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(EtcdError) as raised:
        etcd_tls.client(endpoints=[dead]).revision()
    assert str(raised.value) == f"cannot reach etcd at {dead}: connection refused: check that etcd runs there and that the address and port are right"
    with pytest.raises(EtcdError, match="at any endpoint: .*refused.*; .*refused"):
        etcd_tls.client(endpoints=[dead, f"https://127.0.0.1:{free_port()}"]).revision()


def test_wrong_certificates(etcd_tls):
    with pytest.raises(EtcdError, match=r"refuses the client certificate .*client\.crt.*trusted-ca-file"):
        etcd_tls.client(cert=str(etcd_tls.foreign_client_cert), key=str(etcd_tls.foreign_client_key)).revision()
    with pytest.raises(EtcdError, match=r"demands a client certificate: set cert and key"):
        etcd_tls.client(cert=None, key=None).revision()
    with pytest.raises(EtcdError, match=r"server's TLS certificate is not trusted .*set cacert"):
        etcd_tls.client(cacert=str(etcd_tls.foreign_ca_path)).revision()
    with pytest.raises(EtcdError, match=r"key .*client\.key does not belong to the certificate .*apiserver-etcd-client\.crt"):
        etcd_tls.client(key=str(etcd_tls.foreign_client_key))
    with pytest.raises(EtcdError, match=r"cannot read the etcd cert /nonexistent/client.crt: No such file"):
        etcd_tls.client(cert="/nonexistent/client.crt")


def test_endpoint_by_name(etcd_tls):
    endpoint = etcd_tls.endpoints[0].replace("127.0.0.1", "localhost")  # "localhost" is in the server certificate
    assert etcd_tls.client(endpoints=[endpoint]).revision() > 0


def test_wrong_scheme(etcd, etcd_tls):
    with pytest.raises(EtcdError, match="during the TLS handshake: either it serves plain HTTP on this port \\(use http://\\)"):
        etcd.client(endpoints=[etcd.endpoints[0].replace("http://", "https://")]).revision()
    with pytest.raises(EtcdError, match="if it serves TLS on this port, use https://"):
        etcd_tls.client(endpoints=[etcd_tls.endpoints[0].replace("https://", "http://")]).revision()


def test_refuses_bad_endpoints():
    with pytest.raises(EtcdError, match="not an http:// or https:// URL"):
        EtcdClient(["127.0.0.1:2379"])
    with pytest.raises(EtcdError, match="no etcd endpoint"):
        EtcdClient([])


def test_etcdctl_reads_what_the_client_wrote(etcd_tls):
    """The bytes written through the gateway are the bytes etcd stores (etcdctl is the reference)."""
    client = etcd_tls.client()
    key = _prefix() + "binary"
    value = bytes(range(256))
    client.put(key, value)
    dump = subprocess.run(["etcdctl", "get", key, "--print-value-only"], env=etcd_tls.etcdctl_env(), capture_output=True,
                          check=True)
    assert dump.stdout == value + b"\n"
