"""Real-request health probes for the local stack, used by scripts/stack.

    probe.py kafka BOOTSTRAP          cluster metadata (brokers, topics)
    probe.py registry URL             GET <url>/subjects
    probe.py cassandra HOST PORT      SELECT release_version FROM system.local

Prints one line describing the answer and exits 0, or prints the error and exits 1.
"""
import json
import socket
import sys
import urllib.request


def kafka(bootstrap: str) -> str:
    from confluent_kafka.admin import AdminClient

    # While the broker starts, librdkafka would log a "Connection refused" line per attempt:
    # ask the port first, quietly.
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3):
        pass
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})
    metadata = admin.list_topics(timeout=5)
    return f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s), cluster {metadata.cluster_id}"


def registry(url: str) -> str:
    with urllib.request.urlopen(url.rstrip("/") + "/subjects", timeout=5) as response:
        subjects = json.load(response)
    return f"{len(subjects)} subject(s)"


def cassandra(host: str, port: str) -> str:
    from cassandra.cluster import Cluster

    cluster = Cluster([host], port=int(port), connect_timeout=5, control_connection_timeout=5)
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version, data_center FROM system.local").one()
        return f"Cassandra {row.release_version}, data center {row.data_center}"
    finally:
        cluster.shutdown()


def main() -> int:
    checks = {"kafka": kafka, "registry": registry, "cassandra": cassandra}
    if len(sys.argv) < 3 or sys.argv[1] not in checks:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(checks[sys.argv[1]](*sys.argv[2:]))
        return 0
    except Exception as error:  # any failure is "not healthy", with the reason
        print(f"{type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
