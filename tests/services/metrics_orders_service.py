"""An order service that exports its own metrics in the Prometheus text format, for the
tests of criteria on a system's own metrics. POST /orders stores the order and answers
201; GET /orders/<id> answers it as a JSON array, or 404; GET /health, 200; GET
/metrics: orders_received_total, orders_failed_total (orders a downstream step failed),
orders_queue_depth.

With --defect, every third order fails its downstream step: it is still stored and
answered 201, so nothing shows from outside; only orders_failed_total tells.

Usage: python3 metrics_orders_service.py --port PORT [--defect]
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--defect", action="store_true")
args = parser.parse_args()

store = {}
lock = threading.Lock()
received = 0
failed = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, code, body=b"", kind="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, b"ok", "text/plain")
        if self.path == "/metrics":
            with lock:
                text = (
                    "# TYPE orders_received_total counter\n"
                    f"orders_received_total {received}\n"
                    "# TYPE orders_failed_total counter\n"
                    f"orders_failed_total {failed}\n"
                    "# TYPE orders_queue_depth gauge\n"
                    f"orders_queue_depth {failed % 7}\n"
                )
            return self.answer(200, text.encode(), "text/plain; version=0.0.4")
        if self.path.startswith("/orders/"):
            with lock:
                order = store.get(self.path[len("/orders/"):])
            if order is None:
                return self.answer(404)
            return self.answer(200, json.dumps([order]).encode())
        self.answer(404)

    def do_POST(self):
        global received, failed
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/orders":
            return self.answer(404)
        try:
            order = json.loads(body)
        except ValueError:
            return self.answer(400)
        with lock:
            received += 1
            if args.defect and received % 3 == 0:
                failed += 1
            store[str(order.get("order_id"))] = order
        self.answer(201, b"{}")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
