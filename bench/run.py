#!/usr/bin/env python3
"""pitr benchmarks side by side with pgBackRest, cp+fsync and pg_basebackup (issue #7).

One command, run as root (or as a non-root user that can run PostgreSQL) from anywhere:

    python3 bench/run.py            # full run (11-17 min on 2 cores), regenerates docs/benchmarks.md
    python3 bench/run.py --quick    # development run: fewer runs, smaller scale, writes no doc

Everything happens under one fresh temp directory (clusters, repositories, corpus, logs), which
is removed at the end even on failure (keep it with --keep). Nothing outside it is touched,
except `cargo build --release` in this repository and docs/benchmarks.md (and the private socket
directory /tmp/pitr-recover-* that `pitr recover` itself creates and removes).

The harness is a list of sections (SECTIONS below). Each section measures one thing and records
Series (one tool, one figure per run) and Ratios (pitr/peer per pair of adjacent runs, with the
issue's target if it has one). To add a benchmark, write a function
`def section_x(b: Bench) -> None`, record its results with `b.res.series(...)` / `b.res.ratio(...)`,
and list it in SECTIONS.

Python 3.9+, standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import filecmp
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
FINDINGS = Path(__file__).resolve().parent / "findings.md"
SCALE = Path(__file__).resolve().parent / "scale.md"
S3_NOTES = Path(__file__).resolve().parent / "s3.md"
LOAD_NOTES = Path(__file__).resolve().parent / "load.md"
EVENTS_NOTES = Path(__file__).resolve().parent / "events.md"
DEDUP_NOTES = Path(__file__).resolve().parent / "dedup_figures.md"
ENCRYPTION_NOTES = Path(__file__).resolve().parent / "encryption_figures.md"
DEFAULT_DOC = REPO_ROOT / "docs" / "benchmarks.md"
# cargo's target directory: CARGO_TARGET_DIR when set (cargo build honours it too), else target/.
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
MiB = 1 << 20

# Ports of the benchmark clusters. They listen on a private socket directory only
# (listen_addresses = ''), so they cannot collide with anything outside the temp dir.
PORT_MAIN = 55432
PORT_RECOVER = 55433


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass
class Series:
    """One figure of one tool, one value per run."""

    key: str
    group: str
    measure: str
    tool: str
    unit: str
    values: List[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Ratio:
    """pitr/peer, one value per pair of adjacent runs (or one value for deterministic sizes)."""

    group: str
    label: str
    values: List[float] = field(default_factory=list)
    target: Optional[float] = None  # the issue's target: the median must be <= target
    note: str = ""
    digits: int = 2
    tolerance: Optional[float] = None  # above the target by at most this fraction: "practically equal"


@dataclass
class Pending:
    """A row that cannot be measured yet."""

    group: str
    measure: str
    reason: str


class Results:
    def __init__(self) -> None:
        self.all_series: Dict[str, Series] = {}
        self.ratios: List[Ratio] = []
        self.pending: List[Pending] = []
        self.targets: List[Tuple[str, str, str, Optional[bool]]] = []  # (target, measured, goal, met)
        self.notes: List[str] = []

    def series(self, key: str, group: str, measure: str, tool: str, unit: str, note: str = "") -> Series:
        if key not in self.all_series:
            self.all_series[key] = Series(key, group, measure, tool, unit, note=note)
        return self.all_series[key]

    def ratio(self, group: str, label: str, values: Sequence[float], target: Optional[float] = None,
              note: str = "", digits: int = 2, tolerance: Optional[float] = None) -> Ratio:
        r = Ratio(group, label, list(values), target, note, digits, tolerance)
        self.ratios.append(r)
        return r

    def to_json(self) -> dict:
        return {
            "series": [s.__dict__ for s in self.all_series.values()],
            "ratios": [r.__dict__ for r in self.ratios],
            "pending": [p.__dict__ for p in self.pending],
            "targets": [list(t) for t in self.targets],
            "notes": self.notes,
        }

    @staticmethod
    def from_json(d: dict) -> "Results":
        res = Results()
        for s in d["series"]:
            res.all_series[s["key"]] = Series(**s)
        res.ratios = [Ratio(**r) for r in d["ratios"]]
        res.pending = [Pending(**p) for p in d["pending"]]
        res.targets = [tuple(t) for t in d.get("targets", [])]
        res.notes = d.get("notes", [])
        return res


@dataclass
class Record:
    """One run's results with what the report says about the run: the doc is rendered from this,
    and it is stored in the doc, so the doc can be re-rendered (--render) without re-running."""

    when: str
    total_seconds: float
    quick: bool
    runs: int
    scale: int
    segments: List[str]
    data_bytes: int
    machine: Dict[str, str]
    versions: Dict[str, str]
    res: Results

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "res"}
        d.update(self.res.to_json())
        return d

    @staticmethod
    def from_json(d: dict) -> "Record":
        meta = {k: d[k] for k in ("when", "total_seconds", "quick", "runs", "scale", "segments", "data_bytes",
                                  "machine", "versions")}
        return Record(res=Results.from_json(d), **meta)


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(v: float, unit: str = "") -> str:
    if unit == "×":
        return f"{v:.2f}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def triple(values: Sequence[float], unit: str = "") -> Tuple[str, str, str]:
    return fmt(med(values), unit), fmt(min(values), unit), fmt(max(values), unit)


# ----------------------------------------------------------------------------------------------
# Running commands
# ----------------------------------------------------------------------------------------------


class CommandFailed(RuntimeError):
    pass


@dataclass
class Run:
    seconds: float
    rss_kb: Optional[int]
    output: str
    returncode: int


class Runner:
    """Runs commands as the PostgreSQL OS user (when we are root) with a clean environment,
    output to a log file in the temp dir, timed with a monotonic clock around fork/exec/wait."""

    def __init__(self, tmp: Path, user: Optional[str], pg_bin: Path):
        self.tmp = tmp
        self.user = user
        self.pg_bin = pg_bin
        self.log = tmp / "logs" / "last-command.log"
        self.rss_file = tmp / "logs" / "last-time-v.txt"
        self.history = tmp / "logs" / "commands.log"
        if user:
            pw = pwd.getpwnam(user)
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.base_env = {
            "PATH": f"{pg_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp / "home"),
            "USER": user or os.environ.get("USER", ""),
            "LOGNAME": user or os.environ.get("LOGNAME", ""),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "PGHOST": str(tmp / "sock"),
            "PGPORT": str(PORT_MAIN),
            "PGDATABASE": "postgres",
            "PGUSER": user or os.environ.get("USER", "postgres"),
        }
        if "PITR_LOG" in os.environ:  # development runs: what pitr's processes log (the watcher's log)
            self.base_env["PITR_LOG"] = os.environ["PITR_LOG"]

    def run(self, argv: Sequence[str], *, cwd: Optional[Path] = None, env: Optional[dict] = None,
            rss: bool = False, check: bool = True, as_pg: bool = True, timeout: float = 3600) -> Run:
        argv = [str(a) for a in argv]
        if rss:
            argv = ["/usr/bin/time", "-v", "-o", str(self.rss_file)] + argv
        full_env = dict(self.base_env)
        if env:
            full_env.update(env)
        kwargs = {}
        if as_pg and self.user and os.geteuid() == 0:
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
        with open(self.log, "wb") as out:
            start = time.perf_counter()
            p = subprocess.Popen(argv, cwd=str(cwd or self.tmp), env=full_env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, **kwargs)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise CommandFailed(f"timed out after {timeout} s: {' '.join(argv)}")
            seconds = time.perf_counter() - start
        output = self.log.read_text(errors="replace")
        with open(self.history, "a") as h:
            h.write(f"[{seconds:8.3f}s rc={rc}] {' '.join(argv)}\n")
        if check and rc != 0:
            raise CommandFailed(f"exit {rc}: {' '.join(argv)}\n{output[-4000:]}")
        rss_kb = None
        if rss:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", self.rss_file.read_text())
            rss_kb = int(m.group(1)) if m else None
        return Run(seconds, rss_kb, output, rc)

    def sql(self, query: str, port: int = PORT_MAIN) -> str:
        return self.run([self.pg_bin / "psql", "-X", "-At", "-p", str(port), "-c", query]).output.strip()


def sh(argv: Sequence[str], check: bool = True) -> str:
    """A command of our own (as the invoking user), for facts about the machine."""
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        raise CommandFailed(f"exit {p.returncode}: {' '.join(map(str, argv))}\n{p.stdout}")
    return p.stdout.strip()


def tree_bytes(path: Path, exclude_top: Sequence[str] = ()) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        if Path(root) == path:
            dirs[:] = [d for d in dirs if d not in exclude_top]
        for f in files:
            try:
                total += (Path(root) / f).lstat().st_size
            except FileNotFoundError:
                pass
    return total


def rotate(items: Sequence, k: int) -> list:
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# The bench: temp dir, cluster, repositories, tools
# ----------------------------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool
    runs: int
    scale: int
    segments: int
    pg_bin: Path
    keep: bool
    build: bool
    doc: Optional[Path]
    json_out: Optional[Path]
    sections: Optional[List[str]]
    profile: bool
    quiet_wait: float
    load_tools: List[str]


class Bench:
    def __init__(self, opts: Options):
        self.opts = opts
        self.res = Results()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.tmp = Path(tempfile.mkdtemp(prefix="pitr-bench-", dir="/tmp"))
        for d in ("logs", "home", "sock", "sock-recover", "bin", "corpus", "work"):
            (self.tmp / d).mkdir()
        self.run_ = Runner(self.tmp, self.user, opts.pg_bin)
        self.pgdata = self.tmp / "pg"
        self.pitr = self.tmp / "bin" / "pitr"
        self.pitr_config = self.tmp / "pitr.toml"  # empty: never read /etc/pitr/pitr.toml
        self.pitr_repo = self.tmp / "pitr-repo"  # the cluster's archive and pitr's backups
        self.pgbr_dir = self.tmp / "pgbackrest"
        self.pgbr_conf = self.pgbr_dir / "pgbackrest.conf"
        self.pgbr_repo = self.pgbr_dir / "repo"  # the cluster's pgBackRest archive and backups
        self.pgbr_template = self.pgbr_dir / "template"  # an empty stanza, copied per push run
        self.corpus: List[Path] = []
        self.data_bytes = 0
        self.machine: Dict[str, str] = {}
        self.versions: Dict[str, str] = {}
        self.push_repos: Dict[str, Path] = {}  # tool -> a repo holding the whole corpus
        self.started = time.time()
        self.loads: List[float] = []
        self.busy: Dict[str, float] = {}  # section -> CPU share other processes used just before it
        self.background: List[subprocess.Popen] = []  # servers of our own (s3s-fs, stunnel): stopped at the end

    # -- helpers ---------------------------------------------------------------------------------

    def pg(self, name: str) -> Path:
        return self.opts.pg_bin / name

    def run(self, *a, **kw) -> Run:
        return self.run_.run(*a, **kw)

    def mkdir_pg(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=False, mode=mode)
        os.chmod(path, mode)
        if self.user:
            shutil.chown(path, self.user, self.user)
        return path

    def chown_tree(self, path: Path) -> None:
        if self.user:
            sh(["chown", "-R", f"{self.user}:{self.user}", path])

    def pgbr(self, *args: str, repo: Optional[Path] = None) -> List[str]:
        argv = ["pgbackrest", f"--config={self.pgbr_conf}",
                f"--config-include-path={self.pgbr_dir / 'conf.d'}", "--stanza=bench"]
        if repo is not None:
            argv.append(f"--repo1-path={repo}")
        return argv + list(args)

    def pitr_cmd(self, repo: Path, *args: str) -> List[str]:
        # pitr refuses --compress for the subcommands that write nothing new into the repository.
        writes = {"archive-push", "watch", "daemon", "backup", "adopt"} & set(args)
        compress = ["--compress", "zstd", "--compress-level", "3"] if writes else []
        return [str(self.pitr), "--config", str(self.pitr_config), "--repo", str(repo)] + compress + list(args)

    def settle(self) -> None:
        """Untimed, between timed operations: flush dirty pages so one run's writeback does not
        land in the next run's time."""
        os.sync()

    # -- setup -----------------------------------------------------------------------------------

    def build(self) -> None:
        if self.opts.build:
            progress("cargo build --release")
            p = subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if p.returncode != 0:
                raise CommandFailed("cargo build --release failed:\n" + p.stdout[-4000:])
        src = TARGET_DIR / "release" / "pitr"
        if not src.exists():
            raise CommandFailed(f"{src} does not exist: run cargo build --release")
        shutil.copy2(src, self.pitr)
        self.pitr_config.write_text("")
        os.chmod(self.tmp, 0o755)
        self.chown_tree(self.tmp)

    def describe_machine(self) -> None:
        cpu = "unknown"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        fs = sh(["df", "--output=fstype,source", str(self.tmp)]).splitlines()[-1].split()
        self.machine = {
            "nproc": sh(["nproc"]),
            "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "cpu": cpu,
            "kernel": platform.release(),
            "os": _os_release(),
            "temp dir file system": f"{fs[0]} on {fs[1]}" if len(fs) == 2 else " ".join(fs),
            "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        }
        pitr_version = sh([self.pitr, "--version"])
        commit = sh(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], check=False)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", "src", "pitr",
                                "Cargo.toml", "Cargo.lock"]).returncode != 0
        self.versions = {
            "pitr": f"{pitr_version} (commit {commit}{', with uncommitted changes' if dirty else ''})",
            "PostgreSQL": sh([self.pg("postgres"), "--version"]),
            "pgBackRest": sh(["pgbackrest", "version"]),
            "pg_basebackup": sh([self.pg("pg_basebackup"), "--version"]),
            "zstd in pitr": _pitr_zstd_version(),
            "zstd in pgBackRest": _libzstd_version(),
        }

    def setup_cluster(self) -> None:
        o = self.opts
        progress(f"initdb + pgbench -i -s {o.scale}")
        self.run([self.pg("initdb"), "-D", self.pgdata, "-A", "trust", "-E", "UTF8", "--no-sync"])
        pitr_push = " ".join(self.pitr_cmd(self.pitr_repo, "archive-push", "%p"))
        conf = f"""
# pitr bench
port = {PORT_MAIN}
listen_addresses = ''
unix_socket_directories = '{self.tmp / 'sock'}'
wal_level = replica
archive_mode = on
archive_command = '{pitr_push}'
wal_keep_size = '8GB'   # keep the corpus segments in pg_wal until they are copied
max_wal_size = '2GB'
"""
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(conf)
        self.mkdir_pg(self.pitr_repo)
        self.run([self.pg("pg_ctl"), "-D", self.pgdata, "-l", self.tmp / "logs" / "postgresql.log", "-w", "start"])

        # pgBackRest: a config in the temp dir, a stanza for the cluster's own repo, an empty
        # stanza to copy for each archive-push run.
        self.mkdir_pg(self.pgbr_dir, 0o755)
        for d in ("log", "lock", "spool", "conf.d"):
            self.mkdir_pg(self.pgbr_dir / d)
        self.pgbr_conf.write_text(f"""[global]
repo1-path={self.pgbr_repo}
repo1-retention-full=2
log-path={self.pgbr_dir / 'log'}
lock-path={self.pgbr_dir / 'lock'}
spool-path={self.pgbr_dir / 'spool'}
log-level-console=warn
log-level-stderr=warn
start-fast=y
compress-type=zst
compress-level=3

[bench]
pg1-path={self.pgdata}
pg1-socket-path={self.tmp / 'sock'}
pg1-port={PORT_MAIN}
""")
        self.chown_tree(self.pgbr_dir)
        self.mkdir_pg(self.pgbr_repo)
        self.mkdir_pg(self.pgbr_template)
        self.run(self.pgbr("stanza-create"))
        self.run(self.pgbr("stanza-create", repo=self.pgbr_template))
        # Archive into both repositories, so each tool's backups have their WAL (pitr's backup
        # accepts this archive_command: it calls pitr with this repository). Both tools' backups
        # wait for the same command.
        both = f"{pitr_push} && {' '.join(self.pgbr('archive-push', '%p'))}"
        self.run_.sql(f"ALTER SYSTEM SET archive_command = '{both}'")
        self.run_.sql("SELECT pg_reload_conf()")
        self.run([self.pg("pgbench"), "-i", "-q", "-s", o.scale])

        # The corpus: consecutive segments written by the pgbench TPC-B workload after a
        # checkpoint (full-page images, then updates): what archive_command sees in production.
        self.run_.sql("CHECKPOINT")
        first = self._current_segno() + 1
        want = o.segments + 1
        progress(f"pgbench TPC-B until {o.segments} complete segments are written")
        deadline = time.time() + 900
        while self._current_segno() - first < want:
            if time.time() > deadline:
                raise CommandFailed("pgbench did not write enough WAL within 15 minutes")
            self.run([self.pg("pgbench"), "-c", "4", "-j", "2", "-T", "10", "-n"])
        self.run_.sql("SELECT pg_switch_wal()")
        names = [self._segname(first + i) for i in range(o.segments)]
        for name in names:
            dst = self.tmp / "corpus" / name
            shutil.copyfile(self.pgdata / "pg_wal" / name, dst)
            os.chmod(dst, 0o600)
            self.corpus.append(dst)
        self.chown_tree(self.tmp / "corpus")
        for seg in self.corpus:
            if seg.stat().st_size != 16 * MiB:
                raise CommandFailed(f"{seg} is not a 16 MiB segment")
        self.wait_archiver()
        self.run_.sql("CHECKPOINT")
        self.data_bytes = tree_bytes(self.pgdata, exclude_top=("pg_wal",))
        self.settle()
        progress(f"cluster ready: {self.data_bytes / MiB:.0f} MiB of data, corpus of {len(self.corpus)} segments "
                 f"{names[0]}..{names[-1]}")

    def _current_segno(self) -> int:
        name = self.run_.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        return int(name[8:16], 16) * 256 + int(name[16:24], 16)

    @staticmethod
    def _segname(segno: int, tli: int = 1) -> str:
        return f"{tli:08X}{segno // 256:08X}{segno % 256:08X}"

    def wait_archiver(self, timeout: float = 900) -> None:
        """Waits until the archiver has nothing left to do, so it does not compete with a run."""
        status = self.pgdata / "pg_wal" / "archive_status"
        deadline = time.time() + timeout
        while any(p.suffix == ".ready" for p in status.iterdir()):
            if time.time() > deadline:
                raise CommandFailed("the archiver did not catch up (see logs/postgresql.log)")
            time.sleep(0.5)
        failed = self.run_.sql("SELECT failed_count FROM pg_stat_archiver")
        note = (f"pg_stat_archiver.failed_count = {failed} during setup: section 6 sets archive_command = "
                "/bin/false on purpose, so that segments stay .ready for the watcher; any other failure is in "
                "the server log")
        if failed != "0" and note not in self.res.notes:
            self.res.notes.append(note)

    def wait_for_quiet(self, section: str) -> None:
        """The machine is shared: before a section, wait (up to --quiet-wait seconds) until other
        processes leave the CPUs mostly idle, and note how busy they were when we started."""
        deadline = time.time() + self.opts.quiet_wait
        waited = False
        while True:
            busy = cpu_busy_fraction(2.0)
            if busy < 0.15 or time.time() >= deadline:
                break
            if not waited:
                progress(f"waiting for other processes to quiet down (CPU {busy * 100:.0f} % busy)")
                waited = True
            time.sleep(5)
        self.busy[section] = busy

    # -- teardown --------------------------------------------------------------------------------

    def teardown(self) -> None:
        for pid_file in list(self.tmp.glob("**/postmaster.pid")):
            datadir = pid_file.parent
            self.run([self.pg("pg_ctl"), "-D", datadir, "-m", "immediate", "-w", "stop"], check=False)
        for proc in self.background:
            stop_process(proc)
        if self.opts.keep:
            progress(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def stop_process(proc: subprocess.Popen) -> None:
    """Stops one process we started (by its own handle), politely first."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_busy_fraction(seconds: float) -> float:
    """The share of all CPUs that was busy (not idle, not waiting for I/O) over `seconds`."""
    def sample() -> Tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _libzstd_version() -> str:
    out = sh(["dpkg-query", "-W", "-f", "${Version}", "libzstd1"], check=False)
    return f"{out.split('+')[0]} (system libzstd1 {out})" if out and "no packages" not in out else "unknown"


def _pitr_zstd_version() -> str:
    m = re.search(r'name = "zstd-sys"\nversion = "[^"]*\+zstd\.([0-9.]+)"', (REPO_ROOT / "Cargo.lock").read_text())
    return f"{m.group(1)} (bundled by the zstd crate)" if m else "unknown"


# ----------------------------------------------------------------------------------------------
# Section 1 and 2: archive-push and archive-get, one process per segment
# ----------------------------------------------------------------------------------------------

# (key, label, pgBackRest compress-type and level or None)
PUSH_PEERS = [
    ("pgbr-zst", "pgBackRest zst:3", ("zst", 3)),
    ("pgbr-lz4", "pgBackRest lz4:1", ("lz4", 1)),
    ("pgbr-gz", "pgBackRest gz:6", ("gz", 6)),
    ("cp", "cp+fsync", None),
]
PUSH_TOOLS = [("pitr", "pitr zstd:3", None)] + PUSH_PEERS


def push_command(b: Bench, tool: str, repo: Path, seg: Path) -> List[str]:
    if tool == "pitr":
        return b.pitr_cmd(repo, "archive-push", str(seg))
    if tool == "cp":
        # cp+fsync in one process: copy, then fsync the copy
        return ["dd", f"if={seg}", f"of={repo / seg.name}", "bs=1M", "conv=fsync", "status=none"]
    ctype, level = dict((k, c) for k, _, c in PUSH_PEERS)[tool]
    return b.pgbr(f"--compress-type={ctype}", f"--compress-level={level}", "archive-push", str(seg), repo=repo)


def get_command(b: Bench, tool: str, repo: Path, name: str, dest: Path) -> List[str]:
    if tool == "pitr":
        return b.pitr_cmd(repo, "archive-get", name, str(dest))
    if tool == "cp":
        return ["cp", str(repo / name), str(dest)]
    return b.pgbr("archive-get", name, str(dest), repo=repo)


def new_push_repo(b: Bench, tool: str, path: Path) -> Path:
    if tool.startswith("pgbr"):
        b.run(["cp", "-a", b.pgbr_template, path])
    else:
        b.mkdir_pg(path)
    return path


def stored_wal_bytes(tool: str, repo: Path) -> int:
    if tool == "pitr":
        return tree_bytes(repo / "wal")
    if tool == "cp":
        return tree_bytes(repo)
    return tree_bytes(repo / "archive" / "bench", exclude_top=()) - sum(
        p.stat().st_size for p in (repo / "archive" / "bench").glob("archive.info*"))


def section_archive_push(b: Bench) -> None:
    """archive-push, one process per segment as PostgreSQL calls it. In each run every tool pushes
    the whole corpus into a fresh repository; the tools take turns segment by segment (the order
    rotates), so a noisy moment hits all of them. Figure: the run's mean ms per segment."""
    group = "1. archive-push (sync), one process per 16 MiB segment"
    n = len(b.corpus)
    totals: Dict[str, List[float]] = {t: [] for t, _, _ in PUSH_TOOLS}
    for r in range(b.opts.runs):
        progress(f"archive-push run {r + 1}/{b.opts.runs}")
        base = b.mkdir_pg(b.tmp / "work" / f"push-{r}", 0o755)
        repos = {t: new_push_repo(b, t, base / t) for t, _, _ in PUSH_TOOLS}
        b.settle()
        elapsed = {t: 0.0 for t in repos}
        for i, seg in enumerate(b.corpus):
            for t in rotate([t for t, _, _ in PUSH_TOOLS], r + i):
                elapsed[t] += b.run(push_command(b, t, repos[t], seg)).seconds
        for t in repos:
            totals[t].append(elapsed[t] / n * 1000)
        if r == 0:
            b.push_repos = repos  # kept for archive-get and the sizes
        else:
            shutil.rmtree(base)
    for t, label, _ in PUSH_TOOLS:
        b.res.series(f"push-{t}", group, "archive-push", label, "ms/segment").values = totals[t]
    for t, label, _ in PUSH_PEERS:
        b.res.ratio(group, f"archive-push: pitr / {label}", [p / q for p, q in zip(totals["pitr"], totals[t])],
                    target=0.5 if t == "pgbr-zst" else None)
    # Stored size of the corpus: deterministic, one value.
    raw = n * 16 * MiB
    for t, label, _ in PUSH_TOOLS:
        size = stored_wal_bytes(t, b.push_repos[t])
        b.res.series(f"wal-size-{t}", group, f"stored size of the {n}-segment corpus ({raw // MiB} MiB)", label,
                     "MiB", note=f"{size / raw * 100:.1f} % of the raw size").values = [size / MiB]
    pitr_size = stored_wal_bytes("pitr", b.push_repos["pitr"])
    b.res.ratio(group, "WAL compression: pitr zstd:3 / pgBackRest zst:3 stored bytes",
                [pitr_size / stored_wal_bytes("pgbr-zst", b.push_repos["pgbr-zst"])], target=1.0,
                note=zstd_note(b), digits=4, tolerance=0.005)


def zstd_note(b: Bench) -> str:
    return (f"same level; pitr's zstd is {b.versions.get('zstd in pitr', '?')}, pgBackRest's "
            f"{b.versions.get('zstd in pgBackRest', '?')}")


def ensure_push_repos(b: Bench) -> None:
    if b.push_repos:
        return
    progress("filling archive repositories (untimed, archive-push section not selected)")
    base = b.mkdir_pg(b.tmp / "work" / "push-fill", 0o755)
    b.push_repos = {t: new_push_repo(b, t, base / t) for t, _, _ in PUSH_TOOLS}
    for seg in b.corpus:
        for t, _, _ in PUSH_TOOLS:
            b.run(push_command(b, t, b.push_repos[t], seg))


def section_archive_get(b: Bench) -> None:
    """archive-get, one process per segment as PostgreSQL's restore_command: the whole corpus
    from each tool's repository, tools taking turns segment by segment. The first run checks
    that every tool returns the original bytes."""
    ensure_push_repos(b)
    group = "2. archive-get, one process per 16 MiB segment"
    n = len(b.corpus)
    totals: Dict[str, List[float]] = {t: [] for t, _, _ in PUSH_TOOLS}
    dest_dirs = {t: b.mkdir_pg(b.tmp / "work" / f"get-{t}") for t, _, _ in PUSH_TOOLS}
    for r in range(b.opts.runs):
        progress(f"archive-get run {r + 1}/{b.opts.runs}")
        b.settle()
        elapsed = {t: 0.0 for t in totals}
        for i, seg in enumerate(b.corpus):
            for t in rotate([t for t, _, _ in PUSH_TOOLS], r + i):
                dest = dest_dirs[t] / "RECOVERYXLOG"
                elapsed[t] += b.run(get_command(b, t, b.push_repos[t], seg.name, dest)).seconds
                if r == 0 and not filecmp.cmp(dest, seg, shallow=False):
                    raise CommandFailed(f"{t} archive-get of {seg.name} returned different bytes")
                dest.unlink()
        for t in totals:
            totals[t].append(elapsed[t] / n * 1000)
    for t, label, _ in PUSH_TOOLS:
        b.res.series(f"get-{t}", group, "archive-get", label if t != "cp" else "cp (no fsync)",
                     "ms/segment").values = totals[t]
    for t, label, _ in PUSH_PEERS:
        label = label if t != "cp" else "cp (no fsync)"
        b.res.ratio(group, f"archive-get: pitr / {label}", [p / q for p, q in zip(totals["pitr"], totals[t])],
                    target=0.5 if t == "pgbr-zst" else None)


def section_rss_push_get(b: Bench) -> None:
    """Peak RSS of one archive-push and one archive-get process, by /usr/bin/time -v: one
    segment per run, a different segment each run, into a fresh repository per tool."""
    ensure_push_repos(b)
    group = "5. peak RSS (/usr/bin/time -v), largest process"
    runs = min(b.opts.runs, len(b.corpus))
    base = b.mkdir_pg(b.tmp / "work" / "rss", 0o755)
    repos = {t: new_push_repo(b, t, base / t) for t, _, _ in PUSH_TOOLS if t != "cp"}
    dest = b.mkdir_pg(b.tmp / "work" / "rss-get") / "RECOVERYXLOG"
    push: Dict[str, List[float]] = {t: [] for t in repos}
    get: Dict[str, List[float]] = {t: [] for t in repos}
    progress("peak RSS of archive-push and archive-get")
    for r in range(runs):
        seg = b.corpus[r]
        for t in rotate(list(repos), r):
            push[t].append(b.run(push_command(b, t, repos[t], seg), rss=True).rss_kb / 1024)
        for t in rotate(list(repos), r):
            get[t].append(b.run(get_command(b, t, b.push_repos[t], seg.name, dest), rss=True).rss_kb / 1024)
            dest.unlink()
    labels = dict((t, l) for t, l, _ in PUSH_TOOLS)
    for t in repos:
        b.res.series(f"rss-push-{t}", group, "archive-push", labels[t], "MB").values = push[t]
    for t in repos:
        b.res.series(f"rss-get-{t}", group, "archive-get", labels[t], "MB").values = get[t]
    b.res.ratio(group, "archive-push peak RSS: pitr / pgBackRest zst:3",
                [p / q for p, q in zip(push["pitr"], push["pgbr-zst"])])
    b.res.ratio(group, "archive-get peak RSS: pitr / pgBackRest zst:3",
                [p / q for p, q in zip(get["pitr"], get["pgbr-zst"])])
    m = med(push["pitr"])
    b.res.targets.append(("archive-push peak RSS ≤ 50 MB", f"{fmt(m)} MB (max {fmt(max(push['pitr']))})",
                          "≤ 50 MB", max(push["pitr"]) <= 50))


# ----------------------------------------------------------------------------------------------
# Section 3: full backup
# ----------------------------------------------------------------------------------------------

# key, label
BACKUP_TOOLS = [
    ("pitr-j1", "pitr backup --jobs 1"),
    ("pgbr-pm1", "pgbackrest backup process-max=1"),
    ("pgbr-pm2", "pgbackrest backup process-max=2"),
    ("pitr-j2", "pitr backup --jobs 2"),
    ("bb-zstd", "pg_basebackup -Ft -Z zstd"),
    ("bb-server-zstd", "pg_basebackup -Ft -Z server-zstd"),
]


def backup_once(b: Bench, tool: str) -> Tuple[Run, int]:
    """One timed backup; returns the run and the stored bytes."""
    if tool.startswith("pitr"):
        jobs = tool[-1]
        daily = b.pitr_repo / "daily"
        before = set(os.listdir(daily)) if daily.exists() else set()
        run = b.run(b.pitr_cmd(b.pitr_repo, "backup", "--tier", "daily", "--fast", "--jobs", jobs), rss=True)
        new = set(os.listdir(daily)) - before
        if len(new) != 1:
            raise CommandFailed(f"pitr backup: expected one new backup in {daily}, found {new}")
        return run, tree_bytes(daily / new.pop())
    if tool.startswith("pgbr"):
        bdir = b.pgbr_repo / "backup" / "bench"
        before = set(os.listdir(bdir))
        run = b.run(b.pgbr("backup", "--type=full", f"--process-max={tool[-1]}"), rss=True)
        new = {d for d in set(os.listdir(bdir)) - before if d.endswith("F")}
        if len(new) != 1:
            raise CommandFailed(f"pgbackrest backup: expected one new backup in {bdir}, found {new}")
        return run, tree_bytes(bdir / new.pop())
    out = b.tmp / "work" / "basebackup"
    shutil.rmtree(out, ignore_errors=True)
    method = "zstd" if tool == "bb-zstd" else "server-zstd"
    run = b.run([b.pg("pg_basebackup"), "-D", out, "-Ft", "-Z", method, "-c", "fast"], rss=True)
    size = tree_bytes(out)
    shutil.rmtree(out)
    return run, size


def section_backup(b: Bench) -> None:
    """Full backups of the idle pgbench cluster. Each run takes one backup with every tool; the
    order reverses every run, and each compared pair is adjacent in both orders."""
    group = f"3. full backup of the pgbench scale-{b.opts.scale} cluster ({b.data_bytes / MiB:,.0f} MiB)"
    secs: Dict[str, List[float]] = {t: [] for t, _ in BACKUP_TOOLS}
    sizes: Dict[str, List[float]] = {t: [] for t, _ in BACKUP_TOOLS}
    rss: Dict[str, List[float]] = {t: [] for t, _ in BACKUP_TOOLS}
    b.wait_archiver()
    for r in range(b.opts.runs):
        progress(f"backup run {r + 1}/{b.opts.runs}")
        order = BACKUP_TOOLS if r % 2 == 0 else list(reversed(BACKUP_TOOLS))
        for t, _ in order:
            b.settle()
            run, size = backup_once(b, t)
            secs[t].append(run.seconds)
            sizes[t].append(size / MiB)
            rss[t].append(run.rss_kb / 1024)
    labels = dict(BACKUP_TOOLS)
    for t, label in BACKUP_TOOLS:
        b.res.series(f"backup-s-{t}", group, "seconds", label, "s").values = secs[t]
    for t, label in BACKUP_TOOLS:
        b.res.series(f"backup-mbs-{t}", group, "throughput (data size / seconds)", label, "MiB/s").values = [
            b.data_bytes / MiB / s for s in secs[t]]
    for t, label in BACKUP_TOOLS:
        b.res.series(f"backup-size-{t}", group, "stored size", label, "MiB",
                     note=f"{med(sizes[t]) / (b.data_bytes / MiB) * 100:.1f} % of the data").values = sizes[t]
    g5 = "5. peak RSS (/usr/bin/time -v), largest process"
    for t, label in BACKUP_TOOLS:
        note = "client only; the server's walsender is not counted" if t.startswith("bb") else (
            "largest of the main and worker processes" if t == "pgbr-pm2" else "")
        b.res.series(f"rss-backup-{t}", g5, "backup", label, "MB", note=note).values = rss[t]
    pair = lambda a, c: [x / y for x, y in zip(secs[a], secs[c])]
    b.res.ratio(group, f"backup time: {labels['pitr-j1']} / {labels['pgbr-pm1']}", pair("pitr-j1", "pgbr-pm1"), 0.8)
    b.res.ratio(group, f"backup time: {labels['pitr-j2']} / {labels['pgbr-pm2']}", pair("pitr-j2", "pgbr-pm2"), 0.8)
    b.res.ratio(group, f"backup time: {labels['pitr-j2']} / {labels['bb-zstd']}", pair("pitr-j2", "bb-zstd"), 1.0)
    b.res.ratio(group, f"backup time: {labels['pitr-j2']} / {labels['bb-server-zstd']}",
                pair("pitr-j2", "bb-server-zstd"))
    b.res.ratio(group, "backup compression: pitr zstd:3 / pgBackRest zst:3 stored bytes",
                [x / y for x, y in zip(sizes["pitr-j1"], sizes["pgbr-pm1"])], 1.0, note=zstd_note(b), digits=4,
                tolerance=0.005)
    b.res.ratio(g5, "backup peak RSS: pitr --jobs 2 / pgbackrest process-max=2",
                [x / y for x, y in zip(rss["pitr-j2"], rss["pgbr-pm2"])])


def ensure_backups(b: Bench) -> None:
    """restore and recover need a backup in each repository."""
    if not (b.pitr_repo / "daily").exists():
        progress("one backup per tool (untimed, backup section not selected)")
        b.wait_archiver()
        backup_once(b, "pitr-j2")
        backup_once(b, "pgbr-pm2")


# ----------------------------------------------------------------------------------------------
# Section 4: restore (files only) and recover to a target
# ----------------------------------------------------------------------------------------------

RESTORE_TOOLS = [
    ("pitr-j1", "pitr restore --jobs 1"),
    ("pgbr-pm1", "pgbackrest restore process-max=1"),
    ("pgbr-pm2", "pgbackrest restore process-max=2"),
    ("pitr-j2", "pitr restore --jobs 2"),
]


def restore_once(b: Bench, tool: str) -> Run:
    target = b.tmp / "work" / "restore"
    if tool.startswith("pitr"):
        run = b.run(b.pitr_cmd(b.pitr_repo, "restore", "--pgdata", str(target), "--jobs", tool[-1]), rss=True)
    else:
        b.mkdir_pg(target)
        run = b.run(b.pgbr("restore", f"--pg1-path={target}", f"--process-max={tool[-1]}"), rss=True)
    if not (target / "global" / "pg_control").exists():
        raise CommandFailed(f"{tool} restore left no global/pg_control")
    shutil.rmtree(target)
    return run


def section_restore(b: Bench) -> None:
    """Restore the newest backup's files into a new data directory (no server start)."""
    ensure_backups(b)
    group = "4. restore and recover"
    secs: Dict[str, List[float]] = {t: [] for t, _ in RESTORE_TOOLS}
    rss: Dict[str, List[float]] = {t: [] for t, _ in RESTORE_TOOLS}
    for r in range(b.opts.runs):
        progress(f"restore run {r + 1}/{b.opts.runs}")
        order = RESTORE_TOOLS if r % 2 == 0 else list(reversed(RESTORE_TOOLS))
        for t, _ in order:
            b.settle()
            run = restore_once(b, t)
            secs[t].append(run.seconds)
            rss[t].append(run.rss_kb / 1024)
    labels = dict(RESTORE_TOOLS)
    for t, label in RESTORE_TOOLS:
        b.res.series(f"restore-s-{t}", group, "restore (files only), seconds", label, "s").values = secs[t]
    g5 = "5. peak RSS (/usr/bin/time -v), largest process"
    for t, label in RESTORE_TOOLS:
        b.res.series(f"rss-restore-{t}", g5, "restore", label, "MB").values = rss[t]
    for j in "12":
        b.res.ratio(group, f"restore time: {labels['pitr-j' + j]} / {labels['pgbr-pm' + j]}",
                    [x / y for x, y in zip(secs["pitr-j" + j], secs["pgbr-pm" + j])], 0.8)


def recover_once(b: Bench, tool: str) -> Run:
    target = b.tmp / "work" / "recover"
    if tool == "pitr":
        run = b.run(b.pitr_cmd(b.pitr_repo, "recover", "--pgdata", str(target), "--target", "immediate",
                               "--action", "shutdown", "--port", str(PORT_RECOVER)))
        if "shutdown at the target" not in run.output:
            raise CommandFailed("pitr recover did not report 'shutdown at the target':\n" + run.output)
    else:
        # The same job by hand with pgBackRest: restore with recovery settings, then run the
        # server until it reaches the target and shuts down.
        b.mkdir_pg(target)
        start = time.perf_counter()
        r1 = b.run(b.pgbr("restore", f"--pg1-path={target}", "--process-max=2", "--type=immediate",
                          "--target-action=shutdown"))
        r2 = b.run([b.pg("postgres"), "-D", target, "-p", PORT_RECOVER, "-c",
                    f"unix_socket_directories={b.tmp / 'sock-recover'}", "-c", "listen_addresses=",
                    "-c", "archive_mode=off"])
        run = Run(time.perf_counter() - start, None, r1.output + r2.output, r2.returncode)
        if "shutdown at recovery target" not in r2.output:
            raise CommandFailed("PostgreSQL did not shut down at the target:\n" + r2.output[-3000:])
    # archive-get, run by the recovering server in the data directory, may have started a detached
    # `pitr prefetch` into <pgdata>.pitr-spool: let it finish, and start the next run without a spool.
    wait_for_stragglers(str(b.tmp), "prefetch")
    shutil.rmtree(target)
    shutil.rmtree(Path(f"{target}.pitr-spool"), ignore_errors=True)
    return run


def wait_for_stragglers(path_part: str, word: str, timeout: float = 30) -> None:
    """Waits until no process whose command line contains both `path_part` and `word` runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = False
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if path_part in cmd and word in cmd.split():
                found = True
                break
        if not found:
            return
        time.sleep(0.1)


def section_recover(b: Bench) -> None:
    """End-to-end recovery to a target (the newest backup's consistency point): restore, recovery
    settings, start PostgreSQL, replay from the archive, stop at the target, shut down."""
    ensure_backups(b)
    group = "4. restore and recover"
    tools = [("pitr", "pitr recover --target immediate --action shutdown"),
             ("pgbr", "pgbackrest restore --type=immediate, then postgres")]
    secs: Dict[str, List[float]] = {t: [] for t, _ in tools}
    for r in range(b.opts.runs):
        progress(f"recover run {r + 1}/{b.opts.runs}")
        for t, _ in (tools if r % 2 == 0 else list(reversed(tools))):
            b.settle()
            secs[t].append(recover_once(b, t).seconds)
    for t, label in tools:
        b.res.series(f"recover-s-{t}", group, "recover to a target, end to end, seconds", label, "s").values = secs[t]
    b.res.ratio(group, "recover time: pitr / pgBackRest restore + postgres",
                [x / y for x, y in zip(secs["pitr"], secs["pgbr"])])


# ----------------------------------------------------------------------------------------------
# Section 6: the watcher and restore prefetch (issue 6)
# ----------------------------------------------------------------------------------------------

G6 = "6. the watcher and restore prefetch (issue 6)"


def set_archive_command(b: Bench, command: str) -> None:
    b.run_.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
    b.run_.sql("SELECT pg_reload_conf()")


def write_segments(b: Bench, n: int) -> List[str]:
    """pgbench TPC-B until n more complete segments are written, then a switch: their names."""
    b.run_.sql("CHECKPOINT")
    first = b._current_segno() + 1
    deadline = time.time() + 900
    while b._current_segno() - first < n + 1:
        if time.time() > deadline:
            raise CommandFailed("pgbench did not write enough WAL within 15 minutes")
        b.run([b.pg("pgbench"), "-c", "4", "-j", "2", "-T", "5", "-n"])
    b.run_.sql("SELECT pg_switch_wal()")
    return [b._segname(first + i) for i in range(n)]


def start_pg_process(b: Bench, argv: Sequence[str], log: Path) -> subprocess.Popen:
    """A background process as the PostgreSQL OS user (the watcher)."""
    kwargs = {}
    if b.user and os.geteuid() == 0:
        kwargs = {"user": b.run_.uid, "group": b.run_.gid, "extra_groups": []}
    out = open(log, "ab")
    try:
        return subprocess.Popen([str(a) for a in argv], cwd=str(b.tmp), env=dict(b.run_.base_env),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    finally:
        out.close()


def wait_until(what: str, done: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise CommandFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def archive_command_loop(b: Bench, script: Path, command: str, names: List[str]) -> float:
    """archive_command as PostgreSQL's archiver runs it: system() -> `/bin/sh -c '<command>
    pg_wal/NAME'`, as the PostgreSQL OS user, cwd = the data directory, once per segment. One shell
    script (one b.run) runs that for every segment in turn and times its own loop (`date +%s%N`
    before and after, less the cost of one `$(date)`), so Python's fork/exec and user switch are
    not in the figure. Returns the loop's ms per segment."""
    script.write_text("\n".join([
        "#!/bin/sh",
        f"cmd={shlex.quote(command)}",
        "# The window between two clock reads also holds the end of one $(date) and the start of",
        "# the next: measured here, subtracted below.",
        "c0=$(date +%s%N)",
        "c1=$(date +%s%N)",
        "start=$(date +%s%N)",
        f"for n in {' '.join(names)}; do",
        '  /bin/sh -c "$cmd pg_wal/$n" || { echo "archive_command failed: $cmd pg_wal/$n" >&2; exit 1; }',
        "done",
        "end=$(date +%s%N)",
        'echo "loop_ns=$((end - start - (c1 - c0)))"',
        "",
    ]))
    os.chmod(script, 0o644)
    b.chown_tree(script)
    out = b.run(["/bin/sh", script], cwd=b.pgdata).output
    m = re.search(r"^loop_ns=(\d+)$", out, re.M)
    if not m:
        raise CommandFailed(f"{script}: no loop_ns in its output:\n{out[-3000:]}")
    return int(m.group(1)) / 1e6 / len(names)


def watcher_pushes_run(b: Bench, r: int, names: List[str]) -> Dict[str, float]:
    """One run: each tool gets a fresh repository (and spool) holding the ready segments, then
    each tool's archive_command is timed over every segment as PostgreSQL runs it (see
    archive_command_loop), one tool after the other, the order rotating per run. The floor is
    `/bin/true` in the same loop: the shell plus one exec, no tool. Returns ms/segment per tool."""
    base = b.mkdir_pg(b.tmp / "work" / f"watch-{r}", 0o755)
    # pitr with the watcher: let it store every ready segment, then stop it.
    w_repo = b.mkdir_pg(base / "pitr-watch")
    w_spool = base / "pitr-watch-spool"
    log = b.tmp / "logs" / "watch.log"
    proc = start_pg_process(b, b.pitr_cmd(w_repo, "--spool", str(w_spool), "watch", "--pgdata", str(b.pgdata)), log)
    try:
        wait_until("the watcher to store the ready segments",
                   lambda: all((w_repo / "wal" / n[:16] / n).exists() and (w_spool / "pushed" / n).exists()
                               for n in names))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # pgBackRest archive-async: the first archive-push starts the async worker, which pushes every
    # ready segment; wait until it has (the queue is drained), then time the foreground calls.
    a_repo = new_push_repo(b, "pgbr-async", base / "pgbr-async")
    a_spool = b.mkdir_pg(base / "pgbr-async-spool")
    async_opts = ["--archive-async", f"--spool-path={a_spool}", "--process-max=2", "--archive-timeout=120"]
    b.run(b.pgbr(*async_opts, "archive-push", f"pg_wal/{names[0]}", repo=a_repo), cwd=b.pgdata)
    out = a_spool / "archive" / "bench" / "out"
    for n in names:  # the worker takes what is ready when it starts; nudge it for the rest
        if not (out / f"{n}.ok").exists():
            b.run(b.pgbr(*async_opts, "archive-push", f"pg_wal/{n}", repo=a_repo), cwd=b.pgdata)
    wait_until("pgBackRest's async worker to drain the queue",
               lambda: all((out / f"{n}.ok").exists() for n in names))
    wait_for_stragglers(str(a_spool), "archive-push:async")
    # pitr sync: a fresh repository and an empty spool of its own, so no watcher marker is seen.
    s_repo = b.mkdir_pg(base / "pitr-sync")
    s_spool = base / "pitr-sync-spool"
    # The archive_command strings, without the %p PostgreSQL appends.
    cmds = {
        "pitr-watch": shlex.join(b.pitr_cmd(w_repo, "--spool", str(w_spool), "archive-push")),
        "pgbr-async": shlex.join(b.pgbr(*async_opts, "archive-push", repo=a_repo)),
        "pitr-sync": shlex.join(b.pitr_cmd(s_repo, "--spool", str(s_spool), "archive-push")),
        "floor": "/bin/true",
    }
    ms = {}
    for t in rotate(list(cmds), r):
        b.settle()
        ms[t] = archive_command_loop(b, base / f"loop-{t}.sh", cmds[t], names)
    if not all((s_repo / "wal" / n[:16] / n).exists() for n in names):
        raise CommandFailed("pitr sync archive-push did not store every segment")
    shutil.rmtree(base)
    return ms


@dataclass
class Replay:
    """One recovery of the N archived segments."""

    seconds: float  # end to end, as timed around the command(s)
    redo: float  # PostgreSQL's "redo done ... elapsed: X s"
    restored: int  # WAL files restore_command returned ("restored log file ... from archive")


def redo_figures(log: str) -> Tuple[float, int]:
    """PostgreSQL's own figure for the replay, from "redo starts" to "redo done", restore_command
    calls included ("redo done at ... system usage: ... elapsed: X s"), and the WAL files restored."""
    m = re.search(r"redo done at .*elapsed: ([0-9.]+) s", log)
    if not m:
        raise CommandFailed("no 'redo done ... elapsed' in the recovered server's log:\n" + log[-3000:])
    return float(m.group(1)), len(re.findall(r'restored log file "[0-9A-F]{24}" from archive', log))


def recover_latest_once(b: Bench, config: Path) -> Replay:
    target = b.tmp / "work" / "recover-latest"
    run = b.run([str(b.pitr), "--config", str(config), "--repo", str(b.pitr_repo),
                 "recover", "--pgdata", str(target), "--target", "latest",
                 "--action", "shutdown", "--port", str(PORT_RECOVER)])
    redo, restored = redo_figures((target / "pitr_recover.log").read_text(errors="replace"))
    wait_for_stragglers(str(b.tmp), "prefetch")
    shutil.rmtree(target)
    shutil.rmtree(Path(f"{target}.pitr-spool"), ignore_errors=True)
    return Replay(run.seconds, redo, restored)


def postmaster_alive(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def pgbr_replay_once(b: Bench, use_async: bool) -> Replay:
    """The same replay with pgBackRest, by hand: `pgbackrest restore` (default type: recover to
    the end of the archive) of the newest pgBackRest backup, restore_command =
    `pgbackrest ... archive-get %f "%p"` (with --archive-async, a fresh --spool-path and
    --process-max=2, or without), then PostgreSQL on the copy until recovery ends (see
    `replay_by_hand`). Seconds: the restore and the recovery until then (not in the doc: `pitr
    recover` also stops the copy)."""
    target = b.tmp / "work" / "recover-pgbr"
    spool = b.tmp / "work" / "recover-pgbr-spool"
    b.mkdir_pg(target)
    b.mkdir_pg(spool)
    get_opts = [f"--pg1-path={target}"]
    if use_async:
        get_opts += ["--archive-async", f"--spool-path={spool}", "--process-max=2", f"--lock-path={spool}"]
    restore_command = " ".join(b.pgbr(*get_opts, "archive-get", "%f", '"%p"'))
    start = time.perf_counter()
    b.run(b.pgbr("restore", f"--pg1-path={target}", "--process-max=2"))
    if not (target / "recovery.signal").exists():
        raise CommandFailed("pgbackrest restore wrote no recovery.signal")
    replay = replay_by_hand(b, target, restore_command, start)
    wait_for_stragglers(str(spool), "archive-get:async")
    shutil.rmtree(spool)
    return replay


def floor_replay_once(b: Bench, staged: Path) -> Replay:
    """The floor of the replay: the newest pitr backup restored by `pitr recover --no-start`,
    then PostgreSQL with restore_command = `mv` from a directory that holds every archived file
    already decompressed and fsynced (copied there and synced untimed, just before): WAL that
    costs nothing to fetch. What is left is PostgreSQL's own work, its fsync of every restored
    segment included. Seconds: from the start until recovery ended."""
    target = b.tmp / "work" / "recover-floor"
    source = b.tmp / "work" / "floor-wal"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(staged, source)
    b.chown_tree(source)
    b.run([str(b.pitr), "--config", str(b.pitr_config), "--repo", str(b.pitr_repo), "recover", "--pgdata",
           str(target), "--target", "latest", "--port", str(PORT_RECOVER), "--no-start"])
    os.sync()
    replay = replay_by_hand(b, target, f"mv {source}/%f %p", time.perf_counter())
    shutil.rmtree(source)
    return replay


def stage_archive(b: Bench) -> Path:
    """Every file of pitr's archive, decompressed by `pitr archive-get` into one directory."""
    staged = b.tmp / "work" / "staged-wal"
    shutil.rmtree(staged, ignore_errors=True)
    b.mkdir_pg(staged)
    for name in sorted(p.name for p in (b.pitr_repo / "wal").glob("*/*") if not p.name.startswith(".")):
        b.run(b.pitr_cmd(b.pitr_repo, "archive-get", name, str(staged / name)))
    return staged


def replay_by_hand(b: Bench, target: Path, restore_command: str, start: float,
                   pg_ctl: Optional[Path] = None) -> Replay:
    """PostgreSQL on the restored `target` (archive_mode off, private socket) with
    `restore_command` as the last word in postgresql.auto.conf, until recovery ends and it
    accepts connections; then a fast stop, and `target` is deleted. Seconds since `start`."""
    log = target / "by_hand_recover.log"
    with open(target / "postgresql.auto.conf", "a") as f:
        f.write(f"restore_command = '{restore_command}'\n")
    options = (f"-p {PORT_RECOVER} -c listen_addresses='' -c unix_socket_directories='{b.tmp / 'sock-recover'}' "
               "-c archive_mode=off -c logging_collector=off -c log_destination=stderr -c lc_messages=C")
    try:
        # -w returns once the copy is consistent (hot standby); recovery goes on after that.
        b.run([pg_ctl or b.pg("pg_ctl"), "-D", target, "-l", log, "-o", options, "-w", "-t", "3600", "start"])
        deadline = time.time() + 3600
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            done = text.find("redo done at ")
            if done >= 0 and re.search(r"database system is ready to accept connections$", text[done:], re.M):
                break
            if not postmaster_alive(target) or time.time() > deadline:
                raise CommandFailed(f"the copy in {target} did not finish recovery:\n" + text[-3000:])
            time.sleep(0.02)
        seconds = time.perf_counter() - start
    finally:
        if postmaster_alive(target):
            b.run([b.pg("pg_ctl"), "-D", target, "-m", "fast", "-w", "stop"], check=False)
    redo, restored = redo_figures(log.read_text(errors="replace"))
    shutil.rmtree(target)
    return Replay(seconds, redo, restored)


def section_watch_prefetch(b: Bench) -> None:
    """(1) archive_command latency with the watcher: the cluster's archive_command fails
    ('/bin/false'), so new pgbench segments stay .ready; `pitr watch` stores them, and then each
    tool's archive_command is timed as PostgreSQL runs it: one shell script, as the PostgreSQL OS
    user in the data directory, runs `/bin/sh -c '<archive_command> pg_wal/NAME'` for every
    segment and times its own loop (no Python fork/exec or user switch in the figure). pitr with
    the watcher takes its fast path (the watcher's marker). Peers: pgBackRest archive-push with
    archive-async=y, process-max=2, timed after its async worker has drained the queue; pitr's
    sync push of the same files; and the floor, `/bin/true` in the same loop (shell + exec, no
    tool). The tools run one after the other, the order rotating per run.
    (2) Replay of N archived segments: one pitr backup and right after it one pgBackRest backup,
    N segments of pgbench WAL archived into both repositories, then `pitr recover --target latest
    --action shutdown` with the default prefetch and with a config file saying `prefetch = 0`,
    and `pgbackrest restore` + PostgreSQL with restore_command = pgbackrest archive-get with
    archive-async=y (process-max=2) and without, the order reversing every run. The figure is
    PostgreSQL's own redo time from the server log.
    (3) The same with N segments of WAL whose replay costs nothing (logical decoding messages), on
    fresh backups: there the replay is all fetching, which is what prefetch can save."""
    n = len(b.corpus)
    both = b.run_.sql("SHOW archive_command")
    # (1)
    progress(f"watcher: {n} segments left .ready (archive_command = /bin/false)")
    set_archive_command(b, "/bin/false")
    try:
        names = write_segments(b, n)
        status = b.pgdata / "pg_wal" / "archive_status"
        wait_until("the segments to be .ready", lambda: all((status / f"{x}.ready").exists() for x in names), 60)
        tools = [("pitr-watch", "pitr archive-push, the watcher has stored the segment"),
                 ("pgbr-async", "pgbackrest archive-push archive-async=y process-max=2, queue drained"),
                 ("pitr-sync", "pitr archive-push (sync, no watcher)"),
                 ("floor", "floor: /bin/sh -c '/bin/true pg_wal/NAME' (shell + exec, no tool)")]
        ms: Dict[str, List[float]] = {t: [] for t, _ in tools}
        for r in range(b.opts.runs):
            progress(f"archive-push with the watcher run {r + 1}/{b.opts.runs}")
            for t, v in watcher_pushes_run(b, r, names).items():
                ms[t].append(v)
    finally:
        set_archive_command(b, both)
    for t, label in tools:
        b.res.series(f"watch-push-{t}", G6, f"archive_command per segment, {n} segments from pg_wal, as PostgreSQL "
                     "runs it (/bin/sh -c, cwd = data dir, timed inside a shell loop)", label,
                     "ms/segment").values = ms[t]
    b.res.ratio(G6, "archive-push with the watcher: pitr / pgBackRest archive-async (queue drained)",
                [p / q for p, q in zip(ms["pitr-watch"], ms["pgbr-async"])])
    b.res.ratio(G6, "archive-push: pitr with the watcher / pitr sync",
                [p / q for p, q in zip(ms["pitr-watch"], ms["pitr-sync"])])
    m = med(ms["pitr-watch"])
    b.res.targets.append(("archive_command ≤ 5 ms per segment with the watcher",
                          f"{fmt(m)} ms (max {fmt(max(ms['pitr-watch']))}; /bin/sh -c as PostgreSQL runs it, "
                          f"floor /bin/true {fmt(med(ms['floor']))} ms)", "≤ 5 ms", m <= 5.0))
    b.wait_archiver()
    # (2) WAL that costs PostgreSQL real work to replay, then (3) WAL that costs it nothing.
    replay_comparison(b, n, "", "pgbench WAL", write_segments, target=0.5)
    replay_comparison(b, n, "-cheap", "WAL that costs nothing to replay (logical decoding messages)",
                      write_cheap_segments, target=0.5)


def write_cheap_segments(b: Bench, n: int) -> List[str]:
    """n segments of WAL whose replay does nothing: non-transactional logical decoding messages
    (`pg_logical_emit_message`, whose redo is a no-op) of 1 MiB of md5 text each, different per
    message (zstd stores them at about half their size). Replaying them is all fetching: the case
    prefetch is for (cheap WAL, or a slow repository). Returns their names."""
    b.run_.sql("CHECKPOINT")
    first = b._current_segno() + 1
    # The subquery refers to s (in WHERE, so that string_agg stays its own aggregate): it runs
    # once per message, and every message is different.
    one_segment = ("SELECT count(*) FROM (SELECT pg_logical_emit_message(false, 'pitr-bench', "
                   "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768) g WHERE s > 0)) "
                   "FROM generate_series(1, 16) s) m")
    for _ in range(n + 2):
        b.run_.sql(one_segment)
    b.run_.sql("SELECT pg_switch_wal()")
    if b._current_segno() - first < n:
        raise CommandFailed(f"logical messages wrote fewer than {n} segments")
    return [b._segname(first + i) for i in range(n)]


def replay_comparison(b: Bench, n: int, key: str, workload: str, write: Callable[[Bench, int], List[str]],
                      target: Optional[float]) -> None:
    """One pitr backup and right after it one pgBackRest backup, then n segments of `workload`
    archived into both repositories; then the replay of them by pitr recover with and without
    prefetch, its floor (the same backup replaying segments already decompressed and on disk, see
    `floor_replay_once`), and by pgBackRest archive-get with and without archive-async, the order
    reversing every run. Series keys end in `key`."""
    progress(f"replay of {workload}: one pitr and one pgBackRest backup, then {n} segments archived")
    backup_once(b, "pitr-j2")
    backup_once(b, "pgbr-pm2")
    write(b, n)
    b.wait_archiver()
    staged = stage_archive(b)
    no_prefetch = b.tmp / "pitr-noprefetch.toml"
    no_prefetch.write_text("prefetch = 0\n")
    os.chmod(no_prefetch, 0o644)
    b.chown_tree(no_prefetch)
    # Display order; the runs go in `order` (reversed every run), so each compared pair is adjacent.
    tools2 = [("prefetch", "pitr recover --target latest, default prefetch"),
              ("no-prefetch", "pitr recover --target latest, prefetch = 0"),
              ("floor", "floor: the same backup, restore_command = mv of segments already decompressed and fsynced"),
              ("pgbr-async", "pgbackrest restore + postgres, archive-get archive-async=y process-max=2"),
              ("pgbr-sync", "pgbackrest restore + postgres, archive-get (sync)")]
    once: Dict[str, Callable[[], Replay]] = {
        "prefetch": lambda: recover_latest_once(b, b.pitr_config),
        "no-prefetch": lambda: recover_latest_once(b, no_prefetch),
        "floor": lambda: floor_replay_once(b, staged),
        "pgbr-async": lambda: pgbr_replay_once(b, True),
        "pgbr-sync": lambda: pgbr_replay_once(b, False),
    }
    order = ["no-prefetch", "prefetch", "floor", "pgbr-async", "pgbr-sync"]
    secs: Dict[str, List[float]] = {t: [] for t, _ in tools2}
    redo: Dict[str, List[float]] = {t: [] for t, _ in tools2}
    restored: Dict[str, List[int]] = {t: [] for t, _ in tools2}
    for r in range(b.opts.runs):
        progress(f"replay of {workload}: pitr with and without prefetch, the floor, pgBackRest archive-get "
                 f"async and sync, run {r + 1}/{b.opts.runs}")
        for t in (order if r % 2 == 0 else list(reversed(order))):
            b.settle()
            rep = once[t]()
            secs[t].append(rep.seconds)
            redo[t].append(rep.redo)
            restored[t].append(rep.restored)
    files = lambda t: "–".join(str(x) for x in sorted({min(restored[t]), max(restored[t])}))
    for t, label in tools2:
        b.res.series(f"replay-redo-s-{t}{key}", G6, f"replay of {n}+ archived segments of {workload} "
                     "(PostgreSQL's redo elapsed, restore_command included), seconds", label, "s",
                     note=f"{files(t)} WAL files restored").values = redo[t]
    for t, label in tools2[:2]:
        b.res.series(f"replay-s-{t}{key}", G6, f"recover end to end (restore of the base backup + replay of "
                     f"{workload}), seconds", label, "s").values = secs[t]
    b.res.ratio(G6, f"replay time (redo) of {workload}: with prefetch / without prefetch",
                [x / y for x, y in zip(redo["prefetch"], redo["no-prefetch"])], target=target)
    b.res.ratio(G6, f"replay (redo) of {workload}: with prefetch / the floor (nothing to fetch)",
                [x / y for x, y in zip(redo["prefetch"], redo["floor"])])
    b.res.ratio(G6, f"replay (redo) of {workload}: share of the fetching that prefetch removes, "
                "(without − with) / (without − floor)",
                [(w - p) / (w - f) if w > f else 1.0
                 for w, p, f in zip(redo["no-prefetch"], redo["prefetch"], redo["floor"])],
                note="1.0: replay with prefetch as fast as with nothing to fetch")
    b.res.ratio(G6, f"recover time end to end, {workload}: with prefetch / without prefetch",
                [x / y for x, y in zip(secs["prefetch"], secs["no-prefetch"])],
                note="includes the restore of the base backup, which prefetch does not change")
    b.res.ratio(G6, f"replay (redo) of {workload}: pitr with prefetch / pgBackRest archive-get async",
                [x / y for x, y in zip(redo["prefetch"], redo["pgbr-async"])],
                note="pitr's backup is taken just before pgBackRest's, so pitr also replays the WAL of "
                     "pgBackRest's backup (see the WAL files restored)")
    b.res.ratio(G6, f"replay (redo) of {workload}: pgBackRest archive-get async / sync",
                [x / y for x, y in zip(redo["pgbr-async"], redo["pgbr-sync"])])


# ----------------------------------------------------------------------------------------------
# Section 7: the same operations on an S3 server (issue 14, point 7)
# ----------------------------------------------------------------------------------------------

G7 = "7. S3: pitr and pgBackRest on the same S3 server (s3s-fs behind stunnel)"
S3_BUCKET_PITR = "bench-pitr"
S3_BUCKET_PGBR = "bench-pgbr"
S3_REGION = "us-east-1"
# pitr's part size (PART_SIZE in pitr/src/backup/manifest.rs): backup and restore move files in
# parts of this size, so their memory should be bounded by jobs × this.
PART_MIB = 16


def s3s_fs_binary() -> Optional[str]:
    """s3s-fs as the tests find it: PITR_S3S_FS, the cache .ci/install-s3s-fs fills, PATH."""
    for candidate in (os.environ.get("PITR_S3S_FS"), "/var/cache/pitr/s3s-fs/bin/s3s-fs"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("s3s-fs")


# The TCP_NODELAY shim preloaded into s3s-fs, the tests' own (the file says why).
NODELAY_SHIM = (REPO_ROOT / "tests" / "common" / "s3s_fs_nodelay.c").read_text()


def nodelay_shim(directory: Path) -> Path:
    """The TCP_NODELAY shim for s3s-fs (see NODELAY_SHIM), built into `directory`."""
    src, lib = directory / "nodelay.c", directory / "nodelay.so"
    src.write_text(NODELAY_SHIM)
    sh(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src, "-ldl"])
    return lib


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CommandFailed(f"{proc.args[0]} exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise CommandFailed(f"nothing listens on port {port} after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


class S3Server:
    """s3s-fs on a loopback port with its root in the temp dir, and stunnel in front of it
    (TLS with a certificate signed by a CA made for this run): pgBackRest's S3 repository speaks
    only https. pitr goes through the same stunnel and verifies the certificate (AWS_CA_BUNDLE
    names the run's CA); `plain` is the same server without TLS."""

    def __init__(self, b: Bench, log_requests: bool = False):
        self.b = b
        self.dir = b.tmp / "s3"
        self.root = self.dir / "root"
        self.root.mkdir(parents=True)
        self.access_key = "bench" + os.urandom(4).hex()
        self.secret_key = os.urandom(16).hex()
        self.ca = self.dir / "ca.crt"
        binary = s3s_fs_binary()
        if not binary:
            raise CommandFailed("s3s-fs not found: run `bash .ci/install-s3s-fs` (or set PITR_S3S_FS)")
        self.binary = binary
        self.version = sh([binary, "--version"])
        m = re.search(r"stunnel [0-9.]+[^\n]*", sh(["stunnel4", "-version"], check=False))
        self.stunnel_version = m.group(0) if m else "stunnel4 (version unknown)"
        self._certificates()
        self.port = free_port()
        log = b.tmp / "logs" / "s3s-fs.log"
        env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(nodelay_shim(self.dir))}
        if log_requests:
            env["RUST_LOG"] = "s3s::ops=debug"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.access_key,
                 "--secret-key", self.secret_key, str(self.root)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        b.background.append(self.proc)
        wait_port(self.port, self.proc, log)
        self.tls_port = free_port()
        conf = self.dir / "stunnel.conf"
        conf.write_text(f"""foreground = yes
pid =
debug = 3
# No Nagle on either side: small requests and answers are not held back for a delayed ACK.
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[s3]
accept = 127.0.0.1:{self.tls_port}
connect = 127.0.0.1:{self.port}
cert = {self.dir / 'server.crt'}
key = {self.dir / 'server.key'}
""")
        slog = b.tmp / "logs" / "stunnel.log"
        with open(slog, "ab") as out:
            self.stunnel = subprocess.Popen(["stunnel4", str(conf)], stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT)
        b.background.append(self.stunnel)
        wait_port(self.tls_port, self.stunnel, slog)
        for bucket in (S3_BUCKET_PITR, S3_BUCKET_PGBR):
            (self.root / bucket).mkdir()

    def _certificates(self) -> None:
        d = self.dir
        sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out", self.ca,
            "-days", "2", "-subj", "/CN=pitr bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign"])
        sh(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "server.key", "-out", d / "server.csr",
            "-subj", "/CN=127.0.0.1"])
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        sh(["openssl", "x509", "-req", "-in", d / "server.csr", "-CA", self.ca, "-CAkey", d / "ca.key",
            "-CAcreateserial", "-out", d / "server.crt", "-days", "2", "-extfile", d / "ext.cnf"])
        os.chmod(self.dir, 0o755)
        os.chmod(self.ca, 0o644)

    def env(self, tls: bool = True) -> Dict[str, str]:
        """The standard AWS variables pitr reads, for this server."""
        env = {
            "AWS_ENDPOINT_URL": (f"https://127.0.0.1:{self.tls_port}" if tls else f"http://127.0.0.1:{self.port}"),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": S3_REGION,
        }
        if tls:
            env["AWS_CA_BUNDLE"] = str(self.ca)
        return env

    def path(self, bucket: str, key: str = "") -> Path:
        """Where s3s-fs keeps an object or a 'directory' of keys: root/bucket/key."""
        return self.root / bucket / key.strip("/")


