#!/usr/bin/env python3
"""Issue #18, point 6: 24 hourly deduplicated backups of a pgbench scale-50 cluster under a steady
light load, against one full backup plus the archived WAL, and pgBackRest full + incremental beside
them in the same run. Findings: bench/dedup.md, section 9; docs/benchmarks.md.

Run as root, on a quiet machine (about 25 minutes on 2 cores):

    python3 bench/dedup_hours.py --pitr target/release/pitr --json bench/dedup_hours_results.json

One throwaway PostgreSQL 15 cluster (pgbench -i -s 50, PostgreSQL's default settings) archives with
`pitr archive-push` and then `pgbackrest archive-push` (one archive_command). Hour 0 takes the first
backups: pitr deduplicated (`--dedup`, hourly), pitr full (`--no-dedup`), pgBackRest full (block
incremental, bundles, zstd 3). Then each of the 24 hours runs pgbench TPC-B (`-n -c 2 -j 2`) at a fixed
rate for --interval seconds and, with the load stopped, takes:

- `pitr backup --dedup --tier hourly` (the skip rule applies): timed, with its peak RSS, and what it
  stored (the new packs and its own directory);
- `pitr backup --no-dedup --tier daily`: a full backup, timed, for the hourly / full time ratio; its
  directory is deleted afterwards, so pitr's repository holds what the runbook's hourly tier would;
- `pgbackrest backup --type=incr`: timed, and what it stored.

The two pitr backups alternate their order hour by hour, so neither always finds the page cache
warmed by the other. Every tool runs one process (`--jobs 1`, `process-max=1`). At the end, the last
hour's deduplicated backup and its full backup (kept for this) are restored three times each,
alternating, to compare restore time and memory.

Stored bytes are the repositories' files at the end: pitr's packs and hourly backup directories,
pgBackRest's backup directory, each plus the WAL the tool archived from the start of hour 0 to the end
(the WAL of pgbench -i before it is left out of both). The denominator of the target is each tool's
own first full backup plus that WAL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_study import PLANS, Study  # noqa: E402
from run import CommandFailed, progress, sh, tree_bytes  # noqa: E402

BENCH = Path(__file__).resolve().parent
MiB = 1 << 20


class Hours(Study):
    """The cluster, the archive_command and pgBackRest's stanza of bench/dedup_study.py."""

    def pitr_backup_of(self, kind: str, keep_full: bool = False) -> dict:
        """One pitr backup: `dedup` (hourly, kept) or `full` (daily, measured then deleted unless
        `keep_full`)."""
        tier, flag = ("hourly", "--dedup") if kind == "dedup" else ("daily", "--no-dedup")
        packs_before = tree_bytes(self.repo / "packs")
        run = self.r.run(self.pitr_cmd("backup", "--tier", tier, "--fast", "--jobs", "1", "--no-expire", "--json",
                                       flag), rss=True)
        summary = json.loads(run.output[run.output.index("{"):])["backup"]
        directory = self.repo / tier / summary["id"]
        out = {"id": summary["id"], "seconds": run.seconds, "peak_rss_kib": run.rss_kb,
               "directory_bytes": tree_bytes(directory), "pack_bytes": tree_bytes(self.repo / "packs") - packs_before,
               "skipped_files": summary.get("skipped_files", 0), "skipped_bytes": summary.get("skipped_bytes", 0),
               "original_bytes": summary["original_bytes"]}
        out["stored_bytes"] = out["directory_bytes"] + out["pack_bytes"]
        if kind == "full" and not keep_full:
            sh(["rm", "-rf", directory])
        return out

    def hour(self, n: int) -> dict:
        order = ["dedup", "full"] if n % 2 == 0 else ["full", "dedup"]
        pitr = {kind: self.pitr_backup_of(kind, keep_full=n == self.hours) for kind in order}
        pgbr = self.pgbr_backup("full" if n == 0 else "incr")
        self.wait_archiver()
        return {"hour": n, "order": order, "pitr_dedup": pitr["dedup"], "pitr_full": pitr["full"], "pgbr": pgbr}

    def run_hours(self) -> List[dict]:
        progress("hour 0: the first backups")
        wal_start, pgbr_wal_start = tree_bytes(self.repo / "wal"), tree_bytes(self.pgbr_repo / "archive")
        hours = [self.hour(0)]
        for n in range(1, self.hours + 1):
            progress(f"hour {n}: TPC-B at {self.a.rate} tps for {self.interval} s")
            hours[-1]["transactions_after"] = self.load([], self.a.rate)
            hours.append(self.hour(n))
            self.check_time()
        hours[0]["wal_bytes_since"] = tree_bytes(self.repo / "wal") - wal_start
        hours[0]["pgbr_wal_bytes_since"] = tree_bytes(self.pgbr_repo / "archive") - pgbr_wal_start
        return hours

    def restores(self, hours: List[dict], rounds: int = 3) -> dict:
        """Restores the last hour's deduplicated backup and its full backup `rounds` times each,
        alternating, into a new directory with `--jobs 1`: seconds and peak RSS of each."""
        out: dict = {"dedup": [], "full": []}
        target = self.tmp / "restored"
        for _ in range(rounds):
            for kind in ("full", "dedup"):
                backup = hours[-1][f"pitr_{kind}"]["id"]
                run = self.r.run(self.pitr_cmd("restore", "--backup", backup, "--pgdata", str(target), "--jobs", "1"),
                                 rss=True)
                out[kind].append({"seconds": run.seconds, "peak_rss_kib": run.rss_kb})
                sh(["rm", "-rf", target])
        return out

    def totals(self) -> dict:
        return {"pitr_packs": tree_bytes(self.repo / "packs"), "pitr_hourly": tree_bytes(self.repo / "hourly"),
                "pitr_wal": tree_bytes(self.repo / "wal"), "pgbr_backup": tree_bytes(self.pgbr_repo / "backup"),
                "pgbr_archive": tree_bytes(self.pgbr_repo / "archive")}


