"""An order service backed by Redis: the worked example of pointing stagegate at a
real service. Standard library only (it speaks Redis's protocol over a socket).

POST /orders      stores an order (JSON object with an order_id); 201, or 400/422
GET /orders/<id>  every stored copy of the order as a JSON array; 404 if none
GET /health       200

The flag `new-path` arrives in the X-Stagegate-Flags header (stagegate's `header`
provider). The current path writes once per order id (SET NX guards the write, so a
retry is safe); the new path appends without that guard, so when the connection to
Redis breaks after a write, its retry stores the order twice.

Usage: python3 app.py --port PORT --redis HOST:PORT
"""

import argparse
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REDIS_HOST, REDIS_PORT = "127.0.0.1", "6379"
local = threading.local()


class Redis:
    """One connection to Redis; any failure closes it."""

    def __init__(self):
        self.sock = socket.create_connection((REDIS_HOST, int(REDIS_PORT)), timeout=0.5)
        self.file = self.sock.makefile("rb")

    def call(self, *parts):
        encoded = [p if isinstance(p, bytes) else str(p).encode() for p in parts]
        out = b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)
        self.sock.sendall(out)
        return self.reply()

    def reply(self):
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed mid-answer")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError("unexpected answer %r" % line)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def redis_call(*parts, attempts=4):
    """Calls Redis, reconnecting and retrying on a broken connection."""
    last = None
    for _ in range(attempts):
        conn = getattr(local, "redis", None)
        try:
            if conn is None:
                conn = local.redis = Redis()
            return conn.call(*parts)
        except (OSError, ConnectionError) as e:
            last = e
            if conn is not None:
                conn.close()
            local.redis = None
    raise ConnectionError(str(last))


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

    def flags(self):
        header = self.headers.get("X-Stagegate-Flags", "")
        return dict(part.split("=", 1) for part in header.split(",") if "=" in part)

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, b"{}")
        if not self.path.startswith("/orders/"):
            return self.answer(404)
        key = self.path[len("/orders/"):]
        try:
            copies = redis_call("LRANGE", "order:" + key, 0, -1)
        except (ConnectionError, RuntimeError):
            return self.answer(503)
        if not copies:
            return self.answer(404)
        self.answer(200, ("[" + ",".join(c.decode() for c in copies) + "]").encode())

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/orders":
            return self.answer(404)
        try:
            order = json.loads(raw)
            key = order["order_id"]
            amount = float(order["amount"])
        except (ValueError, KeyError, TypeError):
            return self.answer(400, b'{"error": "an order is a JSON object with order_id and amount"}')
        if amount <= 0:
            return self.answer(422, b'{"error": "amount must be positive"}')
        stored = json.dumps(order, separators=(",", ":"))
        try:
            if self.flags().get("new-path") == "true":
                # The new path: append, and let the retry in redis_call append again.
                redis_call("RPUSH", "order:" + key, stored)
            else:
                # The current path: claim the order id first, so a retried write is a no-op.
                if redis_call("SET", "claimed:" + key, 1, "NX") == "OK" or not redis_call("EXISTS", "order:" + key):
                    redis_call("RPUSH", "order:" + key, stored)
        except (ConnectionError, RuntimeError) as e:
            return self.answer(503, json.dumps({"error": str(e)}).encode())
        self.answer(201, json.dumps({"order_id": key}).encode())


def main():
    global REDIS_HOST, REDIS_PORT
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args, _ = parser.parse_known_args()
    REDIS_HOST, REDIS_PORT = args.redis.rsplit(":", 1)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("orders service on", args.port, "using redis at", args.redis, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
