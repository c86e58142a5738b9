#!/usr/bin/env python3
"""Issue #19, point 5: what encryption at rest costs. archive-push, archive-get, backup and restore
into and from an encrypted repository against the same into and from a plain one, in one run, the two
taking turns; ratios encrypted / plain. Findings: bench/encryption_figures.md (rendered into
docs/benchmarks.md by `bench/run.py --render`), written by `--render` from the results files.

Run as root, on a quiet machine (about 6 minutes on 2 cores at the defaults):

    python3 bench/encryption.py --pitr target/release/pitr --runs 15 --json bench/encryption_results_s20.json
    python3 bench/encryption.py --pitr target/release/pitr --scale 100 --runs 11 \\
        --json bench/encryption_results_s100.json
    python3 bench/encryption.py --pitr target/release/pitr --scale 100 --runs 11 \\
        --json bench/encryption_results_s100_repeat.json
    python3 bench/encryption.py --render bench/encryption_results_s20.json bench/encryption_results_s100.json \\
        bench/encryption_results_s100_repeat.json

One throwaway PostgreSQL cluster (pgbench -i -s --scale) archives every segment into both
repositories (its archive_command pushes into the plain one, then into the encrypted one, whose
recipients come from PITR_RECIPIENTS_FILE). Then:

- archive-push: the corpus of --segments real 16 MiB segments (written by pgbench, copied from
  pg_wal) is pushed one process per segment, as PostgreSQL calls the archive_command, into a fresh
  plain and a fresh encrypted repository per run, alternating segment by segment;
- archive-get: the same corpus read back one process per segment, as the restore_command (without
  prefetch, which would go on working behind each timed call), each checked byte for byte once;
- backup: `pitr backup --fast --jobs 1` into each repository, alternating, --runs times; then the
  same with `--jobs` at its default (the cores);
- restore: the newest backup of each, `pitr restore --jobs 1`, alternating, --runs times; then at the
  default `--jobs`.

The figure of each run is its time; the ratio is encrypted / plain of the same run, and the table
gives the median and the range over runs. Target (issue #19): at most 1.10.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PORT_MAIN, CommandFailed, Runner, progress, sh, tree_bytes  # noqa: E402

BENCH = Path(__file__).resolve().parent
FIGURES = BENCH / "encryption_figures.md"
KINDS = ("plain", "encrypted")


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="pitr-enc-", dir="/tmp"))
        for d in ("logs", "home", "sock", "bin", "keys", "corpus", "work"):
            (self.tmp / d).mkdir()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.r = Runner(self.tmp, self.user, a.pg_bin)
        self.pgdata = self.tmp / "pg"
        self.pitr = self.tmp / "bin" / "pitr"
        self.conf = self.tmp / "pitr.toml"
        self.identity = self.tmp / "keys" / "identity.txt"
        self.recipients = self.tmp / "keys" / "recipients.txt"
        self.repos = {k: self.tmp / f"repo-{k}" for k in KINDS}

    def env(self, kind: str) -> Dict[str, str]:
        if kind == "plain":
            return {}
        return {"PITR_RECIPIENTS_FILE": str(self.recipients), "PITR_IDENTITY_FILE": str(self.identity)}

    def pitr_cmd(self, repo: Path, *args: str) -> List[str]:
        compress = ["--compress", "zstd", "--compress-level", "3"] if {"backup", "archive-push"} & set(args) else []
        return [str(self.pitr), "--config", str(self.conf), "--repo", str(repo)] + compress + list(args)

    def run(self, kind: str, repo: Path, *args: str, rss: bool = False):
        return self.r.run(self.pitr_cmd(repo, *args), env=self.env(kind), rss=rss)

    def setup(self) -> None:
        shutil.copy2(self.a.pitr, self.pitr)
        # No prefetch: each archive-get is timed alone (a prefetcher would run on behind it).
        self.conf.write_text("prefetch = 0\n")
        os.chmod(self.tmp, 0o755)
        for repo in self.repos.values():
            repo.mkdir(mode=0o700)
        if self.user:
            sh(["chown", "-R", f"{self.user}:{self.user}", self.tmp])
        recipient = self.r.run([self.pitr, "keygen", self.identity]).output.strip()
        self.recipients.write_text(recipient + "\n")
        progress(f"initdb + pgbench -i -s {self.a.scale}")
        self.r.run([self.a.pg_bin / "initdb", "-D", self.pgdata, "-A", "trust", "-E", "UTF8", "--no-sync"])
        push = (" ".join(self.pitr_cmd(self.repos["plain"], "archive-push", "%p")) + " && PITR_RECIPIENTS_FILE="
                + str(self.recipients) + " " + " ".join(self.pitr_cmd(self.repos["encrypted"], "archive-push", "%p")))
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(f"""
port = {PORT_MAIN}
listen_addresses = ''
unix_socket_directories = '{self.tmp / 'sock'}'
wal_level = replica
archive_mode = on
archive_command = '{push}'
max_wal_size = '4GB'
""")
        self.r.run([self.a.pg_bin / "pg_ctl", "-D", self.pgdata, "-l", self.tmp / "logs" / "postgresql.log", "-w",
                    "start"])
        self.r.run([self.a.pg_bin / "pgbench", "-i", "-q", "-s", str(self.a.scale)])
        self.corpus = self.write_corpus()

    def write_corpus(self) -> List[Path]:
        """--segments segments of pgbench TPC-B WAL, copied from pg_wal as they are completed."""
        progress(f"writing {self.a.segments} segments of TPC-B WAL for the corpus")
        corpus: List[Path] = []
        while len(corpus) < self.a.segments:
            self.r.run([self.a.pg_bin / "pgbench", "-n", "-c", "2", "-j", "2", "-t", "3000"])
            name = self.r.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
            self.r.sql("SELECT pg_switch_wal()")
            dest = self.tmp / "corpus" / name
            shutil.copy2(self.pgdata / "pg_wal" / name, dest)
            corpus.append(dest)
        if self.user:
            sh(["chown", "-R", f"{self.user}:{self.user}", self.tmp / "corpus"])
        return corpus

    def alternate(self, runs: int, one) -> Dict[str, List[float]]:
        times: Dict[str, List[float]] = {k: [] for k in KINDS}
        for r in range(runs):
            for kind in (KINDS if r % 2 == 0 else KINDS[::-1]):
                os.sync()
                times[kind].append(one(kind, r))
        return times

    def push_get(self) -> Dict[str, Dict[str, List[float]]]:
        push: Dict[str, List[float]] = {k: [] for k in KINDS}
        get: Dict[str, List[float]] = {k: [] for k in KINDS}
        for r in range(self.a.runs):
            progress(f"archive-push and archive-get, run {r + 1}/{self.a.runs}")
            base = self.tmp / "work" / f"push-{r}"
            base.mkdir(mode=0o755)
            repos = {k: base / k for k in KINDS}
            for repo in repos.values():
                repo.mkdir(mode=0o700)
            if self.user:
                sh(["chown", "-R", f"{self.user}:{self.user}", base])
            os.sync()
            pushed = {k: 0.0 for k in KINDS}
            for i, seg in enumerate(self.corpus):
                for kind in (KINDS if (r + i) % 2 == 0 else KINDS[::-1]):
                    pushed[kind] += self.run(kind, repos[kind], "archive-push", str(seg)).seconds
            os.sync()
            got = {k: 0.0 for k in KINDS}
            dest = self.pgdata / "RECOVERYXLOG"
            for i, seg in enumerate(self.corpus):
                for kind in (KINDS if (r + i) % 2 == 0 else KINDS[::-1]):
                    got[kind] += self.r.run(self.pitr_cmd(repos[kind], "archive-get", seg.name, str(dest)),
                                            env=self.env(kind), cwd=self.pgdata).seconds
                    if r == 0 and not filecmp.cmp(dest, seg, shallow=False):
                        raise CommandFailed(f"{kind}: archive-get of {seg.name} returned other bytes")
                    dest.unlink()
            for kind in KINDS:
                push[kind].append(pushed[kind] / len(self.corpus) * 1000)
                get[kind].append(got[kind] / len(self.corpus) * 1000)
            if r == 0:
                self.stored = {k: tree_bytes(repos[k] / "wal") for k in KINDS}
            shutil.rmtree(base)
        return {"archive-push ms/segment": push, "archive-get ms/segment": get}

    def archive_into(self, kind: str) -> None:
        """Points the archive_command at `kind`'s repository only: a backup checks that its WAL goes
        where it goes."""
        env = "" if kind == "plain" else f"PITR_RECIPIENTS_FILE={self.recipients} "
        command = env + " ".join(self.pitr_cmd(self.repos[kind], "archive-push", "%p"))
        self.r.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
        self.r.sql("SELECT pg_reload_conf()")
        self.r.sql("SELECT pg_switch_wal()")

    def backup(self, kind: str, jobs: int) -> float:
        self.archive_into(kind)
        seconds = self.run(kind, self.repos[kind], "backup", "--fast", "--jobs", str(jobs), "--no-expire").seconds
        tier = self.repos[kind] / "hourly"
        newest = max(tier.iterdir(), key=lambda d: d.name)
        self.backup_objects = sum(len(files) for _, _, files in os.walk(newest))
        return seconds

    def restore(self, kind: str, jobs: int) -> float:
        target = self.tmp / "work" / "restored"
        seconds = self.run(kind, self.repos[kind], "restore", "--pgdata", str(target), "--jobs", str(jobs)).seconds
        if not (target / "global" / "pg_control").exists():
            raise CommandFailed(f"{kind} restore left no global/pg_control")
        shutil.rmtree(target)
        return seconds

    def teardown(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.r.run([self.a.pg_bin / "pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "stop"], check=False)
        if self.a.keep:
            progress(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def ratios(times: Dict[str, List[float]]) -> List[float]:
    return [e / p for p, e in zip(times["plain"], times["encrypted"])]


def render_run(results: dict) -> List[str]:
    rows = []
    for what, times in results["figures"].items():
        rs = ratios(times)
        rows.append(f"| {what} | {statistics.median(times['plain']):.3g} | {statistics.median(times['encrypted']):.3g} "
                    f"| **{statistics.median(rs):.2f}** ({min(rs):.2f}–{max(rs):.2f}) | "
                    f"{'met' if statistics.median(rs) <= 1.10 else 'missed'} |")
    stored = results["stored_wal_bytes"]
    return [
        f"pgbench scale {results['scale']} ({results['when']}, pitr {results['pitr']}, {results['runs']} runs, "
        f"{results['segments']} segments, {results.get('backup_objects', '?')} objects per backup):",
        "",
        "| operation | plain | encrypted | ratio | ≤ 1.10 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Stored WAL of the corpus: plain {stored['plain'] / (1 << 20):.1f} MiB, encrypted "
        f"{stored['encrypted'] / (1 << 20):.1f} MiB.",
        "",
    ]


def render_pooled(runs: List[dict]) -> List[str]:
    """One table of the pair ratios of several runs at one scale taken together: a run's median moves
    by several hundredths from run to run on this disk."""
    pooled: Dict[str, List[float]] = {}
    for results in runs:
        for what, times in results["figures"].items():
            pooled.setdefault(what, []).extend(ratios(times))
    rows = []
    for what, rs in pooled.items():
        q = statistics.quantiles(rs, n=4)
        rows.append(f"| {what} | {len(rs)} | **{statistics.median(rs):.2f}** | {q[0]:.2f}–{q[2]:.2f} | "
                    f"{'met' if statistics.median(rs) <= 1.10 else 'missed'} |")
    return [
        f"The {len(runs)} runs at scale {runs[0]['scale']} taken together (every pair of runs):",
        "",
        "| operation | pairs | ratio, median | middle half | ≤ 1.10 |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def render(runs: List[dict]) -> str:
    lines = [
        "## Encryption at rest: what it costs (issue #19)",
        "",
        "`bench/encryption.py`: a pgbench cluster archiving into a plain and an encrypted repository; real TPC-B "
        "segments pushed and fetched one process per segment as PostgreSQL calls them, backups and restores with "
        "`--jobs 1` and at the default `--jobs` (the cores), the two kinds taking turns. Ratio = encrypted / plain "
        "of the same pair of runs, median (range). Target: at most 1.10.",
        "",
    ]
    for results in runs:
        lines += render_run(results)
    for scale in sorted({r["scale"] for r in runs}):
        same = [r for r in runs if r["scale"] == scale]
        if len(same) > 1:
            lines += render_pooled(same)
    lines += [
        "What encryption costs: per object, a new file key wrapped for each recipient (an X25519 agreement); per "
        "byte, ChaCha20-Poly1305. pitr writes the age format with aws-lc's primitives (`crypt/x25519.rs`, "
        "`crypt/stream.rs`; the age crate still parses and checks every header pitr reads): in a unit loop here a "
        "small object seals in 40 µs and opens in 33 µs, against 93 and 124 µs with the age crate's own keys and "
        "stream, which a backup or a restore pays once per file (800–900 files in these clusters). archive-get "
        "decrypts an object from 256 KiB on on a thread of its own, so a segment's decryption overlaps its "
        "decompression. Before these (pitr c47f421, the age crate's keys and stream, objects from 1 MiB on decrypted "
        "ahead), backup and restore at `--jobs 1` took 1.10–1.14 and archive-get at scale 100 1.14. The ranges are wide: every operation ends in an fsync on this virtual machine's disk, "
        "whose speed drifts from minute to minute; each ratio is taken within one pair of runs.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pitr", type=Path, help="the pitr binary to measure (required unless --render)")
    ap.add_argument("--pg-bin", type=Path, default=Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]))
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--render", type=Path, nargs="+", metavar="RESULTS",
                    help=f"only write {FIGURES.name} from these results files (--json of earlier runs)")
    a = ap.parse_args()
    if a.render:
        FIGURES.write_text(render([json.loads(p.read_text()) for p in a.render]) + "\n")
        return 0
    if a.pitr is None:
        ap.error("--pitr is required to measure")
    b = Bench(a)
    try:
        b.setup()
        figures = b.push_get()
        cores = os.cpu_count() or 1
        for jobs in sorted({1, cores}):
            label = f"--jobs {jobs}" + (" (the default: the cores)" if jobs == cores else "")
            progress(f"backups, {label}")
            figures[f"backup s, {label}"] = b.alternate(a.runs, lambda kind, _r: b.backup(kind, jobs))
            progress(f"restores, {label}")
            figures[f"restore s, {label}"] = b.alternate(a.runs, lambda kind, _r: b.restore(kind, jobs))
    finally:
        b.teardown()
    commit = sh(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"]).strip()
    results = {"when": sh(["date", "-u", "+%Y-%m-%d %H:%M UTC"]).strip(), "pitr": commit,
               "scale": a.scale, "segments": a.segments, "runs": a.runs, "figures": figures,
               "stored_wal_bytes": b.stored, "backup_objects": b.backup_objects}
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render([results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
