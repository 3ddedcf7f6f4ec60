"""Confluent's own Protobuf serializer and deserializer (confluent-kafka for Python), as a
producer and a reader of the worker's topics use them (tests/protobuf.rs). PROTO_FILE is
compiled with protoc from grpcio-tools (grpc_tools.protoc) into a Python module, and MESSAGE
is the full name of one of its messages (package included, e.g. comms.v1.CallEvent; nested
messages as comms.v1.CallEvent.Device).

    confluent_protobuf.py produce BROKERS TOPIC REGISTRY PROTO_FILE MESSAGE  < events.jsonl
        Builds a MESSAGE from each JSON line (protobuf's JSON mapping, json_format.ParseDict;
        an unknown field is an error), serializes it with ProtobufSerializer (the file's
        schema registered under the topic's subject) and produces it, keyed by its "caller".
        Prints the count.
    confluent_protobuf.py consume BROKERS TOPIC REGISTRY PROTO_FILE MESSAGE COUNT
        Reads COUNT records from the start of TOPIC with ProtobufDeserializer (given the
        message class, it parses with it and asks the registry for nothing) and prints each
        as a JSON line: {"schema_id": N, "key": "...", "value": {...}}, the value in
        protobuf's JSON mapping with the .proto field names (int64 values as strings).
    confluent_protobuf.py schema PROTO_FILE MESSAGE
        Prints the base64 of the compiled file's serialized FileDescriptorProto: the schema
        text ProtobufSerializer registers for MESSAGE.
"""

import base64
import importlib
import json
import os
import sys
import tempfile
import time

import grpc_tools
from grpc_tools import protoc

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.message import Message

# google/protobuf/*.proto, as grpcio-tools ships them (their Python modules come with protobuf).
WELL_KNOWN_INCLUDE = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def _module_name(proto_name):
    """The module protoc's Python generator writes for a .proto file's import name."""
    return proto_name[: -len(".proto")].replace("-", "_").replace("/", ".") + "_pb2"


def message_class(proto_file, message):
    """Compiles PROTO_FILE (and the files it imports beside it) with grpc_tools.protoc into a
    temporary directory, imports the result and returns the class of MESSAGE."""
    proto_file = os.path.abspath(proto_file)
    include = os.path.dirname(proto_file)
    name = os.path.basename(proto_file)
    args = ["grpc_tools.protoc", f"-I{include}", f"-I{WELL_KNOWN_INCLUDE}"]
    with tempfile.TemporaryDirectory() as out:
        # The imports first: the ones that are not protobuf's own need modules of their own.
        descriptor_set = os.path.join(out, "descriptor_set.pb")
        if protoc.main(args + ["--include_imports", f"--descriptor_set_out={descriptor_set}", name]):
            sys.exit(f"protoc could not compile {proto_file}")
        files = descriptor_pb2.FileDescriptorSet()
        with open(descriptor_set, "rb") as f:
            files.ParseFromString(f.read())
        names = [fd.name for fd in files.file if not fd.name.startswith("google/protobuf/")]
        if protoc.main(args + [f"--python_out={out}"] + names):
            sys.exit(f"protoc could not compile {proto_file}")
        sys.path.insert(0, out)
        try:
            module = importlib.import_module(_module_name(name))
        finally:
            sys.path.remove(out)
    package = module.DESCRIPTOR.package
    prefix = package + "." if package else ""
    if not message.startswith(prefix):
        sys.exit(f"{message} is not in {proto_file}'s package {package}")
    cls = module
    for part in message[len(prefix) :].split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            break
    if not (isinstance(cls, type) and issubclass(cls, Message)) or cls.DESCRIPTOR.full_name != message:
        sys.exit(f"{proto_file} has no message {message}")
    return cls


def produce(brokers, topic, registry, proto_file, message):
    cls = message_class(proto_file, message)
    client = SchemaRegistryClient({"url": registry})
    serializer = ProtobufSerializer(cls, client, {"use.deprecated.format": False})
    producer = Producer({"bootstrap.servers": brokers})
    context = SerializationContext(topic, MessageField.VALUE)
    count = 0
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        event = json.loads(line)
        try:
            record = json_format.ParseDict(event, cls())
        except json_format.ParseError as e:
            sys.exit(f"line {number}: {e}")
        producer.produce(topic, key=str(event.get("caller")), value=serializer(record, context))
        count += 1
    left = producer.flush(30)
    if left:
        sys.exit(f"{left} records not delivered")
    print(count)


def consume(brokers, topic, registry, proto_file, message, count):
    cls = message_class(proto_file, message)
    # Given the message class and no registry client, the deserializer reads the framing (the
    # schema id and the message indexes) and parses the rest with the class.
    deserializer = ProtobufDeserializer(cls, {"use.deprecated.format": False})
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"python-reader-{topic}-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    context = SerializationContext(topic, MessageField.VALUE)
    deadline = time.monotonic() + 120
    read = 0
    while read < count:
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {read} of {count} records")
        record = consumer.poll(0.5)
        if record is None:
            continue
        if record.error():
            sys.exit(f"consumer error: {record.error()}")
        raw = record.value()
        value = deserializer(raw, context)
        schema_id = int.from_bytes(raw[1:5], "big")
        key = record.key().decode("utf-8") if record.key() is not None else None
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
        print(json.dumps({"schema_id": schema_id, "key": key, "value": value}))
        read += 1
    consumer.close()


def schema(proto_file, message):
    cls = message_class(proto_file, message)
    print(base64.standard_b64encode(cls.DESCRIPTOR.file.serialized_pb).decode("ascii"))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        produce(*args)
    elif command == "consume":
        consume(*args[:5], int(args[5]))
    elif command == "schema":
        schema(*args)
    else:
        sys.exit(f"unknown command {command}")
