#!/usr/bin/env python3
"""The measurements behind the design of deduplicated backups (issue #18). Findings: bench/dedup.md.

Run as root from anywhere, under the bench lock (31 minutes on 2 cores; --plan real, 21 minutes):

    flock /work/bench.lock nice -n 19 python3 bench/dedup_study.py --pitr /path/to/pitr --json bench/dedup_results.json
    flock /work/bench.lock nice -n 19 python3 bench/dedup_study.py --pitr /path/to/pitr --plan real \
        --json bench/dedup_results_real.json

One throwaway PostgreSQL cluster (pgbench scale 50) archives with `pitr archive-push` and
`pgbackrest archive-push`. One backup of each tool (pitr full, pgBackRest full with block
incremental), then workloads of 6 "hours" each (pgbench at a fixed rate for --interval seconds),
each hour closed by a pitr full backup and a pgBackRest incremental, with the load paused. Right
after the backups, bench/dedup_probe (a small Rust tool, built here) reads every file the backup
copied and cuts it into pieces of 8 KiB ... 16 MiB at fixed offsets and by FastCDC, and counts
the pieces no earlier hour had: their bytes, zstd-3 size and number. It also records each file's
size, mtime, ctime and hash, for the skip rule, and times reading and hashing what a
deduplicating backup would have to read. Then the hashing speed of BLAKE3 and SHA-256.

It prints the tables of bench/dedup.md and writes the figures as JSON (--json). Everything lives in
one temp dir under /tmp, removed at the end (--keep keeps it). It reuses bench/run.py's Runner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CommandFailed, Runner, progress, sh, tree_bytes  # noqa: E402

BENCH = Path(__file__).resolve().parent
PROBE_DIR = BENCH / "dedup_probe"
MiB = 1 << 20
PORT = 55442
SEGMENT = 16 * MiB
SCHEMES = ["fixed_8k", "fixed_64k", "fixed_256k", "fixed_1024k", "fixed_4096k", "fixed_16384k", "cdc_64k",
           "cdc_1024k"]
SCHEME_LABEL = {"fixed_8k": "8 KiB", "fixed_64k": "64 KiB", "fixed_256k": "256 KiB", "fixed_1024k": "1 MiB",
                "fixed_4096k": "4 MiB", "fixed_16384k": "16 MiB", "cdc_64k": "CDC 64 KiB",
                "cdc_1024k": "CDC 1 MiB"}
# Bytes a manifest needs per piece at the least: a 32-byte hash and the piece's length. A file
# whose pieces all stayed could be one reference instead (see bench/dedup.md).
INDEX_BYTES_PER_PIECE = 36
# Two plans, each a list of workloads run in this order: (name, pgbench script options, rate in tps).
# "short": hours of --interval seconds (60) at the server's default checkpoint_timeout (5 min), so one
# hour is one checkpoint cycle (each backup checkpoints). "real": one real hour of TPC-B at 5 tps with
# time running 10 times faster: 50 tps for 360 s with checkpoint_timeout 30 s, so an hour holds its
# 18,000 transactions and its 12 checkpoint cycles, as a real one does.
PLANS = {
    "short": {"workloads": [("simple-update 5 tps", ["-N"], 5), ("simple-update 50 tps", ["-N"], 50),
                            ("TPC-B 5 tps", [], 5), ("TPC-B 50 tps", [], 50)],
              "interval": 60, "hours": 6, "checkpoint_timeout": None},
    "real": {"workloads": [("TPC-B, a real hour at 5 tps (50 tps, time ÷ 10)", [], 50)],
             "interval": 360, "hours": 3, "checkpoint_timeout": "30s"},
}


def pgbr_block_is_beta() -> bool:
    """Whether this pgBackRest's block incremental needs `beta=y` (its help says so: 2.45 does)."""
    return "FOR BETA TESTING ONLY" in sh(["pgbackrest", "help", "backup", "repo-block"])


