#!/usr/bin/env python3
"""`pitr wal events` against `pg_waldump` over the same WAL, as the operator meets it: pitr reads
the archived, compressed repository (decompresses, checks every record's CRC, decodes and folds
the records into transactions on --jobs threads); pg_waldump reads the plain segments of the same
WAL. One run generates the WAL, archives it through pitr and times both, alternately:

    cargo build --release
    python3 bench/events.py [--scale 60] [--bench-seconds 20] [--runs 5] [--jobs N] [--keep]

The WAL: `pgbench -i -s SCALE` (COPY's multi-inserts, index builds' full-page images, VACUUM)
then `pgbench -c 2 -T BENCH_SECONDS` (small heap records of short transactions), on one cluster
of the newest /usr/lib/postgresql/*/bin, archiving with `pitr archive-push` (zstd, the default)
and, in the same archive_command, a plain copy for pg_waldump. Timed over the same LSN range:

  - `pitr wal events --from-lsn A --to-lsn B --kind drop` (the search for an oops) and
    `pitr wal events --from-lsn A --to-lsn B --json` (every event printed), output to /dev/null;
  - `pg_waldump -p PLAIN -s A -e B --stats` and `pg_waldump -p PLAIN -s A -e B` to /dev/null.

After one untimed warm-up run of each command (the files in the page cache), prints a Markdown
table: the median, min and max wall time of --runs runs, and each pitr command
against each pg_waldump command as the median of per-pair ratios (adjacent runs; the machine is
shared). As root, the cluster and the tools run as the postgres OS user. Standard library only.
Everything lives in a new /tmp/pitr-events-* directory, removed at the end unless --keep.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_waldump"), key=lambda p: int(p.parent.parent.name))
    if not found:
        sys.exit("no /usr/lib/postgresql/*/bin/pg_waldump: apt-get install postgresql")
    return found[-1].parent


def pitr_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "release" / "pitr"
    if not path.exists():
        sys.exit(f"{path} is missing: cargo build --release")
    return path


class Bench:
    def __init__(self, args):
        self.args = args
        self.user = "postgres" if os.geteuid() == 0 else None
        self.tmp = Path(tempfile.mkdtemp(prefix="pitr-events-", dir="/tmp"))
        self.bin = pg_bin()
        self.pitr = self.tmp / "pitr"
        shutil.copy(pitr_binary(), self.pitr)
        self.data = self.tmp / "data"
        self.repo = self.tmp / "repo"
        self.plain = self.tmp / "plain"
        self.sock = self.tmp / "sock"
        for d in (self.repo, self.plain, self.sock):
            d.mkdir()
        if self.user:
            shutil.chown(self.tmp, self.user)
            for d in (self.repo, self.plain, self.sock):
                shutil.chown(d, self.user)
        os.chmod(self.tmp, 0o755)
        os.chmod(self.pitr, 0o755)
        (self.tmp / "pitr.toml").write_text("")

    def argv(self, argv):
        return (["runuser", "-u", self.user, "--"] if self.user else []) + [str(a) for a in argv]

    def run(self, argv, stdout=None):
        return subprocess.run(self.argv(argv), check=True, stdout=stdout, text=stdout is subprocess.PIPE,
                              cwd=self.tmp)

    def psql(self, sql: str) -> str:
        out = subprocess.run(self.argv([self.bin / "psql", "-h", self.sock, "-p", "5433", "-X", "-A", "-t", "-q",
                                        "-d", "postgres", "-c", sql]), check=True, stdout=subprocess.PIPE,
                             text=True, cwd=self.tmp)
        return out.stdout.strip()

    def pgbench(self, *args):
        self.run([self.bin / "pgbench", "-h", self.sock, "-p", "5433", *args, "postgres"],
                 stdout=subprocess.DEVNULL)

    def start(self):
        self.run([self.bin / "initdb", "-D", self.data, "-A", "trust"], stdout=subprocess.DEVNULL)
        command = (f"{self.pitr} --config {self.tmp / 'pitr.toml'} --repo {self.repo} archive-push %p "
                   f"&& cp %p {self.plain}/%f")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"""
