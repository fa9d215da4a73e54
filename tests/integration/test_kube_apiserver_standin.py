"""The kube-apiserver STAND-IN against real etcd and the real KMS plugin (real Keystone and Barbican).

What it writes must be what kube-apiserver writes: every value is classified
by the collection's own parser (``_kms_storage.parse_stored_value``) and
opened again by the stand-in's read path talking to the real plugin; the
semantics the collection relies on (no write for an unchanged update of a
current object, a rewrite for a stale one, 409 on a stale resourceVersion,
paging, health, the key_id metrics) are checked from outside, through etcd,
HTTPS and the kubernetes Python client.
"""

import base64
import json
import os
import subprocess
import time
from concurrent import futures

import grpc
import kubernetes.client
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.harness.etcd import EtcdServer
from tests.harness.etcd_fixtures import load_fixtures

from tests.harness.plugin_daemon import PluginProcess, order_kek, password_barbican_section, plugin_venv
from tests.harness.procs import free_port
from tests.harness.standin import kmsapi
from tests.harness.standin.collection import module_util
from tests.harness.standin.encryption import EncryptionController, KmsTimings
from tests.harness.standin.etcdkv import EtcdKV
from tests.harness.standin.metrics import StandinMetrics, id_hash
from tests.harness.standin.process import StandinProcess

# The daemon's package is importable once kmsapi is (it adds the daemon's sources to the path when needed).
from teapot_kms_plugin import keyservice, transport  # noqa: E402  pylint: disable=wrong-import-order,wrong-import-position

storage = module_util("_kms_storage")

pytestmark = pytest.mark.slow

KMS_NAME = "teapot"


def encryption_config(path, providers, resources=("secrets", "configmaps")):
    """Write an EncryptionConfiguration with ``providers`` (a list of provider dicts) for ``resources``."""
    document = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                "resources": [{"resources": list(resources), "providers": providers}]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(document), encoding="utf-8")
    tmp.replace(path)
    return path


def kms_v2(socket, name=KMS_NAME):
    return {"kms": {"apiVersion": "v2", "name": name, "endpoint": f"unix://{socket}", "timeout": "5s"}}


def etcdctl(etcd, *args):
    return subprocess.run(["etcdctl", *args], env=etcd.etcdctl_env(), capture_output=True, check=True).stdout


def etcd_value(etcd, key):
    """``(value, mod_revision)`` of ``key`` read with etcdctl, independently of the stand-in."""
    out = json.loads(etcdctl(etcd, "get", key, "-w", "json"))
    kvs = out.get("kvs") or []
    if not kvs:
        return None, 0
    return base64.b64decode(kvs[0]["value"]), int(kvs[0]["mod_revision"])


def etcd_revision(etcd):
    return int(json.loads(etcdctl(etcd, "get", "/", "--prefix", "--keys-only", "--limit=1", "-w", "json"))["header"]["revision"])


def plugin_calls(plugin, method):
    total = 0.0
    for line in plugin.metrics_text().splitlines():
        if line.startswith("teapot_kms_rpc_duration_seconds_count{") and f'method="{method}"' in line and 'code="OK"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def open_with_standin_code(value, etcd_key, socket, metrics=None):
    """Open a stored value with the stand-in's read path (its chain and KMS provider) against ``socket``: the same decryption code."""
    metrics = metrics or StandinMetrics("test-reader")
    path = None
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as tmp:
        import pathlib  # pylint: disable=import-outside-toplevel

        path = encryption_config(pathlib.Path(tmp) / "enc.yaml", [kms_v2(socket), {"identity": {}}])
        controller = EncryptionController(str(path), metrics, KmsTimings(poll_interval=3600)).start()
        try:
            plaintext, _stale, stored = controller.chain_for("", "secrets").read(value, etcd_key)
        finally:
            controller.close()
    return plaintext, stored


@pytest.fixture(scope="module")
def kms_venv():
    return plugin_venv()


@pytest.fixture(scope="module")
def keks(keystone, barbican):
    """Two KEKs ordered in the real Barbican: the plugin's primary and the next one."""
    return [order_kek(barbican, keystone.plugin_user, f"standin-kek-{index}-{time.time_ns()}") for index in (1, 2)]


