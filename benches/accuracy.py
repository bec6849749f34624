#!/usr/bin/env python3
"""The verdict's accuracy: each defect of the builtin pipeline's candidate path, and an
A/A run (the current path against itself), over many seeds, through the release binary.

For each case it prints how often the run rolled back (the detection rate for a defect,
the false-rollback rate for A/A), whether the criterion expected to catch the defect was
among the failed ones, and how often the verdict was INCONCLUSIVE (and why: stagegate
falling behind, or too little evidence). Run it once on a quiet machine and once with the
CPUs busy, e.g.

    cargo build --release
    python3 benches/accuracy.py --seeds 20
    stress-ng --cpu 2 --timeout 60m & python3 benches/accuracy.py --seeds 20 --label busy

Only the Python standard library; the scenario is benches/accuracy.yaml.
"""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "benches" / "accuracy.yaml"

# Case name -> (the --set overrides, the criterion that must catch it; None for A/A).
CASES = {
    "A/A (current path twice)": (["stages[1].flags={new-enricher: false}"], None),
    "drop-on-timeout": (["target.defects=[drop-on-timeout]"], "data.lost == 0"),
    "duplicate-on-retry": (["target.defects=[duplicate-on-retry]"], "data.duplicated == 0"),
    "slow-20ms": (["target.defects=[slow-20ms]"], "compare latency: candidate vs baseline"),
    "alter-field": (["target.defects=[alter-field]"], "data.corrupted == 0"),
    "accept-malformed": (["target.defects=[accept-malformed]"], "data.accepted_invalid == 0"),
    "hang-on-blackhole": (["target.defects=[hang-on-blackhole]"], "during.latency.p99 < 1700ms"),
}


def run(binary, sets, seed):
    """One run; returns (verdict, failed criteria, inconclusive reasons)."""
    with tempfile.TemporaryDirectory() as reports:
        folder = pathlib.Path(reports) / "run"
        args = [binary, "run", "-q", str(SCENARIO), "--seed", str(seed), "--out", str(folder)]
        for s in sets:
            args += ["--set", s]
        subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        if not (folder / "report.json").exists():
            return "NONE", set(), []
        report = json.loads((folder / "report.json").read_text())
        enforced = [a for a in report["assessments"] if a["level"] == "enforce"]
        failed = {a["criterion"] for a in enforced if a["outcome"] == "fail"}
        unsure = [a.get("note") or "" for a in enforced if a["outcome"] == "inconclusive"]
        return report.get("verdict") or "NONE", failed, unsure


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--label", default="quiet")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "stagegate"))
    parser.add_argument("--only", help="run only the case whose name contains this")
    parser.add_argument("--why", action="store_true", help="print each inconclusive seed's reasons to stderr")
    args = parser.parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"no binary at {args.binary}: run `cargo build --release` first")
    print(f"accuracy over {args.seeds} seeds, machine {args.label}")
    print(f"{'case':28} {'ROLLBACK':>9} {'right criterion':>16} {'PROMOTE':>8} {'INCONCL.':>9}  inconclusive because")
    for name, (sets, expected) in CASES.items():
        if args.only and args.only not in name:
            continue
        verdicts = collections.Counter()
        right = 0
        why = collections.Counter()
        for seed in range(1, args.seeds + 1):
            verdict, failed, unsure = run(args.binary, sets, seed)
            verdicts[verdict] += 1
            if expected and expected in failed:
                right += 1
            if args.why and unsure:
                print(f"  {name} seed {seed}: " + " | ".join(unsure), file=sys.stderr, flush=True)
            for note in unsure:
                why["stagegate fell behind" if "fell behind" in note else note.split(":")[0][:40]] += 1
        n = args.seeds
        right_text = f"{right}/{n}" if expected else "-"
        reasons = ", ".join(f"{k} x{v}" for k, v in why.most_common(2))
        print(
            f"{name:28} {verdicts['ROLLBACK']:>5}/{n:<3} {right_text:>16} {verdicts['PROMOTE']:>4}/{n:<3}"
            f" {verdicts['INCONCLUSIVE']:>5}/{n:<3}  {reasons}",
            flush=True,
        )


if __name__ == "__main__":
    main()
