"""The real plugin daemon reading its keys from a Kubernetes Secret, served by the kube-apiserver STAND-IN.

The management cluster's API server is the kube-apiserver stand-in
(tests/harness/standin: HTTPS, bearer-token authentication, objects in the
harness's real etcd); no kube-apiserver can run here.  The Secret is created
and changed through the stand-in's API with the kubernetes client; the plugin
(the real ``teapot-kms-plugin serve``, installed with its kubernetes extra)
reads it through a kubeconfig and serves KMS v2 on its unix socket.

The stand-in has no authorization (every authenticated user may do
everything), so a user that may not read the Secret (HTTP 403) cannot be
made here: a wrong token (HTTP 401) is tested instead.
"""

import base64
import os
import sys
import time
import uuid

import grpc
import kubernetes.client
import pytest
import yaml

from tests.harness.plugin_daemon import SOURCE, PluginProcess, plugin_venv
from tests.harness.procs import free_port
from tests.harness.standin.process import StandinProcess

pytestmark = pytest.mark.slow

SEED = os.urandom(32)
NAMESPACE = "tenant-a"


@pytest.fixture(scope="module")
def secret_venv():
    return plugin_venv(extras=("kubernetes",))


@pytest.fixture(scope="module")
def kms_client(secret_venv):
    """The client classes of the installed package (imported from its source tree)."""
    source = str(SOURCE / "src")
    if source not in sys.path:
        sys.path.insert(0, source)
    from teapot_kms_plugin import client  # pylint: disable=import-outside-toplevel,import-error

    return client


@pytest.fixture(scope="module")
def standin(etcd, tmp_path_factory):
    """The management cluster's API server: the kube-apiserver stand-in on the harness's etcd."""
    process = StandinProcess(tmp_path_factory.mktemp("mgmt-standin"), etcd.endpoints,
                             etcd_prefix=f"/registry-secret-source-{uuid.uuid4().hex[:8]}")
    process.start()
    process.wait_health("/readyz")
    yield process
    process.stop()


@pytest.fixture
def core(standin):
    return kubernetes.client.CoreV1Api(standin.api_client())


@pytest.fixture
def start_plugin(secret_venv, tmp_path):
    started = []

    def start(config):
        config = dict(config, metrics={"listen": f"127.0.0.1:{free_port()}"}, log_level="debug")
        plugin = PluginProcess(secret_venv, tmp_path / f"plugin-{len(started)}", config)
        started.append(plugin)
        return plugin.start()

    yield start
    for plugin in started:
        plugin.stop()
        print(f"--- {plugin.log_path} ---\n{plugin.log_tail(80)}")


def _b64(material):
    return base64.b64encode(material).decode()


def _create_secret(core, fields):
    name = f"tenant-a-kek-{uuid.uuid4().hex[:8]}"
    body = kubernetes.client.V1Secret(metadata=kubernetes.client.V1ObjectMeta(name=name), type="Opaque",
                                      data={field: _b64(material) for field, material in fields.items()})
    core.create_namespaced_secret(NAMESPACE, body)
    return name


def _set_fields(core, name, fields):
    """Change the Secret's key list (read, then a PUT at that resourceVersion)."""
    secret = core.read_namespaced_secret(name, NAMESPACE)
    secret.data = {field: _b64(material) for field, material in fields.items()}
    core.replace_namespaced_secret(name, NAMESPACE, secret)


def _source(kubeconfig, name):
    return {"kubeconfig": str(kubeconfig), "namespace": NAMESPACE, "name": name, "timeout": 5}


def _key_id(name, field):
    return f"k8s-secret:{NAMESPACE}/{name}/{field}"


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s")


def _unhealthy(client):
    """Status's healthz when it is not ok (one call), else None."""
    healthz = client.status().healthz
    return None if healthz == "ok" else healthz


def _never_logged(plugin, *materials):
    log = plugin.log_text()
    for material in materials:
        assert _b64(material) not in log and material.hex() not in log