listen_addresses = ''
unix_socket_directories = '{self.sock}'
port = 5433
archive_mode = on
archive_command = '{command}'
max_wal_size = 4GB
checkpoint_timeout = 30min
""")
        self.run([self.bin / "pg_ctl", "-D", self.data, "-l", self.tmp / "log", "-w", "start"],
                 stdout=subprocess.DEVNULL)

    def stop(self):
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self.argv([self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "stop"]),
                           stdout=subprocess.DEVNULL)


def timed(b: Bench, argv):
    """Wall seconds and CPU seconds (user + system, of the command and what it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(b.argv(argv), check=True, stdout=subprocess.DEVNULL, cwd=b.tmp)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=60)
    parser.add_argument("--bench-seconds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    b = Bench(args)
    try:
        b.start()
        start = b.psql("SELECT pg_current_wal_insert_lsn()")
        began = time.monotonic()
        b.pgbench("-i", "-q", "-s", str(args.scale))
        b.pgbench("-n", "-c", "2", "-T", str(args.bench_seconds))
        end = b.psql("SELECT pg_current_wal_insert_lsn()")
        last = b.psql(f"SELECT pg_walfile_name(pg_switch_wal())")
        while b.psql("SELECT last_archived_wal FROM pg_stat_archiver") != last:
            time.sleep(0.5)
        generated = time.monotonic() - began
        wal_bytes = int(b.psql(f"SELECT pg_wal_lsn_diff('{end}', '{start}')"))
        stored = sum(f.stat().st_size for f in b.repo.rglob("*") if f.is_file())
        segments = len(list(b.plain.iterdir()))
        print(f"{wal_bytes / MiB:.0f} MiB of WAL from {start} to {end} in {generated:.0f} s; "
              f"{segments} segments, {stored / MiB:.0f} MiB stored by pitr", flush=True)

        range_args = ["--from-lsn", start, "--to-lsn", end, "--jobs", str(args.jobs)]
        pitr = [b.pitr, "--config", b.tmp / "pitr.toml", "--repo", b.repo, "wal", "events", *range_args]
        waldump = [b.bin / "pg_waldump", "-p", b.plain, "-s", start, "-e", end]
        commands = {
            "pitr wal events --kind drop": pitr + ["--kind", "drop"],
            "pitr wal events --json": pitr + ["--json"],
            "pg_waldump --stats": waldump + ["--stats"],
            "pg_waldump": waldump,
        }
        out = subprocess.run(b.argv(pitr + ["--kind", "checkpoint"]), check=True, stdout=subprocess.PIPE,
                             text=True, cwd=b.tmp).stdout
        print(next(line for line in out.splitlines() if "records read" in line), flush=True)
        for argv in commands.values():  # warm-up, untimed: every file in the page cache
            timed(b, argv)
        times = {name: [] for name in commands}
        cpu = {name: [] for name in commands}
        for r in range(args.runs):
            names = list(commands)
            names = names[r % len(names):] + names[:r % len(names)]
            for name in names:
                wall, used = timed(b, commands[name])
                times[name].append(wall)
                cpu[name].append(used)
            print(f"run {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in commands), flush=True)

        print()
        print(f"| command ({wal_bytes / MiB:.0f} MiB of WAL, {segments} segments, --jobs {args.jobs}) "
              f"| wall s: median | min | max | MiB/s | CPU s (user + sys): median |")
        print("|---|---|---|---|---|---|")
        for name, values in times.items():
            m = statistics.median(values)
            print(f"| `{name}` | {m:.2f} | {min(values):.2f} | {max(values):.2f} | {wal_bytes / MiB / m:.0f} "
                  f"| {statistics.median(cpu[name]):.2f} |")
        print()
        print("| pitr / pg_waldump (per-pair ratio of wall time) | median | min | max | CPU time ratio: median |")
        print("|---|---|---|---|---|")
        for mine in ("pitr wal events --kind drop", "pitr wal events --json"):
            for theirs in ("pg_waldump --stats", "pg_waldump"):
                ratios = [a / t for a, t in zip(times[mine], times[theirs])]
                cpu_ratios = [a / t for a, t in zip(cpu[mine], cpu[theirs]) if t > 0]
                print(f"| `{mine}` / `{theirs}` | {statistics.median(ratios):.2f} | {min(ratios):.2f} "
                      f"| {max(ratios):.2f} | {statistics.median(cpu_ratios):.2f} |")
    finally:
        b.stop()
        if args.keep:
            print(f"kept {b.tmp}")
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
