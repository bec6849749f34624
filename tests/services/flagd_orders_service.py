"""An order service that reads its flags the way an OpenFeature application using flagd
does: the OpenFeature SDK with the flagd provider in its offline file mode, pointed at
the flagd file stagegate writes.

POST /orders evaluates the boolean flag `refuse-orders` with the order's order_id as the
targeting key: when true it answers 503 (the order is refused), otherwise it stores the
order and answers 201. GET /orders/<id> answers the stored order as a JSON array, or
404; GET /health, 200.
Usage: python3 flagd_orders_service.py --port PORT --flagd FILE
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--flagd", required=True)
args = parser.parse_args()

api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=args.flagd))
client = api.get_client()
store = {}
lock = threading.Lock()


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
        if client.get_boolean_value("refuse-orders", False, EvaluationContext(targeting_key=key)):
            return self.answer(503)
        with lock:
            store[key] = order
        self.answer(201)


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


Server(("127.0.0.1", args.port), Handler).serve_forever()