class S3Bench:
    """The S3 side of the bench: the server, pgBackRest's S3 configuration (its own config file,
    a stanza per repository path), pitr's repository URLs."""

    def __init__(self, b: Bench):
        self.b = b
        self.server = S3Server(b)
        self.conf = b.pgbr_dir / "s3.conf"
        for d in ("log-s3", "lock-s3", "spool-s3"):
            b.mkdir_pg(b.pgbr_dir / d)
        s = self.server
        self.conf.write_text(f"""[global]
repo1-type=s3
repo1-s3-endpoint=127.0.0.1
repo1-s3-port={s.tls_port}
repo1-s3-uri-style=path
repo1-s3-verify-tls=n
repo1-s3-bucket={S3_BUCKET_PGBR}
repo1-s3-key={s.access_key}
repo1-s3-key-secret={s.secret_key}
repo1-s3-region={S3_REGION}
repo1-path=/main
repo1-retention-full=2
log-path={b.pgbr_dir / 'log-s3'}
lock-path={b.pgbr_dir / 'lock-s3'}
spool-path={b.pgbr_dir / 'spool-s3'}
log-level-console=warn
log-level-stderr=warn
start-fast=y
compress-type=zst
compress-level=3

[bench]
pg1-path={b.pgdata}
pg1-socket-path={b.tmp / 'sock'}
pg1-port={PORT_MAIN}
""")
        os.chmod(self.conf, 0o640)
        b.chown_tree(self.conf)
        self.env_tls = s.env(tls=True)
        self.env_plain = s.env(tls=False)

    def pgbr(self, *args: str, path: Optional[str] = None) -> List[str]:
        argv = ["pgbackrest", f"--config={self.conf}", f"--config-include-path={self.b.pgbr_dir / 'conf.d'}",
                "--stanza=bench"]
        if path is not None:
            argv.append(f"--repo1-path={path}")
        return argv + list(args)

    def pitr_url(self, prefix: str) -> str:
        return f"s3://{S3_BUCKET_PITR}/{prefix}"

    def pitr(self, prefix: str, *args: str) -> List[str]:
        return self.b.pitr_cmd(self.pitr_url(prefix), *args)

    def new_pgbr_repo(self, path: str) -> None:
        self.b.run(self.pgbr("stanza-create", path=path))

    def run(self, argv: Sequence[str], tls: bool = True, **kw) -> Run:
        return self.b.run(argv, env=self.env_tls if tls else self.env_plain, **kw)


