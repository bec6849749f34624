"""An order service on PostgreSQL that stagegate's tests run as an HTTP target.

POST /orders stores an order (a JSON object with an order_id) as a row; GET
/orders/<id> answers every stored row of it as a JSON array, or 404; GET /health
answers 200 once the database answers. A database error answers 503. Connections are
pooled and a broken one is dropped, so the service rides out the faults stagegate puts
on the database.

Known-bad variants, for tests that check stagegate counts them exactly:
  --bad drop       every 10th order is acknowledged but not stored
  --bad duplicate  every 10th order is stored twice
  --bad alter      every 10th order is stored with its amount changed
Usage: python3 orders_pg_service.py --port PORT --db HOST:PORT [--bad KIND]
"""

import argparse
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--db", required=True)
parser.add_argument("--bad", choices=["drop", "duplicate", "alter"])
args = parser.parse_args()

host, _, db_port = args.db.rpartition(":")
pool = queue.LifoQueue()
count = 0
count_lock = threading.Lock()


def connect():
    return psycopg2.connect(host=host, port=int(db_port), user="stagegate", dbname="postgres",
                            connect_timeout=2, options="-c statement_timeout=2000")


def with_db(work):
    """Runs work(cursor) in a transaction on a pooled connection; drops it on error."""
    try:
        conn = pool.get_nowait()
    except queue.Empty:
        conn = connect()
    try:
        with conn, conn.cursor() as cur:
            result = work(cur)
    except Exception:
        conn.close()
        raise
    pool.put(conn)
    return result


with_db(lambda cur: cur.execute(
    "CREATE TABLE IF NOT EXISTS orders (n bigserial PRIMARY KEY, order_id text NOT NULL, body jsonb NOT NULL)"))
with_db(lambda cur: cur.execute("CREATE INDEX IF NOT EXISTS orders_by_id ON orders (order_id)"))


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
        try:
            if self.path == "/health":
                with_db(lambda cur: cur.execute("SELECT 1"))
                return self.answer(200, b"{}")
            if self.path.startswith("/orders/"):
                key = self.path[len("/orders/"):]

                def read(cur):
                    cur.execute("SELECT body FROM orders WHERE order_id = %s ORDER BY n", (key,))
                    return [row[0] for row in cur.fetchall()]

                copies = with_db(read)
                if not copies:
                    return self.answer(404)
                return self.answer(200, json.dumps(copies).encode())
        except psycopg2.Error as e:
            return self.answer(503, json.dumps({"error": str(e)}).encode())
        self.answer(404)

    def do_POST(self):
        global count
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/orders":
            return self.answer(404)
        try:
            order = json.loads(raw)
            key = order["order_id"]
        except (ValueError, KeyError, TypeError):
            return self.answer(400, b'{"error": "an order is a JSON object with an order_id"}')
        with count_lock:
            count += 1
            tenth = count % 10 == 0
        copies = [order]
        if tenth and args.bad == "drop":
            copies = []
        elif tenth and args.bad == "duplicate":
            copies = [order, order]
        elif tenth and args.bad == "alter":
            copies = [dict(order, amount=-1)]

        def store(cur):
            for copy in copies:
                cur.execute("INSERT INTO orders (order_id, body) VALUES (%s, %s)", (key, json.dumps(copy)))

        try:
            with_db(store)
        except psycopg2.Error as e:
            return self.answer(503, json.dumps({"error": str(e)}).encode())
        self.answer(201, json.dumps({"order_id": key}).encode())


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
print("orders service on PostgreSQL at", args.db, "port", args.port, "bad:", args.bad, flush=True)
server.serve_forever()
