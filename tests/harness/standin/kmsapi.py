"""The KMS gRPC APIs as the kube-apiserver stand-in speaks them.

KMS v2 messages and the client come from the plugin daemon's own package
(``teapot_kms_plugin.proto`` / ``.client``): on a test host the stand-in runs
with the plugin's venv, where that package is installed; in this repository
it is imported from the daemon's source tree.  KMS v1 (``v1beta1``, read-only
here) is not spoken by the daemon: its four messages are described below,
field for field as in the upstream ``k8s.io/kms/apis/v1beta1/api.proto``.
"""

import importlib
import pathlib
import sys

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

# The daemon's sources in this repository (used when the package is not installed).
DAEMON_SOURCE = pathlib.Path(__file__).resolve().parents[3] / "daemon" / "src"


def _daemon_module(name):
    try:
        return importlib.import_module(f"teapot_kms_plugin.{name}")
    except ImportError:
        if not (DAEMON_SOURCE / "teapot_kms_plugin").is_dir():
            raise
        sys.path.append(str(DAEMON_SOURCE))
        return importlib.import_module(f"teapot_kms_plugin.{name}")


v2 = _daemon_module("proto")
KmsV2Client = _daemon_module("client").KmsClient


def _v1_messages():
    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="v1beta1/api.proto", package="v1beta1", syntax="proto3")
    layout = {
        "VersionRequest": [("version", 1, fdp.TYPE_STRING)],
        "VersionResponse": [("version", 1, fdp.TYPE_STRING), ("runtime_name", 2, fdp.TYPE_STRING), ("runtime_version", 3, fdp.TYPE_STRING)],
        "DecryptRequest": [("version", 1, fdp.TYPE_STRING), ("cipher", 2, fdp.TYPE_BYTES)],
        "DecryptResponse": [("plain", 1, fdp.TYPE_BYTES)],
        "EncryptRequest": [("version", 1, fdp.TYPE_STRING), ("plain", 2, fdp.TYPE_BYTES)],
        "EncryptResponse": [("cipher", 1, fdp.TYPE_BYTES)],
    }
    for message_name, fields in layout.items():
        message = proto.message_type.add(name=message_name)
        for field_name, number, field_type in fields:
            message.field.add(name=field_name, number=number, type=field_type, label=fdp.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"v1beta1.{name}")) for name in layout}


V1 = _v1_messages()
V1_SERVICE = "v1beta1.KeyManagementService"
V1_METHODS = {method: (V1[f"{method}Request"], V1[f"{method}Response"]) for method in ("Version", "Decrypt", "Encrypt")}


class KmsV1Client:
    """``v1beta1.KeyManagementService`` on ``unix:PATH``."""

    def __init__(self, socket_path, timeout):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")
        self._calls = {
            method: self.channel.unary_unary(f"/{V1_SERVICE}/{method}", request_serializer=request.SerializeToString,
                                             response_deserializer=response.FromString)
            for method, (request, response) in V1_METHODS.items()
        }

    def version(self):
        return self._calls["Version"](V1["VersionRequest"](version="v1beta1"), timeout=self.timeout)

    def encrypt(self, plain):
        return self._calls["Encrypt"](V1["EncryptRequest"](version="v1beta1", plain=plain), timeout=self.timeout).cipher

    def decrypt(self, cipher):
        return self._calls["Decrypt"](V1["DecryptRequest"](version="v1beta1", cipher=cipher), timeout=self.timeout).plain

    def close(self):
        self.channel.close()