# (key, label): pitr through stunnel like pgBackRest, pgBackRest, pitr straight to s3s-fs over http.
S3_PUSH_TOOLS = [
    ("pitr", "pitr zstd:3 (https through stunnel)"),
    ("pgbr", "pgBackRest zst:3 (https through stunnel)"),
    ("pitr-http", "pitr zstd:3 (plain http, no stunnel)"),
]


def s3_push_command(s3: S3Bench, tool: str, prefix: str, seg: Path) -> Tuple[List[str], bool]:
    if tool == "pgbr":
        return s3.pgbr("archive-push", str(seg), path=f"/{prefix}"), True
    return s3.pitr(prefix, "archive-push", str(seg)), tool == "pitr"


def s3_get_command(s3: S3Bench, tool: str, prefix: str, name: str, dest: Path) -> Tuple[List[str], bool]:
    if tool == "pgbr":
        return s3.pgbr("archive-get", name, str(dest), path=f"/{prefix}"), True
    return s3.pitr(prefix, "archive-get", name, str(dest)), tool == "pitr"


def s3_backup_once(s3: S3Bench, tool: str) -> Tuple[Run, int]:
    b = s3.b
    jobs = tool[-1]
    if tool.startswith("pitr"):
        daily = s3.server.path(S3_BUCKET_PITR, "main/daily")
        before = set(os.listdir(daily)) if daily.exists() else set()
        run = s3.run(s3.pitr("main", "backup", "--tier", "daily", "--fast", "--jobs", jobs), rss=True)
        new = set(os.listdir(daily)) - before
        if len(new) != 1:
            raise CommandFailed(f"pitr backup to S3: expected one new backup in {daily}, found {new}")
        return run, tree_bytes(daily / new.pop())
    bdir = s3.server.path(S3_BUCKET_PGBR, "main/backup/bench")
    before = set(os.listdir(bdir)) if bdir.exists() else set()
    run = s3.run(s3.pgbr("backup", "--type=full", f"--process-max={jobs}"), rss=True)
    new = {d for d in set(os.listdir(bdir)) - before if d.endswith("F")}
    if len(new) != 1:
        raise CommandFailed(f"pgbackrest backup to S3: expected one new backup in {bdir}, found {new}")
    return run, tree_bytes(bdir / new.pop())


