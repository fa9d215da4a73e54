"""The kube-apiserver stand-in's parts that need no service: configuration, ciphers, manifests, paging tokens.

The behaviour against etcd and the real KMS plugin is in
tests/integration/test_kube_apiserver_standin.py.
"""

import base64
import json
import ssl
import urllib.error
import urllib.request

import pytest
import yaml

from tests.harness.etcd_fixtures import load_fixtures
from tests.harness.kube_apiserver_standin import KubeApiserverStandin
from tests.harness.procs import free_port
from tests.harness.standin import ciphers, encryption, flags, k8s_protobuf, store
from tests.harness.standin.metrics import StandinMetrics

KEY32 = base64.b64encode(bytes(range(32))).decode()
OTHER32 = base64.b64encode(bytes(range(32, 64))).decode()


def write_config(tmp_path, resources):
    path = tmp_path / "enc.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                                    "resources": resources}), encoding="utf-8")
    return path


def load(tmp_path, resources, **options):
    return encryption.load_encryption_config(str(write_config(tmp_path, resources)), StandinMetrics("unit"), **options)


KMS = {"kms": {"apiVersion": "v2", "name": "teapot", "endpoint": "unix:///run/kms.sock"}}


@pytest.mark.parametrize("providers, resources, message", [
    ([{"identity": {}, "aescbc": {"keys": [{"name": "k", "secret": KEY32}]}}], ["secrets"], "exactly one of the expected providers"),
    ([{"aescbc": {"keys": [{"name": "k", "secret": base64.b64encode(b"short").decode()}]}}], ["secrets"], "got 5, expected one of [32]"),
    ([{"aescbc": {"keys": [{"name": "k", "secret": "not base64!"}]}}], ["secrets"], "must be base64"),
    ([{"aesgcm": {"keys": [{"name": "a:b", "secret": KEY32}]}}], ["secrets"], "must not contain ':'"),
    ([{"secretbox": {"keys": []}}], ["secrets"], "has no valid keys"),
    ([{"kms": {"apiVersion": "v2", "name": "a:b", "endpoint": "unix:///s"}}], ["secrets"], "must not contain ':'"),
    ([{"kms": {"apiVersion": "v2", "name": "n", "endpoint": "tcp://host:1"}}], ["secrets"], "only unix:// is supported"),
    ([{"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "cachesize": 100}}], ["secrets"], "cachesize is not supported in v2"),
    ([{"kms": {"apiVersion": "v3", "name": "n", "endpoint": "unix:///s"}}], ["secrets"], "Unsupported value"),
    ([{"kms": {"name": "n", "endpoint": "unix:///s"}}], ["secrets"], "--feature-gates=KMSv1=true"),
    ([{"kms": {"apiVersion": "v2", "name": "n", "endpoint": "unix:///s", "timeout": "soon"}}], ["secrets"], "is not a duration"),
    ([{"identity": {}}], ["Secrets"], "must be lowercase"),
    ([{"identity": {}}], ["*.*", "secrets"], "is masked by earlier rule *.*"),
    ([{"identity": {}}], ["secrets", "secrets"], "Duplicate value"),
    ([{"identity": {}}], ["*"], "use '*.' for all core resources"),
    ([{"magic": {}}], ["secrets"], "unknown field 'magic'"),
])
def test_invalid_configurations_are_refused_with_the_reason(tmp_path, providers, resources, message):
    with pytest.raises(encryption.ConfigError) as refused:
        load(tmp_path, [{"resources": resources, "providers": providers}])
    assert message in str(refused.value)
    assert KEY32 not in str(refused.value)


def test_duplicate_kms_names_across_resources_are_refused(tmp_path):
    with pytest.raises(encryption.ConfigError, match="duplicate kms provider name"):
        load(tmp_path, [{"resources": ["secrets"], "providers": [KMS]}, {"resources": ["configmaps"], "providers": [KMS]}])


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("kind: EncryptionConfig\napiVersion: v1\nresources: []\n", "expected apiserver.config.k8s.io/v1 EncryptionConfiguration"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: [\n", "error decoding"),
    ("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\n", "must contain at least one resource"),
])
def test_unusable_files_are_refused(tmp_path, content, message):
    path = tmp_path / "enc.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(encryption.ConfigError, match=message):
        encryption.load_encryption_config(str(path), StandinMetrics("unit"))


def test_resources_find_their_chain_like_kube_apiserver(tmp_path):
    config = load(tmp_path, [
        {"resources": ["secrets"], "providers": [{"aesgcm": {"keys": [{"name": "g", "secret": KEY32}]}}]},
        {"resources": ["*.apps", "widgets.example.com"], "providers": [{"secretbox": {"keys": [{"name": "s", "secret": KEY32}]}}]},
        {"resources": ["*."], "providers": [{"aescbc": {"keys": [{"name": "c", "secret": KEY32}]}}]},
    ])
    assert config.chain_for("", "secrets").providers[0].kind == "aesgcm"
    assert config.chain_for("", "configmaps").providers[0].kind == "aescbc"
    assert config.chain_for("apps", "deployments").providers[0].kind == "secretbox"
    assert config.chain_for("example.com", "widgets").providers[0].kind == "secretbox"
    assert config.chain_for("example.com", "gadgets") is encryption.IDENTITY_ONLY
    # No KMS provider: no KMS health check, unless automatic reload is on.
    assert config.health_checks() == []


def test_static_keys_read_stale_unless_written_by_the_first_key_and_provider(tmp_path):
    key = "/registry/secrets/default/s"
    two_keys = [{"aescbc": {"keys": [{"name": "new", "secret": OTHER32}, {"name": "old", "secret": KEY32}]}},
                {"aesgcm": {"keys": [{"name": "g", "secret": KEY32}]}}, {"secretbox": {"keys": [{"name": "b", "secret": KEY32}]}},
                {"identity": {}}]
    chain = load(tmp_path, [{"resources": ["secrets"], "providers": two_keys}]).chain_for("", "secrets")
    written = chain.write(b'{"a":1}', key)
    assert written.startswith(b"k8s:enc:aescbc:v1:new:")
    assert chain.read(written, key)[:2] == (b'{"a":1}', False)

    reordered = [{"aescbc": {"keys": [{"name": "old", "secret": KEY32}, {"name": "new", "secret": OTHER32}]}}]
    assert load(tmp_path, [{"resources": ["secrets"], "providers": reordered}]).chain_for("", "secrets").read(written, key)[1] is True
    for provider in two_keys[1:]:
        value = encryption.ProviderChain([load(tmp_path, [{"resources": ["secrets"], "providers": [provider]}])
                                          .chain_for("", "secrets").providers[0]]).write(b'{"b":2}', key)
        plaintext, stale, stored = chain.read(value, key)
        assert (plaintext, stale, stored.provider_type) == (b'{"b":2}', True, next(iter(provider)))


def test_values_outside_the_configuration_are_refused(tmp_path):
    chain = load(tmp_path, [{"resources": ["secrets"], "providers": [{"aescbc": {"keys": [{"name": "k", "secret": KEY32}]}}]}]) \
        .chain_for("", "secrets")
    with pytest.raises(encryption.TransformError, match="no identity provider is configured"):
        chain.read(b'{"kind":"Secret"}', "/registry/secrets/a/b")
    with pytest.raises(encryption.TransformError, match="stored by aesgcm other"):
        chain.read(b"k8s:enc:aesgcm:v1:other:" + bytes(40), "/registry/secrets/a/b")
    with pytest.raises(encryption.TransformError, match="identity transformer|which is not in the encryption"):
        encryption.IDENTITY_ONLY.read(b"k8s:enc:aescbc:v1:k:" + bytes(32), "/registry/secrets/a/b")


def test_aead_values_are_bound_to_their_etcd_key():
    seed = bytes(range(32))
    sealed = ciphers.kms_v2_seal(seed, b"object", b"/registry/secrets/a/b")
    assert ciphers.kms_v2_open(seed, sealed, b"/registry/secrets/a/b") == b"object"
    with pytest.raises(ciphers.CipherError, match="does not authenticate"):
        ciphers.kms_v2_open(seed, sealed, b"/registry/secrets/a/c")
    # A fresh info, so a fresh data key, per write.
    assert sealed[:32] != ciphers.kms_v2_seal(seed, b"object", b"/registry/secrets/a/b")[:32]


def test_fixture_written_by_a_real_apiserver_opens_with_the_standin_ciphers():
    for fixture in load_fixtures():
        if fixture["provider_type"] in ("aescbc", "aesgcm", "secretbox"):
            provider = encryption.StaticKeyProvider(fixture["provider_type"], [
                {"name": fixture["provider_name"], "secret": fixture["provider_key_b64"]}], "fixture")
            plaintext, _stored = encryption.ProviderChain([provider]).read(fixture["value"], fixture["etcd_key"])[::2]
            assert fixture["plaintext_marker"].encode() in base64.b64decode(
                next(iter(k8s_protobuf.decode(plaintext)["data"].values())))
        if fixture["provider_type"] == "identity":
            obj = k8s_protobuf.decode(fixture["value"])
            assert (obj["kind"], obj["metadata"]["name"], obj["type"]) == ("Secret", fixture["name"], "Opaque")
            assert "generateName" not in obj["metadata"]


@pytest.mark.parametrize("text, seconds", [("3s", 3.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0)])
def test_go_durations(text, seconds):
    assert encryption.parse_duration(text, "t") == seconds


def manifest(tmp_path, command, volumes, mounts):
    path = tmp_path / "kube-apiserver.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kube-apiserver"}, "spec": {
        "containers": [{"name": "kube-apiserver", "command": ["kube-apiserver", *command], "volumeMounts": mounts}],
        "volumes": volumes}}), encoding="utf-8")
    return str(path)


