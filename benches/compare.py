"""stagegate's load generator, fault proxy, data generation and memory against the
tools people use, in one run on one machine, printed as a table of ratios with the
goals they are held to. Run through benches/compare.sh (it builds what it needs).

Every comparison runs its two sides back to back against the same server (nginx from
Debian, answering each request with a tiny 200), so they share the machine's state;
the figures are ratios, not absolutes. The generators' CPU time comes from the kernel's
accounts of each child process (wait4), which cover every thread.

Options: --seconds N (each load run, default 10), --concurrency N (closed loop,
default 64), --rates A,B,C (open model, default 10000,20000,30000),
--memory-minutes N (the long run, default 10: N one-minute stages, RSS every 10 s,
memory at the end against memory after the first minute; 0 skips it).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGEGATE = os.path.join(ROOT, "target/release/stagegate")
# One order as stagegate's schema makes them, for wrk and oha to send.
BODY = json.dumps({
    "order_id": "5b1c2f0e-8d7a-4c55-9a31-0f6b9d2e4a17", "customer": "Ada Lovelace",
    "email": "ada@example.org", "city": "London", "customer_id": 17, "amount": 123.45,
    "currency": "EUR", "items": 3, "created_at": "2026-01-01T00:00:01.234Z",
})

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=int, default=10)
parser.add_argument("--concurrency", type=int, default=64)
parser.add_argument("--rates", default="10000,20000,30000")
parser.add_argument("--memory-minutes", type=float, default=10)
args = parser.parse_args()
rates = [int(r) for r in args.rates.split(",")]
tmp = tempfile.mkdtemp(prefix="stagegate-bench-")
children = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def say(text):
    print(text, file=sys.stderr, flush=True)


def measured(cmd, timeout):
    """Runs cmd; its stdout, stderr, CPU seconds (user + system, every thread) and wall time."""
    out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        wall = time.monotonic() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    return open(out_path).read(), open(err_path).read(), usage.ru_utime + usage.ru_stime, wall


def start_nginx():
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log crit;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  client_body_buffer_size 16k;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL)
    children.append(p)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return port
        except OSError:
            time.sleep(0.05)
    sys.exit("nginx did not start")


def ms(text):
    """wrk's latency text (`1.23ms`, `456.00us`, `1.02s`) in milliseconds."""
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url, connections, seconds):
    script = os.path.join(tmp, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(BODY)}\n")
    out, _, cpu, _ = measured(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                              seconds + 30)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    dist = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": total,
            "cpu_per_request_us": cpu / total * 1e6, "p50_ms": ms(dist["50"]), "p99_ms": ms(dist["99"])}


def stagegate(url, arrival, seconds, extra=()):
    out_dir = os.path.join(tmp, f"run-{time.monotonic_ns()}")
    cmd = [STAGEGATE, "run", "benches/compare.yaml", "-q", "--out", out_dir,
           "--set", f"target.http.base_url={url}", "--set", f"workload.arrival={arrival}",
           "--set", f"workload.duration={seconds}s", *extra]
    _, err, cpu, _ = measured(cmd, seconds + 120)
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    shutil.rmtree(out_dir, ignore_errors=True)
    stage = report["stages"][0]
    m = stage["metrics"]
    requests = m["requests"] + m["warmup_requests"]
    health = stage["health"]
    lag = health.get("send_lag") or {}
    return {"rate": requests / stage["length_secs"], "requests": requests, "cpu_per_request_us": cpu / requests * 1e6,
            "p50_ms": m["latency"]["p50"], "p99_ms": m["latency"]["p99"], "send_lag_p99_ms": lag.get("p99_ms"),
            "dropped": health.get("dropped", 0), "errors": m["errors"]}


def oha(url, rate, seconds, connections):
    if not shutil.which("oha"):
        return None
    out, _, cpu, _ = measured(["oha", "-z", f"{seconds}s", "-q", str(rate), "-c", str(connections), "--no-tui",
                               "--output-format", "json", "-m", "POST", "-d", BODY,
                               "-H", "Content-Type: application/json", url], seconds + 30)
    doc = json.loads(out)
    s = doc["summary"]
    p = doc["latencyPercentiles"]
    return {"rate": s["requestsPerSec"], "p50_ms": p["p50"] * 1000, "p99_ms": p["p99"] * 1000}