def s3_restore_once(s3: S3Bench, tool: str) -> Run:
    b = s3.b
    target = b.tmp / "work" / "restore-s3"
    jobs = tool[-1]
    if tool.startswith("pitr"):
        run = s3.run(s3.pitr("main", "restore", "--pgdata", str(target), "--jobs", jobs), rss=True)
    else:
        b.mkdir_pg(target)
        run = s3.run(s3.pgbr("restore", f"--pg1-path={target}", f"--process-max={jobs}"), rss=True)
    if not (target / "global" / "pg_control").exists():
        raise CommandFailed(f"{tool} restore from S3 left no global/pg_control")
    shutil.rmtree(target)
    return run


def section_s3(b: Bench) -> None:
    """archive-push, archive-get, full backup and restore against one S3 server (s3s-fs, on this
    machine, objects as files on the same disk), pitr side by side with pgBackRest `repo1-type=s3`.
    pgBackRest speaks only https to S3: stunnel terminates TLS in front of s3s-fs, with a
    certificate of a CA made for the run (pgBackRest: `repo1-s3-verify-tls=n`; pitr verifies it,
    `AWS_CA_BUNDLE` names the CA). Both go through the same stunnel; pitr straight over http is
    shown too (archive-push/get), for what TLS and the extra hop cost. Same scheme as the local
    sections: one process per segment, tools taking turns, order rotating; backups and restores in
    an order that reverses every run. The cluster is restarted with the AWS variables in its
    environment (as a service unit would set them) and its archive_command archives into both S3
    repositories during the section."""
    s3 = S3Bench(b)
    # Does this pitr take S3 repositories on its command line? (`--repo s3://...`: Repo::open.)
    probe = s3.run(s3.pitr("probe", "list"), check=False)
    pitr_ok = probe.returncode == 0
    if not pitr_ok:
        reason = ("this pitr does not take `--repo s3://...` yet: " + probe.output.strip().splitlines()[-1][:200]
                  if probe.output.strip() else "this pitr does not take `--repo s3://...` yet")
        for measure in ("archive-push, one process per 16 MiB segment", "archive-get, one process per 16 MiB segment",
                        "full backup and restore"):
            b.res.pending.append(Pending(G7, f"pitr: {measure}", reason))
    b.versions["S3 server"] = f"{s3.server.version} (objects as files under a directory on the temp dir's disk)"
    b.versions["TLS terminator"] = s3.server.stunnel_version
    n = len(b.corpus)
    tools = [t for t, _ in S3_PUSH_TOOLS if pitr_ok or t == "pgbr"]
    labels = dict(S3_PUSH_TOOLS)

    # archive-push: a fresh repository per tool per run.
    push: Dict[str, List[float]] = {t: [] for t in tools}
    for r in range(b.opts.runs):
        progress(f"S3 archive-push run {r + 1}/{b.opts.runs}")
        prefixes = {t: f"push-{r}-{t}" for t in tools}
        s3.new_pgbr_repo(f"/{prefixes['pgbr']}")
        b.settle()
        elapsed = {t: 0.0 for t in tools}
        for i, seg in enumerate(b.corpus):
            for t in rotate(tools, r + i):
                argv, tls = s3_push_command(s3, t, prefixes[t], seg)
                elapsed[t] += s3.run(argv, tls=tls).seconds
        for t in tools:
            push[t].append(elapsed[t] / n * 1000)
    for t in tools:
        b.res.series(f"s3-push-{t}", G7, "archive-push, one process per 16 MiB segment", labels[t],
                     "ms/segment").values = push[t]

    # archive-get from the first run's repositories.
    get: Dict[str, List[float]] = {t: [] for t in tools}
    dest_dirs = {t: b.mkdir_pg(b.tmp / "work" / f"s3-get-{t}") for t in tools}
    for r in range(b.opts.runs):
        progress(f"S3 archive-get run {r + 1}/{b.opts.runs}")
        b.settle()
        elapsed = {t: 0.0 for t in tools}
        for i, seg in enumerate(b.corpus):
            for t in rotate(tools, r + i):
                dest = dest_dirs[t] / "RECOVERYXLOG"
                argv, tls = s3_get_command(s3, t, f"push-0-{t}", seg.name, dest)
                elapsed[t] += s3.run(argv, tls=tls).seconds
                if r == 0 and not filecmp.cmp(dest, seg, shallow=False):
                    raise CommandFailed(f"{t} archive-get from S3 of {seg.name} returned different bytes")
                dest.unlink()
        for t in tools:
            get[t].append(elapsed[t] / n * 1000)
    for t in tools:
        b.res.series(f"s3-get-{t}", G7, "archive-get, one process per 16 MiB segment", labels[t],
                     "ms/segment").values = get[t]
    pair = lambda d, x, y: [p / q for p, q in zip(d[x], d[y])]
    if pitr_ok:
        b.res.ratio(G7, "S3 archive-push: pitr / pgBackRest zst:3, both through stunnel", pair(push, "pitr", "pgbr"),
                    0.8)
        b.res.ratio(G7, "S3 archive-get: pitr / pgBackRest zst:3, both through stunnel", pair(get, "pitr", "pgbr"),
                    0.8)
        b.res.ratio(G7, "S3 archive-push: pitr plain http / pitr through stunnel", pair(push, "pitr-http", "pitr"),
                    note="what TLS and the stunnel hop cost pitr per segment")
        b.res.ratio(G7, "S3 archive-get: pitr plain http / pitr through stunnel", pair(get, "pitr-http", "pitr"))

    # Backup and restore: the cluster archives into both S3 repositories, from an environment
    # that holds the AWS variables (a restart with them in the postmaster's environment).
    progress("S3 backup: restart the cluster with the AWS variables, archive into both S3 repositories")
    s3.new_pgbr_repo("/main")
    b.run_.base_env.update(s3.env_tls)
    b.run([b.pg("pg_ctl"), "-D", b.pgdata, "-l", b.tmp / "logs" / "postgresql.log", "-w", "-m", "fast", "restart"])
    previous = b.run_.sql("SHOW archive_command")
    both = (f"{shlex.join(s3.pitr('main', 'archive-push'))} %p && " if pitr_ok else "") + (
        f"{shlex.join(s3.pgbr('archive-push'))} %p")
    set_archive_command(b, both)
    try:
        b.run_.sql("SELECT pg_switch_wal()")
        b.run_.sql("CHECKPOINT")
        b.wait_archiver()
        _s3_backup_restore(b, s3, pitr_ok)
    finally:
        b.wait_archiver()
        set_archive_command(b, previous)