def test_manifest_paths_are_translated_through_the_pod_mounts(tmp_path):
    host_config = tmp_path / "host" / "enc"
    host_config.mkdir(parents=True)
    (host_config / "config.yaml").write_text("x", encoding="utf-8")
    path = manifest(tmp_path, ["--encryption-provider-config=/etc/kubernetes/enc/config.yaml", "--secure-port=7443",
                               "--authorization-mode=Node,RBAC", "--etcd-servers=https://127.0.0.1:2379"],
                    [{"name": "enc", "hostPath": {"path": str(host_config), "type": "DirectoryOrCreate"}},
                     {"name": "kms", "hostPath": {"path": "/run/teapot-kms", "type": "DirectoryOrCreate"}},
                     {"name": "scratch", "emptyDir": {}}],
                    [{"name": "enc", "mountPath": "/etc/kubernetes/enc", "readOnly": True},
                     {"name": "kms", "mountPath": "/var/run/kms"}, {"name": "scratch", "mountPath": "/tmp/x"}])
    options = flags.parse([f"--manifest={path}", "--standin-kms-poll-interval=2"])
    assert options.args.encryption_provider_config == str(host_config / "config.yaml")
    assert (options.args.secure_port, options.args.standin_kms_poll_interval) == (7443, 2.0)
    assert "--authorization-mode=Node,RBAC" in options.ignored
    assert options.map_path("/var/run/kms/socket.sock") == "/run/teapot-kms/socket.sock"
    assert options.map_path("/var/run/other.sock") is None