@pytest.fixture
def real_plugin(kms_venv, keystone, keks, tmp_path):
    """The real KMS plugin daemon, primary key ``keks[0]``."""
    section = password_barbican_section(keystone.plugin_user, tmp_path / "plugin-secrets", region_name=keystone.region_name)
    plugin = PluginProcess(kms_venv, tmp_path / "plugin", {"barbican": section, "keys": [keks[0]],
                                                           "metrics": {"listen": f"127.0.0.1:{free_port()}"}, "log_level": "info"})
    plugin.start()
    yield plugin
    plugin.stop()
    print(f"--- {plugin.log_path} ---\n{plugin.log_tail(40)}")


@pytest.fixture
def standin_factory(etcd, tmp_path):
    """``make(encryption_config_path, **options)`` -> a started StandinProcess (1 s KMS poll and health cache)."""
    started = []

    def make(config, start=True, **options):
        # Each test its own etcd prefix: the etcd server is shared by the session.
        options.setdefault("etcd_prefix", f"/{tmp_path.name}-{len(started)}")
        options.setdefault("kms_poll_interval", 1)
        options.setdefault("kms_healthz_ttl", 1)
        standin = StandinProcess(tmp_path / f"standin-{len(started)}", etcd.endpoints, config, **options)
        started.append(standin)
        if start:
            standin.start()
        return standin

    yield make
    for standin in started:
        standin.stop()
        print(f"--- {standin.log_path} ---\n{standin.log_tail(60)}")


def core(standin):
    return kubernetes.client.CoreV1Api(standin.api_client())


def new_secret(name, namespace="default", **data):
    return kubernetes.client.V1Secret(metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=namespace),
                                      string_data=data or {"token": f"value-of-{name}"})


