"""The unix socket: permissions, stale sockets, and paths that are not ours to remove."""

import os
import socket
import stat

import grpc
import pytest

from teapot_kms_plugin import proto
from teapot_kms_plugin import transport
from teapot_kms_plugin.client import KmsClient


def test_socket_mode_and_parent(tmp_path, key_service):
    path = tmp_path / "new" / "kms.sock"
    server = transport.start_server(transport.Servicer(key_service), str(path), workers=2)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        with KmsClient(str(path)) as client:
            assert client.status().healthz == "ok"
    finally:
        server.stop(1).wait()


def test_socket_group(tmp_path, key_service):
    path = tmp_path / "kms.sock"
    gid = os.getgid()
    server = transport.start_server(transport.Servicer(key_service), str(path), workers=2, group=str(gid))
    try:
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == gid
    finally:
        server.stop(1).wait()


def test_socket_group_can_reach_the_socket(tmp_path, key_service):
    """The directory the plugin creates (0700) would hide a 0660 socket from its group."""
    path = tmp_path / "new" / "kms.sock"
    gid = os.getgid()
    server = transport.start_server(transport.Servicer(key_service), str(path), workers=2, group=str(gid))
    try:
        info = os.stat(path.parent)
        assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_gid == gid
    finally:
        server.stop(1).wait()


def test_refuses_regular_file(tmp_path, key_service):
    path = tmp_path / "kms.sock"
    path.write_text("not a socket")
    with pytest.raises(transport.SocketError, match="is not a socket: refusing to remove it"):
        transport.start_server(transport.Servicer(key_service), str(path))
    assert path.read_text() == "not a socket"


def test_replaces_stale_socket(tmp_path, key_service):
    path = tmp_path / "kms.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    server = transport.start_server(transport.Servicer(key_service), str(path), workers=2)
    try:
        with KmsClient(str(path)) as client:
            assert client.status().version == "v2"
    finally:
        server.stop(1).wait()


def test_refuses_socket_in_use(tmp_path, key_service):
    path = tmp_path / "kms.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(transport.SocketError, match="in use"):
            transport.start_server(transport.Servicer(key_service), str(path))
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        live.close()


def test_round_trip_over_socket(socket_server):
    _path, client, _key_service = socket_server
    response = client.encrypt(b"\x07" * 32, uid="8a1d")
    assert client.decrypt(response.ciphertext, response.key_id, dict(response.annotations)).plaintext == b"\x07" * 32
    assert client.status().key_id == response.key_id


@pytest.mark.parametrize("method", ["Status", "Encrypt", "Decrypt"])
def test_garbage_request_is_invalid_argument(socket_server, method):
    _path, client, _key_service = socket_server
    call = client.channel.unary_unary(proto.method_path(method))
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid" in info.value.details()


def test_unknown_method_is_unimplemented(socket_server):
    _path, client, _key_service = socket_server
    call = client.channel.unary_unary("/v2.KeyManagementService/Rotate")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_oversized_request_is_refused(socket_server):
    _path, client, _key_service = socket_server
    with pytest.raises(grpc.RpcError) as info:
        client.decrypt(b"x" * (transport.MAX_MESSAGE + 1), "k")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.status().healthz == "ok"


class _BrokenKeyService:
    """A key service with a bug whose exception text quotes something secret."""

    def status(self):
        raise RuntimeError("secret-material-0123")

    def encrypt(self, plaintext):
        raise RuntimeError(f"secret-material-{plaintext.hex()}")

    def decrypt(self, ciphertext, key_id, annotations):
        raise KeyError("secret-material-4567")


def test_unexpected_error_is_internal_without_its_text(tmp_path, caplog):
    path = str(tmp_path / "kms.sock")
    server = transport.start_server(transport.Servicer(_BrokenKeyService()), path, workers=2)
    try:
        with KmsClient(path) as client:
            calls = (client.status, lambda: client.encrypt(b"\x01" * 32, uid="uid-broken"), lambda: client.decrypt(b"x", "k"))
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.INTERNAL
                assert "internal error" in info.value.details() and "secret-material" not in info.value.details()
            # The server keeps serving after a failing call.
            with pytest.raises(grpc.RpcError):
                client.status()
    finally:
        server.stop(1).wait()
    logged = " ".join(f"{record.getMessage()} {vars(record)}" for record in caplog.records)
    assert "RuntimeError" in logged and "uid-broken" in logged
    assert "secret-material" not in logged and "01010101" not in logged


def test_parent_that_is_a_file_is_a_socket_error(tmp_path, key_service):
    blocker = tmp_path / "run"
    blocker.write_text("")
    with pytest.raises(transport.SocketError, match="cannot create the directory"):
        transport.start_server(transport.Servicer(key_service), str(blocker / "kms.sock"))
