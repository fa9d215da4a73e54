"""KMS v2 message classes, built at import time from a descriptor.

No generated code: the file descriptor below mirrors the upstream
``k8s.io/kms/apis/v2/api.proto`` (package ``v2``, service
``KeyManagementService``) field for field, so the wire format is the same as
the one the kube-apiserver speaks.
"""

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

PACKAGE = "v2"
GRPC_SERVICE = "v2.KeyManagementService"

_FDP = descriptor_pb2.FieldDescriptorProto
_STRING = _FDP.TYPE_STRING
_BYTES = _FDP.TYPE_BYTES


def _add_field(message, name, number, field_type, json_name):
    field = message.field.add()
    field.name = name
    field.number = number
    field.type = field_type
    field.label = _FDP.LABEL_OPTIONAL
    field.json_name = json_name
    return field


def _add_bytes_map(message, name, number, json_name):
    """Add ``map<string, bytes> name = number`` the way protoc lowers it."""
    entry_name = "".join(part.capitalize() for part in name.split("_")) + "Entry"
    entry = message.nested_type.add()
    entry.name = entry_name
    entry.options.map_entry = True
    _add_field(entry, "key", 1, _STRING, "key")
    _add_field(entry, "value", 2, _BYTES, "value")
    field = _add_field(message, name, number, _FDP.TYPE_MESSAGE, json_name)
    field.label = _FDP.LABEL_REPEATED
    field.type_name = f".{PACKAGE}.{message.name}.{entry_name}"


def _file_descriptor():
    proto = descriptor_pb2.FileDescriptorProto()
    proto.name = "api.proto"
    proto.package = PACKAGE
    proto.syntax = "proto3"
    proto.options.go_package = "k8s.io/kms/apis/v2"

    proto.message_type.add(name="StatusRequest")

    status = proto.message_type.add(name="StatusResponse")
    _add_field(status, "version", 1, _STRING, "version")
    _add_field(status, "healthz", 2, _STRING, "healthz")
    _add_field(status, "key_id", 3, _STRING, "keyId")

    decrypt = proto.message_type.add(name="DecryptRequest")
    _add_field(decrypt, "ciphertext", 1, _BYTES, "ciphertext")
    _add_field(decrypt, "uid", 2, _STRING, "uid")
    _add_field(decrypt, "key_id", 3, _STRING, "keyId")
    _add_bytes_map(decrypt, "annotations", 4, "annotations")

    decrypt_response = proto.message_type.add(name="DecryptResponse")
    _add_field(decrypt_response, "plaintext", 1, _BYTES, "plaintext")

    encrypt = proto.message_type.add(name="EncryptRequest")
    _add_field(encrypt, "plaintext", 1, _BYTES, "plaintext")
    _add_field(encrypt, "uid", 2, _STRING, "uid")

    encrypt_response = proto.message_type.add(name="EncryptResponse")
    _add_field(encrypt_response, "ciphertext", 1, _BYTES, "ciphertext")
    _add_field(encrypt_response, "key_id", 2, _STRING, "keyId")
    _add_bytes_map(encrypt_response, "annotations", 3, "annotations")

    grpc_service = proto.service.add(name="KeyManagementService")
    for method, request, response in (
        ("Status", "StatusRequest", "StatusResponse"),
        ("Decrypt", "DecryptRequest", "DecryptResponse"),
        ("Encrypt", "EncryptRequest", "EncryptResponse"),
    ):
        grpc_service.method.add(name=method, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}")
    return proto


FILE_DESCRIPTOR_PROTO = _file_descriptor()
# A private pool: the default one may already hold another "api.proto".
POOL = descriptor_pool.DescriptorPool()
FILE_DESCRIPTOR = POOL.Add(FILE_DESCRIPTOR_PROTO)


def _message(name):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


StatusRequest = _message("StatusRequest")
StatusResponse = _message("StatusResponse")
DecryptRequest = _message("DecryptRequest")
DecryptResponse = _message("DecryptResponse")
EncryptRequest = _message("EncryptRequest")
EncryptResponse = _message("EncryptResponse")

# method name -> (request class, response class), in the service's order.
METHODS = {
    "Status": (StatusRequest, StatusResponse),
    "Decrypt": (DecryptRequest, DecryptResponse),
    "Encrypt": (EncryptRequest, EncryptResponse),
}


def method_path(method):
    """The HTTP/2 path a gRPC client calls, e.g. ``/v2.KeyManagementService/Encrypt``."""
    return f"/{GRPC_SERVICE}/{method}"
