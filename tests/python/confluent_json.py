"""Confluent's own JSON Schema serializer and deserializer (confluent-kafka for Python), as a
producer and a reader of the worker's topics use them (tests/json_schema.rs).

    confluent_json.py produce BROKERS TOPIC REGISTRY SCHEMA_FILE  < events.jsonl
        Serializes each JSON line with JSONSerializer (the schema registered under the topic's
        subject, each record validated against it) and produces it, keyed by its "caller".
    confluent_json.py consume BROKERS TOPIC REGISTRY COUNT
        Reads COUNT records from the start of TOPIC with JSONDeserializer (each record's schema
        fetched from the registry by the id in its header, and the record validated against
        it) and prints each as a JSON line: {"schema_id": N, "key": "...", "value": {...}}.
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(brokers, topic, registry, schema_file):
    client = SchemaRegistryClient({"url": registry})
    with open(schema_file, encoding="utf-8") as f:
        schema = f.read()
    serializer = JSONSerializer(schema, client)
    producer = Producer({"bootstrap.servers": brokers})
    context = SerializationContext(topic, MessageField.VALUE)
    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        event = json.loads(line)
        producer.produce(topic, key=str(event.get("caller")), value=serializer(event, context))
        count += 1
    left = producer.flush(30)
    if left:
        sys.exit(f"{left} records not delivered")
    print(count)


def consume(brokers, topic, registry, count):
    client = SchemaRegistryClient({"url": registry})
    deserializer = JSONDeserializer(None, schema_registry_client=client)
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
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            sys.exit(f"consumer error: {message.error()}")
        raw = message.value()
        value = deserializer(raw, context)
        schema_id = int.from_bytes(raw[1:5], "big")
        key = message.key().decode("utf-8") if message.key() is not None else None
        print(json.dumps({"schema_id": schema_id, "key": key, "value": value}))
        read += 1
    consumer.close()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        produce(*args)
    elif command == "consume":
        consume(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown command {command}")
