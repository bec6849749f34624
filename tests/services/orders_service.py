"""A small order service that stagegate's tests run as an HTTP target.

POST /orders stores an order (a JSON object) under its order_id; GET /orders/<id>
answers every stored copy as a JSON array, or 404; GET /health answers 200. Listings:
GET /orders?page=N (JSON arrays of 50), GET /orders?cursor=C ({"items", "next"}) and
GET /orders.jsonl (JSON lines).
Orders that are not JSON objects with an order_id are refused with 400.

Known-bad variants, for tests that check stagegate counts them exactly:
  --bad drop       every 10th order is acknowledged but not stored
  --bad duplicate  every 10th order is stored twice
  --bad alter      every 10th order is stored with its amount changed
  --crash-after N  the process exits after N orders
  --flagd FILE     read flags from a flagd flag file; while `refuse-orders` is true,
                   orders are refused with 422
  FLAG_REFUSE_ORDERS=true in the environment refuses orders with 422, as the flag file
                   does (stagegate's `env` flag provider)
  --sink URL       push every stored copy to URL (JSON arrays, from a background thread)
  --delay MS       stored copies show in listings, and are pushed, MS after the answer
  --rename A=B     stored copies carry field A as B
  --host ADDR      listen on ADDR (default 127.0.0.1; 0.0.0.0 in a container)
  --check URL      before storing an order, GET URL (an HTTP dependency, on a fresh
                   connection); when it fails or answers other than 2xx, answer 503
  --tls CERT KEY   serve HTTPS with this certificate and key (PEM files)
Usage: python3 orders_service.py --port PORT [--bad KIND] [--crash-after N] [--flagd FILE]
                                 [--check URL] [--sink URL] [--delay MS] [--rename A=B]
"""

import argparse
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--bad", choices=["drop", "duplicate", "alter"])
parser.add_argument("--crash-after", type=int)
parser.add_argument("--flagd")
parser.add_argument("--check")
parser.add_argument("--sink")
parser.add_argument("--delay", type=float, default=0)
parser.add_argument("--rename")
parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
args = parser.parse_args()

store = {}
stored = []  # every stored copy with the time it becomes visible, in order, for listings
outbox = queue.Queue()  # (visible at, copy) for the sink
lock = threading.Lock()
PAGE = 50
count = 0


def flag(name):
    """The default variant's value of a flag in the flagd file (re-read every time)."""
    try:
        with open(args.flagd) as f:
            spec = json.load(f)["flags"][name]
        return spec["variants"][spec["defaultVariant"]]
    except (OSError, ValueError, KeyError):
        return None


def dependency_ok():
    """Whether a GET of the --check URL answers 2xx within 2 s."""
    try:
        with urllib.request.urlopen(args.check, timeout=2) as answer:
            answer.read()
            return 200 <= answer.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def output(order):
    """The copy the service keeps of an order (with --rename applied)."""
    if not args.rename:
        return order
    sent, out = args.rename.split("=", 1)
    copy = dict(order)
    if sent in copy:
        copy[out] = copy.pop(sent)
    return copy


def keep(key, order):
    """Stores one copy; it shows in listings (and goes to the sink) after --delay."""
    copy = output(order)
    due = time.monotonic() + args.delay / 1000
    store.setdefault(key, []).append(copy)
    stored.append((due, copy))
    if args.sink:
        outbox.put((due, copy))


def push():
    """Pushes due copies to the sink, as many as are due in one JSON array."""
    while True:
        due, copy = outbox.get()
        time.sleep(max(0.0, due - time.monotonic()))
        batch = [copy]
        while not outbox.empty() and outbox.queue[0][0] <= time.monotonic():
            batch.append(outbox.get()[1])
        request = urllib.request.Request(args.sink, data=json.dumps(batch).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except (urllib.error.URLError, OSError):
            pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, b"{}")
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        now = time.monotonic()
        with lock:
            everything = [copy for due, copy in stored if due <= now]
        if path == "/orders.jsonl":
            body = "".join(json.dumps(o) + "\n" for o in everything)
            return self.answer(200, body.encode())
        if path == "/orders" and "page" in params:
            n = int(params["page"])
            return self.answer(200, json.dumps(everything[(n - 1) * PAGE:n * PAGE]).encode())
        if path == "/orders":
            start = int(params.get("cursor", "0"))
            chunk = everything[start:start + PAGE]
            nxt = str(start + PAGE) if start + PAGE < len(everything) else None
            return self.answer(200, json.dumps({"items": chunk, "next": nxt}).encode())
        if self.path.startswith("/orders/"):
            key = self.path[len("/orders/"):]
            with lock:
                copies = store.get(key)
            if not copies:
                return self.answer(404)
            return self.answer(200, json.dumps(copies).encode())
        self.answer(404)

    def do_POST(self):
        global count
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path != "/orders":
            return self.answer(404)
        try:
            order = json.loads(raw)
            key = order["order_id"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, b'{"error": "an order is a JSON object with an order_id"}')
        if os.environ.get("FLAG_REFUSE_ORDERS") == "true":
            return self.answer(422, b'{"error": "orders are closed"}')
        if args.flagd and flag("refuse-orders") is True:
            return self.answer(422, b'{"error": "orders are closed"}')
        if args.check and not dependency_ok():
            return self.answer(503, b'{"error": "the checker failed"}')
        with lock:
            count += 1
            n = count
            tenth = n % 10 == 0
            if tenth and args.bad == "drop":
                pass
            elif tenth and args.bad == "alter":
                keep(key, dict(order, amount=-1))
            else:
                copies = 2 if tenth and args.bad == "duplicate" else 1
                for _ in range(copies):
                    keep(key, order)
        self.answer(201, json.dumps({"order_id": key}).encode())
        if args.crash_after and n >= args.crash_after:
            os._exit(7)


if args.sink:
    threading.Thread(target=push, daemon=True).start()
server = ThreadingHTTPServer((args.host, args.port), Handler)
if args.tls:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*args.tls)
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.daemon_threads = True
print("orders service on port", args.port, "bad:", args.bad, flush=True)
server.serve_forever()
