"""teapot.kms.secret_encryption_info in real playbooks against a real etcd over TLS with client certificates.

Every value a real kube-apiserver wrote (../shared/fixtures/etcd) is stored
under its own etcd key; the module must classify each one as the apiserver
wrote it, reading etcd over its gRPC API and through its JSON gateway alike.
The test then opens the KMS v2 values with the recorded DEK seeds from the
fields _kms_storage parses, which proves the parser reads the real format, not
a format of its own.
"""

import base64
import json
import subprocess
import uuid

import pytest
from cryptography.exceptions import InvalidTag

from tests.harness import etcd_fixtures
from tests.harness.collection import make_importable
from tests.harness.playbook import PlaybookRunner
from tests.harness.procs import free_port

make_importable()

# pylint: disable=wrong-import-position
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import encode_kms_v2, parse_stored_value  # noqa: E402

pytestmark = pytest.mark.slow

FIXTURES = etcd_fixtures.load_fixtures()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return PlaybookRunner(tmp_path_factory.mktemp("playbooks-audit"))


@pytest.fixture(scope="module")
def etcd_audit(harness_servers):
    """A TLS etcd of this module's own: the fixtures go under the real /registry keys."""
    return harness_servers.etcd_tls("audit")


@pytest.fixture(scope="module")
def loaded(etcd_audit):
    client = etcd_audit.client()
    for fixture in FIXTURES:
        client.put(fixture["etcd_key"], fixture["value"])
    client.close()
    return etcd_audit


def _audit(server, **options):
    return {"name": "audit", "register": "audit", "teapot.kms.secret_encryption_info": {"etcd": server.client_options(), **options}}


def _expected_name(fixture):
    # The fixtures call identity's provider "identity"; an EncryptionConfiguration's identity has no name.
    return None if fixture["provider_type"] == "identity" else fixture["provider_name"]


def _etcdctl_value(server, key):
    """The stored bytes as etcdctl reads them (-w json, value base64): independent of the module's client."""
    dump = subprocess.run(["etcdctl", "get", key, "-w", "json"], env=server.etcdctl_env(), capture_output=True, text=True, check=True)
    return base64.b64decode(json.loads(dump.stdout)["kvs"][0]["value"])


def test_every_fixture_is_classified(runner, loaded):
    run = runner.run([_audit(loaded, resources=["secrets", "configmaps"], expected_provider="fixturekms",
                             expected_key_id="fixture-kek-1", list="all")], check=True)
    result = run.task("audit")
    assert run.returncode == 0, run.output[-3000:]
    assert result["changed"] is False
    by_key = {entry["key"]: entry for entry in result["objects"]}
    assert sorted(by_key) == sorted(fixture["etcd_key"] for fixture in FIXTURES)
    for fixture in FIXTURES:
        entry = by_key[fixture["etcd_key"]]
        assert (entry["resource"], entry["namespace"], entry["name"]) == (fixture["resource"], fixture["namespace"], fixture["name"])
        assert entry["provider_type"] == fixture["provider_type"], fixture["file"]
        assert entry["provider_name"] == _expected_name(fixture), fixture["file"]
        assert entry["key_id"] == fixture["expected_key_id"], fixture["file"]
        assert entry["annotations"] == (fixture["expected_annotations"] or {}), fixture["file"]
        assert entry["dek_source_type"] == fixture.get("encrypted_dek_source_type"), fixture["file"]
        expected = fixture["provider_type"] == "kms-v2" and fixture["expected_key_id"] == "fixture-kek-1"
        assert (entry["reason"] is None) == expected, (fixture["file"], entry["reason"])
        # The module never returns content: not even the plaintext object's.
        assert fixture["plaintext_marker"] not in run.output

    secrets = [fixture for fixture in FIXTURES if fixture["resource"] == "secrets"]
    assert result["counts"] == {
        "secrets": {f"{f['provider_type']}/{_expected_name(f) or '-'}/{f['expected_key_id'] or '-'}": 1 for f in secrets},
        "configmaps": {"kms-v2/fixturekms/fixture-kek-1": 1},
    }
    assert result["total"] == len(FIXTURES)
    assert result["plaintext"] == 1
    assert result["unexpected"] == len(FIXTURES) - 2  # all but the two kms-v2 objects under fixture-kek-1
    assert by_key["/registry/secrets/default/identity-secret-1"]["reason"] == "stored in plaintext, expected kms-v2"
    assert by_key["/registry/secrets/default/kmsv2-kek2-secret-d"]["reason"] == "key_id fixture-kek-2, expected fixture-kek-1"

    # The default list: only what is not as expected.
    unexpected = runner.run([_audit(loaded, resources=["secrets", "configmaps"], expected_provider="fixturekms",
                                    expected_key_id="fixture-kek-1")]).task("audit")
    assert sorted(entry["key"] for entry in unexpected["objects"]) == sorted(
        key for key, entry in by_key.items() if entry["reason"] is not None)


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f["provider_type"] == "kms-v2"], ids=lambda f: f["file"])
def test_kms_v2_fixtures_open_with_the_parsed_fields(loaded, fixture):
    """The fields _kms_storage parses from what etcd holds open the object with the recorded seed."""
    stored = parse_stored_value(_etcdctl_value(loaded, fixture["etcd_key"]))
    assert stored.key_id == fixture["expected_key_id"]
    assert stored.dek_source_type == 1
    # encryptedDEKSource is what the plugin's Encrypt returned for the recorded seed.
    assert etcd_fixtures.unwrap_with_test_kek(fixture["test_kek_hex"], stored.encrypted_dek) == bytes.fromhex(fixture["kms_seed_hex"])
    plaintext = etcd_fixtures.kms_v2_decrypt(stored.ciphertext, bytes.fromhex(fixture["kms_seed_hex"]), fixture["etcd_key"])
    assert plaintext.startswith(b"k8s\x00") and fixture["plaintext_marker"].encode() in plaintext
    # Under another etcd key (the additional data) the same bytes do not open.
    with pytest.raises(InvalidTag):
        etcd_fixtures.kms_v2_decrypt(stored.ciphertext, bytes.fromhex(fixture["kms_seed_hex"]), fixture["etcd_key"] + "x")