def test_a_kms_socket_outside_the_pod_mounts_is_unreachable(tmp_path):
    config = load(tmp_path, [{"resources": ["secrets"], "providers": [KMS]}], map_path=lambda path: None)
    try:
        assert config.kms_providers[0].socket_path == encryption.UNMOUNTED_ROOT + "/run/kms.sock"
    finally:
        config.close()


@pytest.mark.parametrize("content, message", [
    ("kind: Deployment\n", "is not a static pod manifest"),
    ("kind: Pod\nspec: {containers: [{name: etcd}]}\n", "no container named kube-apiserver"),
    ("kind: Pod\nspec: {containers: [{name: kube-apiserver, command: [kube-apiserver, --manifest=/x]}]}\n", "is a stand-in flag"),
    (": : :\n", "is not YAML"),
])
def test_manifests_that_are_no_kube_apiserver_pod_are_refused(tmp_path, content, message):
    path = tmp_path / "m.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(flags.StartupError, match=message):
        flags.parse([f"--manifest={path}"])


def test_continue_tokens_round_trip_and_refuse_tampering():
    token = store.ObjectStore._encode_continue("/registry/secrets/ns/name\0", "/registry/secrets/", 42)  # pylint: disable=protected-access
    assert json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["rv"] == 42
    assert store.ObjectStore._decode_continue(token, "/registry/secrets/") == ("/registry/secrets/ns/name\0", 42)  # pylint: disable=protected-access
    escaping = base64.urlsafe_b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": 1, "start": "../configmaps/x"}).encode()).decode()
    for bad in ("not-a-token", escaping):
        with pytest.raises(store.ApiError) as refused:
            store.ObjectStore._decode_continue(bad, "/registry/secrets/")  # pylint: disable=protected-access
        assert refused.value.code == 400