S3_BACKUP_TOOLS = [
    ("pitr-j1", "pitr backup --jobs 1"),
    ("pgbr-pm1", "pgbackrest backup process-max=1"),
    ("pgbr-pm2", "pgbackrest backup process-max=2"),
    ("pitr-j2", "pitr backup --jobs 2"),
]
S3_RESTORE_TOOLS = [
    ("pitr-j1", "pitr restore --jobs 1"),
    ("pgbr-pm1", "pgbackrest restore process-max=1"),
    ("pgbr-pm2", "pgbackrest restore process-max=2"),
    ("pitr-j2", "pitr restore --jobs 2"),
]


def _s3_backup_restore(b: Bench, s3: S3Bench, pitr_ok: bool) -> None:
    data_mib = b.data_bytes / MiB
    backup_tools = [(t, l) for t, l in S3_BACKUP_TOOLS if pitr_ok or t.startswith("pgbr")]
    restore_tools = [(t, l) for t, l in S3_RESTORE_TOOLS if pitr_ok or t.startswith("pgbr")]
    secs: Dict[str, List[float]] = {t: [] for t, _ in backup_tools}
    sizes: Dict[str, List[float]] = {t: [] for t, _ in backup_tools}
    rss: Dict[str, List[float]] = {t: [] for t, _ in backup_tools}
    for r in range(b.opts.runs):
        progress(f"S3 backup run {r + 1}/{b.opts.runs}")
        for t, _ in (backup_tools if r % 2 == 0 else list(reversed(backup_tools))):
            b.settle()
            run, size = s3_backup_once(s3, t)
            secs[t].append(run.seconds)
            sizes[t].append(size / MiB)
            rss[t].append(run.rss_kb / 1024)
    measure = f"full backup of the pgbench scale-{b.opts.scale} cluster ({data_mib:,.0f} MiB), seconds"
    for t, label in backup_tools:
        b.res.series(f"s3-backup-s-{t}", G7, measure, label, "s",
                     note=f"{data_mib / med(secs[t]):.0f} MiB/s; stored {med(sizes[t]):.0f} MiB").values = secs[t]
    rsecs: Dict[str, List[float]] = {t: [] for t, _ in restore_tools}
    rrss: Dict[str, List[float]] = {t: [] for t, _ in restore_tools}
    for r in range(b.opts.runs):
        progress(f"S3 restore run {r + 1}/{b.opts.runs}")
        for t, _ in (restore_tools if r % 2 == 0 else list(reversed(restore_tools))):
            b.settle()
            run = s3_restore_once(s3, t)
            rsecs[t].append(run.seconds)
            rrss[t].append(run.rss_kb / 1024)
    for t, label in restore_tools:
        b.res.series(f"s3-restore-s-{t}", G7, "restore of the newest backup (files only), seconds", label, "s",
                     note=f"{data_mib / med(rsecs[t]):.0f} MiB/s").values = rsecs[t]
    for t, label in backup_tools:
        b.res.series(f"s3-rss-backup-{t}", G7, "peak RSS (/usr/bin/time -v, largest process)", f"backup: {label}",
                     "MB").values = rss[t]
    for t, label in restore_tools:
        b.res.series(f"s3-rss-restore-{t}", G7, "peak RSS (/usr/bin/time -v, largest process)",
                     f"restore: {label}", "MB").values = rrss[t]
    if not pitr_ok:
        return
    # What a pitr process costs before it moves any data: `pitr list` on the same repository
    # (runtime, TLS client, the backups' summaries), the base the per-job buffers come on top of.
    base = [s3.run(s3.pitr("main", "list"), rss=True).rss_kb / 1024 for _ in range(3)]
    b.res.series("s3-rss-list", G7, "peak RSS (/usr/bin/time -v, largest process)",
                 "pitr list on the same repository (no data moved)", "MB").values = base
    for j in "12":
        b.res.ratio(G7, f"S3 backup time: pitr --jobs {j} / pgbackrest process-max={j}",
                    [x / y for x, y in zip(secs["pitr-j" + j], secs["pgbr-pm" + j])], 0.8)
    for j in "12":
        b.res.ratio(G7, f"S3 restore time: pitr --jobs {j} / pgbackrest process-max={j}",
                    [x / y for x, y in zip(rsecs["pitr-j" + j], rsecs["pgbr-pm" + j])], 0.8)
    b.res.ratio(G7, "S3 backup peak RSS: pitr --jobs 2 / pgbackrest process-max=2",
                [x / y for x, y in zip(rss["pitr-j2"], rss["pgbr-pm2"])])
    b.res.ratio(G7, "S3 restore peak RSS: pitr --jobs 2 / pgbackrest process-max=2",
                [x / y for x, y in zip(rrss["pitr-j2"], rrss["pgbr-pm2"])])
    # Memory bounded by jobs × part size: what the process holds above its base (`pitr list`),
    # against jobs × PART_SIZE. MB here are MiB (time -v's kbytes / 1024).
    base_m = med(base)
    for what, d in (("backup", rss), ("restore", rrss)):
        for j in (1, 2):
            peak = max(d[f"pitr-j{j}"])
            bound = j * PART_MIB
            b.res.targets.append((
                f"S3 {what} --jobs {j}: memory above a process that moves nothing ≤ jobs × part size",
                f"{fmt(peak - base_m)} MiB (peak {fmt(peak)} MiB, the largest of {len(d[f'pitr-j{j}'])} runs, "
                f"less pitr list's {fmt(base_m)} MiB)", f"≤ {bound} MiB ({j} × {PART_MIB} MiB)",
                peak - base_m <= bound))


# ----------------------------------------------------------------------------------------------
# Optional: profile one archive-push of each (perf stat, callgrind)
# ----------------------------------------------------------------------------------------------


def section_profile(b: Bench) -> None:
    """perf stat (software counters) over up to 10 archive-push and archive-get processes of pitr
    and of pgBackRest zst, and callgrind's top functions for one archive-push of each and one pitr
    archive-get. Goes into the doc as raw output; the interpretation is in bench/findings.md."""
    ensure_push_repos(b)
    progress("profile: perf stat and callgrind")
    out = []
    base = b.mkdir_pg(b.tmp / "work" / "profile", 0o755)
    dest = b.mkdir_pg(b.tmp / "work" / "profile-get") / "RECOVERYXLOG"
    segs = b.corpus[: min(10, len(b.corpus))]
    quote = lambda argv: " ".join("'" + str(a).replace("'", "'\\''") + "'" for a in argv)
    for op in ("archive-push", "archive-get"):
        for t in ("pitr", "pgbr-zst"):
            if op == "archive-push":
                repo = new_push_repo(b, t, base / t)
                lines = [quote(push_command(b, t, repo, seg)) for seg in segs]
            else:
                lines = [quote(get_command(b, t, b.push_repos[t], seg.name, dest)) + f" && rm '{dest}'"
                         for seg in segs]
            script = b.tmp / "work" / f"profile-{op}-{t}.sh"
            script.write_text("#!/bin/sh\nset -e\n" + "\n".join(lines) + "\n")
            script.chmod(0o755)
            if shutil.which("perf"):
                r = b.run(["perf", "stat", "-e", "task-clock,context-switches,page-faults", script], check=False)
                body = "\n".join(l for l in r.output.strip().splitlines() if l.strip())
                out.append(f"perf stat, {len(segs)} × {op}, {t} (one process each, run by a shell script):\n{body}")
    if shutil.which("valgrind") and shutil.which("callgrind_annotate"):
        cg = b.tmp / "work" / "callgrind.out"
        jobs = [("pitr archive-push", push_command(b, "pitr", new_push_repo(b, "pitr", base / "cg-pitr"), segs[0])),
                ("pgBackRest zst:3 archive-push (Debian's binaries are stripped: internal zstd functions show as "
                 "their exported callers)",
                 push_command(b, "pgbr-zst", new_push_repo(b, "pgbr-zst", base / "cg-pgbr"), segs[0])),
                ("pitr archive-get", get_command(b, "pitr", b.push_repos["pitr"], segs[0].name, dest))]
        for label, argv in jobs:
            if cg.exists():
                cg.unlink()
            b.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}"] + argv, check=False)
            if dest.exists():
                dest.unlink()
            if cg.exists():
                ann = b.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", cg], check=False).output
                out.append(f"callgrind, one {label}, instructions by function (self cost):\n"
                           + summarize_callgrind(ann))
    b.res.notes.append("PROFILE\n" + "\n\n".join(out))


def summarize_callgrind(annotated: str, top: int = 12) -> str:
    """Sums callgrind_annotate's per-file:function lines by function (inlined code is listed
    under the header file it came from) and lists the top ones."""
    by_fn: Dict[str, int] = {}
    total = 0
    section = ""
    for line in annotated.splitlines():
        if line.startswith("Ir") or line.startswith("-- "):
            section = line
            continue
        m = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
        if not m or not ("file:function" in section or section.strip() == "Ir"):
            continue
        n = int(m.group(1).replace(",", ""))
        rest = m.group(2)
        if "PROGRAM TOTALS" in rest:
            total = n
            continue
        if "events annotated" in rest:
            continue
        fn = rest.split(" [", 1)[0].strip()
        m = re.match(r"^(.*?[^:]):(?!:)(.*)$", fn)  # file:function; Rust paths keep their "::"
        fn = m.group(2) if m else fn
        by_fn[fn] = by_fn.get(fn, 0) + n
    total = total or sum(by_fn.values()) or 1
    lines = [f"{'instructions':>14}  {'share':>6}  function", f"{total:>14,}  100.0%  (total)"]
    for fn, n in sorted(by_fn.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n:>14,}  {n / total * 100:5.1f}%  {fn}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Section 8: archive_command as PostgreSQL calls it, under load (issue 15)
# ----------------------------------------------------------------------------------------------

G8 = "8. archive_command under load, as PostgreSQL calls it (issue 15)"

# Seconds of each pgbench load per run (steady, then saturated), and rows of the bulk-write burst
# after them. The steady load runs pgbench rate-limited (-R) to STEADY_SHARE of the transactions per
# second the unthrottled pgbench reaches on this machine, measured at the start of the section
# (CALIBRATE_SECONDS, archive_command '/bin/true'); the saturated one runs it unthrottled.
LOAD_SECONDS = 20
STEADY_SHARE = 0.5
CALIBRATE_SECONDS = 10
BURST_ROWS = 1_500_000
# Runs of the section (each run is about 2 minutes: four tools, a load and a burst each).
LOAD_RUNS = 3
LOAD_TOOLS = [
    ("pitr-stream", "pitr archive-push with the WAL receiver (pitr watch --slot)"),
    ("pitr-watch", "pitr archive-push with the watcher (pitr watch, no slot)"),
    ("pitr-sync", "pitr archive-push alone (no watcher, no receiver)"),
    ("pgbr-async", "pgbackrest archive-push archive-async=y process-max=2"),
]


def timing_wrapper(path: Path, command: str, calls: Path) -> None:
    """archive_command = this script %p: it runs the tool's archive_command and appends start and
    end (bash's own clock, $EPOCHREALTIME: no fork) and the exit code to `calls`. What it times is
    the call as PostgreSQL's archiver waits for it, less the shell's own start."""
    path.write_text("\n".join([
        "#!/bin/bash",
        "t0=$EPOCHREALTIME",
        f'{command} "$1"',
        "rc=$?",
        "t1=$EPOCHREALTIME",
        f'echo "${{t0/[.,]/}} ${{t1/[.,]/}} $rc $1" >> {shlex.quote(str(calls))}',
        "exit $rc",
        "",
    ]))
    os.chmod(path, 0o755)


