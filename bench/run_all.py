"""Runs bench/evidence.py, cold_start.py, memory.py, throughput.py, firestore.py,
backtest.py and storm.py with their defaults and prints a markdown summary (value, floor,
ratio, target, PASS/MISS);
always exits 0."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, ROOT, machine_banner  # noqa: E402

SCRIPTS = ("evidence.py", "cold_start.py", "memory.py", "throughput.py", "firestore.py",
           "backtest.py", "storm.py")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    if unit in ("ev/s",):
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, help="passed to every script (default: theirs)")
    parser.add_argument("--only", choices=[s.removesuffix(".py") for s in SCRIPTS],
                        action="append", help="run only this script (repeatable)")
    args = parser.parse_args(argv)
    machine_banner("run_all.py", argv)

    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="retrain-bench-all-") as tmp:
        for script in SCRIPTS:
            if args.only and script.removesuffix(".py") not in args.only:
                continue
            out = Path(tmp) / f"{script}.json"
            cmd = [PYTHON, str(ROOT / "bench" / script), "--json", str(out)]
            if args.repeat:
                cmd += ["--repeat", str(args.repeat)]
            print(f"\n{'=' * 20} {script} {'=' * 20}", flush=True)
            t0 = time.perf_counter()
            code = subprocess.call(cmd, cwd=ROOT)
            print(f"# {script}: {time.perf_counter() - t0:.0f} s", flush=True)
            if code != 0 or not out.exists():
                failures.append(f"{script} exited {code}")
                continue
            rows.extend(json.loads(out.read_text(encoding="utf-8"))["rows"])

    print(f"\n## Summary ({time.perf_counter() - started:.0f} s)\n")
    print("| benchmark | metric | measured | floor | ratio | target | result |")
    print("|---|---|---:|---:|---:|---|---|")
    for row in rows:
        passed = row["passed"]
        result = "info" if passed is None else ("PASS" if passed else "**MISS**")
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        unit = str(row["unit"])
        print(f"| {row['bench']} | {row['metric']} | {_fmt(row['value'], unit)} "
              f"| {_fmt(row['floor'], unit)} | {ratio} | {row['target']} | {result} |")
    misses = [row for row in rows if row["passed"] is False]
    print()
    for row in misses:
        print(f"MISS: {row['bench']} / {row['metric']}: ratio "
              f"{row['ratio']:.2f}x, target {row['target']}")
    for failure in failures:
        print(f"ERROR: {failure} (no figures)")
    if not misses and not failures:
        print("all targets met")
    return 0  # benchmarks inform, they do not gate


if __name__ == "__main__":
    sys.exit(main())