def summarize(hours: List[dict], totals: dict, restores: dict) -> dict:
    later = hours[1:]
    median = lambda rows, *keys: statistics.median(_dig(r, keys) for r in rows)  # noqa: E731
    full = hours[0]["pitr_full"]["stored_bytes"]
    wal = hours[0]["wal_bytes_since"]
    pgbr_full = hours[0]["pgbr"]["stored_bytes"]
    pgbr_wal = hours[0]["pgbr_wal_bytes_since"]
    pitr_stored = totals["pitr_packs"] + totals["pitr_hourly"] + wal
    pgbr_stored = totals["pgbr_backup"] + pgbr_wal
    s = {
        "hours": len(later),
        "pitr_full_bytes": full, "pitr_wal_bytes": wal, "pitr_stored_bytes": pitr_stored,
        "pitr_stored_ratio": pitr_stored / (full + wal),
        "pgbr_full_bytes": pgbr_full, "pgbr_wal_bytes": pgbr_wal, "pgbr_stored_bytes": pgbr_stored,
        "pgbr_stored_ratio": pgbr_stored / (pgbr_full + pgbr_wal),
        "pitr_over_pgbr_stored": pitr_stored / pgbr_stored,
        "first_dedup_seconds": hours[0]["pitr_dedup"]["seconds"],
        "first_dedup_stored": hours[0]["pitr_dedup"]["stored_bytes"],
        "hourly_seconds_median": median(later, "pitr_dedup", "seconds"),
        "hourly_seconds_max": max(r["pitr_dedup"]["seconds"] for r in later),
        "full_seconds_median": median(later, "pitr_full", "seconds"),
        "pgbr_incr_seconds_median": median(later, "pgbr", "seconds"),
        "hourly_stored_median": median(later, "pitr_dedup", "stored_bytes"),
        "pgbr_incr_stored_median": median(later, "pgbr", "stored_bytes"),
        "hourly_skipped_share_median": median(
            [{"x": r["pitr_dedup"]["skipped_bytes"] / r["pitr_dedup"]["original_bytes"]} for r in later], "x"),
        "hourly_peak_rss_mib_max": max(r["pitr_dedup"]["peak_rss_kib"] for r in hours) / 1024,
        "transactions_per_hour_median": median(hours[:-1], "transactions_after"),
    }
    for kind in ("dedup", "full"):
        s[f"restore_{kind}_seconds_median"] = statistics.median(r["seconds"] for r in restores[kind])
        s[f"restore_{kind}_peak_rss_mib"] = max(r["peak_rss_kib"] for r in restores[kind]) / 1024
    s["restore_dedup_over_full_time"] = s["restore_dedup_seconds_median"] / s["restore_full_seconds_median"]
    s["hourly_over_full_time"] = s["hourly_seconds_median"] / s["full_seconds_median"]
    s["hourly_over_pgbr_incr_time"] = s["hourly_seconds_median"] / s["pgbr_incr_seconds_median"]
    return s


def _dig(row: dict, keys: Sequence[str]):
    for k in keys:
        row = row[k]
    return row