def test_round_trip_rotation_and_refused_reloads(standin, core, start_plugin, kms_client):
    kek_1, kek_2, short = os.urandom(32), os.urandom(32), os.urandom(16)
    name = _create_secret(core, {"kek-1": kek_1})
    plugin = start_plugin({"kubernetes_secret": _source(standin.kubeconfig, name), "keys": ["kek-1"]})
    code, status = plugin.status_command()
    assert code == 0 and status["healthz"] == "ok" and status["key_id"] == _key_id(name, "kek-1")
    assert [(key["key_id"], key["source"], key["loaded"]) for key in status["keys"]] == [
        (_key_id(name, "kek-1"), "kubernetes_secret", True)]
    with kms_client.KmsClient(plugin.socket) as client:
        old = client.encrypt(SEED, uid="before-rotation")
        assert old.key_id == _key_id(name, "kek-1") and old.ciphertext[:3] == b"tk\x01"
        assert client.decrypt(old.ciphertext, old.key_id, dict(old.annotations)).plaintext == SEED

        # Rotation: the new key in the Secret first, then the configuration names it primary, then SIGHUP.
        _set_fields(core, name, {"kek-1": kek_1, "kek-2": kek_2})
        plugin.write_config(keys=["kek-2", "kek-1"])
        plugin.reload()
        _wait_for(lambda: client.status().key_id == _key_id(name, "kek-2"), 30, "Status reporting the new key_id")
        new = client.encrypt(SEED, uid="after-rotation")
        assert new.key_id == _key_id(name, "kek-2")
        assert client.decrypt(new.ciphertext, new.key_id, dict(new.annotations)).plaintext == SEED
        assert client.decrypt(old.ciphertext, old.key_id, dict(old.annotations)).plaintext == SEED

        # A 16-byte key at reload: refused as a whole, naming the Secret and the field; the keyring stays.
        _set_fields(core, name, {"kek-1": kek_1, "kek-2": kek_2, "kek-3": short})
        plugin.write_config(keys=["kek-3", "kek-2", "kek-1"])
        plugin.reload()
        reason = _wait_for(lambda: (client.report()["reload"] or {}).get("reason"), 30, "the refused reload")
        assert client.report()["reload"]["result"] == "refused"
        assert f"Secret {NAMESPACE}/{name} field kek-3 holds 16 bytes; a key-encryption key is exactly 32" in reason
        assert client.status().key_id == _key_id(name, "kek-2") and client.status().healthz == "ok"
        assert client.decrypt(new.ciphertext, new.key_id, dict(new.annotations)).plaintext == SEED

        # Other material under a field already pinned: refused too.
        _set_fields(core, name, {"kek-1": os.urandom(32), "kek-2": kek_2})
        plugin.write_config(keys=["kek-2", "kek-1"])
        plugin.reload()
        _wait_for(lambda: "different key material" in client.report()["reload"]["reason"], 30, "the second refused reload")
        assert client.decrypt(old.ciphertext, old.key_id, dict(old.annotations)).plaintext == SEED

        # Dropping kek-1 from the configuration: its ciphertexts are refused, named by their key_id.
        plugin.write_config(keys=["kek-2"])
        plugin.reload()
        _wait_for(lambda: client.report()["reload"]["result"] == "ok", 30, "the reload without kek-1")
        with pytest.raises(grpc.RpcError) as info:
            client.decrypt(old.ciphertext, old.key_id, dict(old.annotations))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and f"key_id {_key_id(name, 'kek-1')} is not in the keyring" \
            in info.value.details()
    _never_logged(plugin, kek_1, kek_2, short)


@pytest.mark.parametrize("material, message", [
    (os.urandom(16), "holds 16 bytes; a key-encryption key is exactly 32 random bytes"),
    (base64.b64encode(os.urandom(32)), "holds 44 bytes; a key-encryption key is exactly 32 random bytes (44 bytes: "
                                       "the key looks base64-encoded twice"),
], ids=["16-byte", "base64-twice"])
def test_wrong_key_refused_at_start(standin, core, start_plugin, kms_client, material, message):
    name = _create_secret(core, {"kek-1": material})
    plugin = start_plugin({"kubernetes_secret": _source(standin.kubeconfig, name), "keys": ["kek-1"]})
    code, status = plugin.status_command()
    assert code == 1 and not status["all_keys_loaded"]
    assert f"Secret {NAMESPACE}/{name} field kek-1 {message}" in status["healthz"]
    with kms_client.KmsClient(plugin.socket) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.encrypt(SEED, uid="no-key")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    _never_logged(plugin, material)


