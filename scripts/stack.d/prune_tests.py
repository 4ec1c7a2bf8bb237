#!/usr/bin/env python3
"""Drops what earlier test runs left in the local stack: Cassandra keyspaces named `it_*` and
Kafka topics named `it.*` (the names tickflow's test kit gives them; nothing else matches).

    prune_tests.py KAFKA_BOOTSTRAP CASSANDRA_HOST CASSANDRA_PORT

A long-lived development stack otherwise collects hundreds of test keyspaces, and Cassandra's
per-table memory then outgrows the stack's modest heap. Prints what it dropped.
"""

import sys


def prune_cassandra(host: str, port: str) -> int:
    from cassandra.cluster import Cluster

    cluster = Cluster([host], port=int(port), connect_timeout=10)
    try:
        session = cluster.connect()
        names = [row.keyspace_name for row in session.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces")]
        stale = [n for n in names if n.startswith("it_")]
        for name in stale:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)
        return len(stale)
    finally:
        cluster.shutdown()


def prune_kafka(bootstrap: str) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith("it.")]
    for start in range(0, len(topics), 100):
        for future in admin.delete_topics(topics[start:start + 100], operation_timeout=30).values():
            future.result()
    return len(topics)


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    bootstrap, host, port = sys.argv[1:]
    keyspaces = prune_cassandra(host, port)
    topics = prune_kafka(bootstrap)
    print(f"dropped {keyspaces} test keyspaces and {topics} test topics left by earlier runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
