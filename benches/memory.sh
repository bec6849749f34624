#!/usr/bin/env bash
# Memory per stage: runs benches/memory.yaml (six stages of 8 s at 500/s on the builtin
# pipeline) with the release build, and prints stagegate's resident memory and open
# files when each stage ends, and its peak. stagegate's own memory comes back to its
# level after each stage: with many stages it levels off instead of growing stage after
# stage. (The builtin store runs inside stagegate and keeps every record it is sent, as
# a store does; to see stagegate's own memory alone, run the store as a process:)
#   bash benches/memory.sh --set 'dependencies.store={ process: { command: [../target/release/stagegate, kv-store, --port, "{{ port }}"] } }'
# More stages or another rate: add e.g. --set workload.arrival.rate=1500/s
#   --set 'stages=[{name: a1}, {name: a2}, ...]'.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
python3 - "$reports" "$@" <<'PY'
import os, subprocess, sys, time, re

reports, extra = sys.argv[1], sys.argv[2:]
cmd = ["./target/release/stagegate", "run", "-q", "--report-dir", reports, "benches/memory.yaml", *extra]
p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)

def status(field):
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None

def open_files():
    try:
        return len(os.listdir(f"/proc/{p.pid}/fd"))
    except OSError:
        return -1

rows = []
for line in p.stderr:
    m = re.match(r"stage `([^`]+)` (finished|cut short)", line)
    if m:
        rows.append((m.group(1), status("VmRSS"), status("VmHWM"), open_files()))
p.wait()
print(f"{'stage':<8} {'RSS after (MiB)':>16} {'peak so far (MiB)':>18} {'open files':>11}")
for name, rss, hwm, files in rows:
    print(f"{name:<8} {rss:>16.1f} {hwm:>18.1f} {files:>11}")
if len(rows) >= 3:
    growth = rows[-1][1] - rows[1][1]
    print(f"growth from the second stage to the last: {growth:+.1f} MiB over {len(rows) - 2} stages")
print(f"exit code {p.returncode}")
PY