def cargo_bench(name):
    out = subprocess.run(["cargo", "bench", "-q", "--bench", name], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cargo bench --bench {name} failed:\n{out.stderr}")
    return out.stdout


def proxy_figures():
    out = subprocess.run(["bash", "benches/proxy.sh"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benches/proxy.sh failed:\n{out.stderr}")
    text = out.stdout
    gbit = dict(re.findall(r"^\s+(direct|stagegate proxy|socat)\s+([\d.]+) Gbit/s", text, re.M))
    added = dict(re.findall(r"^\s+(stagegate proxy|socat)\s+p50.*added at p50: ([-\d.]+)µs", text, re.M))
    fault = re.search(r"achieved delay p50 ([\d.]+)ms\s+p99 ([\d.]+)ms", text)
    return text, {
        "direct_gbit": float(gbit["direct"]), "proxy_gbit": float(gbit["stagegate proxy"]),
        "socat_gbit": float(gbit["socat"]), "proxy_added_us": float(added["stagegate proxy"]),
        "socat_added_us": float(added.get("socat", "nan")),
        "fault_p50_ms": float(fault.group(1)), "fault_p99_ms": float(fault.group(2)),
    }


def crate_of(symbol):
    """Where a profiled symbol belongs: `kernel`, a Rust crate (its path's first
    segment), `mimalloc`, or `libc` for the rest of the C code (memcpy and the like)."""
    if symbol.startswith("[k]"):
        return "kernel"
    name = symbol[3:].strip() if symbol.startswith("[.]") else symbol.strip()
    name = name.lstrip("<&*( ")
    if "::" in name:
        first = name.split("::", 1)[0].split("<")[-1].strip()
        return "std/core/alloc" if first in ("core", "alloc", "std") else first
    if name.startswith(("mi_", "_mi_")):
        return "mimalloc"
    return "libc"


def profile(cmd, seconds, label):
    """Runs cmd under `perf record` (sampling, no call graphs) and gives the symbols and
    crates that took the most of its CPU, as text; None without perf."""
    if not shutil.which("perf"):
        return None
    data = os.path.join(tmp, "perf.data")
    rec = subprocess.run(["perf", "record", "-F", "999", "-q", "-o", data, "--", *cmd], cwd=ROOT,
                         capture_output=True, text=True, timeout=seconds + 120)
    # The command's own exit code passes through perf (a verdict, or 130 when stopped).
    if not os.path.exists(data) or os.path.getsize(data) == 0:
        return f"{label}: perf record failed: {rec.stderr.strip()[:200]}"
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym",
                          "--percent-limit", "0.3"], capture_output=True, text=True, timeout=300)
    rows = []
    for line in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\[[k.]\].*)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2).strip()))
    crates = {}
    for pct, sym in rows:
        crates[crate_of(sym)] = crates.get(crate_of(sym), 0) + pct
    out = [f"{label} (perf record -F 999, share of the process's samples; symbols over 0.3%):"]
    out.append("  by crate: " + ", ".join(f"{c} {p:.0f}%" for c, p in sorted(crates.items(), key=lambda x: -x[1])[:8]))
    out += [f"  {pct:5.1f}%  {sym[:110]}" for pct, sym in rows[:12]]
    return "\n".join(out)