@pytest.mark.parametrize("selector, labels, matches", [
    ("app=web", {"app": "web"}, True), ("app=web", {"app": "db"}, False), ("app!=web", {}, True),
    ("app", {"app": "x"}, True), ("!app", {"app": "x"}, False), ("a=1,b=2", {"a": "1", "b": "2"}, True),
])
def test_label_selectors(selector, labels, matches):
    assert store._matches(store._parse_selector(selector, "label"), labels) is matches  # pylint: disable=protected-access


def test_custom_resource_declarations():
    assert store.parse_custom_resource("widgets.example.com/v1/Widget") == store.ResourceType("example.com", "v1", "widgets", "Widget")
    assert not store.parse_custom_resource("gadgets.example.com/v2/Gadget/cluster").namespaced
    with pytest.raises(ValueError, match="<plural>.<group>/<version>/<Kind>"):
        store.parse_custom_resource("widgets/v1")


def test_in_process_standin_serves_https_with_its_own_certificate_and_reports_etcd_down(tmp_path):
    """No etcd at all: it still starts (as kube-apiserver does), and its health says why it is not ready."""
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('unit-token,unit-user,unit-uid,"system:masters"\n', encoding="utf-8")
    standin = KubeApiserverStandin.from_flags([
        f"--etcd-servers=http://127.0.0.1:{free_port()}", "--bind-address=127.0.0.1", "--secure-port=0",
        f"--cert-dir={tmp_path / 'certs'}", f"--token-auth-file={tokens}", "--encryption-provider-config-automatic-reload"])
    with standin:
        context = ssl.create_default_context(cafile=str(tmp_path / "certs" / "kube-apiserver-standin-ca.crt"))

        def get(path, token=None):
            request = urllib.request.Request(standin.url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as response:  # nosec: loopback
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        assert get("/version")[0] == 200
        status, body = get("/readyz?verbose")
        assert status == 500 and "[-]etcd failed" in body and "[+]kms-providers ok" in body
        assert get("/healthz/kms-providers") == (200, "ok")
        assert get("/api/v1/secrets")[0] == 401
        assert get("/metrics", "wrong-token")[0] == 401
        status, body = get("/api/v1/namespaces/default/secrets/x", "unit-token")
        assert status == 500 and json.loads(body)["reason"] == "InternalError"
        assert get("/api/v1/namespaces/default/pods", "unit-token")[0] == 404
