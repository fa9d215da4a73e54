"""teapot.kms.secret_encryption_info: option checks and the classification rules (no etcd needed)."""

import pytest

from ansible_collections.teapot.kms.plugins.module_utils import _encryption_audit
from ansible_collections.teapot.kms.plugins.module_utils._encryption_audit import AuditResult, Expectation
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import encode_kms_v2
from ansible_collections.teapot.kms.plugins.modules import secret_encryption_info
from tests.harness.procs import free_port

PREFIX = "/registry/secrets/"


def _kms_v2(key_id="key-a", name="teapot"):
    return encode_kms_v2(name, b"\x01" * 60, key_id, b"\x02" * 40, {"version.teapot.example.com": b"1"})


def test_without_protobuf_the_module_says_what_to_install(run_module, monkeypatch):
    monkeypatch.setattr(secret_encryption_info, "HAS_PROTOBUF", False)
    code, result = run_module(secret_encryption_info.main, {})
    assert code == 1
    assert "Failed to import the required Python library (protobuf)" in result["msg"]
    assert "python3-protobuf on Debian and Ubuntu" in result["msg"]


@pytest.mark.parametrize("args, message", [
    ({"expected_provider_type": "aesgcm", "expected_key_id": "k"}, "expected_key_id applies to expected_provider_type=kms-v2 only"),
    ({"page_size": 0}, "page_size must be at least 1"),
    ({"resources": ["Secrets"]}, "'Secrets' is not a Kubernetes resource name"),
    ({"expected_provider_type": "kms-v3"}, "value of expected_provider_type must be one of"),
])
def test_bad_options_fail_before_etcd_is_asked(run_module, args, message):
    # Nothing listens on this endpoint: the options must be refused first.
    args = dict(args, etcd={"endpoints": [f"http://127.0.0.1:{free_port()}"]})
    code, result = run_module(secret_encryption_info.main, args)
    assert code == 1 and message in result["msg"]


def test_classification_rules():
    result = AuditResult(["secrets"], keep_all=False)
    expectation = Expectation("kms-v2", "teapot", "key-a")
    result.add(PREFIX + "ns/good", "secrets", PREFIX, _kms_v2(), expectation)
    result.add(PREFIX + "ns/old-key", "secrets", PREFIX, _kms_v2("key-old"), expectation)
    result.add(PREFIX + "ns/other-provider", "secrets", PREFIX, _kms_v2(name="other"), expectation)
    result.add(PREFIX + "ns/plain", "secrets", PREFIX, b"k8s\x00\x0a\x02v1", expectation)
    result.add(PREFIX + "ns/static", "secrets", PREFIX, b"k8s:enc:aesgcm:v1:key1:" + b"\x00" * 40, expectation)
    result.add(PREFIX + "ns/broken", "secrets", PREFIX, b"k8s:enc:kms:v2:teapot", expectation)
    result.add(PREFIX + "a/b/c", "secrets", PREFIX, _kms_v2(), expectation)
    values = result.as_dict()
    assert values["counts"] == {"secrets": {"kms-v2/teapot/key-a": 2, "kms-v2/teapot/key-old": 1, "kms-v2/other/key-a": 1,
                                            "identity/-/-": 1, "aesgcm/key1/-": 1, "unparseable/-/-": 1}}
    assert (values["total"], values["unexpected"], values["plaintext"]) == (7, 6, 1)
    reasons = {entry["key"][len(PREFIX):]: entry["reason"] for entry in values["objects"]}
    assert reasons == {
        "ns/old-key": "key_id key-old, expected key-a",
        "ns/other-provider": "provider other, expected teapot",
        "ns/plain": "stored in plaintext, expected kms-v2",
        "ns/static": "encrypted by aesgcm, expected kms-v2",
        "ns/broken": "cannot be parsed: kms-v2 value without the ':' that ends the provider name",
        "a/b/c": "etcd key '/registry/secrets/a/b/c' is not /registry/secrets/[<namespace>/]<name>",
    }
    broken = next(entry for entry in values["objects"] if entry["name"] == "broken")
    assert broken["provider_type"] == _encryption_audit.UNPARSEABLE and broken["annotations"] == {}


def test_any_provider_and_key_id_when_not_given():
    result = AuditResult(["secrets"], keep_all=True)
    result.add(PREFIX + "ns/a", "secrets", PREFIX, _kms_v2("key-1"), Expectation("kms-v2"))
    result.add(PREFIX + "ns/b", "secrets", PREFIX, _kms_v2("key-2", name="other"), Expectation("kms-v2"))
    values = result.as_dict()
    assert values["unexpected"] == 0 and [entry["reason"] for entry in values["objects"]] == [None, None]
    assert values["objects"][0]["annotations"] == {"version.teapot.example.com": "MQ=="}
    assert values["objects"][0]["dek_source_type"] == 1


MISSING_GRPC = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'grpc'\n"


@pytest.mark.parametrize("requested, grpc_error, used", [
    ("auto", None, "grpc"),
    ("auto", MISSING_GRPC, "json"),
    ("grpc", None, "grpc"),
    ("json", None, "json"),
    ("json", MISSING_GRPC, "json"),
])
def test_transport_choice(run_module, monkeypatch, requested, grpc_error, used):
    """The transport asked for, or for auto the one this Python can use; each then really tries etcd."""
    monkeypatch.setattr(secret_encryption_info, "grpc_import_error", lambda: grpc_error)
    dead = f"http://127.0.0.1:{free_port()}"
    code, result = run_module(secret_encryption_info.main, {"transport": requested, "etcd": {"endpoints": [dead]}})
    assert code == 1 and result["transport"] == used
    # Either transport reports the same failure.
    assert result["msg"] == (f"cannot read the objects from etcd: cannot reach etcd at {dead}: connection refused: "
                             "check that etcd runs there and that the address and port are right")


def test_grpc_without_grpcio_says_which_python_to_use(run_module, monkeypatch):
    monkeypatch.setattr(secret_encryption_info, "grpc_import_error", lambda: MISSING_GRPC)
    code, result = run_module(secret_encryption_info.main, {"transport": "grpc", "etcd": {"endpoints": [f"http://127.0.0.1:{free_port()}"]}})
    assert code == 1 and "transport" not in result
    assert "Failed to import the required Python library (grpcio)" in result["msg"]
    assert "run the module with a Python that has grpcio and protobuf, such as the KMS plugin's venv" in result["msg"]
    assert "/opt/teapot-kms/kms-plugin/bin/python" in result["msg"] and "or set transport=json" in result["msg"]


def test_grpc_client_without_grpcio_refuses_to_start(monkeypatch):
    from ansible_collections.teapot.kms.plugins.module_utils import _etcd_grpc  # pylint: disable=import-outside-toplevel
    from ansible_collections.teapot.kms.plugins.module_utils._etcd import EtcdError  # pylint: disable=import-outside-toplevel

    assert _etcd_grpc.grpc_import_error() is None  # the test venv has grpcio, as the plugin's venv does
    monkeypatch.setitem(_etcd_grpc._loaded, "error", MISSING_GRPC)  # pylint: disable=protected-access
    with pytest.raises(EtcdError, match=r"needs the Python libraries grpcio and protobuf, which this Python cannot import "
                                        r"\(ModuleNotFoundError: No module named 'grpc'\)"):
        _etcd_grpc.EtcdGrpcClient(["http://127.0.0.1:2379"])