class ReadySampler(threading.Thread):
    """Counts the .ready files in pg_wal/archive_status every 50 ms: the archiver's backlog."""

    def __init__(self, status: Path):
        super().__init__(daemon=True)
        self.status, self.peak, self.stop_flag = status, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                n = sum(1 for p in self.status.iterdir() if p.suffix == ".ready")
            except OSError:
                n = 0
            self.peak = max(self.peak, n)
            time.sleep(0.05)

    def stop(self) -> int:
        self.stop_flag.set()
        self.join()
        return self.peak


def load_phase(b: Bench, calls: Path, work: Callable[[], None]) -> Tuple[List[float], int]:
    """Runs `work` (load on the cluster), then a WAL switch and waits until the archiver is idle:
    the archive_command calls of the phase in ms, and the largest .ready backlog seen."""
    calls.write_text("")
    b.chown_tree(calls)
    sampler = ReadySampler(b.pgdata / "pg_wal" / "archive_status")
    sampler.start()
    try:
        work()
        b.run_.sql("SELECT pg_switch_wal()")
        b.wait_archiver()
    finally:
        peak = sampler.stop()
    ms = []
    for line in calls.read_text().splitlines():
        t0, t1, rc, _ = line.split(" ", 3)
        if rc != "0":
            raise CommandFailed(f"archive_command failed during the load run: {line}")
        ms.append((int(t1) - int(t0)) / 1000)
    return ms, peak


def rpo_probes(b: Bench, repo: Path, seconds: float) -> List[float]:
    """While pgbench writes, commits one row every 250 ms and times how long until the repository
    holds it durably: a whole segment past it, or the receiver's snapshot of its segment reaching
    it (wal/stream/<segment>.<length>). t0 is taken before the commit starts, so psql's own time
    counts against pitr. Returns the times in ms."""
    size = int(b.run_.sql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))  # bytes (unit B)
    b.run_.sql("CREATE TABLE IF NOT EXISTS rpo_probe (t timestamptz)")
    load = subprocess.Popen(pgbench_load(b, seconds),
                            env=dict(b.run_.base_env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **({"user": b.run_.uid, "group": b.run_.gid, "extra_groups": []}
                               if b.user and os.geteuid() == 0 else {}))
    times: List[float] = []
    try:
        while load.poll() is None:
            t0 = time.perf_counter()
            lsn = b.run_.sql("INSERT INTO rpo_probe VALUES (now()); SELECT pg_current_wal_lsn()").splitlines()[-1]
            hi, lo = (int(x, 16) for x in lsn.split("/"))
            pos = (hi << 32) | lo
            segno, offset = pos // size, pos % size
            per_id = 0x1_0000_0000 // size
            name = f"00000001{segno // per_id:08X}{segno % per_id:08X}"
            whole = repo / "wal" / name[:16] / name
            stream = repo / "wal" / "stream"
            deadline = t0 + 30
            while time.perf_counter() < deadline:
                if whole.exists():
                    break
                try:
                    lens = [int(e.split(".", 1)[1], 16) for e in os.listdir(stream) if e.startswith(name + ".")]
                except (OSError, ValueError):
                    lens = []
                if lens and max(lens) >= offset:
                    break
                time.sleep(0.005)
            times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.25)
    finally:
        load.wait()
    return times


def pgbench_load(b: Bench, seconds: float, rate: Optional[float] = None) -> List[str]:
    """pgbench TPC-B, 4 clients on 2 threads, for `seconds`; rate-limited to `rate` tps when given."""
    limit = ["-R", f"{rate:.0f}"] if rate else []
    return [str(b.pg("pgbench")), "-c", "4", "-j", "2", "-T", str(int(seconds)), "-n", *limit]


def unthrottled_tps(b: Bench) -> float:
    """What pgbench reaches unthrottled on this machine, archive_command '/bin/true' (no tool)."""
    previous = b.run_.sql("SHOW archive_command")
    set_archive_command(b, "/bin/true")
    try:
        out = b.run(pgbench_load(b, CALIBRATE_SECONDS)).output
    finally:
        set_archive_command(b, previous)
    found = re.search(r"^tps = ([0-9.]+)", out, re.M)
    if not found:
        raise CommandFailed(f"pgbench printed no tps:\n{out[-2000:]}")
    return float(found.group(1))


def load_run(b: Bench, tool: str, r: int, rate: float) -> Dict[str, Tuple[List[float], int]]:
    """One tool under a steady pgbench load (rate-limited to `rate` tps), then under an unthrottled
    one, then under a bulk-write burst: its archive_command calls and the archiver's backlog, phase
    by phase."""
    base = b.mkdir_pg(b.tmp / "work" / f"load-{tool}-{r}", 0o755)
    helper_log = b.tmp / "logs" / f"load-{tool}.log"
    helper = None
    if tool.startswith("pitr"):
        repo, spool = b.mkdir_pg(base / "repo"), base / "spool"
        command = shlex.join(b.pitr_cmd(repo, "--spool", str(spool), "archive-push"))
        if tool == "pitr-stream":
            b.run(b.pitr_cmd(repo, "create-repo"))
            b.run(b.pitr_cmd(repo, "slot", "create", "--slot", "pitr_bench"))
        watch = {"pitr-stream": ["--slot", "pitr_bench"], "pitr-watch": []}.get(tool)
        if watch is not None:
            argv = b.pitr_cmd(repo, "--spool", str(spool), "watch", *watch, "--pgdata", str(b.pgdata))
            helper = start_pg_process(b, argv, helper_log)
            time.sleep(1)
    else:
        repo = new_push_repo(b, "pgbr-async", base / "pgbr")
        spool = b.mkdir_pg(base / "pgbr-spool")
        command = shlex.join(b.pgbr("--archive-async", f"--spool-path={spool}", "--process-max=2",
                                    "--archive-timeout=120", "archive-push", repo=repo))
    wrapper, calls = base / "archive.sh", base / "calls.log"
    timing_wrapper(wrapper, command, calls)
    b.chown_tree(base)
    previous = b.run_.sql("SHOW archive_command")
    set_archive_command(b, f"{wrapper} %p")
    try:
        out = {
            "steady": load_phase(b, calls, lambda: b.run(pgbench_load(b, LOAD_SECONDS, rate))),
            "saturated": load_phase(b, calls, lambda: b.run(pgbench_load(b, LOAD_SECONDS))),
            "burst": load_phase(b, calls, lambda: b.run_.sql(
                f"DROP TABLE IF EXISTS burst; CREATE TABLE burst AS SELECT g, md5(g::text) AS h "
                f"FROM generate_series(1, {BURST_ROWS}) g")),
        }
        if tool == "pitr-stream":
            out["rpo"] = (rpo_probes(b, repo, 15), 0)
    finally:
        set_archive_command(b, previous)
        if helper is not None:
            stop_process(helper)
        if tool == "pitr-stream":
            b.run(b.pitr_cmd(repo, "slot", "drop", "--slot", "pitr_bench"), check=False)
    shutil.rmtree(base)
    return out


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def recycle_wal(b: Bench) -> None:
    """As on a server that has run a while: no wal_keep_size (the corpus, copied by now, needed 8 GB)
    and a checkpoint, which recycles old segments as the next ones. Without it PostgreSQL creates and
    zero-fills every new segment, and publishes a finished segment's last bytes to walsenders only
    after the next file exists: tens of milliseconds under load that a production server rarely
    spends (bench/load.md)."""
    b.run_.sql("ALTER SYSTEM SET wal_keep_size = 0")
    b.run_.sql("SELECT pg_reload_conf()")
    b.run_.sql("CHECKPOINT")


def section_load(b: Bench) -> None:
    """archive_command timed as PostgreSQL calls it: archive_command is a wrapper script that runs
    the tool's own command and logs each call's duration with bash's clock, while pgbench writes
    (4 clients, LOAD_SECONDS s) rate-limited to half of what it reaches unthrottled (steady), then
    unthrottled (saturated: both cores busy), then while one bulk INSERT writes a burst of WAL.
    Tools run one after the other on the same cluster, the order rotating per run; each gets a
    fresh repository. Per tool and phase: the median and p99 of every call of every run, and the
    largest `.ready` backlog in pg_wal/archive_status (sampled every 50 ms)."""
    b.wait_archiver()
    recycle_wal(b)
    tps = unthrottled_tps(b)
    rate = tps * STEADY_SHARE
    progress(f"unthrottled pgbench: {tps:.0f} tps; the steady load runs at -R {rate:.0f}")
    b.res.series("load-tps-unthrottled", G8, f"pgbench unthrottled, {CALIBRATE_SECONDS} s at the section's start "
                 "(archive_command '/bin/true')", "transactions per second", "tps").values = [tps]
    b.res.series("load-tps-steady", G8, f"the steady load: pgbench -R at {STEADY_SHARE:.0%} of that",
                 "transactions per second", "tps").values = [rate]
    calls: Dict[Tuple[str, str], List[float]] = {}
    backlog: Dict[Tuple[str, str], List[int]] = {}
    runs = min(b.opts.runs, LOAD_RUNS)
    for r in range(runs):
        for tool in rotate([t for t, _ in LOAD_TOOLS if t in b.opts.load_tools], r):
            progress(f"archive_command under load: {tool}, run {r + 1}/{runs}")
            b.settle()
            for phase, (ms, peak) in load_run(b, tool, r, rate).items():
                calls.setdefault((tool, phase), []).extend(ms)
                backlog.setdefault((tool, phase), []).append(peak)
    for phase in ("steady", "saturated", "burst"):
        what = {"steady": f"a steady pgbench at {rate:.0f} tps (-R, half of unthrottled)",
                "saturated": "pgbench unthrottled, 4 clients (both cores saturated)",
                "burst": f"one INSERT of {BURST_ROWS:,} rows"}[phase]
        for tool, label in LOAD_TOOLS:
            if (tool, phase) not in calls:
                continue
            ms = calls[(tool, phase)]
            b.res.series(f"load-{phase}-{tool}", G8, f"archive_command per call under {what} (every call "
                         "of every run)", label, "ms").values = ms
            b.res.series(f"load-{phase}-p99-{tool}", G8, f"archive_command p99 under {what}", label,
                         "ms").values = [pct(ms, 0.99)]
            b.res.series(f"load-{phase}-ready-{tool}", G8, f"largest .ready backlog under {what} (per run)",
                         label, "files").values = [float(v) for v in backlog[(tool, phase)]]
    if not {t for t, _ in LOAD_TOOLS} <= set(b.opts.load_tools):
        for (tool, phase), ms in sorted(calls.items()):
            print(f"{tool} {phase}: median {med(ms):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, n={len(ms)}, "
                  f"backlog {backlog.get((tool, phase))}", file=sys.stderr)
        return
    rpo = calls[("pitr-stream", "rpo")]
    b.res.series("load-rpo-pitr-stream", G8, "RPO under pgbench: from a commit to it being durable in the repository "
                 "(a probe every 250 ms)", "pitr with the WAL receiver (snapshots twice a second)", "ms").values = rpo
    b.res.series("load-rpo-p99-pitr-stream", G8, "RPO p99 under pgbench", "pitr with the WAL receiver", "ms").values = \
        [pct(rpo, 0.99)]
    b.res.targets.append(("RPO p99 ≤ 1 s with the receiver (commit to durable in the repository)",
                          f"{fmt(pct(rpo, 0.99))} ms (median {fmt(med(rpo))} ms)", "≤ 1000 ms", pct(rpo, 0.99) <= 1000))
    for phase, what in (("steady", "a steady pgbench (-R, half of unthrottled)"),
                        ("saturated", "pgbench unthrottled (both cores saturated)")):
        stream = calls[("pitr-stream", phase)]
        b.res.ratio(G8, f"archive_command median under {what}: pitr with the receiver / pgBackRest async",
                    [med(stream) / med(calls[("pgbr-async", phase)])])
        b.res.ratio(G8, f"archive_command median under {what}: pitr sync / pgBackRest async",
                    [med(calls[("pitr-sync", phase)]) / med(calls[("pgbr-async", phase)])])
        b.res.targets.append((f"archive_command median ≤ 5 ms under {what} with the receiver",
                              f"{fmt(med(stream))} ms (p99 {fmt(pct(stream, 0.99))} ms)", "≤ 5 ms",
                              med(stream) <= 5.0))
    peak = max(backlog[("pitr-stream", "burst")])
    b.res.targets.append(("`.ready` backlog ≤ 2 during a bulk-write burst with the receiver", f"{peak} files",
                          "≤ 2", peak <= 2))


# ----------------------------------------------------------------------------------------------
# Section 9: burst throughput of the streaming tools (issue 15)
# ----------------------------------------------------------------------------------------------

G9 = "9. Burst throughput: WAL written as fast as the server can, until the tool holds all of it (issue 15)"

# The burst: THROUGHPUT_WRITERS sessions each write THROUGHPUT_ROWS rows in one statement, as fast
# as the server can (about 100 bytes of WAL per row); two keep both cores busy.
THROUGHPUT_WRITERS = 2
THROUGHPUT_ROWS = 2_500_000
THROUGHPUT_RUNS = 3
THROUGHPUT_TOOLS = [
    ("pitr-stream", "pitr: WAL receiver (pitr watch --slot) + archive-push"),
    ("pgbr-async", "pgBackRest archive-push archive-async=y process-max=2"),
    ("barman", "Barman streaming_archiver (barman receive-wal: pg_receivewal)"),
]


def segment_names(b: Bench, start_lsn: str, end_lsn: str) -> List[str]:
    """The names of the segments from the one holding start_lsn to the one holding end_lsn."""
    first, last = b.run_.sql(f"SELECT pg_walfile_name('{start_lsn}'), pg_walfile_name('{end_lsn}')").split("|")
    per_id = 0x1_0000_0000 // (16 * MiB)
    segno = lambda name: int(name[8:16], 16) * per_id + int(name[16:24], 16)  # noqa: E731
    return [f"{first[:8]}{n // per_id:08X}{n % per_id:08X}" for n in range(segno(first), segno(last) + 1)]


def barman_setup(b: Bench, home: Path) -> Tuple[Path, List[str]]:
    """A Barman configuration streaming from the cluster through slot `barman` (streaming only:
    archiver off), its home owned by the server user; returns the config and the base argv."""
    conf = home / "barman.conf"
    (home / "barman.d").mkdir(parents=True)
    conninfo = f"host={b.tmp / 'sock'} port={PORT_MAIN} dbname=postgres"
    user = b.user or pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(f"""[barman]
barman_home = {home}
barman_user = {user}
log_file = {home / 'barman.log'}
log_level = INFO
configuration_files_directory = {home / 'barman.d'}

[pg]
description = bench
conninfo = {conninfo} user={user}
streaming_conninfo = {conninfo} user={user}
backup_method = postgres
streaming_archiver = on
slot_name = barman
archiver = off
path_prefix = {b.opts.pg_bin}
""")
    b.chown_tree(home)
    return conf, ["barman", "-c", str(conf)]


def wait_all(what: str, present: Callable[[str], bool], names: List[str], timeout: float = 600) -> float:
    """Polls every 20 ms until every name is present; returns the time it happened."""
    deadline = time.time() + timeout
    pending = list(names)
    while pending:
        pending = [n for n in pending if not present(n)]
        if not pending:
            break
        if time.time() > deadline:
            raise CommandFailed(f"{what}: {len(pending)} segments still missing after {timeout:.0f} s "
                                f"(first {pending[0]})")
        time.sleep(0.02)
    return time.perf_counter()


def throughput_run(b: Bench, tool: str, r: int) -> Tuple[float, float, float]:
    """One burst with one tool: (WAL MB, seconds the server wrote it in, seconds until the tool held
    every complete segment of it durably)."""
    base = b.mkdir_pg(b.tmp / "work" / f"burst-{tool}-{r}", 0o755)
    helper, log = None, b.tmp / "logs" / f"burst-{tool}.log"
    previous = b.run_.sql("SHOW archive_command")
    try:
        if tool == "pitr-stream":
            repo, spool = b.mkdir_pg(base / "repo"), base / "spool"
            b.run(b.pitr_cmd(repo, "create-repo"))
            b.run(b.pitr_cmd(repo, "slot", "create", "--slot", "pitr_burst"))
            helper = start_pg_process(b, b.pitr_cmd(repo, "--spool", str(spool), "watch", "--slot", "pitr_burst",
                                                    "--pgdata", str(b.pgdata)), log)
            command = shlex.join(b.pitr_cmd(repo, "--spool", str(spool), "archive-push"))
            set_archive_command(b, f"{command} %p")
            present = lambda n: stored_path(repo, n).exists()  # noqa: E731
        elif tool == "pgbr-async":
            repo = new_push_repo(b, "pgbr-async", base / "pgbr")
            spool = b.mkdir_pg(base / "pgbr-spool")
            command = shlex.join(b.pgbr("--archive-async", f"--spool-path={spool}", "--process-max=2",
                                        "--archive-timeout=120", "archive-push", repo=repo))
            set_archive_command(b, f"{command} %p")

            def present(n: str) -> bool:
                last = b.run_.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                return last[:24] >= n
        else:
            home = base / "barman"
            _, barman = barman_setup(b, home)
            set_archive_command(b, "/bin/true")
            b.run(barman + ["receive-wal", "--create-slot", "pg"])
            helper = start_pg_process(b, barman + ["receive-wal", "pg"], log)
            streaming = home / "pg" / "streaming"
            present = lambda n: (streaming / n).exists()  # noqa: E731
        b.run_.sql(f"{drop_burst_tables()} CHECKPOINT")
        b.wait_archiver()
        time.sleep(2)  # the receivers connect and catch up
        start = b.run_.sql("SELECT pg_current_wal_lsn()")
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(THROUGHPUT_WRITERS) as pool:
            list(pool.map(lambda w: b.run_.sql(
                f"CREATE TABLE burst{w} AS SELECT g, md5(g::text) AS h FROM generate_series(1, {THROUGHPUT_ROWS}) g"),
                range(THROUGHPUT_WRITERS)))
        t1 = time.perf_counter()
        end = b.run_.sql("SELECT pg_current_wal_lsn()")
        names = segment_names(b, start, end)[:-1]  # the last one is still being written
        t2 = wait_all(tool, present, names)
        mb = len(names) * 16
        return mb, t1 - t0, t2 - t0
    finally:
        set_archive_command(b, previous)
        if helper is not None:
            stop_process(helper)
        if tool == "pitr-stream":
            b.run(b.pitr_cmd(base / "repo", "slot", "drop", "--slot", "pitr_burst"), check=False)
        if tool == "barman":
            # Should barman's pg_receivewal outlive barman receive-wal.
            subprocess.run(["pkill", "-f", "pg_receivewal.*barman"], check=False)
            b.run(["barman", "-c", str(base / "barman" / "barman.conf"), "receive-wal", "--drop-slot", "pg"],
                  check=False)
        b.run_.sql(drop_burst_tables())
        shutil.rmtree(base, ignore_errors=True)


