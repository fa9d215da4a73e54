"""The message classes built from a descriptor speak upstream's KMS v2 wire format."""

import importlib.util
import pathlib

import pytest
from google.protobuf import descriptor_pb2

from teapot_kms_plugin import proto

# Upstream k8s.io/kms/apis/v2/api.proto, restated field by field for this test.
UPSTREAM_SHAPE = """
syntax = "proto3";
package v2;
option go_package = "k8s.io/kms/apis/v2";
service KeyManagementService {
  rpc Status(StatusRequest) returns (StatusResponse);
  rpc Decrypt(DecryptRequest) returns (DecryptResponse);
  rpc Encrypt(EncryptRequest) returns (EncryptResponse);
}
message StatusRequest {}
message StatusResponse {
  string version = 1;
  string healthz = 2;
  string key_id = 3;
}
message DecryptRequest {
  bytes ciphertext = 1;
  string uid = 2;
  string key_id = 3;
  map<string, bytes> annotations = 4;
}
message DecryptResponse {
  bytes plaintext = 1;
}
message EncryptRequest {
  bytes plaintext = 1;
  string uid = 2;
}
message EncryptResponse {
  bytes ciphertext = 1;
  string key_id = 2;
  map<string, bytes> annotations = 3;
}
"""


def _varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data):
    """Decode protobuf wire format by hand: [(field number, wire type, value)]."""
    out = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        assert wire_type == 2, f"unexpected wire type {wire_type}"
        length, pos = _varint(data, pos)
        out.append((number, data[pos:pos + length]))
        pos += length
    return out


def test_decrypt_request_fields_by_number():
    request = proto.DecryptRequest(ciphertext=b"\x01\x02", uid="u-1", key_id="barbican:k", annotations={"a.example.com": b"v"})
    fields = _fields(request.SerializeToString())
    assert fields[:3] == [(1, b"\x01\x02"), (2, b"u-1"), (3, b"barbican:k")]
    number, entry = fields[3]
    assert number == 4
    assert _fields(entry) == [(1, b"a.example.com"), (2, b"v")]


def test_encrypt_and_status_fields_by_number():
    assert _fields(proto.EncryptRequest(plaintext=b"seed", uid="u").SerializeToString()) == [(1, b"seed"), (2, b"u")]
    response = proto.EncryptResponse(ciphertext=b"ct", key_id="k", annotations={"x.example.com": b"1"})
    fields = _fields(response.SerializeToString())
    assert fields[:2] == [(1, b"ct"), (2, b"k")]
    assert fields[2][0] == 3 and _fields(fields[2][1]) == [(1, b"x.example.com"), (2, b"1")]
    status = proto.StatusResponse(version="v2", healthz="ok", key_id="k")
    assert _fields(status.SerializeToString()) == [(1, b"v2"), (2, b"ok"), (3, b"k")]
    assert _fields(proto.DecryptResponse(plaintext=b"p").SerializeToString()) == [(1, b"p")]


def test_decodes_bytes_written_by_hand():
    wire = b"\x0a\x03abc\x12\x02id\x1a\x01k\x22\x0c\x0a\x07a.b.com\x12\x01z"
    request = proto.DecryptRequest.FromString(wire)
    assert request.ciphertext == b"abc" and request.uid == "id" and request.key_id == "k"
    assert dict(request.annotations) == {"a.b.com": b"z"}


def test_service_paths():
    assert proto.method_path("Encrypt") == "/v2.KeyManagementService/Encrypt"
    methods = [(m.name, m.input_type, m.output_type) for m in proto.FILE_DESCRIPTOR_PROTO.service[0].method]
    assert methods == [
        ("Status", ".v2.StatusRequest", ".v2.StatusResponse"),
        ("Decrypt", ".v2.DecryptRequest", ".v2.DecryptResponse"),
        ("Encrypt", ".v2.EncryptRequest", ".v2.EncryptResponse"),
    ]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools is not installed")
def test_descriptor_equals_protoc_output(tmp_path):
    """protoc's descriptor of the upstream shape equals the one built in Python (names, numbers, types, map entries, json names, service)."""
    from grpc_tools import protoc  # pylint: disable=import-outside-toplevel

    source = pathlib.Path(tmp_path, "api.proto")
    source.write_text(UPSTREAM_SHAPE)
    out = tmp_path / "api.pb"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}", str(source)]) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    ours = descriptor_pb2.FileDescriptorProto()
    ours.CopyFrom(proto.FILE_DESCRIPTOR_PROTO)
    assert compiled.package == ours.package == "v2"
    assert compiled.syntax == ours.syntax == "proto3"
    assert compiled.options == ours.options
    assert list(compiled.message_type) == list(ours.message_type)
    assert list(compiled.service) == list(ours.service)
