"""A comparison point for bench/audit_bench.py: the module's classification over etcd's gRPC API.

The module reads etcd through its JSON gateway, which needs nothing on a
control-plane host but Python.  This reads the same pages through etcd's own
gRPC ``KV/Range`` with ``grpcio`` (message classes built from a descriptor at
run time) and classifies them with the module's own ``AuditResult``: the
difference between the two is the transport alone.  Benchmark only: grpcio is
not a requirement of the module.
"""

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ansible_collections.teapot.kms.plugins.module_utils._encryption_audit import AuditResult
from ansible_collections.teapot.kms.plugins.module_utils._etcd import prefix_range_end
from ansible_collections.teapot.kms.plugins.module_utils._kms_storage import registry_prefix

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"bytes": _FDP.TYPE_BYTES, "int64": _FDP.TYPE_INT64, "uint64": _FDP.TYPE_UINT64, "bool": _FDP.TYPE_BOOL}
# The fields of etcd's rpc.proto / kv.proto that a paged range needs, with their numbers.
_MESSAGES = {
    "ResponseHeader": [("cluster_id", 1, "uint64"), ("member_id", 2, "uint64"), ("revision", 3, "int64"), ("raft_term", 4, "uint64")],
    "KeyValue": [("key", 1, "bytes"), ("create_revision", 2, "int64"), ("mod_revision", 3, "int64"), ("version", 4, "int64"),
                 ("value", 5, "bytes"), ("lease", 6, "int64")],
    "RangeRequest": [("key", 1, "bytes"), ("range_end", 2, "bytes"), ("limit", 3, "int64"), ("revision", 4, "int64")],
    "RangeResponse": [("header", 1, "ResponseHeader"), ("kvs", 2, "repeated KeyValue"), ("more", 3, "bool"), ("count", 4, "int64")],
}


def _classes():
    proto = descriptor_pb2.FileDescriptorProto(name="etcd_range.proto", package="etcdserverpb", syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind in fields:
            repeated = kind.startswith("repeated ")
            kind = kind.split()[-1]
            field = message.field.add(name=field_name, number=number,
                                      label=_FDP.LABEL_REPEATED if repeated else _FDP.LABEL_OPTIONAL)
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type = _FDP.TYPE_MESSAGE
                field.type_name = f".etcdserverpb.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"etcdserverpb.{name}")) for name in _MESSAGES}


_CLASSES = _classes()


def grpc_audit(server, resource, expectation, page_size):
    """The audit of ``resource`` over gRPC: an AuditResult like ``_encryption_audit.audit()`` gives."""
    with open(server.ca_path, "rb") as ca, open(server.client_key, "rb") as key, open(server.client_cert, "rb") as cert:
        credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
    request_class, response_class = _CLASSES["RangeRequest"], _CLASSES["RangeResponse"]
    prefix = registry_prefix(resource)
    result = AuditResult([resource], keep_all=False)
    with grpc.secure_channel(server.endpoints[0].split("://", 1)[1], credentials,
                             options=[("grpc.max_receive_message_length", 1 << 30)]) as channel:
        call = channel.unary_unary("/etcdserverpb.KV/Range", request_serializer=request_class.SerializeToString,
                                   response_deserializer=response_class.FromString)
        start, end, revision = prefix.encode(), prefix_range_end(prefix.encode()), 0
        while True:
            answer = call(request_class(key=start, range_end=end, limit=page_size, revision=revision), timeout=60)
            revision = revision or answer.header.revision
            for kv in answer.kvs:
                result.add(kv.key.decode("utf-8", "surrogateescape"), resource, prefix, kv.value, expectation)
            if not answer.more or not answer.kvs:
                break
            start = answer.kvs[-1].key + b"\x00"
    result.revision = revision
    return result