def test_missing_field_and_wrong_token(standin, core, start_plugin, tmp_path, kms_client):
    kek_1 = os.urandom(32)
    name = _create_secret(core, {"kek-1": kek_1})
    plugin = start_plugin({"kubernetes_secret": _source(standin.kubeconfig, name), "keys": ["kek-1", "kek-0"]})
    _code, status = plugin.status_command()
    assert status["healthz"] == "ok" and not status["all_keys_loaded"]
    assert f"Secret {NAMESPACE}/{name} has no field kek-0 (its fields: kek-1)" in status["keys"][1]["last_error"]

    # A kubeconfig whose user the API server does not accept.
    wrong = tmp_path / "wrong-token.kubeconfig"
    document = yaml.safe_load(standin.kubeconfig.read_text())
    wrong_token = f"wrong-{uuid.uuid4().hex}"
    document["users"][0]["user"]["token"] = wrong_token
    wrong.write_text(yaml.safe_dump(document))
    # At reload: refused, the running keyring and credentials stay.
    plugin.write_config(kubernetes_secret=_source(wrong, name), keys=["kek-1"])
    plugin.reload()
    with kms_client.KmsClient(plugin.socket) as client:
        reason = _wait_for(lambda: (client.report()["reload"] or {}).get("reason"), 30, "the refused reload")
        assert "the API server rejected the kubeconfig's credentials (HTTP 401)" in reason
        assert client.status().healthz == "ok"
    # At start: not loaded, and said why.
    other = start_plugin({"kubernetes_secret": _source(wrong, name), "keys": ["kek-1"]})
    code, status = other.status_command()
    assert code == 1
    assert (f"reading Secret {NAMESPACE}/{name} through {wrong} failed: the API server rejected the kubeconfig's "
            "credentials (HTTP 401)") in status["healthz"]
    for started in (plugin, other):
        assert wrong_token not in started.log_text() and standin.token not in started.log_text()
        _never_logged(started, kek_1)


def test_api_server_unreachable(standin, core, start_plugin, kms_client):
    """The cached keys serve while the stand-in is stopped, until max_stale; then health tells the truth."""
    kek_1 = os.urandom(32)
    name = _create_secret(core, {"kek-1": kek_1})
    plugin = start_plugin({"kubernetes_secret": _source(standin.kubeconfig, name), "keys": ["kek-1"],
                           "cache": {"refresh_interval": 1, "retry_interval": 1, "max_stale": 15}})
    with kms_client.KmsClient(plugin.socket) as client:
        before = client.encrypt(SEED, uid="before-outage")
        standin.stop()
        try:
            failed = _wait_for(lambda: "cannot connect to the API server" in plugin.log_text(), 30, "a failed refresh")
            assert failed
            # Within max_stale the cached key serves, and health is ok.
            during = client.encrypt(SEED, uid="during-outage")
            assert client.decrypt(during.ciphertext, during.key_id, dict(during.annotations)).plaintext == SEED
            healthz = _wait_for(lambda: _unhealthy(client), 60, "health turning not ok after max_stale")
            # The first look past max_stale says "is stale", later ones that the material was dropped.
            assert healthz.startswith(f"key {_key_id(name, 'kek-1')} is ") and "max_stale 15s" in healthz
            assert "cannot connect to the API server" in healthz
            with pytest.raises(grpc.RpcError) as info:
                client.decrypt(before.ciphertext, before.key_id, dict(before.annotations))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            code, _status = plugin.status_command()
            assert code == 1
        finally:
            standin.start()
        # Back: the next refresh loads the key again.
        _wait_for(lambda: client.status().healthz == "ok", 60, "health back to ok")
        assert client.decrypt(before.ciphertext, before.key_id, dict(before.annotations)).plaintext == SEED
    _never_logged(plugin, kek_1)
