"""An order service that reads its flags the way an OpenFeature application does: the
OpenFeature SDK with its OFREP provider, pointed at stagegate's OFREP endpoint.

POST /orders evaluates the boolean flag `new-path` with the order's order_id as the
targeting key, stores the order, and appends `order_id value` to the evidence file;
GET /orders/<id> answers the stored order as a JSON array, or 404; GET /health, 200.
With LEAK_EMAIL=1 in its environment it also puts the order's email in the evaluation
context (the mistake `flags.pii_exposed` catches).
Usage: python3 ofrep_orders_service.py --port PORT --ofrep URL --evidence FILE
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--ofrep", required=True)
parser.add_argument("--evidence", required=True)
args = parser.parse_args()

api.set_provider(OFREPProvider(base_url=args.ofrep))
client = api.get_client()
store = {}
lock = threading.Lock()
leak_email = os.environ.get("LEAK_EMAIL") == "1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def answer(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200)
        key = self.path.removeprefix("/orders/")
        with lock:
            found = store.get(key)
        if found is None:
            return self.answer(404)
        self.answer(200, json.dumps([found]).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            order = json.loads(body)
            key = str(order["order_id"])
        except (ValueError, KeyError, TypeError):
            return self.answer(400)
        attributes = {"email": order.get("email")} if leak_email and isinstance(order.get("email"), str) else {}
        context = EvaluationContext(targeting_key=key, attributes=attributes)
        value = client.get_boolean_value("new-path", False, context)
        with lock:
            store[key] = order
            with open(args.evidence, "a") as f:
                f.write(f"{key} {str(value).lower()}\n")
        self.answer(201)


class Server(ThreadingHTTPServer):
    # stagegate reads orders back over many connections at once.
    request_queue_size = 128
    daemon_threads = True


Server(("127.0.0.1", args.port), Handler).serve_forever()
