"""A KMS v2 server that does nothing: the floor for Python gRPC over a unix socket.

Same transport as the plugin (generic handlers, requests parsed in the
handler, same thread pool size), canned answers, no keys, no crypto.
Usage: ``python kms_noop_server.py SOCKET_PATH`` (stops on SIGTERM).
"""

import signal
import sys
import threading
from concurrent import futures

import grpc

from teapot_kms_plugin import proto


def _serialize(message):
    return message.SerializeToString()


def main(path):
    def status(raw, _context):
        proto.StatusRequest.FromString(raw)
        return proto.StatusResponse(version="v2", healthz="ok", key_id="noop")

    def encrypt(raw, _context):
        request = proto.EncryptRequest.FromString(raw)
        return proto.EncryptResponse(ciphertext=request.plaintext, key_id="noop", annotations={"format.noop.example": b"1"})

    def decrypt(raw, _context):
        request = proto.DecryptRequest.FromString(raw)
        return proto.DecryptResponse(plaintext=request.ciphertext)

    handlers = {name: grpc.unary_unary_rpc_method_handler(func, response_serializer=_serialize)
                for name, func in (("Status", status), ("Encrypt", encrypt), ("Decrypt", decrypt))}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         handlers=(grpc.method_handlers_generic_handler(proto.GRPC_SERVICE, handlers),))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main(sys.argv[1])
