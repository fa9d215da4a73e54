"""Decode objects kube-apiserver stored protobuf-encoded (``k8s\\0`` + runtime.Unknown), for Secrets and ConfigMaps.

The stand-in writes JSON (as ``--storage-media-type=application/json``), but
a real kube-apiserver stores built-in types as protobuf: to serve those
objects through the API it turns them into the JSON form here.  The message
layouts mirror ``k8s.io/apimachinery/pkg/runtime/generated.proto``,
``.../apis/meta/v1/generated.proto`` and ``k8s.io/api/core/v1/generated.proto``
for the fields these two kinds carry.
"""

import base64
import datetime

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

MAGIC = b"k8s\x00"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_STRING, _BYTES, _INT64, _INT32, _BOOL, _MESSAGE = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_INT64, _F.TYPE_INT32, _F.TYPE_BOOL, _F.TYPE_MESSAGE

# message -> [(field, number, type, label, message type or map value type)]
_LAYOUT = {
    "TypeMeta": [("apiVersion", 1, _STRING), ("kind", 2, _STRING)],
    "Unknown": [("typeMeta", 1, ".k8s.TypeMeta"), ("raw", 2, _BYTES), ("contentEncoding", 3, _STRING), ("contentType", 4, _STRING)],
    "Time": [("seconds", 1, _INT64), ("nanos", 2, _INT32)],
    "OwnerReference": [("kind", 1, _STRING), ("name", 3, _STRING), ("uid", 4, _STRING), ("apiVersion", 5, _STRING),
                       ("controller", 6, _BOOL), ("blockOwnerDeletion", 7, _BOOL)],
    "ObjectMeta": [("name", 1, _STRING), ("generateName", 2, _STRING), ("namespace", 3, _STRING), ("selfLink", 4, _STRING),
                   ("uid", 5, _STRING), ("resourceVersion", 6, _STRING), ("generation", 7, _INT64),
                   ("creationTimestamp", 8, ".k8s.Time"), ("deletionTimestamp", 9, ".k8s.Time"),
                   ("deletionGracePeriodSeconds", 10, _INT64), ("labels", 11, {_STRING: _STRING}),
                   ("annotations", 12, {_STRING: _STRING}), ("ownerReferences", 13, [".k8s.OwnerReference"]),
                   ("finalizers", 14, [_STRING])],
    "Secret": [("metadata", 1, ".k8s.ObjectMeta"), ("data", 2, {_STRING: _BYTES}), ("type", 3, _STRING),
               ("stringData", 4, {_STRING: _STRING}), ("immutable", 5, _BOOL)],
    "ConfigMap": [("metadata", 1, ".k8s.ObjectMeta"), ("data", 2, {_STRING: _STRING}), ("binaryData", 3, {_STRING: _BYTES}),
                  ("immutable", 4, _BOOL)],
}


def _build():
    proto = descriptor_pb2.FileDescriptorProto(name="teapot_standin_k8s.proto", package="k8s", syntax="proto2")
    for message_name, fields in _LAYOUT.items():
        message = proto.message_type.add(name=message_name)
        for field_name, number, kind in fields:
            if isinstance(kind, dict):
                ((key_type, value_type),) = kind.items()
                entry_name = field_name[0].upper() + field_name[1:] + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=key_type, label=_OPTIONAL)
                entry.field.add(name="value", number=2, type=value_type, label=_OPTIONAL)
                message.field.add(name=field_name, number=number, type=_MESSAGE, label=_REPEATED,
                                  type_name=f".k8s.{message_name}.{entry_name}")
            elif isinstance(kind, list):
                (item,) = kind
                if isinstance(item, str):
                    message.field.add(name=field_name, number=number, type=_MESSAGE, label=_REPEATED, type_name=item)
                else:
                    message.field.add(name=field_name, number=number, type=item, label=_REPEATED)
            elif isinstance(kind, str):
                message.field.add(name=field_name, number=number, type=_MESSAGE, label=_OPTIONAL, type_name=kind)
            else:
                message.field.add(name=field_name, number=number, type=kind, label=_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"k8s.{name}")) for name in _LAYOUT}


_MESSAGES = _build()
KINDS = {("v1", "Secret"), ("v1", "ConfigMap")}


class ProtobufDecodeError(ValueError):
    """A protobuf-encoded object the stand-in cannot turn into JSON."""


def _time(value):
    moment = datetime.datetime.fromtimestamp(value.seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _metadata(meta):
    result = {}
    for field in ("name", "generateName", "namespace", "uid", "generation", "deletionGracePeriodSeconds"):
        if getattr(meta, field):  # Go writes empty optional fields; JSON omits them
            result[field] = getattr(meta, field)
    for field in ("creationTimestamp", "deletionTimestamp"):
        if meta.HasField(field):
            result[field] = _time(getattr(meta, field))
    for field in ("labels", "annotations"):
        if getattr(meta, field):
            result[field] = dict(getattr(meta, field))
    if meta.finalizers:
        result["finalizers"] = list(meta.finalizers)
    if meta.ownerReferences:
        result["ownerReferences"] = [
            {field: getattr(ref, field) for field in ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")
             if ref.HasField(field) and (getattr(ref, field) or field in ("controller", "blockOwnerDeletion"))}
            for ref in meta.ownerReferences]
    return result


def decode(data):
    """The JSON form (a dict with apiVersion and kind) of a ``k8s\\0``-prefixed Secret or ConfigMap."""
    if not data.startswith(MAGIC):
        raise ProtobufDecodeError("not a protobuf-encoded object (no k8s\\0 prefix)")
    try:
        unknown = _MESSAGES["Unknown"].FromString(data[len(MAGIC):])
        api_version, kind = unknown.typeMeta.apiVersion, unknown.typeMeta.kind
        if (api_version, kind) not in KINDS:
            raise ProtobufDecodeError(f"protobuf-encoded {api_version} {kind}: the stand-in decodes only v1 Secret and ConfigMap")
        obj = _MESSAGES[kind].FromString(unknown.raw)
    except ProtobufDecodeError:
        raise
    except Exception as exc:  # protobuf raises DecodeError and others on damaged input
        raise ProtobufDecodeError(f"protobuf-encoded object does not decode: {type(exc).__name__}") from None
    result = {"apiVersion": api_version, "kind": kind, "metadata": _metadata(obj.metadata)}
    if kind == "Secret":
        if obj.data:
            result["data"] = {key: base64.b64encode(value).decode() for key, value in obj.data.items()}
        if obj.HasField("type"):
            result["type"] = obj.type
    else:
        if obj.data:
            result["data"] = dict(obj.data)
        if obj.binaryData:
            result["binaryData"] = {key: base64.b64encode(value).decode() for key, value in obj.binaryData.items()}
    if obj.HasField("immutable"):
        result["immutable"] = obj.immutable
    return result
