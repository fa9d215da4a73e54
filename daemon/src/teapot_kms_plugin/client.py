"""A small KMS v2 client over a unix socket (the CLI's status command, tests, benchmarks)."""

import json

import grpc

from . import proto
from . import transport


class KmsClient:
    """Calls ``v2.KeyManagementService`` on ``unix:PATH``."""

    def __init__(self, socket_path, timeout=5.0):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")
        self._calls = {
            method: self.channel.unary_unary(
                proto.method_path(method),
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            for method, (request_class, response_class) in proto.METHODS.items()
        }
        self._report = self.channel.unary_unary(transport.REPORT_METHOD)

    def status(self):
        return self._calls["Status"](proto.StatusRequest(), timeout=self.timeout)

    def encrypt(self, plaintext, uid=""):
        return self._calls["Encrypt"](proto.EncryptRequest(plaintext=plaintext, uid=uid), timeout=self.timeout)

    def decrypt(self, ciphertext, key_id, annotations=None, uid=""):
        request = proto.DecryptRequest(ciphertext=ciphertext, key_id=key_id, annotations=annotations or {}, uid=uid)
        return self._calls["Decrypt"](request, timeout=self.timeout)

    def report(self):
        """The plugin's key states and last reload (a dict); raises grpc.RpcError like the KMS calls."""
        return json.loads(self._report(b"", timeout=self.timeout))

    def wait_ready(self, timeout):
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
