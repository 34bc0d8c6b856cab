#!/usr/bin/env python3
"""A real webhook receiver for the tests, and an independent check of the signatures.

    webhook-receiver.py serve --port P --log FILE [--fail-first N] [--slow-first N --delay S]
        Answers POSTs (200; 500 to the first N; the first N slow ones only after S seconds)
        and appends each request to FILE as a JSON line: the raw body, the
        Referral-Signature header, the status answered and the time received.

    webhook-receiver.py verify --log FILE --secret SECRET [--tolerance 300]
        Checks every recorded request the way the README tells receivers to (Python's hmac,
        not the service's code) and prints {"requests", "verified", "failed", "events"}:
        events are the distinct event ids answered 200, in the order first answered.
"""
import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(args):
    lock = threading.Lock()
    seen = {"count": 0}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with lock:
                seen["count"] += 1
                number = seen["count"]
            if number <= args.slow_first:
                time.sleep(args.delay)
            status = 500 if number <= args.fail_first else 200
            record = {
                "received_at": time.time(),
                "status": status,
                "signature": self.headers.get("Referral-Signature", ""),
                "body": body.decode("utf-8", "replace"),
            }
            with lock:
                with open(args.log, "a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up (a timeout): it retries

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Receiver)
    server.daemon_threads = True
    server.serve_forever()


def verify(args):
    requests, verified, failed, events = 0, 0, [], []
    with open(args.log, encoding="utf-8") as log:
        for line in log:
            record = json.loads(line)
            requests += 1
            parts = dict(p.split("=", 1) for p in record["signature"].split(",") if "=" in p)
            t = parts.get("t", "")
            expected = hmac.new(
                args.secret.encode(), f"{t}.{record['body']}".encode(), hashlib.sha256
            ).hexdigest()
            fresh = t.isdigit() and abs(record["received_at"] - int(t)) <= args.tolerance
            if fresh and hmac.compare_digest(expected, parts.get("v1", "")):
                verified += 1
            else:
                failed.append(record["signature"])
            event = json.loads(record["body"])
            if record["status"] == 200 and event["id"] not in [e["id"] for e in events]:
                events.append({"id": event["id"], "type": event["type"],
                               "attribution_id": event["data"]["id"],
                               "status": event["data"].get("status")})
    json.dump({"requests": requests, "verified": verified, "failed": failed, "events": events},
              sys.stdout)


def main():
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--fail-first", type=int, default=0)
    s.add_argument("--slow-first", type=int, default=0)
    s.add_argument("--delay", type=float, default=0.0)
    v = commands.add_parser("verify")
    v.add_argument("--log", required=True)
    v.add_argument("--secret", required=True)
    v.add_argument("--tolerance", type=int, default=300)
    args = parser.parse_args()
    serve(args) if args.command == "serve" else verify(args)


if __name__ == "__main__":
    main()