def report(s: dict, hours: List[dict]) -> str:
    mib = lambda b: f"{b / MiB:.1f}"  # noqa: E731
    lines = [
        f"24 hourly backups ({s['hours']} hours, {s['transactions_per_hour_median']:.0f} TPC-B transactions each):",
        "",
        "| | pitr `--dedup` | pgBackRest full + incr (block) |",
        "|---|---|---|",
        f"| first full backup, MiB | {mib(s['pitr_full_bytes'])} (pitr full); first --dedup: "
        f"{mib(s['first_dedup_stored'])} in {s['first_dedup_seconds']:.2f} s | {mib(s['pgbr_full_bytes'])} |",
        f"| WAL archived over the run, MiB | {mib(s['pitr_wal_bytes'])} | {mib(s['pgbr_wal_bytes'])} |",
        f"| stored at the end (backups + WAL), MiB | {mib(s['pitr_stored_bytes'])} | {mib(s['pgbr_stored_bytes'])} |",
        f"| stored ÷ (first full + WAL) (target ≤ 1.3) | **{s['pitr_stored_ratio']:.2f}×** | "
        f"{s['pgbr_stored_ratio']:.2f}× |",
        f"| an hourly backup stores, MiB (median) | {mib(s['hourly_stored_median'])} | "
        f"{mib(s['pgbr_incr_stored_median'])} |",
        f"| an hourly backup takes, s (median) | {s['hourly_seconds_median']:.2f} (max "
        f"{s['hourly_seconds_max']:.2f}) | {s['pgbr_incr_seconds_median']:.2f} |",
        f"| pitr full backup (`--no-dedup`), s (median) | {s['full_seconds_median']:.2f} | |",
        f"| hourly ÷ full time (target ≤ 0.3) | **{s['hourly_over_full_time']:.2f}×** | |",
        f"| pitr hourly ÷ pgBackRest incremental, time | {s['hourly_over_pgbr_incr_time']:.2f}× | |",
        f"| pitr ÷ pgBackRest, stored | {s['pitr_over_pgbr_stored']:.2f}× | |",
        f"| bytes an hourly backup skipped unread (median share) | {100 * s['hourly_skipped_share_median']:.1f} % | |",
        f"| peak RSS of pitr backup --dedup (largest) | {s['hourly_peak_rss_mib_max']:.0f} MiB | |",
        f"| restore of the last hour's backup, `--jobs 1`, s (median of 3) | {s['restore_dedup_seconds_median']:.2f}"
        f" deduplicated, {s['restore_full_seconds_median']:.2f} full: **{s['restore_dedup_over_full_time']:.2f}×** | |",
        f"| peak RSS of that restore | {s['restore_dedup_peak_rss_mib']:.0f} MiB deduplicated, "
        f"{s['restore_full_peak_rss_mib']:.0f} MiB full | |",
        "",
        "Hour by hour (s; MiB stored):",
        "",
        "| hour | pitr --dedup s | stored | skipped MiB | pitr full s | pgBackRest s | stored |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in hours:
        d, f, p = r["pitr_dedup"], r["pitr_full"], r["pgbr"]
        lines.append(f"| {r['hour']} | {d['seconds']:.2f} | {mib(d['stored_bytes'])} | {mib(d['skipped_bytes'])} | "
                     f"{f['seconds']:.2f} | {p['seconds']:.2f} | {mib(p['stored_bytes'])} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pitr", type=Path, default=BENCH.parent / "target" / "release" / "pitr",
                    help="the pitr binary to use (default: target/release/pitr; not built here)")
    ap.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--interval", type=int, default=30, help="seconds of load per hour (default 30)")
    ap.add_argument("--rate", type=int, default=10, help="TPC-B transactions per second (default 10: 300 per "
                    "hour, the study's light short hour)")
    ap.add_argument("--max-minutes", type=float, default=45)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--analyze", type=Path, help="print the tables of a --json file and exit")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    if a.analyze:
        data = json.loads(a.analyze.read_text())
        print(report(data["summary"], data["hours"]))
        return 0
    if not a.pitr.exists():
        raise SystemExit(f"{a.pitr} does not exist: pass --pitr or run cargo build --release")
    if not shutil.which("pgbackrest"):
        raise SystemExit("pgbackrest is missing: apt-get install -y pgbackrest")
    a.plan, a.probe_target = "short", "/nonexistent"
    st = Hours(a)
    st.plan = dict(PLANS["short"], checkpoint_timeout=None)
    st.interval, st.hours = a.interval, a.hours
    st.started = time.time()
    progress(f"temp dir {st.tmp}")
    try:
        st.setup()
        hours = st.run_hours()
        totals = st.totals()
        progress("restores of the last hour's backups")
        restores = st.restores(hours)
    finally:
        st.teardown()
    summary = summarize(hours, totals, restores)
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "totals": totals, "hours": hours, "restores": restores,
                                      "scale": a.scale,
                                      "interval_seconds": a.interval, "rate": a.rate,
                                      "pitr": sh([str(a.pitr), "--version"]),
                                      "minutes": round((time.time() - st.started) / 60, 1)}, indent=1))
    print(report(summary, hours))
    progress(f"done in {(time.time() - st.started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
