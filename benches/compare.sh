#!/usr/bin/env bash
# stagegate against the tools people use, in one run on this machine, as a table of
# ratios with their goals: the load generator against wrk (closed loop) and oha (open
# model, when on PATH), the fault proxy against direct and socat, data generation
# against the raw `fake` crate, and memory over a long stage. See benches/compare.py.
#
#   bash benches/compare.sh                     # about 15 minutes (10 of them the memory run)
#   bash benches/compare.sh --memory-minutes 0  # without the memory run
#
# Needs nginx, wrk, iperf3 and socat from Debian: apt-get install nginx wrk iperf3 socat.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx wrk iperf3 socat; do
  command -v "$tool" >/dev/null || { echo "benches/compare.sh needs $tool (apt-get install nginx wrk iperf3 socat)" >&2; exit 1; }
done
cargo build --release -q
exec python3 benches/compare.py "$@"