class Study:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="pitr-dedup-", dir="/tmp"))
        for d in ("logs", "home", "sock", "bin", "scans", "probe-state"):
            (self.tmp / d).mkdir()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.r = Runner(self.tmp, self.user, a.pg_bin)
        self.r.base_env["PGPORT"] = str(PORT)
        self.pgdata = self.tmp / "pg"
        self.pitr = self.tmp / "bin" / "pitr"
        self.pitr_conf = self.tmp / "pitr.toml"
        self.repo = self.tmp / "pitr-repo"
        self.pgbr_dir = self.tmp / "pgbackrest"
        self.pgbr_conf = self.pgbr_dir / "pgbackrest.conf"
        self.pgbr_repo = self.pgbr_dir / "repo"
        self.probe = Path(a.probe_target) / "release" / "dedup_probe"
        self.plan = PLANS[a.plan]
        self.interval = a.interval or self.plan["interval"]
        self.hours = a.hours or self.plan["hours"]
        self.prev_scan: Optional[dict] = None

    # -- commands ----------------------------------------------------------------------------------

    def pg(self, name: str) -> Path:
        return self.a.pg_bin / name

    def sql(self, query: str) -> str:
        return self.r.sql(query, port=PORT)

    def pitr_cmd(self, *args: str) -> List[str]:
        compress = ["--compress", "zstd", "--compress-level", "3"] if {"backup", "archive-push"} & set(args) else []
        return [str(self.pitr), "--config", str(self.pitr_conf), "--repo", str(self.repo)] + compress + list(args)

    def pgbr(self, *args: str) -> List[str]:
        return ["pgbackrest", f"--config={self.pgbr_conf}", f"--config-include-path={self.pgbr_dir / 'conf.d'}",
                "--stanza=study"] + list(args)

    # -- setup -------------------------------------------------------------------------------------

    def build_probe(self) -> None:
        progress("cargo build --release of bench/dedup_probe")
        env = dict(os.environ, CARGO_TARGET_DIR=str(self.a.probe_target))
        p = subprocess.run(["nice", "-n", "19", "cargo", "build", "--release", "--quiet"], cwd=PROBE_DIR, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise CommandFailed("building bench/dedup_probe failed:\n" + p.stdout[-4000:])

    def setup(self) -> None:
        shutil.copy2(self.a.pitr, self.pitr)
        self.pitr_conf.write_text("")
        os.chmod(self.tmp, 0o755)
        self.mkdir_pg(self.repo)
        self.mkdir_pg(self.pgbr_dir, 0o755)
        for d in ("log", "lock", "spool", "conf.d", "repo"):
            self.mkdir_pg(self.pgbr_dir / d)
        if self.user:
            sh(["chown", "-R", f"{self.user}:{self.user}", self.tmp])
        progress(f"initdb + pgbench -i -s {self.a.scale}")
        self.r.run([self.pg("initdb"), "-D", self.pgdata, "-A", "trust", "-E", "UTF8", "--no-sync"])
        push = " ".join(self.pitr_cmd("archive-push", "%p")) + " && " + " ".join(self.pgbr("archive-push", "%p"))
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(f"""
# pitr dedup study: defaults otherwise (checkpoint_timeout 5min, max_wal_size 1GB)
port = {PORT}
listen_addresses = ''
unix_socket_directories = '{self.tmp / 'sock'}'
wal_level = replica
archive_mode = on
archive_command = '{push}'
""")
            if self.plan["checkpoint_timeout"]:
                f.write(f"checkpoint_timeout = '{self.plan['checkpoint_timeout']}'\n")
        self.pgbr_conf.write_text(f"""[global]
repo1-path={self.pgbr_repo}
repo1-retention-full=2
repo1-bundle=y
repo1-block=y
log-path={self.pgbr_dir / 'log'}
lock-path={self.pgbr_dir / 'lock'}
spool-path={self.pgbr_dir / 'spool'}
log-level-console=warn
log-level-stderr=warn
start-fast=y
compress-type=zst
compress-level=3
process-max=1
{'beta=y' if pgbr_block_is_beta() else ''}

[study]
pg1-path={self.pgdata}
pg1-socket-path={self.tmp / 'sock'}
pg1-port={PORT}
""")
        self.r.run([self.pg("pg_ctl"), "-D", self.pgdata, "-l", self.tmp / "logs" / "postgresql.log", "-w", "start"])
        self.r.run(self.pgbr("stanza-create"))
        self.r.run([self.pg("pgbench"), "-i", "-q", "-s", str(self.a.scale)])
        self.sql("CHECKPOINT")
        self.wait_archiver()

    def mkdir_pg(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(mode=mode)
        os.chmod(path, mode)

    def wait_archiver(self, timeout: float = 600) -> None:
        status = self.pgdata / "pg_wal" / "archive_status"
        deadline = time.time() + timeout
        while any(p.suffix == ".ready" for p in status.iterdir()):
            if time.time() > deadline:
                raise CommandFailed("the archiver did not catch up (see logs/postgresql.log)")
            time.sleep(0.2)

    def teardown(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.r.run([self.pg("pg_ctl"), "-D", self.pgdata, "-m", "fast", "-w", "stop"], check=False)
        if self.a.keep:
            progress(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- one hour ----------------------------------------------------------------------------------

    def wal_listing(self) -> Dict[str, int]:
        """Every archived WAL file in pitr's repository and its stored size."""
        out = {}
        for root, _, files in os.walk(self.repo / "wal"):
            for f in files:
                if re.fullmatch(r"[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?", f):
                    out[f] = (Path(root) / f).stat().st_size
        return out

    def load(self, options: Sequence[str], rate: int) -> int:
        """One hour of load; returns the transactions pgbench committed."""
        run = self.r.run([self.pg("pgbench"), "-n", *options, "-c", "2", "-j", "2", "-R", str(rate),
                          "-T", str(self.interval)])
        m = re.search(r"number of transactions actually processed: (\d+)", run.output)
        if not m:
            raise CommandFailed("pgbench printed no transaction count:\n" + run.output[-2000:])
        return int(m.group(1))

    def pitr_backup(self) -> dict:
        tier = self.repo / "hourly"
        before = set(os.listdir(tier)) if tier.exists() else set()
        run = self.r.run(self.pitr_cmd("backup", "--tier", "hourly", "--fast", "--jobs", "1", "--no-expire"))
        new = set(os.listdir(tier)) - before
        if len(new) != 1:
            raise CommandFailed(f"pitr backup: expected one new backup in {tier}, found {new}")
        return {"seconds": run.seconds, "stored_bytes": tree_bytes(tier / new.pop())}

    def pgbr_backup(self, kind: str) -> dict:
        bdir = self.pgbr_repo / "backup" / "study"
        before = set(os.listdir(bdir))
        run = self.r.run(self.pgbr("backup", f"--type={kind}"))
        new = [d for d in set(os.listdir(bdir)) - before if re.fullmatch(r"\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?", d)]
        if len(new) != 1:
            raise CommandFailed(f"pgbackrest backup: expected one new backup in {bdir}, found {new}")
        return {"seconds": run.seconds, "stored_bytes": tree_bytes(bdir / new[0])}

    def scan(self, n: int) -> dict:
        out = self.tmp / "scans" / f"{n}.json"
        p = subprocess.run(["nice", "-n", "19", str(self.probe), "scan", str(self.pgdata),
                            str(self.tmp / "probe-state"), str(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise CommandFailed(f"dedup_probe scan failed: {p.stdout}")
        return json.loads(out.read_text())

    def read_and_hash(self, n: int, scan: dict) -> dict:
        """Times reading and hashing (BLAKE3, 8 KiB pieces) every file, and only the files the skip
        rule could not skip (size, mtime, ctime and inode as at the previous scan): the least a
        deduplicating backup must do, page cache warm (the scan just read every file)."""
        before = {f["path"]: f for f in (self.prev_scan or {"files": []})["files"]}
        keys = ("size", "mtime_ns", "ctime_ns", "ino")
        unskipped = [f["path"] for f in scan["files"]
                     if not (f["path"] in before and all(before[f["path"]][k] == f[k] for k in keys))]
        out = {}
        for name, paths in (("all", [f["path"] for f in scan["files"]]), ("unskipped", unskipped)):
            listing = self.tmp / "scans" / f"{n}.{name}.txt"
            listing.write_text("\n".join(paths) + "\n")
            p = subprocess.run([str(self.probe), "readhash", str(self.pgdata), str(listing)], stdout=subprocess.PIPE,
                               text=True, check=True)
            out[name] = json.loads(p.stdout)
        return out

    def snapshot(self, n: int, pgbr_kind: str) -> dict:
        """Backs up with both tools (load paused) and scans the data directory."""
        pgbr_wal_before = tree_bytes(self.pgbr_repo / "archive")
        pitr = self.pitr_backup()
        pgbr = self.pgbr_backup(pgbr_kind)
        self.wait_archiver()
        scan = self.scan(n)
        reads = self.read_and_hash(n, scan)
        self.prev_scan = scan
        return {"pitr": pitr, "pgbr": pgbr, "scan": scan, "read_and_hash": reads,
                "pgbr_wal_during_backups": tree_bytes(self.pgbr_repo / "archive") - pgbr_wal_before}

    def run_schedule(self) -> List[dict]:
        hours = []
        progress("hour 0: the first backups (pitr full, pgBackRest full)")
        first = self.snapshot(0, "full")
        first.update(workload="initial", transactions=0)
        hours.append(first)
        n = 0
        for name, options, rate in self.plan["workloads"]:
            for _ in range(self.hours):
                n += 1
                progress(f"hour {n}: {name} for {self.interval} s")
                wal = self.wal_listing()
                pgbr_wal = tree_bytes(self.pgbr_repo / "archive")
                txns = self.load(options, rate)
                snap = self.snapshot(n, "incr")
                after = self.wal_listing()
                new_wal = {k: v for k, v in after.items() if k not in wal}
                segments = [k for k in new_wal if len(k) == 24]
                snap.update(workload=name, transactions=txns, wal_files=len(new_wal),
                            wal_segments=len(segments), wal_raw=len(segments) * SEGMENT,
                            wal_stored=sum(new_wal.values()),
                            pgbr_wal_stored=tree_bytes(self.pgbr_repo / "archive") - pgbr_wal)
                hours.append(snap)
                self.check_time()
        return hours

    def check_time(self) -> None:
        spent = time.time() - self.started
        if spent > self.a.max_minutes * 60:
            raise CommandFailed(f"the study ran past --max-minutes ({spent / 60:.0f} min): make --interval shorter")

    def hash_speed(self) -> dict:
        progress("hashing speed")
        p = subprocess.run([str(self.probe), "hashspeed", "2"], stdout=subprocess.PIPE, text=True, check=True)
        speed = json.loads(p.stdout)
        buf = os.urandom(MiB)
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 2:
            hashlib.sha256(buf).digest()
            n += 1
        speed["openssl_sha256_1mib_mb_per_s"] = round(n * MiB / (time.perf_counter() - start) / 1e6)
        return speed


# ------------------------------------------------------------------------------------------------
# Analysis
# ------------------------------------------------------------------------------------------------


def skip_rule(prev: dict, cur: dict) -> dict:
    """What a size+mtime (and ctime) rule would skip between two scans, and whether it is wrong."""
    before = {f["path"]: f for f in prev["scan"]["files"]}
    out = {"files": 0, "bytes": 0, "same_size_mtime": 0, "same_size_mtime_bytes": 0, "same_ctime_too": 0,
           "same_ctime_too_bytes": 0, "content_changed_same_size_mtime": [], "unstable_during_read": 0}
    for f in cur["scan"]["files"]:
        out["files"] += 1
        out["bytes"] += f["size"]
        out["unstable_during_read"] += not f["stable"]
        p = before.get(f["path"])
        if not p or p["size"] != f["size"] or p["mtime_ns"] != f["mtime_ns"]:
            continue
        out["same_size_mtime"] += 1
        out["same_size_mtime_bytes"] += f["size"]
        if p["ctime_ns"] == f["ctime_ns"] and p["ino"] == f["ino"]:
            out["same_ctime_too"] += 1
            out["same_ctime_too_bytes"] += f["size"]
        if p["blake3"] != f["blake3"]:
            out["content_changed_same_size_mtime"].append(
                {"path": f["path"], "size": f["size"], "ctime_changed": p["ctime_ns"] != f["ctime_ns"],
                 "stable_both": p["stable"] and f["stable"]})
    return out


def summarize(hours: List[dict]) -> dict:
    full = hours[0]
    rows = []
    for i in range(1, len(hours)):
        h = hours[i]
        rows.append({
            "hour": i, "workload": h["workload"], "transactions": h["transactions"],
            "pitr_seconds": h["pitr"]["seconds"], "pitr_stored": h["pitr"]["stored_bytes"],
            "pgbr_seconds": h["pgbr"]["seconds"], "pgbr_stored": h["pgbr"]["stored_bytes"],
            "wal_segments": h["wal_segments"], "wal_raw": h["wal_raw"], "wal_stored": h["wal_stored"],
            "pgbr_wal_stored": h["pgbr_wal_stored"],
            "schemes": {s: {k: v for k, v in h["scan"]["schemes"][s].items()
                            if k in ("new_bytes", "new_zstd", "new_zstd_framed", "new_objects", "pieces", "distinct")}
                        for s in SCHEMES},
            "skip": skip_rule(hours[i - 1], h),
            "read_and_hash": h.get("read_and_hash"),
        })
    return {
        "full": {"pitr_seconds": full["pitr"]["seconds"], "pitr_stored": full["pitr"]["stored_bytes"],
                 "pgbr_seconds": full["pgbr"]["seconds"], "pgbr_stored": full["pgbr"]["stored_bytes"],
                 "files": len(full["scan"]["files"]), "bytes": sum(f["size"] for f in full["scan"]["files"]),
                 "schemes": full["scan"]["schemes"]},
        "hours": rows,
    }


PIECE_BYTES = {"fixed_8k": 8 << 10, "fixed_64k": 64 << 10, "fixed_256k": 256 << 10, "fixed_1024k": 1 << 20,
               "fixed_4096k": 4 << 20, "fixed_16384k": 16 << 20, "cdc_64k": 64 << 10, "cdc_1024k": 1 << 20}
# The group of the two-level index (tree_index).
GROUP, GROUP_SCHEME = 256 << 10, "fixed_256k"


def tree_index(scheme: str, full: dict, new_groups: Optional[float]) -> float:
    """Index bytes one backup writes when a file lists groups of 256 KiB and each group, itself a
    content-addressed object, lists its pieces: every group reference, plus the piece lists of the
    groups that changed (`new_groups`, each taken as a full group of 256 KiB: an upper bound), or of
    every group (None: a first backup). Pieces of 256 KiB and more, and CDC pieces: a flat list."""
    size = PIECE_BYTES[scheme]
    pieces = full["schemes"][scheme]["pieces"]
    if size >= GROUP or scheme.startswith("cdc"):
        return pieces * INDEX_BYTES_PER_PIECE
    listed = pieces if new_groups is None else new_groups * (GROUP // size)
    return (full["schemes"][GROUP_SCHEME]["pieces"] + listed) * INDEX_BYTES_PER_PIECE


def stored_ratio(full: dict, scheme: str, new: float, new_groups: float, wal: float, key: str,
                 hours: int = 24) -> float:
    """(first backup in pieces + `hours` × (new pieces + index + WAL)) / (pitr full + `hours` × WAL)."""
    first = full["schemes"][scheme][key] + tree_index(scheme, full, None)
    stored = first + hours * (new + tree_index(scheme, full, new_groups) + wal)
    return stored / (full["pitr_stored"] + hours * wal)


def predict(s: dict, workload: str, scheme: str, key: str = "new_zstd", hours: int = 24) -> float:
    """24 hours of one workload, each like its mean measured hour, against the target. `key`:
    new_zstd (each piece compressed alone) or new_zstd_framed (new pieces compressed in frames)."""
    rows = [r for r in s["hours"] if r["workload"] == workload]
    new = statistics.mean(r["schemes"][scheme][key] for r in rows)
    groups = statistics.mean(r["schemes"][GROUP_SCHEME]["new_objects"] for r in rows)
    wal = statistics.mean(r["wal_stored"] for r in rows)
    return stored_ratio(s["full"], scheme, new, groups, wal, key, hours)


def mib(n: float) -> str:
    return f"{n / MiB:.1f}" if n < 100 * MiB else f"{n / MiB:.0f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report(s: dict) -> str:
    f = s["full"]
    out = [f"Data directory: {f['files']} files, {mib(f['bytes'])} MiB. pitr full backup: {mib(f['pitr_stored'])} MiB "
           f"stored in {f['pitr_seconds']:.1f} s; pgBackRest full (block incremental on): {mib(f['pgbr_stored'])} MiB "
           f"in {f['pgbr_seconds']:.1f} s.", ""]
    out.append("Full backup cut into pieces (every piece new):\n")
    framed = "new_zstd_framed" in f["schemes"]["fixed_8k"]
    out.append(md_table(["pieces", "objects", "distinct bytes MiB", "zstd-3 MiB (each piece alone)",
                         "zstd-3 MiB (256 KiB frames)", "index MiB of a full (tree_index)"],
                        [[SCHEME_LABEL[k], f["schemes"][k]["distinct"], mib(f["schemes"][k]["new_bytes"]),
                          mib(f["schemes"][k]["new_zstd"]),
                          mib(f["schemes"][k]["new_zstd_framed"]) if framed else "not measured",
                          mib(tree_index(k, f, None))]
                         for k in SCHEMES]))
    out.append("\nPer hour: backups, WAL (stored = zstd-3 as pitr stores it; raw = 16 MiB per segment):\n")
    out.append(md_table(
        ["hour", "workload", "txns", "pitr full s", "pitr full MiB", "pgBR incr s", "pgBR incr MiB",
         "WAL segs", "WAL raw MiB", "WAL stored MiB", "pgBR WAL MiB"],
        [[r["hour"], r["workload"], r["transactions"], f"{r['pitr_seconds']:.1f}", mib(r["pitr_stored"]),
          f"{r['pgbr_seconds']:.1f}", mib(r["pgbr_stored"]), r["wal_segments"], mib(r["wal_raw"]),
          mib(r["wal_stored"]), mib(r["pgbr_wal_stored"])] for r in s["hours"]]))
    sizes = [("bytes of new pieces (MiB)", "new_bytes"), ("their zstd-3 size, each piece alone (MiB)", "new_zstd")]
    if framed:
        sizes.append(("their zstd-3 size in 256 KiB frames (MiB)", "new_zstd_framed"))
    for what, key in sizes + [("new objects", "new_objects")]:
        out.append(f"\nPer hour, {what}:\n")
        out.append(md_table(["hour", "workload"] + [SCHEME_LABEL[k] for k in SCHEMES],
                            [[r["hour"], r["workload"]] + [mib(r["schemes"][k][key]) if key != "new_objects"
                                                           else r["schemes"][k][key] for k in SCHEMES]
                             for r in s["hours"]]))
    out.append("\nPer workload, mean hour (zstd-3 MiB of new pieces) and 24 such hours against the target "
               "(stored / (pitr full + 24 h of WAL); ≤ 1.3 wanted; index: see tree_index; framed: new pieces "
               "compressed in 256 KiB frames):\n")
    rows = []
    for name in dict.fromkeys(r["workload"] for r in s["hours"]):
        hs = [r for r in s["hours"] if r["workload"] == name]
        if not hs:
            continue
        row = [name, round(statistics.mean(r["transactions"] for r in hs)),
               mib(statistics.mean(r["wal_stored"] for r in hs))]
        for k in SCHEMES:
            cell = f"{mib(statistics.mean(r['schemes'][k]['new_zstd'] for r in hs))} → {predict(s, name, k):.2f}×"
            if framed:
                cell += (f"; framed {mib(statistics.mean(r['schemes'][k]['new_zstd_framed'] for r in hs))} → "
                         f"{predict(s, name, k, 'new_zstd_framed'):.2f}×")
            row.append(cell)
        rows.append(row)
    out.append(md_table(["workload", "txns/hour", "WAL stored MiB/hour"] + [SCHEME_LABEL[k] for k in SCHEMES], rows))
    hours = s["hours"]
    if hours and hours[0].get("read_and_hash"):
        out.append("\nThe least an hourly deduplicating backup reads and hashes (BLAKE3, 8 KiB pieces, one thread, "
                   "page cache warm), against pitr's full backup of the same hour:\n")
        out.append(md_table(["hour", "workload", "pitr full s", "read+hash all: s (MiB)", "ratio",
                             "read+hash what the skip rule leaves: s (MiB)", "ratio"],
                            [[r["hour"], r["workload"], f"{r['pitr_seconds']:.2f}",
                              f"{r['read_and_hash']['all']['seconds']:.2f} ({mib(r['read_and_hash']['all']['bytes'])})",
                              f"{r['read_and_hash']['all']['seconds'] / r['pitr_seconds']:.2f}×",
                              f"{r['read_and_hash']['unskipped']['seconds']:.2f} "
                              f"({mib(r['read_and_hash']['unskipped']['bytes'])})",
                              f"{r['read_and_hash']['unskipped']['seconds'] / r['pitr_seconds']:.2f}×"]
                             for r in hours]))
    out.append(f"\nAll {len(hours)} hours: pitr full backups {mib(sum(r['pitr_stored'] for r in hours))} MiB in "
               f"{sum(r['pitr_seconds'] for r in hours):.0f} s (median {statistics.median(r['pitr_seconds'] for r in hours):.1f} s); "
               f"pgBackRest incrementals {mib(sum(r['pgbr_stored'] for r in hours))} MiB in "
               f"{sum(r['pgbr_seconds'] for r in hours):.0f} s (median {statistics.median(r['pgbr_seconds'] for r in hours):.1f} s); "
               f"WAL stored {mib(sum(r['wal_stored'] for r in hours))} MiB (pitr), "
               f"{mib(sum(r['pgbr_wal_stored'] for r in hours))} MiB (pgBackRest).")
    out.append("\nSkip rule: files with the size and mtime of the previous hour (their bytes), ctime and inode "
               "too, files whose content changed anyway, files that changed while read:\n")
    out.append(md_table(["hour", "workload", "files", "same size+mtime", "their MiB (share)", "same ctime too",
                         "content changed, same size+mtime", "changed while read"],
                        [[r["hour"], r["workload"], r["skip"]["files"], r["skip"]["same_size_mtime"],
                          f"{mib(r['skip']['same_size_mtime_bytes'])} "
                          f"({100 * r['skip']['same_size_mtime_bytes'] / max(1, r['skip']['bytes']):.0f} %)",
                          r["skip"]["same_ctime_too"],
                          ", ".join(c["path"] for c in r["skip"]["content_changed_same_size_mtime"]) or "none",
                          r["skip"]["unstable_during_read"]] for r in s["hours"]]))
    return "\n".join(out)


def hash_report(speed: dict) -> str:
    rows = [[r["hash"], f"{r['input_bytes'] // 1024} KiB", r["mb_per_s"]] for r in speed["rows"]]
    rows.append(["sha256 (Python hashlib, OpenSSL)", "1024 KiB", speed["openssl_sha256_1mib_mb_per_s"]])
    return (f"CPU: SHA-NI {speed['cpu_sha_ni']}, AVX2 {speed['cpu_avx2']}; one thread\n\n"
            + md_table(["hash", "input", "MB/s"], rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pitr", type=Path, default=BENCH.parent / "target" / "release" / "pitr",
                    help="the pitr binary to use (default: target/release/pitr; not built here)")
    ap.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--plan", choices=sorted(PLANS), default="short", help="short hours of 4 workloads (default), "
                    "or real hours of one, time running 10 times faster (see PLANS)")
    ap.add_argument("--interval", type=int, help="seconds of load per 'hour' (default: the plan's)")
    ap.add_argument("--hours", type=int, help="hours per workload (default: the plan's)")
    ap.add_argument("--probe-target", type=Path, default=Path("/tmp/pitr-dedup-probe-target"),
                    help="cargo target dir for bench/dedup_probe")
    ap.add_argument("--max-minutes", type=float, default=40)
    ap.add_argument("--json", type=Path, help="write the figures (no file lists) here")
    ap.add_argument("--analyze", type=Path, help="print the tables of a --json file and exit")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    if a.analyze:
        data = json.loads(a.analyze.read_text())
        print(report(data["summary"]) + "\n\n" + hash_report(data["hash_speed"]))
        return 0
    if not a.pitr.exists():
        raise SystemExit(f"{a.pitr} does not exist: pass --pitr or run cargo build --release")
    for tool in ("pgbackrest", "cargo"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y pgbackrest; Rust from rustup.rs")
    st = Study(a)
    st.started = time.time()
    progress(f"temp dir {st.tmp}")
    try:
        st.build_probe()
        st.setup()
        hours = st.run_schedule()
        speed = st.hash_speed()
    finally:
        st.teardown()
    if a.json:
        # The raw figures first (file lists included), so that a fault in the analysis loses nothing.
        a.json.with_suffix(".raw.json").write_text(json.dumps(hours))
    summary = summarize(hours)
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "hash_speed": speed,
                                      "plan": a.plan, "interval_seconds": st.interval,
                                      "scale": a.scale,
                                      "minutes": round((time.time() - st.started) / 60, 1)}, indent=1))
    print(report(summary) + "\n\n" + hash_report(speed))
    progress(f"done in {(time.time() - st.started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
