#!/usr/bin/env python3
"""Peak memory and wall time of pitr's commands as deduplicated backups pile up (issue #18, point 6):
backup, expire (both phases), verify and list with 10, 100 and 1,000 backups in the repository.

Run as root from anywhere, under the bench lock:

    flock /work/bench.lock nice -n 19 python3 bench/dedup_scale.py --pitr /path/to/pitr \\
        --json bench/dedup_scale_results.json

One throwaway PostgreSQL cluster (pgbench -i -s 1) archives with `pitr archive-push` into a local
repository. Then --backups hourly `pitr backup --dedup --fast --no-expire`, each after a light
write (--rows rows of pgbench_accounts updated), every one timed and its peak RSS taken from GNU
time. The first few give the projected duration; when it exceeds --max-minutes, --backups is cut
to what fits. Backups slow down as the repository grows (each one reads every manifest to find
the previous backup), so the backups also stop when --max-minutes have passed, with a last
checkpoint there. A failed backup is recorded (`failures` in the JSON) and taken again.
At 10, 100 and --backups backups (the checkpoints), with no load:
  - `pitr list` and `pitr verify all` on the repository;
  - on a copy of the repository (so that it keeps growing), `pitr expire` with keep_hourly = half the
    backups, run twice with PITR_PACK_GRACE_SECONDS=0: the first run expires the backups and
    condemns the packs no backup references (phase 1), the second deletes them (phase 2);
and the repository's size (packs, backup manifests, WAL). The backup measured at a checkpoint is
the backup that brought the repository to that count.

It prints a Markdown table (command × checkpoint: peak RSS MiB and seconds) and writes the figures
as JSON (--json). Everything lives in one temp dir under /tmp, removed at the end (--keep keeps it).
Progress lines go to stderr. It reuses bench/run.py's Runner. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_study import md_table, mib  # noqa: E402
from run import CommandFailed, Run, Runner, sh, tree_bytes  # noqa: E402

BENCH = Path(__file__).resolve().parent
MiB = 1 << 20
PORT = 55443
# Backups timed before the projection (the first, which reads everything, is not counted).
PROBE_BACKUPS = 5
# Failed backups in a row before the run gives up.
MAX_FAILURES = 3
COMMANDS = ["backup", "list", "verify", "expire (phase 1)", "expire (phase 2)"]


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pg_bindir(given: Optional[Path]) -> Path:
    """PITR_PG_BINDIR, --pg-bin, `pg_config --bindir` or the newest /usr/lib/postgresql/*/bin."""
    for cand in (given, os.environ.get("PITR_PG_BINDIR")):
        if cand:
            return Path(cand)
    if shutil.which("pg_config"):
        return Path(sh(["pg_config", "--bindir"]))
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not found:
        raise SystemExit("no PostgreSQL binaries: set PITR_PG_BINDIR or pass --pg-bin")
    return found[-1]


class Scale:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        # Not "pitr-…": leftovers of the other benches (--keep) may be cleaned with such a glob. Two
        # runs of this one named pitr-dedup-… lost files mid-run (pg_control, pg_wal), most likely so.
        self.tmp = Path(tempfile.mkdtemp(prefix="dedup-scale-", dir="/tmp"))
        for d in ("logs", "home", "sock", "bin", "copies"):
            (self.tmp / d).mkdir()
        self.pg_bin = pg_bindir(a.pg_bin)
        self.user = "postgres" if os.geteuid() == 0 else None
        self.r = Runner(self.tmp, self.user, self.pg_bin)
        self.r.base_env["PGPORT"] = str(PORT)
        self.pgdata = self.tmp / "pg"
        self.pitr = self.tmp / "bin" / "pitr"
        self.conf = self.tmp / "pitr.toml"
        self.repo = self.tmp / "pitr-repo"
        self.backups: List[dict] = []
        self.failures: List[dict] = []
        self.points: List[dict] = []

    # -- commands ----------------------------------------------------------------------------------

    def pitr_cmd(self, repo: Path, conf: Path, *args: str) -> List[str]:
        return [str(self.pitr), "--config", str(conf), "--repo", str(repo)] + list(args)

    def timed(self, argv: Sequence[str], env: Optional[dict] = None, check: bool = True) -> dict:
        run: Run = self.r.run(argv, rss=True, env=env, check=check)
        out = {"seconds": round(run.seconds, 3), "rss_mib": round(run.rss_kb / 1024, 1), "rc": run.returncode}
        if "--json" in argv:
            out["summary"] = json_summary(run.output)
        return out

    def sql(self, query: str) -> str:
        return self.r.sql(query, port=PORT)

    # -- setup -------------------------------------------------------------------------------------

    def setup(self) -> None:
        shutil.copy2(self.a.pitr, self.pitr)
        self.conf.write_text("")
        os.chmod(self.tmp, 0o755)
        self.repo.mkdir(mode=0o700)
        if self.user:
            sh(["chown", "-R", f"{self.user}:{self.user}", self.tmp])
        progress(f"initdb + pgbench -i -s {self.a.scale} ({self.pg_bin})")
        self.r.run([self.pg_bin / "initdb", "-D", self.pgdata, "-A", "trust", "-E", "UTF8", "--no-sync"])
        push = " ".join(self.pitr_cmd(self.repo, self.conf, "archive-push", "%p"))
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(f"""
# pitr dedup scale bench
port = {PORT}
listen_addresses = ''
unix_socket_directories = '{self.tmp / 'sock'}'
wal_level = replica
archive_mode = on
archive_command = '{push}'
""")
        self.r.run([self.pg_bin / "pg_ctl", "-D", self.pgdata, "-l", self.tmp / "logs" / "postgresql.log", "-w",
                    "start"])
        self.r.run([self.pg_bin / "pgbench", "-i", "-q", "-s", str(self.a.scale)])
        self.sql("CHECKPOINT")

    def teardown(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.r.run([self.pg_bin / "pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "stop"], check=False)
        if self.a.keep:
            progress(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the backups ---------------------------------------------------------------------------------

    def light_write(self) -> None:
        """A few rows of pgbench_accounts change, so every backup stores a little."""
        accounts = 100000 * self.a.scale
        self.sql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN "
                 f"(SELECT 1 + (random() * {accounts - 1})::int FROM generate_series(1, {self.a.rows}))")

    def backup(self) -> dict:
        """One backup after a light write. A failed one is recorded (`failures`) and taken again,
        up to MAX_FAILURES in a row."""
        for attempt in range(MAX_FAILURES):
            started = time.perf_counter()
            self.light_write()
            m = self.timed(self.pitr_cmd(self.repo, self.conf, "backup", "--dedup", "--tier", "hourly", "--fast",
                                         "--jobs", "1", "--no-expire", "--json"), check=False)
            if m["rc"] == 0:
                break
            error = self.r.log.read_text(errors="replace")[-2000:]
            progress(f"backup {len(self.backups) + 1} failed (exit {m['rc']}), taken again: {error.strip()}")
            self.failures.append({"n": len(self.backups) + 1, "rc": m["rc"], "output": error})
        else:
            raise CommandFailed(f"{MAX_FAILURES} backups in a row failed: see failures")
        b = m.pop("summary").get("backup", {})
        m.update({k: b.get(k) for k in ("file_count", "skipped_files", "original_bytes", "stored_bytes")})
        m["n"] = len(self.backups) + 1
        m["with_write_seconds"] = round(time.perf_counter() - started, 3)
        self.backups.append(m)
        return m

    def project(self, n: int) -> int:
        """Times the first backups and returns how many fit in --max-minutes (at most n)."""
        for _ in range(PROBE_BACKUPS + 1):
            self.backup()
        per = statistics.median(b["with_write_seconds"] for b in self.backups[1:])
        minutes = per * n / 60
        progress(f"first backup {self.backups[0]['seconds']:.2f} s; then {per:.2f} s per backup with its write: "
                 f"{n} backups project to {minutes:.0f} min")
        fit = int(self.a.max_minutes * 60 / per)
        if fit < n:
            progress(f"--backups cut from {n} to {fit} to fit in --max-minutes {self.a.max_minutes}")
        self.projection = {"seconds_per_backup": per, "projected_minutes": round(minutes, 1), "asked": n,
                           "taken": min(n, fit)}
        return min(n, fit)

    # -- the checkpoints -----------------------------------------------------------------------------

    def repo_sizes(self) -> Dict[str, int]:
        return {"total": tree_bytes(self.repo), "packs": tree_bytes(self.repo / "packs"),
                "hourly": tree_bytes(self.repo / "hourly"), "wal": tree_bytes(self.repo / "wal")}

    def checkpoint(self) -> dict:
        n = len(self.backups)
        progress(f"checkpoint at {n} backups: list, verify, expire twice on a copy")
        out = {"n": n, "backup": self.backups[-1], "repo_bytes": self.repo_sizes()}
        out["list"] = self.timed(self.pitr_cmd(self.repo, self.conf, "list"))
        # Exit 1 is warnings only (e.g. BackupTooOld never fires here; SlotLost is off): accepted.
        out["verify"] = self.timed(self.pitr_cmd(self.repo, self.conf, "verify", "all", "--log-file", "none"),
                                   check=False)
        if out["verify"]["rc"] > 1:
            raise CommandFailed(f"pitr verify exited {out['verify']['rc']}:\n{self.r.log.read_text()[-4000:]}")
        copy = self.tmp / "copies" / str(n)
        sh(["cp", "-a", self.repo, copy])
        keep = max(1, n // 2)
        conf = self.tmp / "copies" / f"{n}.toml"
        conf.write_text(f"keep_hourly = {keep}\n")
        os.chmod(conf, 0o644)
        grace = {"PITR_PACK_GRACE_SECONDS": "0"}
        out["keep_hourly"] = keep
        out["expire (phase 1)"] = self.timed(self.pitr_cmd(copy, conf, "expire", "--json"), env=grace)
        out["expire (phase 2)"] = self.timed(self.pitr_cmd(copy, conf, "expire", "--json"), env=grace)
        out["copy_bytes_after_expire"] = tree_bytes(copy)
        shutil.rmtree(copy)
        progress(f"  {n}: " + ", ".join(f"{c} {out[c]['rss_mib']:.0f} MiB {out[c]['seconds']:.2f} s"
                                        for c in COMMANDS))
        return out

    def run(self, started: float) -> None:
        """The backups and the checkpoints. The backups stop early, with a last checkpoint, when
        --max-minutes have passed (backups slow down as the repository grows). After each
        checkpoint the figures so far are written to --json."""
        n = self.project(self.a.backups)
        stops = sorted({c for c in (10, 100) if c < n} | {n})
        for stop in stops:
            while len(self.backups) < stop:
                b = self.backup()
                if b["n"] % self.a.report_every == 0:
                    progress(f"backup {b['n']}/{n}: {b['seconds']:.2f} s, {b['rss_mib']:.0f} MiB")
                if time.time() - started > self.a.max_minutes * 60:
                    progress(f"--max-minutes {self.a.max_minutes} reached at {b['n']} backups: the last checkpoint")
                    self.projection["stopped_at"] = b["n"]
                    break
            self.points.append(self.checkpoint())
            if self.a.json:
                self.a.json.write_text(json.dumps(self.data(), indent=1))
            if "stopped_at" in self.projection:
                return

    def data(self) -> dict:
        return {"checkpoints": self.points, "backups": self.backups, "failures": self.failures,
                "projection": self.projection}


def json_summary(output: str) -> dict:
    """The scalars of a command's --json output, and the length of its lists (what expire deleted)."""
    try:
        d = json.loads(output[output.index("{"):])
    except ValueError:
        return {"unparsed": output[-2000:]}
    return {k: (len(v) if isinstance(v, list) else v) for k, v in d.items()}


def report(d: dict) -> str:
    pts = d["checkpoints"]
    header = ["command"] + [f"{p['n']} backups: MiB, s" for p in pts]
    rows = [[c] + [f"{p[c]['rss_mib']:.1f} MiB, {p[c]['seconds']:.2f} s" for p in pts] for c in COMMANDS]
    sizes = [["repository (packs / manifests / WAL)"] +
             [f"{mib(p['repo_bytes']['total'])} MiB ({mib(p['repo_bytes']['packs'])} / "
              f"{mib(p['repo_bytes']['hourly'])} / {mib(p['repo_bytes']['wal'])})" for p in pts],
             ["after the two expires (keep_hourly)"] +
             [f"{mib(p['copy_bytes_after_expire'])} MiB ({p['keep_hourly']})" for p in pts]]
    bs = d["backups"][1:]
    out = [md_table(header, rows + sizes), "",
           f"Backups after the first: median {statistics.median(b['seconds'] for b in bs):.2f} s, peak RSS "
           f"median {statistics.median(b['rss_mib'] for b in bs):.1f} MiB, largest {max(b['rss_mib'] for b in bs):.1f} "
           f"MiB (backup {max(bs, key=lambda b: b['rss_mib'])['n']}); the first (reads everything): "
           f"{d['backups'][0]['seconds']:.2f} s, {d['backups'][0]['rss_mib']:.1f} MiB."]
    step = max(1, len(d["backups"]) // 10)
    out.append("\nEvery backup's peak RSS, sampled:\n")
    sample = d["backups"][::step] + ([d["backups"][-1]] if (len(d["backups"]) - 1) % step else [])
    out.append(md_table(["backup", "seconds", "peak RSS MiB"],
                        [[b["n"], f"{b['seconds']:.2f}", f"{b['rss_mib']:.1f}"] for b in sample]))
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pitr", type=Path, default=BENCH.parent / "target" / "release" / "pitr",
                    help="the pitr binary to use (default: target/release/pitr; not built here)")
    ap.add_argument("--pg-bin", type=Path, help="PostgreSQL's binaries (default: PITR_PG_BINDIR, "
                    "pg_config --bindir, or the newest /usr/lib/postgresql/*/bin)")
    ap.add_argument("--backups", type=int, default=1000)
    ap.add_argument("--scale", type=int, default=1, help="pgbench scale (default 1)")
    ap.add_argument("--rows", type=int, default=100, help="rows updated before each backup (default 100)")
    ap.add_argument("--max-minutes", type=float, default=60,
                    help="cut --backups to what the first backups project to fit in this, and stop taking "
                    "backups (then the last checkpoint) when this much time has passed (default 60)")
    ap.add_argument("--report-every", type=int, default=50, help="a progress line every N backups")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--analyze", type=Path, help="print the tables of a --json file and exit")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args(argv)
    if a.analyze:
        print(report(json.loads(a.analyze.read_text())))
        return 0
    if not a.pitr.exists():
        raise SystemExit(f"{a.pitr} does not exist: pass --pitr or run cargo build --release")
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time (GNU time) is missing: apt-get install -y time")
    s = Scale(a)
    started = time.time()
    progress(f"temp dir {s.tmp}")
    try:
        s.setup()
        s.run(started)
    finally:
        s.teardown()
    data = s.data()
    data.update(scale=a.scale, rows=a.rows, pg_bin=str(s.pg_bin), minutes=round((time.time() - started) / 60, 1),
                pitr_version=sh([str(a.pitr), "--version"]))
    if a.json:
        a.json.write_text(json.dumps(data, indent=1))
    print(report(data))
    progress(f"done in {data['minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