def drop_burst_tables() -> str:
    return "".join(f"DROP TABLE IF EXISTS burst{w};" for w in range(THROUGHPUT_WRITERS))


def stored_path(repo: Path, name: str) -> Path:
    return repo / "wal" / name[:16] / name


def section_throughput(b: Bench) -> None:
    """Burst throughput: one INSERT of THROUGHPUT_ROWS rows writes WAL as fast as the server can;
    each tool streams or archives it (pitr's receiver with archive-push as archive_command,
    pgBackRest's async archive-push with two processes, Barman's pg_receivewal through a slot).
    Per tool: the rate it took the whole burst in (WAL of the burst's complete segments over the
    time from the burst's start until the tool held the last of them durably), and how long after
    the server finished it still needed (its backlog at the burst's end, in seconds). A tool that
    keeps up holds the last segment moments after the server wrote it: its rate is the server's."""
    b.wait_archiver()
    recycle_wal(b)
    rate: Dict[str, List[float]] = {}
    behind: Dict[str, List[float]] = {}
    server: List[float] = []
    runs = min(b.opts.runs, THROUGHPUT_RUNS)
    for r in range(runs):
        for tool in rotate([t for t, _ in THROUGHPUT_TOOLS if t in b.opts.load_tools], r):
            progress(f"burst throughput: {tool}, run {r + 1}/{runs}")
            b.settle()
            mb, wrote, held = throughput_run(b, tool, r)
            rate.setdefault(tool, []).append(mb / held)
            behind.setdefault(tool, []).append(max(0.0, held - wrote))
            server.append(mb / wrote)
    if set(rate) != {t for t, _ in THROUGHPUT_TOOLS}:
        for tool in rate:
            print(f"{tool}: {rate[tool]} MB/s, behind {behind[tool]} s, server {server}", file=sys.stderr)
        return
    b.res.series("burst-server", G9, "WAL rate the server wrote the burst at",
                 f"PostgreSQL 15 ({THROUGHPUT_WRITERS} sessions, one INSERT each)",
                 "MB/s").values = server
    for tool, label in THROUGHPUT_TOOLS:
        b.res.series(f"burst-rate-{tool}", G9, "rate the tool held the whole burst at (higher is better)", label,
                     "MB/s").values = rate[tool]
        b.res.series(f"burst-behind-{tool}", G9, "still behind when the server finished (lower is better)", label,
                     "s").values = behind[tool]
    b.res.ratio(G9, "burst rate: Barman / pitr (below 1: pitr takes WAL in faster)",
                [x / y for x, y in zip(rate["barman"], rate["pitr-stream"])])
    b.res.ratio(G9, "burst rate: pgBackRest async / pitr (below 1: pitr takes WAL in faster)",
                [x / y for x, y in zip(rate["pgbr-async"], rate["pitr-stream"])])



# ----------------------------------------------------------------------------------------------
# Section 10: restore drills, RTO per tier (issue 17)
# ----------------------------------------------------------------------------------------------

G10 = "10. restore drills: RTO of each tier's newest backup (issue 17)"
DRILL_TIERS = ("hourly", "daily", "weekly")
# (key, label): pgBackRest by hand, at the normal priority, and at the priority pitr's drill gives
# itself (nice 19, idle I/O class), so the priority's cost can be told from the tool's.
DRILL_PEERS = [("pgbr", "pgbackrest restore --type=immediate + pg_ctl start, by hand"),
               ("pgbr-nice", "the same under nice -n 19 ionice -c 3 (the drill's priority)"),
               ("bb", "reference: pg_basebackup -Ft -Z zstd -X fetch, tar -x + sync + pg_ctl start")]


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def backup_wal_mib(b: Bench) -> Dict[str, float]:
    """The WAL from each backup's start to its consistency point (what recovery to `immediate`
    replays), in MiB: pitr's per tier from `pitr list --json`, pgBackRest's from `pgbackrest info`."""
    found: Dict[str, float] = {}

    def walk(v) -> None:
        if isinstance(v, dict):
            if "tier" in v and "start_lsn" in v and "stop_lsn" in v:
                found[str(v["tier"])] = (parse_lsn(str(v["stop_lsn"])) - parse_lsn(str(v["start_lsn"]))) / MiB
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    try:
        walk(json.loads(b.run(b.pitr_cmd(b.pitr_repo, "list", "--json")).output))
        info = json.loads(b.run(b.pgbr("info", "--output=json")).output)
        lsn = info[0]["backup"][-1]["lsn"]
        found["pgbr"] = (parse_lsn(lsn["stop"]) - parse_lsn(lsn["start"])) / MiB
    except (CommandFailed, ValueError, KeyError, IndexError) as e:
        progress(f"could not read the backups' LSNs: {e}")
    return found


def drill_backups(b: Bench) -> None:
    """One pitr backup per tier and one pgBackRest full backup, each taken while pgbench runs
    (so each backup has WAL of its own to replay up to its consistency point), then more load,
    so the archive goes on past the backups (the drill's RPO window)."""
    b.wait_archiver()
    log = b.tmp / "logs" / "drill-pgbench.log"
    load = start_pg_process(b, [b.pg("pgbench"), "-n", "-c", "2", "-j", "1", "-T", "3600"], log)
    try:
        for tier in DRILL_TIERS:
            progress(f"pitr backup --tier {tier} (untimed, under pgbench)")
            b.run(b.pitr_cmd(b.pitr_repo, "backup", "--tier", tier, "--fast", "--jobs", "2"))
        progress("pgbackrest backup --type=full (untimed, under pgbench)")
        b.run(b.pgbr("backup", "--type=full", "--process-max=2"))
        progress("pg_basebackup -Ft -Z zstd -X fetch (untimed, under pgbench)")
        b.run([b.pg("pg_basebackup"), "-D", b.tmp / "work" / "drill-bb", "-Ft", "-Z", "zstd", "-X", "fetch",
               "-c", "fast", "--no-manifest"])
        time.sleep(10)
    finally:
        stop_process(load)
    b.run_.sql("SELECT pg_switch_wal()")
    b.wait_archiver()
    b.run_.sql("CHECKPOINT")


def drill_once(b: Bench, tier: str) -> Tuple[float, float, dict]:
    """`pitr drill --tier T --json`: its recorded RTO, the command's wall time, its record."""
    scratch = b.tmp / "work" / "drill-scratch"
    if not scratch.exists():
        b.mkdir_pg(scratch)
    run = b.run(b.pitr_cmd(b.pitr_repo, "drill", "--tier", tier, "--json", "--scratch", str(scratch)), check=False)
    start = run.output.find("\n{")
    text = run.output if run.output.startswith("{") else run.output[start + 1:] if start >= 0 else ""
    try:
        report, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        raise CommandFailed(f"pitr drill --tier {tier}: no JSON report (exit {run.returncode}):\n{run.output[-3000:]}")
    if run.returncode != 0 or not report.get("passed") or len(report.get("drills", [])) != 1:
        raise CommandFailed(f"pitr drill --tier {tier} did not pass (exit {run.returncode}):\n{run.output[-3000:]}")
    record = report["drills"][0]
    if list(scratch.iterdir()):
        raise CommandFailed(f"pitr drill left {list(scratch.iterdir())} in {scratch}")
    return float(record["rto_seconds"]), run.seconds, record


