#!/usr/bin/env python3
"""pitr over a synthetic repository of a million segments (issue 14, item 6): wall time and peak
RSS of list, info, expire --dry-run and the recovery plan, and optionally the system calls.

    cargo build --release
    cargo run --release -p pitr --example synthetic_repo -- /work/scale-repo   # about 80 s, 4.7 GB
    python3 bench/scale.py --repo /work/scale-repo --target-time 2026-06-06T23:17:00Z \\
        [--before OTHER_PITR] [--runs 5] [--syscalls] [--cold]

Prints a Markdown table (median, min and max of --runs warm-cache runs; peak RSS is the largest
of the runs, from GNU time's "Maximum resident set size"). With --before, runs that binary too,
alternating with this one, and checks that both print the same (ages in `info` aside, as they
move with the clock). --syscalls counts system calls with `perf trace -s` (one run each).
--cold adds one run each after `echo 3 > /proc/sys/vm/drop_caches` (root; it slows every other
process on the machine for a moment). Standard library only.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commands(target_time: str, newdir: str):
    plan = ["recover", "--pgdata", newdir, "--dry-run"]
    return [
        ("list", ["list"]),
        ("list --json", ["list", "--json"]),
        ("info", ["info"]),
        ("info --json", ["info", "--json"]),
        ("expire --dry-run", ["expire", "--dry-run"]),
        ("recover --dry-run --target latest", plan + ["--target", "latest"]),
        (f"recover --dry-run --target-time {target_time}", plan + ["--target-time", target_time]),
        ("list restore-points", ["list", "restore-points"]),
    ]


def run(pitr: str, repo: str, args, cwd: str):
    """(seconds, peak RSS in KiB, stdout) of one run."""
    with tempfile.NamedTemporaryFile("r") as stats:
        proc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", stats.name, pitr, "--repo", repo, *args],
            cwd=cwd, capture_output=True, text=True,
        )
        text = stats.read()
    if proc.returncode != 0:
        sys.exit(f"{pitr} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return seconds, rss, proc.stdout


def normalized(output: str) -> str:
    """The output without what moves with the clock: backup ages, how long ago WAL was archived."""
    output = re.sub(r" \([^()]*\bold\)", "", output)
    output = re.sub(r", archived [^,\n]* ago", "", output)
    return re.sub(r'"age_seconds": -?\d+', '"age_seconds": 0', output)


def syscalls(pitr: str, repo: str, args, cwd: str) -> str:
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run(["perf", "trace", "-s", "-o", out.name, pitr, "--repo", repo, *args],
                       cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        text = out.read()
    calls = {}
    for line in text.splitlines():
        m = re.match(r"\s+(\w+)\s+(\d+)\s+\d+\s+[\d.]+", line)
        if m:
            calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
    total = sum(calls.values())
    top = ", ".join(f"{name} {n:,}" for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:4])
    return f"{total:,} ({top})"


def drop_caches():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fmt(values):
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--target-time", required=True, help="a time in the middle (synthetic_repo prints one)")
    ap.add_argument("--pitr", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/pitr"))
    ap.add_argument("--before", help="another pitr binary to compare with (figures and output)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--syscalls", action="store_true")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--only", help="run only the commands whose label contains this")
    a = ap.parse_args()
    binaries = [("before", a.before), ("after", a.pitr)] if a.before else [("pitr", a.pitr)]
    with tempfile.TemporaryDirectory() as cwd:
        newdir = str(Path(cwd) / "newdir")
        rows = []
        for label, args in commands(a.target_time, newdir):
            if a.only and a.only not in label:
                continue
            times = {name: [] for name, _ in binaries}
            rss = {name: 0 for name, _ in binaries}
            outputs = {}
            for _ in range(a.runs):
                for name, pitr in binaries:
                    seconds, kib, out = run(pitr, a.repo, args, cwd)
                    times[name].append(seconds)
                    rss[name] = max(rss[name], kib)
                    outputs[name] = normalized(out)
            row = [label]
            for name, pitr in binaries:
                row += [fmt(times[name]), f"{rss[name] / 1024:.0f}"]
                if a.cold:
                    drop_caches()
                    row.append(f"{run(pitr, a.repo, args, cwd)[0]:.2f}")
                if a.syscalls:
                    row.append(syscalls(pitr, a.repo, args, cwd))
            if a.before:
                row.append("same" if outputs["before"] == outputs["after"] else "**DIFFERS**")
                if outputs["before"] != outputs["after"]:
                    for name in outputs:
                        Path(f"/tmp/scale-{name}-{label.split()[0]}.out").write_text(outputs[name])
            rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
    header = ["command"]
    for name, _ in binaries:
        header += [f"{name}: seconds, median (min–max)", f"{name}: peak RSS MiB"]
        if a.cold:
            header.append(f"{name}: seconds, cold cache")
        if a.syscalls:
            header.append(f"{name}: system calls")
    if a.before:
        header.append("output")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