def _private_prefix():
    return f"/teapot-audit-{uuid.uuid4().hex[:8]}/registry"


def test_both_transports_read_the_same(runner, loaded):
    """gRPC and the JSON gateway give the same classification, object for object, over several pages at one revision."""
    options = dict(resources=["secrets", "configmaps"], expected_provider="fixturekms", expected_key_id="fixture-kek-1",
                   list="all", page_size=3)
    # The last one's first endpoint is down: the next is asked, as the JSON client does.
    failover = dict(loaded.client_options(), endpoints=[f"https://127.0.0.1:{free_port()}", *loaded.endpoints])
    tasks = [dict(_audit(loaded, transport=transport, **options), name=transport) for transport in ("grpc", "json", "auto")]
    tasks.append({"name": "failover", "teapot.kms.secret_encryption_info": dict(options, etcd=failover, transport="grpc")})
    run = runner.run(tasks)
    assert run.returncode == 0, run.output[-3000:]
    results = [run.task(name) for name in ("grpc", "json", "auto", "failover")]
    assert [result["transport"] for result in results] == ["grpc", "json", "grpc", "grpc"]
    grpc_result = results[0]
    assert grpc_result["total"] == len(FIXTURES) and len(grpc_result["objects"]) == len(FIXTURES)
    assert grpc_result["unexpected"] == len(FIXTURES) - 2 and grpc_result["plaintext"] == 1
    for name in ("counts", "objects", "total", "unexpected", "plaintext", "revision"):
        # Nothing was written in between: the same revision too.
        assert all(result[name] == grpc_result[name] for result in results[1:]), name


@pytest.mark.parametrize("transport", ["grpc", "json"])
def test_pages_of_mixed_resources(runner, etcd_audit, transport):
    """More objects than a page, namespaced, cluster-scoped and custom resources, read at one revision."""
    prefix = _private_prefix()
    client = etcd_audit.client()
    kms = FIXTURES[[f["file"] for f in FIXTURES].index("kmsv2-kek1-secret-a.json")]
    stored = parse_stored_value(kms["value"])
    for number in range(23):
        value = encode_kms_v2("teapot", stored.ciphertext, "key-b" if number % 5 == 0 else "key-a", stored.encrypted_dek,
                              {"version.teapot.example.com": b"1"})
        client.put(f"{prefix}/secrets/ns{number % 3}/s{number:02d}", value)
    client.put(f"{prefix}/secrets/ns0/plain", b"k8s\x00\x0a\x02v1")
    client.put(f"{prefix}/namespaces/ns0", b"k8s\x00\x0a\x02v1")
    client.put(f"{prefix}/example.com/widgets/ns1/w1", b'{"kind":"Widget"}')
    client.put(f"{prefix}/secrets0", b"outside every prefix")
    client.close()

    run = runner.run([_audit(etcd_audit, resources=["secrets", "namespaces", "widgets.example.com"], etcd_prefix=prefix,
                             expected_provider="teapot", expected_key_id="key-a", page_size=4, transport=transport)])
    result = run.task("audit")
    assert result["transport"] == transport
    assert result["counts"] == {
        "secrets": {"kms-v2/teapot/key-a": 18, "kms-v2/teapot/key-b": 5, "identity/-/-": 1},
        "namespaces": {"identity/-/-": 1},
        "widgets.example.com": {"identity/-/-": 1},
    }
    assert result["total"] == 26 and result["plaintext"] == 3 and result["unexpected"] == 8
    by_key = {entry["key"]: entry for entry in result["objects"]}
    assert by_key[f"{prefix}/namespaces/ns0"]["namespace"] is None and by_key[f"{prefix}/namespaces/ns0"]["name"] == "ns0"
    assert by_key[f"{prefix}/example.com/widgets/ns1/w1"]["resource"] == "widgets.example.com"
    assert by_key[f"{prefix}/secrets/ns0/s00"]["annotations"] == {"version.teapot.example.com": "MQ=="}
    assert result["revision"] > 0