def pgbr_drill_once(b: Bench, nice: bool) -> Replay:
    """The drill's recovery by hand with pgBackRest: `pgbackrest restore --type=immediate
    --target-action=promote --process-max=2` of its newest backup into a new directory, then
    `pg_ctl start -w` and wait until recovery is done and the promoted copy accepts connections
    (replay_by_hand). Seconds from the restore's start; no checks."""
    target = b.tmp / "work" / "drill-pgbr"
    b.mkdir_pg(target)
    prefix = ["nice", "-n", "19", "ionice", "-c", "3"] if nice else []
    restore_command = " ".join(prefix + b.pgbr(f"--pg1-path={target}", "archive-get", "%f", '"%p"'))
    start = time.perf_counter()
    b.run(prefix + b.pgbr("restore", f"--pg1-path={target}", "--process-max=2", "--type=immediate",
                          "--target-action=promote"))
    if not (target / "recovery.signal").exists():
        raise CommandFailed("pgbackrest restore wrote no recovery.signal")
    if nice:
        # pg_ctl (and so the server) at the same priority, as the drill's copy inherits pitr's.
        real_pg = b.opts.pg_bin
        wrapper = b.tmp / "bin" / "pg_ctl-nice"
        wrapper.write_text(f"#!/bin/sh\nexec nice -n 19 ionice -c 3 {real_pg / 'pg_ctl'} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        return replay_by_hand(b, target, restore_command, start, pg_ctl=wrapper)
    return replay_by_hand(b, target, restore_command, start)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under root (what the backup tools do for their files; not
    `sync -f`, which would also write back other processes' dirty pages on this shared disk)."""
    for d, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def bb_drill_once(b: Bench) -> Replay:
    """A floor without a backup tool: the pg_basebackup tar (its WAL inside) extracted with
    `tar -I zstd -x`, an fsync of every file and directory (the tools make their files durable), then recovery.signal with
    recovery_target = 'immediate', promote, restore_command = /bin/false (the WAL is in pg_wal)
    and `pg_ctl start -w` until the promoted copy accepts connections (replay_by_hand)."""
    target = b.tmp / "work" / "drill-bb-copy"
    b.mkdir_pg(target)
    start = time.perf_counter()
    b.run(["tar", "-I", "zstd", "-xf", b.tmp / "work" / "drill-bb" / "base.tar.zst", "-C", target])
    fsync_tree(target)
    (target / "recovery.signal").touch()
    with open(target / "postgresql.auto.conf", "a") as f:
        f.write("recovery_target = 'immediate'\nrecovery_target_action = 'promote'\n")
    b.chown_tree(target)
    return replay_by_hand(b, target, "/bin/false", start)


def section_drill(b: Bench) -> None:
    """RTO of a restore drill per tier (`pitr drill --tier T --json`: restore + replay to the
    backup's consistency point + promotion, as the drill records it; and the drill's wall time
    with its checks) against the same recovery by hand with pgBackRest. Each run does every tool
    once, the order rotating per run."""
    drill_backups(b)
    wal_mib = backup_wal_mib(b)
    runs = min(b.opts.runs, 3)
    tools = [f"pitr-{t}" for t in DRILL_TIERS] + [k for k, _ in DRILL_PEERS]
    rto: Dict[str, List[float]] = {t: [] for t in tools}
    total: Dict[str, List[float]] = {t: [] for t in DRILL_TIERS}
    redo: Dict[str, List[float]] = {k: [] for k, _ in DRILL_PEERS}
    restored_mib: Dict[str, float] = {}
    for r in range(runs):
        progress(f"drill run {r + 1}/{runs}")
        for t in rotate(tools, r):
            b.settle()
            if t.startswith("pitr-"):
                tier = t[len("pitr-"):]
                seconds, wall, record = drill_once(b, tier)
                rto[t].append(seconds)
                total[tier].append(wall)
                restored_mib[tier] = record["bytes_restored"] / MiB
            elif t == "bb":
                replay = bb_drill_once(b)
                rto[t].append(replay.seconds)
                redo[t].append(replay.redo)
            else:
                replay = pgbr_drill_once(b, t == "pgbr-nice")
                rto[t].append(replay.seconds)
                redo[t].append(replay.redo)
    measure = "RTO: restore + replay to the backup's consistency point + promotion, seconds"
    for tier in DRILL_TIERS:
        b.res.series(f"drill-rto-{tier}", G10, measure, f"pitr drill --tier {tier} (its recorded rto_seconds)", "s",
                     note=f"{restored_mib.get(tier, 0):,.0f} MiB restored; the backup's WAL to its consistency "
                          f"point: {wal_mib.get(tier, float('nan')):.0f} MiB").values = rto[f"pitr-{tier}"]
    for k, label in DRILL_PEERS:
        wal = (f"; the backup's WAL to its consistency point: {wal_mib['pgbr']:.0f} MiB"
               if k != "bb" and "pgbr" in wal_mib else "")
        b.res.series(f"drill-rto-{k}", G10, measure, label, "s",
                     note=f"PostgreSQL's redo: {med(redo[k]):.2f} s (median){wal}").values = rto[k]
    for tier in DRILL_TIERS:
        b.res.series(f"drill-total-{tier}", G10, "the drill's wall time: plan, RTO, pg_amcheck --heapallindexed, "
                     "verify SQL, stop, removal, record", f"pitr drill --tier {tier} --json", "s").values = total[tier]
    for tier in DRILL_TIERS:
        b.res.ratio(G10, f"RTO: pitr drill --tier {tier} / pgBackRest restore + start by hand",
                    [x / y for x, y in zip(rto[f"pitr-{tier}"], rto["pgbr"])])
    for tier in DRILL_TIERS:
        b.res.ratio(G10, f"RTO: pitr drill --tier {tier} / the same by hand at the drill's priority",
                    [x / y for x, y in zip(rto[f"pitr-{tier}"], rto["pgbr-nice"])])
    for tier in DRILL_TIERS:
        b.res.ratio(G10, f"RTO: pitr drill --tier {tier} / pg_basebackup tar extracted + start (reference)",
                    [x / y for x, y in zip(rto[f"pitr-{tier}"], rto["bb"])])


SECTIONS: List[Tuple[str, Callable[[Bench], None]]] = [
    ("push", section_archive_push),
    ("get", section_archive_get),
    ("rss", section_rss_push_get),
    ("backup", section_backup),
    ("restore", section_restore),
    ("recover", section_recover),
    ("watch", section_watch_prefetch),
    ("s3", section_s3),
    ("load", section_load),
    ("throughput", section_throughput),
    ("drill", section_drill),
]


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def ratio_fmt(r: Ratio, v: float) -> str:
    return f"{v:.{r.digits}f}"


def verdict(r: Ratio) -> Tuple[str, Optional[bool]]:
    """The verdict on a ratio against its target: the median decides, the range qualifies."""
    if r.target is None:
        return "", None
    m = med(r.values)
    if m <= r.target:
        if max(r.values) > r.target:
            return "met by the median, not in every pair", True
        return "met", True
    over = (m / r.target - 1) * 100
    if r.tolerance is not None and m <= r.target * (1 + r.tolerance):
        return f"missed by {over:.2f} %: practically equal", False
    return "MISSED", False


def targets_rows(res: Results) -> List[List[str]]:
    rows = []
    for r in res.ratios:
        if r.target is None:
            continue
        m, lo, hi = (ratio_fmt(r, f(r.values)) for f in (med, min, max))
        measured = f"{m}×" if len(r.values) == 1 else f"{m}× ({lo}–{hi})"
        text, _ = verdict(r)
        rows.append([r.label, measured, f"≤ {r.target:g}×", f"**{text}**"])
    for target, measured, goal, ok in res.targets:
        rows.append([target, measured, goal, "**met**" if ok else "**MISSED**"])
    return rows


def groups_in_order(res: Results) -> List[str]:
    names = {s.group for s in res.all_series.values()} | {p.group for p in res.pending} | {
        r.group for r in res.ratios}
    # By the section's number ("10." after "9."), then by name.
    return sorted(names, key=lambda g: (int(g.split(".", 1)[0]) if g.split(".", 1)[0].isdigit() else 0, g))


def series_rows(res: Results, group: str) -> List[List[str]]:
    """Rows: measure, tool, median, min, max, unit, note (the measure only where it changes)."""
    rows = []
    last = None
    for s in res.all_series.values():
        if s.group != group:
            continue
        m, lo, hi = triple(s.values)
        if len(s.values) == 1:
            lo = hi = "="
        rows.append([s.measure if s.measure != last else "", s.tool, m, lo, hi, s.unit, s.note])
        last = s.measure
    for p in res.pending:
        if p.group == group:
            rows.append([p.measure, "—", "—", "—", "—", "", p.reason])
    return rows


def ratio_rows(res: Results, group: Optional[str] = None) -> List[List[str]]:
    rows = []
    for r in res.ratios:
        if group is not None and r.group != group:
            continue
        m, lo, hi = (ratio_fmt(r, f(r.values)) for f in (med, min, max))
        if len(r.values) == 1:
            lo = hi = "="
        tgt = f"≤ {r.target:g}" if r.target is not None else ""
        rows.append([r.label, m, lo, hi, tgt, verdict(r)[0], r.note])
    return rows


SERIES_HEADER = ["measure", "tool", "median", "min", "max", "unit", "note"]
RATIO_HEADER = ["pitr / peer, per pair of adjacent runs", "median", "min", "max", "target", "verdict", "note"]


def print_console(rec: Record) -> None:
    def table(header: List[str], rows: List[List[str]]) -> None:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
        print(line)
        print("-" * len(line))
        for row in rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
        print()

    print()
    print(f"pitr benchmarks: {len(rec.segments)} segments, {rec.runs} runs, pgbench scale {rec.scale}"
          f"{' (QUICK MODE: too few runs to quote)' if rec.quick else ''}")
    print()
    for g in groups_in_order(rec.res):
        print(f"== {g}")
        rows = series_rows(rec.res, g)
        if rows:
            table(SERIES_HEADER, rows)
        rows = ratio_rows(rec.res, g)
        if rows:
            table(RATIO_HEADER, rows)
    print("== Targets (issue 7)")
    table(["target", "measured", "goal", "verdict"], [[c.replace("**", "") for c in r] for r in targets_rows(rec.res)])


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


RAW_BEGIN = "<!-- pitr-bench record: python3 bench/run.py --render rebuilds this doc from it -->"


def write_doc(rec: Record, path: Path) -> None:
    mode = "quick (development) mode: too few runs to quote" if rec.quick else "full mode"
    res = rec.res
    parts = [
        "# Benchmarks: pitr side by side with pgBackRest, cp+fsync and pg_basebackup",
        "",
        "<!-- Generated by bench/run.py; do not edit by hand. The findings come from bench/findings.md. -->",
        "",
        f"Generated by `python3 bench/run.py` ({mode}) on {rec.when}, in {rec.total_seconds / 60:.1f} minutes. "
        f"Every figure is the median of {rec.runs} runs with the minimum and maximum. Every comparison is "
        "pitr/peer, computed for each pair of adjacent runs (the machine is shared and noisy), then the median "
        "and range of those ratios. Lower is better for pitr everywhere.",
        "",
        "## Machine",
        "",
        md_table(["", ""], [[k, v] for k, v in rec.machine.items()] + [[k, v] for k, v in rec.versions.items()]),
        "",
        "## Targets (issue 7)",
        "",
        md_table(["target", "measured pitr/peer: median (min–max)", "goal", "verdict"], targets_rows(res)),
        "",
    ]
    if FINDINGS.exists():
        parts += [FINDINGS.read_text().strip(), ""]
    if SCALE.exists():
        parts += [SCALE.read_text().strip(), ""]
    if S3_NOTES.exists():
        parts += [S3_NOTES.read_text().strip(), ""]
    if LOAD_NOTES.exists():
        parts += [LOAD_NOTES.read_text().strip(), ""]
    if EVENTS_NOTES.exists():
        parts += [EVENTS_NOTES.read_text().strip(), ""]
    if DEDUP_NOTES.exists():
        parts += [DEDUP_NOTES.read_text().strip(), ""]
    if ENCRYPTION_NOTES.exists():
        parts += [ENCRYPTION_NOTES.read_text().strip(), ""]
    parts += ["## Results", ""]
    for g in groups_in_order(res):
        parts += [f"### {g}", ""]
        rows = series_rows(res, g)
        if rows:
            parts += [md_table(SERIES_HEADER, rows), ""]
        rows = ratio_rows(res, g)
        if rows:
            parts += [md_table(RATIO_HEADER, rows), ""]
    parts += [
        "## Method",
        "",
        METHOD.format(segments=len(rec.segments), scale=rec.scale, runs=rec.runs,
                      data_mib=rec.data_bytes / MiB, first=rec.segments[0] if rec.segments else "-",
                      last=rec.segments[-1] if rec.segments else "-"),
    ]
    notes = list(dict.fromkeys(n for n in res.notes if not n.startswith("PROFILE")))
    if notes:
        parts += ["", "Notes from this run:", ""] + [f"- {n}" for n in notes]
    prof = [n for n in res.notes if n.startswith("PROFILE")]
    if prof:
        parts += ["", "## Raw profile of this run", "", "```", prof[0][len("PROFILE\n"):], "```"]
    parts += ["", "## Raw figures", "", "<details><summary>every run, in order (JSON)</summary>", "", RAW_BEGIN, "",
              "```json", json.dumps(rec.to_json(), indent=1, ensure_ascii=False), "```", "", "</details>", ""]
    path.write_text("\n".join(parts))
    progress(f"wrote {path}")


def merge_records(old: Record, new: Record, sections: Sequence[str]) -> Record:
    """`old` (the doc's record) with the figures of `new` (a run of some sections only) in place
    of the same groups' figures; the other sections' figures stay as they were, and the machine
    table says when the merged sections ran."""
    groups = {s.group for s in new.res.all_series.values()} | {r.group for r in new.res.ratios} | {
        p.group for p in new.res.pending}
    res = old.res
    res.all_series = {k: v for k, v in res.all_series.items() if v.group not in groups}
    res.all_series.update(new.res.all_series)
    res.ratios = [r for r in res.ratios if r.group not in groups] + new.res.ratios
    res.pending = [p for p in res.pending if p.group not in groups] + new.res.pending
    new_targets = {t[0] for t in new.res.targets}
    res.targets = [t for t in res.targets if t[0] not in new_targets] + list(new.res.targets)
    res.notes += [n for n in new.res.notes if n not in res.notes and not n.startswith("PROFILE")]
    names = ", ".join(sections)
    # An earlier merge of sections all of which this one measures again is history.
    for table in (old.machine, old.versions):
        for key in list(table):
            merged = key.split("sections ", 1)[1].rstrip(")") if "sections " in key else None
            if merged and set(merged.split(", ")) <= set(sections):
                del table[key]
    for k, v in new.versions.items():
        if k not in old.versions:
            old.versions[k] = v
        elif old.versions[k] != v:
            old.versions[f"{k} (sections {names})"] = v
    old.machine[f"sections {names}"] = (
        f"measured separately on {new.when} in {new.total_seconds / 60:.1f} minutes ({new.runs} runs, pgbench "
        f"scale {new.scale}, {new.data_bytes / MiB:,.0f} MiB of data, its own {len(new.segments)}-segment corpus), "
        f"merged into this record with --merge; load average at its start {new.machine.get('load average at start', '?')}"
        + (f"; CPU busy with other processes before it: {new.machine['CPU busy with other processes before each section']}"
           if "CPU busy with other processes before each section" in new.machine else ""))
    return old


def read_record(doc: Path) -> Record:
    text = doc.read_text()
    if RAW_BEGIN not in text:
        sys.exit(f"{doc} holds no pitr-bench record to render from")
    raw = text.split(RAW_BEGIN, 1)[1].split("```json", 1)[1].split("```", 1)[0]
    return Record.from_json(json.loads(raw))


METHOD = """\
Reproduce with `python3 bench/run.py` as root (it runs PostgreSQL, pgBackRest and pitr as the `postgres` OS
user); see bench/README.md. The harness builds pitr (`cargo build --release`), creates everything under one
fresh temp directory in /tmp (a PostgreSQL cluster on a private socket, the repositories, the corpus, logs) and
removes it at the end.

- **Data.** `initdb`, then `pgbench -i -s {scale}` ({data_mib:,.0f} MiB of data without pg_wal). The WAL
  corpus is {segments} consecutive real 16 MiB segments ({first} .. {last}) written by the pgbench TPC-B
  workload (`pgbench -c 4 -j 2`) right after a checkpoint, copied out of pg_wal: full-page images, then
  updates, what `archive_command` sees in production.
- **Settings.** Same compression library and level on both sides: pitr `--compress zstd --compress-level 3`
  (its default), pgBackRest `compress-type=zst`, `compress-level=3` (its default); also pgBackRest lz4 (level
  1) and gz (level 6), its defaults for those. `pg_basebackup -Z zstd` is client-side zstd at level 3 in
  PostgreSQL 15 (`-Z server-zstd` compresses in the server instead; both are shown). Backups use a fast
  checkpoint (`--fast`, `start-fast=y`, `-c fast`). pgBackRest uses its defaults otherwise (file logging,
  `archive-check`, `repo1-retention-full=2`); pitr runs `expire` after each backup, as by default.
- **archive-push.** One process per segment, as PostgreSQL calls `archive_command`, with an absolute path from
  a neutral directory. A run pushes the whole corpus into a fresh repository per tool (for pgBackRest a copy of
  an empty stanza); the tools take turns segment by segment and the order rotates, so noise hits all of
  them. The figure is the run's mean time per segment (fork, exec, read, compress, write, fsync, exit).
  `cp+fsync` is `dd conv=fsync` (copy, then fsync, in one process). The segments are in the page cache
  (as they are when PostgreSQL has just written them).
- **archive-get.** Same scheme, from the repositories the first push run filled, into a scratch file
  (`RECOVERYXLOG`). The first run checks that every tool returns the original bytes.
- **Full backup.** The idle cluster, all tools in one run in an order that reverses every run; each compared
  pair is adjacent in both orders. The cluster's `archive_command` archives into both pitr's and pgBackRest's
  repository (`pitr ... archive-push %p && pgbackrest ... archive-push %p`), so pitr's `pg_backup_stop` wait
  and pgBackRest's `archive-check` wait for the same command. Throughput is the data size divided by the time.
  Stored size is every file of the backup (manifest included); pg_basebackup's includes its pg_wal.tar.
- **Restore.** The newest backup's files into a new directory (`pitr restore --pgdata`, `pgbackrest restore
  --pg1-path`), no server start; both make the files durable before exiting.
- **Recover.** End to end to the newest backup's consistency point: `pitr recover --target immediate --action
  shutdown` against `pgbackrest restore --type=immediate --target-action=shutdown --process-max=2` followed by
  running `postgres` until it shuts down at the target.
- **Peak RSS.** `/usr/bin/time -v`'s maximum resident set size, which is that of the largest single process
  (pgBackRest's worker processes are separate processes; pitr's threads share one).
- **The watcher (section 6).** The cluster's archive_command is set to `/bin/false`, so fresh pgbench
  segments stay `.ready`; `pitr watch` stores them, then each tool's archive_command is timed as PostgreSQL
  runs it: one shell script, as the postgres user in the data directory, runs `/bin/sh -c '<command>
  pg_wal/NAME'` for every segment and times its own loop. The floor row is `/bin/true` in the same loop.
- **Replay (section 6).** One pitr and one pgBackRest backup, then 32 segments of a workload archived into
  both repositories; then `pitr recover --target latest --action shutdown` with the default prefetch and with
  `prefetch = 0`, and `pgbackrest restore` + PostgreSQL with archive-get with and without archive-async.
  The figure is PostgreSQL's own "redo done … elapsed" from the server log. Two workloads: pgbench WAL, and
  logical decoding messages (`pg_logical_emit_message`, 1 MiB of md5 text each), whose redo does nothing.
- **S3 (section 7).** One S3 server for both tools: s3s-fs on a loopback port (objects as files on the temp
  dir's disk), behind stunnel (TLS, a certificate signed by a CA made for the run), because pgBackRest's S3
  repository speaks only https (`repo1-type=s3`, `repo1-s3-uri-style=path`, `repo1-s3-verify-tls=n`). pitr
  goes through the same stunnel and verifies the certificate (`AWS_CA_BUNDLE` names the run's CA); pitr
  straight to s3s-fs over plain http is shown beside it for archive-push/get. archive-push and archive-get as
  in sections 1 and 2 (one process per segment, a fresh repository per tool per run, the tools taking turns);
  backup and restore as in sections 3 and 4, after a restart of the cluster with the AWS variables in its
  environment and an archive_command that archives into both S3 repositories. Peak RSS as in section 5; the
  memory target compares the peak RSS of pitr backup and restore less that of `pitr list` on the same
  repository (a pitr process that moves no data) with jobs × the 16 MiB part size.
- **Restore drills (section 10, issue 17).** One pitr backup per tier (`pitr backup --tier hourly|daily|weekly
  --fast --jobs 2`) and one `pgbackrest backup --type=full --process-max=2`, each taken while `pgbench -c 2`
  runs (so each backup has WAL of its own to replay up to its consistency point), 10 s more load, then a WAL
  switch. Then, in each run, every tool once in a rotating order: `pitr drill --tier T --json --scratch DIR`
  (jobs: the default, 2 cores), whose recorded `rto_seconds` is the time from the start of the restore until
  the copy, replayed to the backup's consistency point (`immediate`) and promoted, accepts connections; the
  command's wall time (planning, the RTO, `pg_amcheck --all --heapallindexed --install-missing`, the
  verification SQL, `pg_checksums` when data checksums are on (not here: `initdb` without `-k`), a clean stop,
  removal, the record) is shown separately. Against it, the same recovery by hand: `pgbackrest restore
  --type=immediate --target-action=promote --process-max=2` into a new directory, then `pg_ctl start -w` with
  a private socket and `archive_mode=off`, timed until the server log shows `redo done` followed by `database
  system is ready to accept connections` (the promoted copy), no checks. The drill lowers its own priority
  (nice 19, idle I/O class) before it starts the copy; the by-hand recovery is shown at the normal priority
  and at the drill's (`nice -n 19 ionice -c 3` on pgbackrest, its archive-get and pg_ctl). A reference without
  a backup tool: a `pg_basebackup -Ft -Z zstd -X fetch -c fast` tar taken under the same load (untimed),
  extracted with `tar -I zstd -x` (one zstd stream, one thread), an fsync of every file and directory, then `recovery.signal` with `recovery_target = 'immediate'`,
  promote, `restore_command = /bin/false` (its WAL is in the tar) and the same start and wait. The notes give
  each backup's WAL from its start to its consistency point (stop LSN − start LSN: what `immediate` replays).
  At most 3 runs.
- Between timed operations the harness calls `sync` (untimed) so one run's writeback does not land in the
  next run's time.
"""


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def find_pg_bin() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        sys.exit("no PostgreSQL found under /usr/lib/postgresql/*/bin; pass --pg-bin")
    return versions[-1]


def preflight(opts: Options) -> None:
    missing = []
    if not shutil.which("pgbackrest"):
        missing.append("pgbackrest")
    if not Path("/usr/bin/time").exists():
        missing.append("time")
    if (opts.sections is None or "throughput" in opts.sections) and not shutil.which("barman"):
        missing.append("barman")
    if missing:
        sys.exit(f"missing: {', '.join(missing)}. Install with: apt-get install -y {' '.join(missing)}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            sys.exit("running as root needs a 'postgres' OS user to run the clusters as")
    if opts.runs < 1 or opts.segments < 1:
        sys.exit("--runs and --segments must be at least 1")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="development run: 3 runs, 8 segments, pgbench scale 10; writes no doc unless --doc")
    ap.add_argument("--runs", type=int, help="runs per figure (default 5; quick 3)")
    ap.add_argument("--segments", type=int, help="WAL segments in the corpus (default 32; quick 8)")
    ap.add_argument("--scale", type=int, help="pgbench scale of the backup cluster (default 50; quick 10)")
    ap.add_argument("--pg-bin", type=Path, help="PostgreSQL bin directory (default: newest /usr/lib/postgresql/*/bin)")
    ap.add_argument("--only", help=f"comma-separated sections to run: {','.join(n for n, _ in SECTIONS)}")
    ap.add_argument("--profile", action="store_true",
                    help="profile archive-push (perf stat, callgrind) into the doc; on by default in full mode")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile")
    ap.add_argument("--doc", type=Path, help=f"the markdown to write (default {DEFAULT_DOC.relative_to(REPO_ROOT)} "
                                              "in full mode, none in quick mode)")
    ap.add_argument("--no-doc", action="store_true", help="write no markdown")
    ap.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    ap.add_argument("--merge", action="store_true",
                    help="with --only: write this run's sections into the doc's stored record in place of their "
                         "previous figures, keeping every other section's figures (default doc: "
                         "docs/benchmarks.md)")
    ap.add_argument("--load-tools", help="sections 8 and 9, development runs: comma-separated tools to run of "
                    f"{','.join(sorted({t for t, _ in LOAD_TOOLS + THROUGHPUT_TOOLS}))} (default all; the ratios "
                    "need all); writes no doc")
    ap.add_argument("--no-build", action="store_true", help="use target/release/pitr as it is (or under $CARGO_TARGET_DIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (for debugging)")
    ap.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                    help="before each section, wait up to this long for other processes to leave the CPUs "
                         "idle (default 60; quick 0)")
    ap.add_argument("--render", nargs="?", const=DEFAULT_DOC, type=Path, metavar="DOC",
                    help="run nothing: rebuild DOC (default docs/benchmarks.md) from the record stored in it, "
                         "with the current bench/findings.md")
    a = ap.parse_args(argv)
    if a.render:
        rec = read_record(a.render)
        write_doc(rec, a.doc or a.render)
        return 0
    doc = None if a.no_doc or a.load_tools else (a.doc or (None if a.quick and not a.merge else DEFAULT_DOC))
    sections = a.only.split(",") if a.only else None
    if a.merge and not sections:
        sys.exit("--merge needs --only (the sections whose figures replace the doc's)")
    if a.merge and doc is not None:
        read_record(doc)  # fail now, not after the run, when the doc holds no record
    if sections:
        unknown = set(sections) - {n for n, _ in SECTIONS}
        if unknown:
            sys.exit(f"unknown sections: {', '.join(sorted(unknown))}")
    opts = Options(quick=a.quick, runs=a.runs or (3 if a.quick else 5),
                   scale=a.scale or (10 if a.quick else 50), segments=a.segments or (8 if a.quick else 32),
                   pg_bin=a.pg_bin or find_pg_bin(), keep=a.keep, build=not a.no_build, doc=doc,
                   json_out=a.json, sections=sections,
                   profile=not a.no_profile and (a.profile or not (a.quick or a.merge)),
                   quiet_wait=a.quiet_wait if a.quiet_wait is not None else (0 if a.quick else 60),
                   load_tools=a.load_tools.split(",") if a.load_tools else [t for t, _ in LOAD_TOOLS + THROUGHPUT_TOOLS])
    preflight(opts)
    b = Bench(opts)
    progress(f"temp dir {b.tmp}")
    ok = False
    try:
        b.build()
        b.describe_machine()
        b.setup_cluster()
        for name, fn in SECTIONS:
            if sections is None or name in sections:
                b.wait_for_quiet(name)
                b.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
                fn(b)
        if opts.profile:
            section_profile(b)
        b.loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
        b.machine["1-min load average during the run"] = (
            f"{min(b.loads):.2f} – {max(b.loads):.2f} (sampled before each section; the harness itself "
            "keeps about one core busy)")
        if b.busy:
            b.machine["CPU busy with other processes before each section"] = ", ".join(
                f"{k} {v * 100:.0f} %" for k, v in b.busy.items()) + (
                f" (the harness waits up to {opts.quiet_wait:.0f} s for < 15 %)")
        ok = True
    finally:
        b.teardown()
    rec = Record(when=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 total_seconds=time.time() - b.started, quick=opts.quick, runs=opts.runs, scale=opts.scale,
                 segments=[p.name for p in b.corpus], data_bytes=b.data_bytes, machine=b.machine,
                 versions=b.versions, res=b.res)
    print_console(rec)
    print(f"total time: {rec.total_seconds / 60:.1f} minutes")
    if opts.json_out:
        opts.json_out.write_text(json.dumps(rec.to_json(), indent=1, ensure_ascii=False))
    if ok and opts.doc:
        if a.merge:
            rec = merge_records(read_record(opts.doc), rec, sections)
        write_doc(rec, opts.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
