"""Independent decoder: reads Confluent wire-format Avro records from a Kafka topic with
confluent-kafka and fastavro (not our Rust code), fetching each writer schema from the registry
by the id in the record, and prints one JSON object per record.

This is how the ecosystem (Kafdrop, Flink, Kafka Connect, Python consumers) reads our topics; the
integration tests compare its output with what the Rust side wrote.

    python decode_avro.py --bootstrap 127.0.0.1:9092 --registry URL --topic T --count N

Decimals are printed as strings, timestamp-micros as integer microseconds since the epoch,
bytes as hex.
"""
import argparse
import datetime
import decimal
import io
import json
import sys
import urllib.request
import uuid

import fastavro
from confluent_kafka import Consumer

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    if isinstance(value, decimal.Decimal):
        return format(value, "f")  # plain notation: 0.000000000000000001, never 1E-18
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def fetch_schema(registry: str, schema_id: int, cache: dict):
    if schema_id not in cache:
        with urllib.request.urlopen(f"{registry.rstrip('/')}/schemas/ids/{schema_id}", timeout=10) as r:
            cache[schema_id] = fastavro.parse_schema(json.loads(json.load(r)["schema"]))
    return cache[schema_id]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True, help="stop after this many records")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"tickflow-check-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    consumer.subscribe([args.topic])
    schemas = {}
    seen = 0
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=args.timeout)
    try:
        while seen < args.count and datetime.datetime.now() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                print(f"kafka error: {message.error()}", file=sys.stderr)
                continue
            value = message.value()
            if len(value) < 5 or value[0] != 0:
                print(f"not Confluent wire format: first bytes {value[:5].hex()}", file=sys.stderr)
                return 1
            schema_id = int.from_bytes(value[1:5], "big")
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), fetch_schema(args.registry, schema_id, schemas))
            out = plain(record)
            out["_schema_id"] = schema_id
            out["_key"] = message.key().decode("utf-8") if message.key() is not None else None
            print(json.dumps(out, sort_keys=True))
            seen += 1
    finally:
        consumer.close()
    if seen < args.count:
        print(f"only {seen} of {args.count} records within {args.timeout} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
