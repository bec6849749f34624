#!/usr/bin/env bash
# The fault proxy against a direct connection and socat, in one run:
#   - iperf3 throughput (5 s each) direct, through `stagegate proxy` with no fault, through socat;
#   - round trip of one request in flight, p50 and p99, and the achieved delay of a
#     50 ms latency fault (cargo bench --bench proxy_rtt).
# Needs iperf3 and socat from Debian's packages: apt-get install iperf3 socat.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in iperf3 socat; do
  command -v "$tool" >/dev/null || { echo "benches/proxy.sh needs $tool (apt-get install iperf3 socat)" >&2; exit 1; }
done
cargo build --release -q
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
server=$(free_port); api=$(free_port); via_proxy=$(free_port); via_socat=$(free_port)
config=$(mktemp)
printf '[{"name":"iperf","listen":"127.0.0.1:%s","upstream":"127.0.0.1:%s"}]' "$via_proxy" "$server" > "$config"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -f "$config"; }
trap cleanup EXIT
iperf3 -s -p "$server" >/dev/null 2>&1 & pids+=($!)
./target/release/stagegate proxy --listen "127.0.0.1:$api" --config "$config" 2>/dev/null & pids+=($!)
socat "TCP-LISTEN:$via_socat,reuseaddr,fork" "TCP:127.0.0.1:$server" & pids+=($!)
sleep 1
rate() {
  iperf3 -c 127.0.0.1 -p "$1" -t 5 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])'
}
direct=$(rate "$server"); proxied=$(rate "$via_proxy"); socat=$(rate "$via_socat")
python3 - "$direct" "$proxied" "$socat" <<'PY'
import sys
d, p, s = (float(x) for x in sys.argv[1:])
print("iperf3 throughput, 5 s each:")
print(f"  direct          {d/1e9:7.2f} Gbit/s")
print(f"  stagegate proxy {p/1e9:7.2f} Gbit/s  ({100*p/d:.0f}% of direct)")
print(f"  socat           {s/1e9:7.2f} Gbit/s  ({100*s/d:.0f}% of direct)")
PY
cargo bench -q --bench proxy_rtt 2>/dev/null | grep -v '^$'
