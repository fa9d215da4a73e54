"""``teapot-kms-plugin serve`` as a process: what comes up in which order.

Barbican here is a loopback listener that accepts and never answers (a hung
Keystone/Barbican), so the first fetch cannot finish while the test looks.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
import yaml

from teapot_kms_plugin.client import KmsClient

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "src"
KEY = "0f6e2f5a-8a51-4f4e-8f27-8c1f7d3b2a10"


@pytest.fixture
def silent_peer():
    """A TCP listener that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _config(tmp_path, barbican_port, metrics_listen, socket_path=None):
    password = tmp_path / "password"
    password.write_text("s3cret-value\n")
    data = {
        "socket": socket_path or str(tmp_path / "run" / "kms.sock"),
        "barbican": {"auth": {"auth_url": f"http://127.0.0.1:{barbican_port}/v3", "username": "kms",
                              "password_file": str(password), "project_name": "kms"}, "timeout": 120},
        "keys": [KEY],
        "metrics": {"listen": metrics_listen},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "kms.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data["socket"]


def _serve(path):
    env = dict(os.environ, PYTHONPATH=str(SOURCE))
    return subprocess.Popen([sys.executable, "-m", "teapot_kms_plugin", "serve", "--config", str(path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_socket_answers_while_the_first_fetch_hangs(tmp_path, silent_peer):
    path, socket_path = _config(tmp_path, silent_peer, "")
    process = _serve(path)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with KmsClient(socket_path, timeout=10) as client:
            client.wait_ready(10)
            healthz = client.status().healthz
            report = client.report()
        # The fetch is still waiting on the silent peer: the key was never fetched, and Status says so.
        assert "not loaded" in healthz and "not fetched yet" in healthz
        assert report["keys"][0]["loaded"] is False and report["keys"][0]["last_error"] == "not fetched yet"
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert not os.path.exists(socket_path)


def test_metrics_port_clash_fails_before_the_socket(tmp_path, silent_peer):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    # A regular file where the socket goes: whichever is tried first names its failure.
    blocker = tmp_path / "not-a-socket"
    blocker.write_text("keep me")
    try:
        path, _socket_path = _config(tmp_path, silent_peer, f"127.0.0.1:{taken.getsockname()[1]}", str(blocker))
        process = _serve(path)
        _out, err = process.communicate(timeout=120)
    finally:
        taken.close()
    assert process.returncode == 1
    errors = [json.loads(line)["msg"] for line in err.splitlines() if line.startswith("{")]
    assert any(message.startswith("cannot serve metrics on 127.0.0.1:") for message in errors), err
    assert not any("not a socket" in message for message in errors), err
    assert blocker.read_text() == "keep me"