def test_writes_kms_v2_through_the_real_plugin(real_plugin, standin_factory, etcd, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    standin = standin_factory(config)
    standin.wait_health("/readyz")
    key_id = real_plugin.status_command()[1]["key_id"]
    api = core(standin)

    names = [f"kms-{index}" for index in range(3)]
    for name in names:
        api.create_namespaced_secret("default", new_secret(name, marker=f"MARKER-{name}"))
    api.create_namespaced_config_map("default", kubernetes.client.V1ConfigMap(
        metadata=kubernetes.client.V1ObjectMeta(name="kms-cm"), data={"marker": "MARKER-kms-cm"}))
    # One seed for the stand-in's whole life: one Encrypt at start however many writes; reads of its own writes make no Decrypt.
    assert plugin_calls(real_plugin, "Encrypt") == 1
    decrypts = plugin_calls(real_plugin, "Decrypt")
    read = api.read_namespaced_secret(names[0], "default")
    assert read.data["marker"] == "TUFSS0VSLWttcy0w"  # base64 of MARKER-kms-0
    assert [item.metadata.name for item in api.list_namespaced_secret("default").items] == sorted(names)
    assert plugin_calls(real_plugin, "Decrypt") == decrypts == 0
    calls = {(labels["method_name"], labels["grpc_status_code"]): value
             for labels, value in standin.metric_samples("apiserver_envelope_encryption_kms_operations_latency_seconds_count")}
    assert calls[("Encrypt", "OK")] == 1 and ("Decrypt", "OK") not in calls and calls[("Status", "OK")] >= 1

    for name in names:
        key = f"{standin.etcd_prefix}/secrets/default/{name}"
        value, _revision = etcd_value(etcd, key)
        stored = storage.parse_stored_value(value)
        assert (stored.provider_type, stored.provider_name, stored.key_id, stored.dek_source_type) == ("kms-v2", KMS_NAME, key_id, 1)
        assert dict(stored.annotations) == {"format.kms.teapot.dev": b"1"}
        assert value.startswith(f"k8s:enc:kms:v2:{KMS_NAME}:".encode()) and b"MARKER" not in value
        # Byte-exact: the collection's encoder rebuilds the very value from the parsed fields.
        assert storage.encode_kms_v2(KMS_NAME, stored.ciphertext, stored.key_id, stored.encrypted_dek, stored.annotations) == value
        plaintext, _stored = open_with_standin_code(value, key, real_plugin.socket)
        obj = json.loads(plaintext)
        assert (obj["kind"], obj["metadata"]["name"]) == ("Secret", name)
        assert "resourceVersion" not in obj["metadata"]
        # Another etcd key as additional data does not open it.
        with pytest.raises(Exception, match="authenticate"):
            open_with_standin_code(value, key + "-moved", real_plugin.socket)
    cm_value, _revision = etcd_value(etcd, f"{standin.etcd_prefix}/configmaps/default/kms-cm")
    assert storage.parse_stored_value(cm_value).provider_type == "kms-v2"

    # The metrics say which key_id wrote and read, hashed as upstream does.
    samples = standin.metric_samples("apiserver_envelope_encryption_key_id_hash_total")
    by_type = {labels["transformation_type"]: value for labels, value in samples
               if labels["provider_name"] == KMS_NAME and labels["key_id_hash"] == id_hash(key_id)}
    assert by_type["to_storage"] == 4
    assert by_type["from_storage"] >= 4


def test_unchanged_update_writes_nothing_and_stale_resource_version_conflicts(real_plugin, standin_factory, etcd, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    standin = standin_factory(config)
    api = core(standin)
    created = api.create_namespaced_secret("default", new_secret("steady"))
    before_value, before_revision = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/steady")
    assert created.metadata.resource_version == str(before_revision)
    revision = etcd_revision(etcd)

    current = api.read_namespaced_secret("steady", "default")
    replaced = api.replace_namespaced_secret("steady", "default", current)
    assert replaced.metadata.resource_version == str(before_revision)
    assert etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/steady") == (before_value, before_revision)
    assert etcd_revision(etcd) == revision

    current.string_data = {"token": "changed"}
    changed = api.replace_namespaced_secret("steady", "default", current)
    assert int(changed.metadata.resource_version) > before_revision

    # The resourceVersion read before that change is stale now.
    current.string_data = {"token": "lost update"}
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        api.replace_namespaced_secret("steady", "default", current)
    assert conflict.value.status == 409
    body = json.loads(conflict.value.body)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Conflict", 409)
    assert api.read_namespaced_secret("steady", "default").data["token"] == "Y2hhbmdlZA=="


def test_stale_objects_are_rewritten_by_an_unchanged_update(real_plugin, standin_factory, etcd, tmp_path):
    """identity -> aescbc -> kms v2 (first key_id) -> kms v2 (second key_id): each unchanged update moves the object to the first provider."""
    config = tmp_path / "enc.yaml"
    aescbc = {"aescbc": {"keys": [{"name": "key1", "secret": base64.b64encode(bytes(range(32))).decode()}]}}
    encryption_config(config, [{"identity": {}}])
    standin = standin_factory(config)
    api = core(standin)
    api.create_namespaced_secret("default", new_secret("plain"))
    value, _revision = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/plain")
    assert storage.parse_stored_value(value).provider_type == "identity"

    def rewrite_and_classify():
        before = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/plain")
        api.replace_namespaced_secret("plain", "default", api.read_namespaced_secret("plain", "default"))
        after = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/plain")
        assert after[1] > before[1], "a stale object must be written again"
        return storage.parse_stored_value(after[0])

    encryption_config(config, [aescbc, {"identity": {}}])
    _wait_for_reload(standin, 1)
    assert rewrite_and_classify()[:2] == ("aescbc", "key1")

    encryption_config(config, [kms_v2(real_plugin.socket), aescbc, {"identity": {}}])
    _wait_for_reload(standin, 2)
    stored = rewrite_and_classify()
    first_key_id = real_plugin.status_command()[1]["key_id"]
    assert (stored.provider_type, stored.key_id) == ("kms-v2", first_key_id)

    # Current now: an unchanged update writes nothing.
    before = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/plain")
    api.replace_namespaced_secret("plain", "default", api.read_namespaced_secret("plain", "default"))
    assert etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/plain") == before


def _wait_for_reload(standin, count, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = standin.metric_samples("apiserver_encryption_config_controller_automatic_reloads_total")
        if sum(value for labels, value in samples if labels["status"] == "success") >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no {count} successful reloads within {timeout}s; log:\n{standin.log_tail()}")


def test_paged_lists(real_plugin, standin_factory, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    standin = standin_factory(config)
    api = core(standin)
    expected = []
    for namespace in ("paging-a", "paging-b"):
        for index in range(4):
            api.create_namespaced_secret(namespace, new_secret(f"s{index}", namespace))
            expected.append((namespace, f"s{index}"))

    seen, token, pages = [], None, 0
    while True:
        page = api.list_secret_for_all_namespaces(limit=3, _continue=token)
        pages += 1
        seen.extend((item.metadata.namespace, item.metadata.name) for item in page.items)
        token = page.metadata._continue  # pylint: disable=protected-access
        if not token:
            break
        assert page.metadata.remaining_item_count == len(expected) - len(seen)
        # A write between pages does not show up: the list is read at one revision.
        if pages == 1:
            api.create_namespaced_secret("paging-a", new_secret("s9-late", "paging-a"))
    assert seen == expected
    assert pages == 3
    in_namespace = api.list_namespaced_secret("paging-b", limit=2)
    assert [item.metadata.name for item in in_namespace.items] == ["s0", "s1"]
    assert in_namespace.metadata.remaining_item_count == 2
    status, body = standin.json("GET", "/api/v1/secrets?limit=2&continue=not-a-token")
    assert status == 400 and body["reason"] == "BadRequest"


def test_health_follows_the_plugin(real_plugin, standin_factory, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    # Writes go on for 3 minutes on the last seed while the plugin fails (upstream); 5 s here.
    standin = standin_factory(config, extra_flags=["--standin-kms-write-ttl=5"])
    assert standin.wait_health("/healthz/kms-providers") == "ok"
    api = core(standin)
    api.create_namespaced_secret("default", new_secret("before-outage"))
    real_plugin.stop()
    body = standin.wait_health("/healthz/kms-providers", ok=False)
    assert "failed to perform status section of the healthz check" in body
    assert "[-]kms-providers failed" in standin.wait_health("/readyz", ok=False)
    assert standin.health("/livez")[0] == 200

    # Reads go on (the seed is cached); writes stop once the last seed has expired.
    assert api.read_namespaced_secret("before-outage", "default").metadata.name == "before-outage"
    deadline = time.monotonic() + 60
    while True:
        try:
            api.create_namespaced_secret("default", new_secret(f"during-outage-{time.monotonic_ns()}"))
        except kubernetes.client.ApiException as refused:
            assert refused.status == 500 and "expired" in json.loads(refused.body)["message"]
            break
        assert time.monotonic() < deadline, "writes went on after the seed expired"
        time.sleep(0.5)
    assert api.read_namespaced_secret("before-outage", "default").metadata.name == "before-outage"

    real_plugin.start()
    assert standin.wait_health("/healthz/kms-providers") == "ok"
    api.create_namespaced_secret("default", new_secret("after-outage"))


# ---------------------------------------------------------------- values a real kube-apiserver wrote


class FixtureKeyService:
    """The capture's TEST plugin, rebuilt from the fixtures README: AES-256-GCM under fixed, published KEKs.

    It stands in for the plugin that served the real kube-apiserver when the
    fixtures were captured (so that the stand-in can be shown to open what a
    real apiserver wrote); it is served by the daemon's own gRPC transport.
    """

    KEKS = {"fixture-kek-1": b"\x11" * 32, "fixture-kek-2": b"\x22" * 32}
    ANNOTATIONS = {"version.fixture.example.com": b"1"}

    def __init__(self, key_id="fixture-kek-2"):
        self.key_id = key_id
        self.calls = {"Status": 0, "Encrypt": 0, "Decrypt": 0}

    def status(self):
        self.calls["Status"] += 1
        return keyservice.StatusResult("v2", "ok", self.key_id)

    def encrypt(self, plaintext):
        self.calls["Encrypt"] += 1
        nonce = os.urandom(12)
        annotations = dict(self.ANNOTATIONS, **{"kek.fixture.example.com": self.key_id.encode()})
        return keyservice.EncryptResult(nonce + AESGCM(self.KEKS[self.key_id]).encrypt(nonce, plaintext, None), self.key_id, annotations)

    def decrypt(self, ciphertext, key_id, annotations):  # pylint: disable=unused-argument
        self.calls["Decrypt"] += 1
        return AESGCM(self.KEKS[key_id]).decrypt(ciphertext[:12], ciphertext[12:], None)


def serve_fixture_kms_v1(path, kek=b"\x33" * 32):
    """The capture's KMS v1 TEST plugin (``v1beta1``): AES-256-GCM under the published v1 KEK."""
    def version(request, context):  # pylint: disable=unused-argument
        return kmsapi.V1["VersionResponse"](version="v1beta1", runtime_name="fixture-test-plugin", runtime_version="0")

    def encrypt(request, context):  # pylint: disable=unused-argument
        nonce = os.urandom(12)
        return kmsapi.V1["EncryptResponse"](cipher=nonce + AESGCM(kek).encrypt(nonce, request.plain, None))

    def decrypt(request, context):  # pylint: disable=unused-argument
        return kmsapi.V1["DecryptResponse"](plain=AESGCM(kek).decrypt(request.cipher[:12], request.cipher[12:], None))

    handlers = {name: grpc.unary_unary_rpc_method_handler(function, request_deserializer=kmsapi.V1_METHODS[name][0].FromString,
                                                          response_serializer=lambda message: message.SerializeToString())
                for name, function in (("Version", version), ("Encrypt", encrypt), ("Decrypt", decrypt))}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(kmsapi.V1_SERVICE, handlers),))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server


@pytest.fixture(scope="module")
def fixture_etcd(tmp_path_factory, harness_log_dir):
    """An etcd of its own: the fixtures live at their original keys (/registry/...), which are their additional data."""
    server = EtcdServer(tmp_path_factory.mktemp("fixture-etcd"), harness_log_dir, name="fixtures")
    server.start()
    for fixture in load_fixtures():
        EtcdKV(server.endpoints).put(fixture["etcd_key"], fixture["value"])
    yield server
    server.stop()


@pytest.fixture
def fixture_plugins(tmp_path):
    keys = FixtureKeyService()
    v2_socket, v1_socket = tmp_path / "kms" / "fixture-v2.sock", tmp_path / "kms" / "fixture-v1.sock"
    v2_server = transport.start_server(transport.Servicer(keys), str(v2_socket), workers=2)
    v1_server = serve_fixture_kms_v1(str(v1_socket))
    yield keys, v2_socket, v1_socket
    v2_server.stop(0)
    v1_server.stop(0)


def fixture_providers(fixtures, v2_socket, v1_socket):
    """Every provider the fixtures were written with, KMS v2 first, as the capture's configuration had them."""
    def key_of(provider_type):
        (fixture,) = [item for item in fixtures if item["provider_type"] == provider_type]
        return {"keys": [{"name": fixture["provider_name"], "secret": fixture["provider_key_b64"]}]}

    return [kms_v2(v2_socket, "fixturekms"),
            {"kms": {"apiVersion": "v1", "name": "fixturekmsv1", "endpoint": f"unix://{v1_socket}", "cachesize": 10}},
            {"aescbc": key_of("aescbc")}, {"aesgcm": key_of("aesgcm")}, {"secretbox": key_of("secretbox")}, {"identity": {}}]


def test_reads_every_object_a_real_kube_apiserver_wrote(fixture_etcd, fixture_plugins, tmp_path):
    keys, v2_socket, v1_socket = fixture_plugins
    fixtures = load_fixtures()
    assert {fixture["provider_type"] for fixture in fixtures} == set(storage.PROVIDER_TYPES)
    config = encryption_config(tmp_path / "enc.yaml", fixture_providers(fixtures, v2_socket, v1_socket))
    standin = StandinProcess(tmp_path / "standin", fixture_etcd.endpoints, config, kms_poll_interval=1, kms_healthz_ttl=1,
                             extra_flags=["--feature-gates=KMSv1=true"])
    standin.start()
    try:
        standin.wait_health("/readyz")
        api = core(standin)
        for fixture in fixtures:
            read = (api.read_namespaced_secret if fixture["resource"] == "secrets" else api.read_namespaced_config_map)(
                fixture["name"], fixture["namespace"])
            values = {key: base64.b64decode(value).decode() for key, value in (read.data or {}).items()} \
                if fixture["resource"] == "secrets" else dict(read.data or {})
            assert fixture["plaintext_marker"] in values.values(), fixture["file"]
            value, revision = etcd_value(fixture_etcd, fixture["etcd_key"])
            assert read.metadata.resource_version == str(revision)
            stored = storage.parse_stored_value(value)
            assert (stored.provider_type, stored.provider_name or "identity") == (fixture["provider_type"], fixture["provider_name"])
        # One Decrypt per distinct stored seed (fixture-kek-1 wrote two objects with one seed), cached afterwards.
        assert keys.calls["Decrypt"] == 2
        listed = api.list_secret_for_all_namespaces()
        assert sorted(item.metadata.name for item in listed.items) == sorted(
            fixture["name"] for fixture in fixtures if fixture["resource"] == "secrets")
        assert keys.calls["Decrypt"] == 2

        # Current (kms v2 first, key_id fixture-kek-2): an unchanged update writes nothing, even for a protobuf-stored object.
        current = api.read_namespaced_secret("kmsv2-kek2-secret-d", "default")
        before = etcd_value(fixture_etcd, "/registry/secrets/default/kmsv2-kek2-secret-d")
        api.replace_namespaced_secret("kmsv2-kek2-secret-d", "default", current)
        assert etcd_value(fixture_etcd, "/registry/secrets/default/kmsv2-kek2-secret-d") == before
        # Stale (every other provider, and the older key_id): rewritten under KMS v2 with the current key_id.
        for fixture in fixtures:
            if fixture["name"] == "kmsv2-kek2-secret-d" or fixture["resource"] != "secrets":
                continue
            _value, old_revision = etcd_value(fixture_etcd, fixture["etcd_key"])
            api.replace_namespaced_secret(fixture["name"], "default", api.read_namespaced_secret(fixture["name"], "default"))
            value, revision = etcd_value(fixture_etcd, fixture["etcd_key"])
            assert revision > old_revision, f"{fixture['file']} is stale and must be written again"
            stored = storage.parse_stored_value(value)
            assert (stored.provider_type, stored.provider_name, stored.key_id) == ("kms-v2", "fixturekms", "fixture-kek-2"), fixture["file"]
            assert dict(stored.annotations) == {"version.fixture.example.com": b"1", "kek.fixture.example.com": b"fixture-kek-2"}
            again = api.read_namespaced_secret(fixture["name"], "default")
            assert fixture["plaintext_marker"] in {base64.b64decode(v).decode() for v in again.data.values()}
        assert keys.calls["Encrypt"] == 1
    finally:
        standin.stop()
        print(f"--- {standin.log_path} ---\n{standin.log_tail(60)}")


def test_key_rotation_by_sighup_reaches_storage_and_metrics(real_plugin, keks, standin_factory, etcd, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    standin = standin_factory(config)
    api = core(standin)
    first = real_plugin.status_command()[1]["key_id"]
    api.create_namespaced_secret("default", new_secret("before-rotation"))

    real_plugin.write_config(keys=[keks[1], keks[0]])
    real_plugin.reload()
    deadline = time.monotonic() + 60
    while real_plugin.status_command()[1]["key_id"] == first:
        assert time.monotonic() < deadline, "the plugin did not switch keys on SIGHUP"
        time.sleep(0.2)
    second = real_plugin.status_command()[1]["key_id"]

    def status_hashes():
        return {labels["key_id_hash"] for labels, _value in
                standin.metric_samples("apiserver_envelope_encryption_key_id_hash_status_last_timestamp_seconds")}

    deadline = time.monotonic() + 60
    while id_hash(second) not in status_hashes():
        assert time.monotonic() < deadline, f"the stand-in did not see the new key_id; log:\n{standin.log_tail()}"
        time.sleep(0.2)
    assert id_hash(first) in status_hashes()
    # A new seed for the new key_id: the second Encrypt of the stand-in's life.
    deadline = time.monotonic() + 30
    while plugin_calls(real_plugin, "Encrypt") < 2:
        assert time.monotonic() < deadline, "no Encrypt for the new key_id"
        time.sleep(0.2)

    api.create_namespaced_secret("default", new_secret("after-rotation"))
    after, _revision = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/after-rotation")
    assert storage.parse_stored_value(after).key_id == second
    written = {labels["key_id_hash"]: value for labels, value in standin.metric_samples("apiserver_envelope_encryption_key_id_hash_total")
               if labels["transformation_type"] == "to_storage"}
    assert written == {id_hash(first): 1, id_hash(second): 1}

    # The object written under the old key_id is stale: an unchanged update moves it to the new one.
    key = f"{standin.etcd_prefix}/secrets/default/before-rotation"
    old_value, old_revision = etcd_value(etcd, key)
    assert storage.parse_stored_value(old_value).key_id == first
    api.replace_namespaced_secret("before-rotation", "default", api.read_namespaced_secret("before-rotation", "default"))
    new_value, new_revision = etcd_value(etcd, key)
    assert new_revision > old_revision and storage.parse_stored_value(new_value).key_id == second
    assert plugin_calls(real_plugin, "Encrypt") == 2


def test_bad_reloaded_configuration_keeps_the_old_one(real_plugin, standin_factory, etcd, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    standin = standin_factory(config)
    api = core(standin)

    def reloads(status):
        return sum(value for labels, value in standin.metric_samples("apiserver_encryption_config_controller_automatic_reloads_total")
                   if labels["status"] == status)

    config.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: [\n", encoding="utf-8")
    deadline = time.monotonic() + 30
    while reloads("failure") < 1:
        assert time.monotonic() < deadline, f"no failed reload counted; log:\n{standin.log_tail()}"
        time.sleep(0.2)
    assert "failed to reload the encryption configuration, the previous one stays in force" in standin.log_tail()
    api.create_namespaced_secret("default", new_secret("still-kms"))
    value, _revision = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/still-kms")
    assert storage.parse_stored_value(value).provider_type == "kms-v2"
    assert standin.health("/healthz/kms-providers") == (200, "ok")

    # A new file whose KMS plugin cannot be reached is refused too: its provider never turns healthy.
    encryption_config(config, [kms_v2(tmp_path / "no-such-plugin.sock", "other"), {"identity": {}}])
    deadline = time.monotonic() + 60
    while reloads("failure") < 2:
        assert time.monotonic() < deadline, f"the unreachable provider was not refused; log:\n{standin.log_tail()}"
        time.sleep(0.5)
    assert reloads("success") == 0
    api.create_namespaced_secret("default", new_secret("still-teapot"))
    value, _revision = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/still-teapot")
    assert storage.parse_stored_value(value).provider_name == KMS_NAME

    encryption_config(config, [{"identity": {}}, kms_v2(real_plugin.socket)])
    _wait_for_reload(standin, 1)
    api.create_namespaced_secret("default", new_secret("now-plain"))
    value, _revision = etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/now-plain")
    assert storage.parse_stored_value(value).provider_type == "identity"


def test_custom_resources_and_delete(real_plugin, standin_factory, etcd, tmp_path):
    config = encryption_config(tmp_path / "enc.yaml", [kms_v2(real_plugin.socket), {"identity": {}}],
                               resources=("secrets", "widgets.example.com"))
    standin = standin_factory(config, extra_flags=["--standin-custom-resource=widgets.example.com/v1/Widget"])
    custom = kubernetes.client.CustomObjectsApi(standin.api_client())
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}}
    created = custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)
    assert created["metadata"]["generation"] == 1
    value, revision = etcd_value(etcd, f"{standin.etcd_prefix}/example.com/widgets/default/w1")
    stored = storage.parse_stored_value(value)
    assert (stored.provider_type, stored.provider_name) == ("kms-v2", KMS_NAME)
    assert created["metadata"]["resourceVersion"] == str(revision)

    listed = custom.list_cluster_custom_object("example.com", "v1", "widgets")
    assert [(item["kind"], item["metadata"]["name"]) for item in listed["items"]] == [("Widget", "w1")]
    current = custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w1")
    current["spec"]["size"] = 4
    updated = custom.replace_namespaced_custom_object("example.com", "v1", "default", "widgets", "w1", current)
    assert updated["metadata"]["generation"] == 2

    # Discovery lists what the stand-in serves.
    assert "example.com" in [group.name for group in kubernetes.client.ApisApi(standin.api_client()).get_api_versions().groups]

    api = core(standin)
    api.create_namespaced_secret("default", new_secret("doomed"))
    api.delete_namespaced_secret("doomed", "default")
    assert etcd_value(etcd, f"{standin.etcd_prefix}/secrets/default/doomed") == (None, 0)
    with pytest.raises(kubernetes.client.ApiException) as missing:
        api.read_namespaced_secret("doomed", "default")
    assert missing.value.status == 404
    custom.delete_namespaced_custom_object("example.com", "v1", "default", "widgets", "w1")
    assert custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")["items"] == []

    # Without a token nothing but health and version.
    assert standin.request("GET", "/api/v1/secrets", token=False)[0] == 401
    assert standin.request("GET", "/api/v1/secrets", token="wrong")[0] == 401
    assert standin.request("GET", "/version", token=False)[0] == 200


# ---------------------------------------------------------------- as a static pod


def edit_manifest(path, change):
    """Load the manifest, let ``change(pod)`` edit it, write it back by rename (as the collection's module does)."""
    pod = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(pod)
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(yaml.safe_dump(pod, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def drop_volume(name):
    def change(pod):
        pod["spec"]["volumes"] = [volume for volume in pod["spec"]["volumes"] if volume["name"] != name]
        container = pod["spec"]["containers"][0]
        container["volumeMounts"] = [mount for mount in container["volumeMounts"] if mount["name"] != name]
    return change


def wait_until(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_static_pod_manifest_and_the_kubelet_standin(real_plugin, standin_factory, tmp_path):
    config_dir = tmp_path / "encryption"
    config_dir.mkdir()
    socket_dir = str(real_plugin.base_dir / "run")
    config = encryption_config(config_dir / "config.yaml", [kms_v2(real_plugin.socket), {"identity": {}}])
    standin = standin_factory(config, start=False)
    manifest = standin.use_manifest(tmp_path / "manifests" / "kube-apiserver.yaml", [
        ("standin-files", str(standin.base_dir), "Directory"),
        ("encryption-config", str(config_dir), "DirectoryOrCreate"),
        ("kms-plugin-socket", socket_dir, "DirectoryOrCreate"),
    ])
    standin.start()
    assert standin.wait_health("/readyz") == "ok"
    assert "--manifest=" in " ".join(standin.argv())
    standin.watch_manifest()

    # Without the socket's directory in the pod, kube-apiserver runs and cannot reach the plugin.
    edit_manifest(manifest, drop_volume("kms-plugin-socket"))
    wait_until(lambda: standin.restarts == 1, "the restart after the manifest changed")
    body = standin.wait_health("/healthz/kms-providers", ok=False)
    assert "not-mounted-into-the-kube-apiserver-container" in body
    assert standin.running()

    # Mounted again: healthy again (another restart).
    def add_socket_mount(pod):
        pod["spec"]["volumes"].append({"name": "kms-plugin-socket", "hostPath": {"path": socket_dir, "type": "DirectoryOrCreate"}})
        pod["spec"]["containers"][0]["volumeMounts"].append({"name": "kms-plugin-socket", "mountPath": socket_dir})

    edit_manifest(manifest, add_socket_mount)
    wait_until(lambda: standin.restarts == 2, "the second restart")
    assert standin.wait_health("/healthz/kms-providers") == "ok"

    # An unchanged manifest rewritten: no restart; the manifest removed: the pod goes.
    manifest.write_bytes(manifest.read_bytes())
    time.sleep(2)
    assert standin.restarts == 2
    manifest.unlink()
    wait_until(lambda: not standin.running(), "the stand-in to stop once its manifest is gone")


@pytest.mark.parametrize("fault, message", [
    ("config-not-mounted", "is not inside any volumeMount of the kube-apiserver container"),
    ("unparseable-config", "failed to load the encryption configuration"),
    ("mount-without-volume", "names no volume in spec.volumes"),
    ("missing-directory", "is not a directory on this host"),
])
def test_refuses_a_static_pod_that_could_not_run(etcd, tmp_path, fault, message):
    config_dir = tmp_path / "encryption"
    config_dir.mkdir()
    config = encryption_config(config_dir / "config.yaml", [{"identity": {}}])
    if fault == "unparseable-config":
        config.write_text("kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources: {providers: [\n",
                          encoding="utf-8")
    standin = StandinProcess(tmp_path / "standin", etcd.endpoints, config, etcd_prefix=f"/{tmp_path.name}")
    mounts = [("standin-files", str(standin.base_dir), "Directory")]
    if fault != "config-not-mounted":
        mounts.append(("encryption-config", str(config_dir), "Directory"))
    if fault == "missing-directory":
        mounts.append(("gone", str(tmp_path / "gone"), "Directory"))
    manifest = standin.use_manifest(tmp_path / "manifests" / "kube-apiserver.yaml", mounts)
    if fault == "mount-without-volume":
        edit_manifest(manifest, lambda pod: pod["spec"]["volumes"].pop())
    standin.start(wait=False)
    try:
        assert standin.wait_exit() == 1
        assert message in standin.log_tail(), standin.log_tail()
    finally:
        standin.stop()
