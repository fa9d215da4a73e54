"""teapot.kms.reencrypt without an API server: argument checks, the state file, the pacing.

Rewriting itself is tested against the kube-apiserver stand-in, the real plugin
and a real etcd in tests/integration/test_encryption_e2e.py.
"""

import json
import os

import pytest

from ansible_collections.teapot.kms.plugins.modules import reencrypt


def _kubeconfig(tmp_path, server="https://127.0.0.1:1"):
    path = tmp_path / "admin.conf"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}],
    }), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("args, message", [
    ({"etcd_defragment": True}, "etcd_defragment needs etcd_compact=true"),
    ({"qps": -1}, "qps must be 0 (no limit) or more"),
    ({"page_size": 0}, "page_size and request_timeout 1 or more"),
    ({"resources": []}, "resources is empty"),
])
def test_bad_options(run_module, tmp_path, args, message):
    code, result = run_module(reencrypt.main, {"kubeconfig": _kubeconfig(tmp_path), **args})
    assert code == 1 and message in result["msg"]


def test_bad_resource_name(run_module, tmp_path):
    code, result = run_module(reencrypt.main, {"kubeconfig": _kubeconfig(tmp_path), "resources": ["*.*"],
                                               "state_file": str(tmp_path / "state.json")})
    assert code == 1 and "wildcards are not expanded" in result["msg"]


def test_missing_kubeconfig(run_module, tmp_path):
    code, result = run_module(reencrypt.main, {"kubeconfig": str(tmp_path / "nowhere.conf")})
    assert code == 1 and "cannot load the kubeconfig" in result["msg"] and "nowhere.conf" in result["msg"]


def test_unreachable_api_server_keeps_the_token_out(run_module, tmp_path):
    code, result = run_module(reencrypt.main, {"kubeconfig": _kubeconfig(tmp_path), "request_timeout": 2,
                                               "state_file": str(tmp_path / "s.json"),
                                               "progress_log": str(tmp_path / "progress.log")})
    assert code == 1 and "cannot reach the Kubernetes API at https://127.0.0.1:1" in result["msg"]
    assert "not-a-real-token" not in json.dumps(result)


def test_missing_library(run_module, monkeypatch, tmp_path):
    monkeypatch.setattr(reencrypt, "HAS_KUBERNETES", False)
    monkeypatch.setattr(reencrypt, "KUBERNETES_IMPORT_ERROR", "ImportError: No module named 'kubernetes'")
    code, result = run_module(reencrypt.main, {"kubeconfig": _kubeconfig(tmp_path)})
    assert code == 1 and "Failed to import the required Python library (kubernetes)" in result["msg"]


def test_state_file_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "state.json")
    state = reencrypt.RunState(path, "https://a:6443")
    entry = state.resource("secrets")
    entry.update({"continue": "tok", "last": "default/s-3"})
    entry["counts"]["rewritten"] = 3
    state.save()
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert os.listdir(os.path.dirname(path)) == ["state.json"]

    again = reencrypt.RunState(path, "https://a:6443")
    again.load(resume=True)
    assert again.resumed and again.resource("secrets")["last"] == "default/s-3"
    assert again.resource("secrets")["counts"]["rewritten"] == 3

    fresh = reencrypt.RunState(path, "https://a:6443")
    fresh.load(resume=False)
    assert not fresh.resumed and fresh.resource("secrets")["last"] is None

    other = reencrypt.RunState(path, "https://b:6443")
    other.load(resume=True)
    assert not other.resumed and "https://a:6443" in other.warnings[0]

    again.complete()
    after = reencrypt.RunState(path, "https://a:6443")
    after.load(resume=True)
    assert not after.resumed and after.resource("secrets")["continue"] is None


def test_unreadable_state_file_starts_over(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{half", encoding="utf-8")
    state = reencrypt.RunState(str(path), "https://a:6443")
    state.load(resume=True)
    assert not state.resumed and "unreadable" in state.warnings[0]


def test_pacer_spaces_calls(monkeypatch):
    clock = {"now": 100.0}
    sleeps = []

    def sleep(seconds):
        sleeps.append(round(seconds, 6))
        clock["now"] += seconds

    monkeypatch.setattr(reencrypt.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(reencrypt.time, "sleep", sleep)
    pacer = reencrypt.Pacer(4)
    for _call in range(3):
        pacer.wait()
    clock["now"] += 1.0
    pacer.wait()
    assert sleeps == [0.25, 0.25]
    unlimited = reencrypt.Pacer(0)
    unlimited.wait()
    unlimited.wait()
    assert sleeps == [0.25, 0.25]