def proxy_profile():
    """The fault proxy with no fault under iperf3 (5 s), profiled."""
    if not shutil.which("perf"):
        return None
    server, api, via = free_port(), free_port(), free_port()
    config = os.path.join(tmp, "proxy.json")
    with open(config, "w") as f:
        json.dump([{"name": "iperf", "listen": f"127.0.0.1:{via}", "upstream": f"127.0.0.1:{server}"}], f)
    srv = subprocess.Popen(["iperf3", "-s", "-p", str(server)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(srv)
    time.sleep(0.5)
    client = subprocess.Popen(["bash", "-c", f"sleep 1; iperf3 -c 127.0.0.1 -p {via} -t 5 >/dev/null 2>&1; sleep 0.5"])
    children.append(client)
    # The proxy stops by itself when the timeout ends it (SIGINT: lifts and exits).
    text = profile(["timeout", "-s", "INT", "7", STAGEGATE, "proxy", "--listen", f"127.0.0.1:{api}",
                    "--config", config], 7, "the fault proxy, no fault, under iperf3")
    client.wait()
    srv.terminate()
    return text


def memory_run(url, rate, minutes):
    """A run of `minutes` one-minute stages at `rate`: RSS every 10 s, and the records
    sent in the first stage (its ledger's growth per record)."""
    out_dir = os.path.join(tmp, "memory")
    stages = ", ".join(f"{{name: m{i + 1}}}" for i in range(max(1, int(minutes))))
    cmd = [STAGEGATE, "run", "benches/compare.yaml", "-q", "--out", out_dir,
           "--set", f"target.http.base_url={url}", "--set", f"workload.arrival={{rate: {rate}/s}}",
           "--set", "workload.duration=60s", "--set", f"stages=[{stages}]"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(p)
    samples, start = [], time.monotonic()
    while p.poll() is None:
        time.sleep(10 - (time.monotonic() - start) % 10)
        try:
            with open(f"/proc/{p.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            break
        samples.append((round(time.monotonic() - start), rss / 1024))
    p.wait()
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    m = report["stages"][0]["metrics"]
    return samples, m["requests"] + m["warmup_requests"]


def worker_cost(url, rate, seconds):
    """A controller and one worker on this machine, the worker sending `rate`/s for
    `seconds`: the worker's CPU (cores) and peak resident memory (MB), and the
    controller's CPU."""
    out_dir = os.path.join(tmp, "distributed")
    port = free_port()
    token = "bench-worker-token-0123456789"
    ctl = subprocess.Popen([STAGEGATE, "run", "benches/compare.yaml", "-q", "--out", out_dir,
                            "--set", f"target.http.base_url={url}", "--set", f"workload.arrival={{rate: {rate}/s}}",
                            "--set", f"workload.duration={seconds}s", "--workers", "1",
                            "--controller-listen", f"127.0.0.1:{port}", "--worker-token", token],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(ctl)
    w = subprocess.Popen([STAGEGATE, "worker", "--controller", f"http://127.0.0.1:{port}", "--token", token,
                          "--index", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children.append(w)
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(w.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(f"/proc/{w.pid}/status") as f:
                peak = max(peak, next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.2)
    _, _, ctl_usage = os.wait4(ctl.pid, 0)
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    stage = report["stages"][0]
    length = stage["length_secs"] + 1.0  # with the join and the lead before the stage
    cpu = usage.ru_utime + usage.ru_stime
    return {"cores": cpu / length, "peak_mb": peak, "controller_cores": (ctl_usage.ru_utime + ctl_usage.ru_stime) / length,
            "incomplete": stage.get("workers_incomplete"), "p99_ms": stage["metrics"]["latency"]["p99"]}


def main():
    for tool in ["nginx", "wrk", "iperf3", "socat"]:
        if not shutil.which(tool):
            sys.exit(f"benches/compare.sh needs {tool} (apt-get install nginx wrk iperf3 socat)")
    port = start_nginx()
    url = f"http://127.0.0.1:{port}"
    n, secs = args.concurrency, args.seconds
    rows = []

    say(f"closed loop, {n} connections, {secs}s each: wrk, then stagegate")
    w = wrk(url + "/orders", n, secs)
    s = stagegate(url, f"{{concurrency: {n}}}", secs)
    rows.append(("closed loop: requests/s", f"wrk {w['rate']:,.0f}", f"stagegate {s['rate']:,.0f}",
                 f"{s['rate'] / w['rate']:.2f}x", "-", None))
    rows.append(("closed loop: CPU per request", f"wrk {w['cpu_per_request_us']:.1f}µs",
                 f"stagegate {s['cpu_per_request_us']:.1f}µs", f"{s['cpu_per_request_us'] / w['cpu_per_request_us']:.2f}x",
                 "<= 1x wrk", s["cpu_per_request_us"] <= w["cpu_per_request_us"]))
    rows.append(("closed loop: p50 / p99", f"wrk {w['p50_ms']:.2f} / {w['p99_ms']:.2f}ms",
                 f"stagegate {s['p50_ms']:.2f} / {s['p99_ms']:.2f}ms", "-", "-", None))

    for rate in rates:
        say(f"open model at {rate}/s, {secs}s: stagegate" + (", oha -q" if shutil.which("oha") else ""))
        o = stagegate(url, f"{{rate: {rate}/s}}", secs)
        held = o["rate"] >= rate * 0.98 and not o["dropped"]
        lag = "-" if o["send_lag_p99_ms"] is None else f"{o['send_lag_p99_ms']:.2f}ms"
        rows.append((f"open {rate}/s: achieved, p50 / p99, send lag p99", "-",
                     f"stagegate {o['rate']:,.0f}/s, {o['p50_ms']:.2f} / {o['p99_ms']:.2f}ms, lag {lag}",
                     f"{o['rate'] / rate:.2f}x asked", "rate held", held))
        h = oha(url + "/orders", rate, secs, n)
        if h:
            rows.append((f"open {rate}/s: oha -q", f"oha {h['rate']:,.0f}/s, {h['p50_ms']:.2f} / {h['p99_ms']:.2f}ms",
                         "-", "-", "-", None))
        if rate == max(rates):
            ratio = o["p99_ms"] / w["p99_ms"]
            rows.append((f"open {rate}/s p99 vs closed-loop p99", f"wrk {w['p99_ms']:.2f}ms",
                         f"stagegate {o['p99_ms']:.2f}ms", f"{ratio:.2f}x", "<= 2x, rate held",
                         ratio <= 2 and held))
        top = o["rate"]

    say(f"a worker of a distributed run at 10000/s, {secs}s (controller and worker on this machine)")
    c = worker_cost(url, 10000, secs)
    rows.append(("worker at 10000/s: CPU, peak memory", "-",
                 f"worker {c['cores']:.2f} cores, {c['peak_mb']:.0f}MB; controller {c['controller_cores']:.2f} cores",
                 "-", "-", None if not c["incomplete"] else False))

    say("fault proxy: benches/proxy.sh (iperf3 direct / proxy / socat, round trips, a 50 ms latency fault)")
    text, p = proxy_figures()
    say(text)
    rows.append(("proxy throughput vs socat", f"socat {p['socat_gbit']:.2f} Gbit/s", f"proxy {p['proxy_gbit']:.2f} Gbit/s",
                 f"{p['proxy_gbit'] / p['socat_gbit']:.2f}x", ">= 2x", p["proxy_gbit"] >= 2 * p["socat_gbit"]))
    rows.append(("proxy throughput vs direct", f"direct {p['direct_gbit']:.2f} Gbit/s", f"proxy {p['proxy_gbit']:.2f} Gbit/s",
                 f"{p['proxy_gbit'] / p['direct_gbit']:.2f}x", ">= 0.6x", p["proxy_gbit"] >= 0.6 * p["direct_gbit"]))
    rows.append(("proxy added round trip, p50", f"socat +{p['socat_added_us']:.1f}µs", f"proxy +{p['proxy_added_us']:.1f}µs",
                 "-", "<= 15µs", p["proxy_added_us"] <= 15))
    rows.append(("50ms latency fault, achieved p50 / p99", "asked 50.000ms",
                 f"{p['fault_p50_ms']:.3f} / {p['fault_p99_ms']:.3f}ms", f"{p['fault_p50_ms'] - 50:+.3f}ms",
                 "p50 within 0.3ms", abs(p["fault_p50_ms"] - 50) <= 0.3))

    say("data generation: cargo bench --bench data_generation")
    gen = cargo_bench("data_generation")
    say(gen)
    ours = float(re.search(r"orders.yaml: ([\d.]+) records/s", gen).group(1))
    raw = float(re.search(r"raw fake, the same order: ([\d.]+) records/s", gen).group(1))
    rows.append(("data generation, orders, one thread", f"raw fake {raw:,.0f}/s", f"stagegate {ours:,.0f}/s",
                 f"{ours / raw:.2f}x", "-", None))

    if args.memory_minutes > 0:
        rate = max(100, int(top * 0.1))
        minutes = max(1, int(args.memory_minutes))
        say(f"memory: {minutes} one-minute stages at {rate}/s (10% of the top rate), RSS every 10 s")
        samples, records = memory_run(url, rate, minutes)
        say("  " + ", ".join(f"{t}s {rss:.0f}MB" for t, rss in samples))
        at = lambda secs: min(samples, key=lambda s: abs(s[0] - secs))[1]
        first, last = at(60), samples[-1][1]
        # The first stage's ledger grows from its start (RSS at 10 s) to its end (50 s later).
        per_record = (at(60) - at(10)) * 1024 * 1024 / max(1, records * 50 / 60)
        rows.append((f"memory, {minutes} min at {rate}/s", f"1 min {first:.0f}MB", f"{minutes} min {last:.0f}MB",
                     f"{last / first:.2f}x", "<= 1.2x", last <= 1.2 * first))
        rows.append(("ledger, bytes per record (RSS growth in a stage)", "-", f"{per_record:.0f} B", "-", "-", None))

    width = [max(len(str(r[i])) for r in rows) for i in range(5)]
    head = ("measure", "reference", "stagegate", "ratio", "goal")
    width = [max(w, len(h)) for w, h in zip(width, head)]
    line = lambda cells, verdict: "  ".join(str(c).ljust(w) for c, w in zip(cells, width)) + f"  {verdict}"
    print(line(head, "met"))
    for r in rows:
        print(line(r[:5], "-" if r[5] is None else ("yes" if r[5] else "MISSED")))

    # For each goal missed, the profile that shows where the time goes.
    missed = {r[0] for r in rows if r[5] is False}
    why = []
    if any("CPU per request" in m or "p99 vs closed-loop" in m for m in missed):
        cmd = [STAGEGATE, "run", "benches/compare.yaml", "-q", "--out", os.path.join(tmp, "profiled"),
               "--set", f"target.http.base_url={url}", "--set", f"workload.arrival={{concurrency: {n}}}",
               "--set", f"workload.duration={secs}s"]
        why.append(profile(cmd, secs, "the load generator, closed loop (the open model's p99 at the top rate is"
                                      " the same work on the same two cores)"))
    if any(m.startswith("proxy") for m in missed):
        why.append(proxy_profile())
    why = [w for w in why if w]
    if why:
        print()
        print("\n\n".join(why))
    elif missed:
        print("\n(perf is not installed: apt-get install linux-perf for the profile of each goal missed)")
    # What each goal missed would take, read off those profiles.
    takes = {
        "closed loop: CPU per request":
            "the HTTP client's per-request work (reqwest's request builder, header map, timeout and pool "
            "layers over hyper), a task and a channel message per request, and the allocator; it would take "
            "driving hyper's HTTP/1 connections directly, one task per connection, requests written from a "
            "reused buffer",
        "p99 vs closed-loop":
            "the same per-request CPU: at the top rate the generator and nginx share two cores, so sends queue "
            "(see the send lag); the same client work as above, or the load spread over workers",
        "proxy throughput vs socat":
            "on two shared cores the proxy competes with iperf3's client and server; its own CPU per byte "
            "(splice, no copy) is no longer what limits it, so the ratio moves with socat's share of the cores",
        "proxy throughput vs direct":
            "as above: the cores iperf3 needs are shared with the proxy",
        "proxy added round trip":
            "a round trip through the proxy wakes its thread twice more than a direct one, and a sleeping "
            "thread takes tens of microseconds to wake here; it would take the proxy's thread polling its "
            "sockets for a while before it sleeps (busy polling), at the cost of a core spinning",
    }
    for m in sorted(missed):
        for key, text in takes.items():
            if key in m:
                print(f"\nmissed, {m}: {text}.")


try:
    main()
finally:
    for c in children:
        if c.poll() is None:
            c.terminate()
            try:
                c.wait(5)
            except subprocess.TimeoutExpired:
                c.kill()
    shutil.rmtree(tmp, ignore_errors=True)
