"""Drives `stagegate proxy` with the Toxiproxy client library from PyPI
(toxiproxy-python), as a team's existing game-day scripts would. Usage:
python3 tests/toxiproxy_client.py API_PORT. Exits non-zero on the first failed check."""

import socket
import socketserver
import statistics
import sys
import threading
import time

import requests
from toxiproxy import Toxiproxy

API_PORT = int(sys.argv[1])


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
upstream = "127.0.0.1:%d" % server.server_address[1]

toxiproxy = Toxiproxy()
toxiproxy.update_api_consumer("127.0.0.1", API_PORT)
assert toxiproxy.running(), "the API does not answer"
assert toxiproxy.version(), "no version"

proxy = toxiproxy.create(upstream=upstream, name="echo", listen="127.0.0.1:0")
host, port = proxy.listen.rsplit(":", 1)
port = int(port)


def round_trip_ms(n):
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        times.append((time.perf_counter() - t) * 1000)
    s.close()
    return statistics.median(times)


base = round_trip_ms(20)
assert base < 20, "no toxic, yet %.1fms" % base

proxy.add_toxic(type="latency", attributes={"latency": 100}, stream="downstream", name="slow")
assert "slow" in proxy.toxics(), proxy.toxics()
slowed = round_trip_ms(5)
assert 95 <= slowed - base <= 140, "a 100ms toxic added %.1fms" % (slowed - base)

proxy.destroy_toxic("slow")
assert round_trip_ms(10) < 20, "the toxic was not removed"

proxy.disable()
refused = socket.socket()
assert refused.connect_ex((host, port)) != 0, "a disabled proxy still accepts"
refused.close()
proxy.enable()
assert round_trip_ms(3) < 20

# A toxic with a time-to-live removes itself.
r = requests.post(
    "http://127.0.0.1:%d/proxies/echo/toxics" % API_PORT,
    json={"name": "brief", "type": "latency", "stream": "upstream", "attributes": {"latency": 50}, "ttl": 300},
)
assert r.status_code == 200, r.text
assert round_trip_ms(2) >= 45
time.sleep(0.6)
assert "brief" not in proxy.toxics(), "the ttl did not remove the toxic"

proxy.add_toxic(type="bandwidth", attributes={"rate": 100}, name="narrow")
toxiproxy.reset()
assert proxy.toxics() == {}, "reset left toxics"
assert round_trip_ms(5) < 20

# An unknown toxic is refused with 400, as Toxiproxy does.
r = requests.post("http://127.0.0.1:%d/proxies/echo/toxics" % API_PORT, json={"name": "x", "type": "explode"})
assert r.status_code == 400, r.status_code
print("ok", "base %.2fms" % base, "slowed %.2fms" % slowed)