def test_unparseable_values_are_reported_not_skipped(runner, etcd_audit):
    prefix = _private_prefix()
    client = etcd_audit.client()
    good = FIXTURES[[f["file"] for f in FIXTURES].index("kmsv2-kek1-secret-a.json")]["value"]
    client.put(f"{prefix}/secrets/default/truncated", good[:120])
    client.put(f"{prefix}/secrets/default/garbage", b"\x00\x01\x02SECRET-BYTES-7d1c")
    client.put(f"{prefix}/secrets/default/good", good)
    client.close()

    run = runner.run([_audit(etcd_audit, etcd_prefix=prefix, expected_key_id="fixture-kek-1", fail_on_unexpected=True)])
    result = run.task("audit")
    assert result["failed"] is True
    assert result["msg"] == ("2 objects are not stored as expected (of 3): expected kms-v2, provider any, "
                             "key_id fixture-kek-1; objects lists each one and why")
    assert result["counts"] == {"secrets": {"unparseable/-/-": 2, "kms-v2/fixturekms/fixture-kek-1": 1}}
    reasons = {entry["name"]: entry["reason"] for entry in result["objects"]}
    assert sorted(reasons) == ["garbage", "truncated"]
    assert reasons["truncated"] == "cannot be parsed: KMS v2 value whose EncryptedObject does not decode (DecodeError)"
    assert reasons["garbage"] == ("cannot be parsed: not a Kubernetes storage format (20 bytes that start with neither "
                                  "k8s:enc: nor a plain protobuf, JSON or CBOR encoding)")
    assert all(entry["provider_type"] == "unparseable" for entry in result["objects"])
    assert "SECRET-BYTES" not in run.output


def test_fail_on_plaintext(runner, etcd_audit):
    prefix = _private_prefix()
    client = etcd_audit.client()
    client.put(f"{prefix}/configmaps/default/plain", b"k8s\x00\x0a\x02v1")
    client.close()
    result = runner.run([_audit(etcd_audit, etcd_prefix=prefix, resources=["secrets", "configmaps"],
                                fail_on_plaintext=True)]).task("audit")
    assert result["failed"] is True
    assert result["msg"].startswith("1 object is stored in plaintext (configmaps: 1): rewrite them")
    assert result["plaintext"] == 1 and result["counts"] == {"secrets": {}, "configmaps": {"identity/-/-": 1}}


@pytest.mark.parametrize("transport", ["grpc", "json"])
def test_unreachable_and_wrong_certificates(runner, etcd_audit, transport):
    """Each transport says the same about each mistake."""
    dead = f"https://127.0.0.1:{free_port()}"
    cases = [
        (dict(etcd_audit.client_options(), endpoints=[dead]),
         f"cannot read the objects from etcd: cannot reach etcd at {dead}: connection refused: check that etcd runs "
         "there and that the address and port are right"),
        (dict(etcd_audit.client_options(), cert=str(etcd_audit.foreign_client_cert), key=str(etcd_audit.foreign_client_key)),
         "it refuses the client certificate " + str(etcd_audit.foreign_client_cert)),
        (dict(etcd_audit.client_options(), cacert=str(etcd_audit.foreign_ca_path)),
         "the server's TLS certificate is not trusted"),
        (dict(etcd_audit.client_options(), cert=None, key=None), "it demands a client certificate: set cert and key"),
        (dict(etcd_audit.client_options(), key=str(etcd_audit.foreign_client_key)),
         f"the key {etcd_audit.foreign_client_key} does not belong to the certificate {etcd_audit.client_cert}"),
        (dict(etcd_audit.client_options(), endpoints=[etcd_audit.endpoints[0].replace("https://", "http://")]),
         "if it serves TLS on this port, use https:// with cacert, cert and key"),
    ]
    run = runner.run([{"name": f"case {number}", "ignore_errors": True,
                       "teapot.kms.secret_encryption_info": {"etcd": options, "transport": transport}}
                      for number, (options, _message) in enumerate(cases)])
    for number, (_options, message) in enumerate(cases):
        result = run.task(f"case {number}")
        assert result["failed"] is True and message in result["msg"], (number, result["msg"])
        assert result["transport"] == transport, number
        assert "Traceback" not in result.get("module_stderr", "")


def test_bad_options(runner, etcd_audit):
    run = runner.run([
        {"name": "wildcard", "ignore_errors": True, "teapot.kms.secret_encryption_info": {
            "etcd": etcd_audit.client_options(), "resources": ["*.apps"]}},
        {"name": "key_id without kms-v2", "ignore_errors": True, "teapot.kms.secret_encryption_info": {
            "etcd": etcd_audit.client_options(), "expected_provider_type": "aescbc", "expected_key_id": "k"}},
    ])
    assert "'*.apps' is not a Kubernetes resource name" in run.task("wildcard")["msg"]
    assert run.task("key_id without kms-v2")["msg"] == "expected_key_id applies to expected_provider_type=kms-v2 only"
