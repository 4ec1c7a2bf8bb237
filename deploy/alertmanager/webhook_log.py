#!/usr/bin/env python3
"""Prints every Alertmanager webhook notification as one JSON line on stdout.

The compose stack's `alert-log` service: the receiver tickflow-webhook posts here, so
`docker compose logs alert-log` shows what was routed, grouped and not inhibited, without Slack
or PagerDuty. Standard library only.

    webhook_log.py [--listen HOST:PORT]     (default 0.0.0.0:9095)
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def summary(payload):
    """The notification without Alertmanager's URLs and timestamps: what a reader scans for."""
    return {
        "receiver": payload.get("receiver"),
        "status": payload.get("status"),
        "group": payload.get("groupLabels", {}),
        "alerts": [
            {"status": a.get("status"), "labels": a.get("labels", {}),
             "summary": a.get("annotations", {}).get("summary"),
             "runbook_url": a.get("annotations", {}).get("runbook_url")}
            for a in payload.get("alerts", [])
        ],
    }


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            line = json.dumps(summary(json.loads(body)), sort_keys=True)
            status = 200
        except (ValueError, AttributeError) as error:
            line = json.dumps({"error": f"not an Alertmanager payload: {error}"})
            status = 400
        print(line, flush=True)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass  # one line per notification, printed above; no access log


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="0.0.0.0:9095")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"listening on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
