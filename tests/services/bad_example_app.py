"""The worked example's order service (examples/orders-service/app.py) with a defect put
in on purpose, so tests can check that stagegate counts it exactly. Every 10th write to
Redis is skipped (--bad drop), made twice (--bad duplicate) or made with the order's
amount changed (--bad alter); the service still answers 201.

Usage: python3 bad_example_app.py --bad KIND --port PORT --redis HOST:PORT
"""

import argparse
import json
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "orders-service"))
import app  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--bad", choices=["drop", "duplicate", "alter"], required=True)
bad = parser.parse_known_args()[0].bad
honest = app.redis_call
writes = 0
lock = threading.Lock()


def defective(*parts, **kwargs):
    global writes
    if parts[0] != "RPUSH":
        return honest(*parts, **kwargs)
    with lock:
        writes += 1
        tenth = writes % 10 == 0
    if not tenth:
        return honest(*parts, **kwargs)
    if bad == "drop":
        return 1
    if bad == "duplicate":
        honest(*parts, **kwargs)
        return honest(*parts, **kwargs)
    order = json.loads(parts[2])
    order["amount"] = -1
    return honest(parts[0], parts[1], json.dumps(order, separators=(",", ":")), **kwargs)


app.redis_call = defective
app.main()
