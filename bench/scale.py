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

On S3 (issue 14, item 6): --s3 serves the repository from s3s-fs (the S3-compatible server the tests
use) and runs the same commands against s3://BUCKET/PREFIX over plain http on loopback:

    python3 bench/scale.py --s3 --repo /work/scale-repo-100k --target-time ... [--runs 3]

The server's root is a new directory beside --repo; the repository's files are hard-linked into
it as root/BUCKET/PREFIX/<key> (s3s-fs keeps an object as the file root/bucket/key, its LastModified
is the file's modification time, so the archive times stay), which costs no copy. The timed runs
go to a server that logs nothing; then one more run of each command goes to a server started
again with `RUST_LOG=s3s::ops=debug`, whose log names every request's operation: the table gets
the number of requests per operation. Both servers are stopped at the end.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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


ENV = dict(os.environ)  # what pitr runs with (--s3 adds the AWS variables)


def run(pitr: str, repo: str, args, cwd: str):
    """(seconds, peak RSS in KiB, stdout) of one run."""
    with tempfile.NamedTemporaryFile("r") as stats:
        proc = subprocess.run(
            ["/usr/bin/time", "-v", "-o", stats.name, pitr, "--repo", repo, *args],
            cwd=cwd, capture_output=True, text=True, env=ENV,
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


class S3:
    """s3s-fs serving a hard-linked copy of a local repository (see the module's doc)."""

    BUCKET = "scale"
    PREFIX = "repo"

    def __init__(self, local_repo: str):
        binary = os.environ.get("PITR_S3S_FS") or "/var/cache/pitr/s3s-fs/bin/s3s-fs"
        if not Path(binary).is_file():
            binary = shutil.which("s3s-fs")
        if not binary:
            sys.exit("s3s-fs not found: run `bash .ci/install-s3s-fs` (or set PITR_S3S_FS)")
        self.binary = binary
        self.version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        local = Path(local_repo).resolve()
        self.dir = Path(tempfile.mkdtemp(prefix=".s3-", dir=local.parent))
        self.root = self.dir / "root"
        target = self.root / self.BUCKET / self.PREFIX
        target.parent.mkdir(parents=True)
        started = time.perf_counter()
        # cp -al: the same files (bytes and modification times), no copy; locks and temp files are
        # not objects of the repository.
        subprocess.run(["cp", "-al", str(local), str(target)], check=True)
        shutil.rmtree(target / "locks", ignore_errors=True)
        self.files = sum(len(files) for _, _, files in os.walk(target))
        print(f"s3s-fs root {self.root}: {self.files:,} objects hard-linked in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        self.access_key, self.secret_key = "scale" + os.urandom(4).hex(), os.urandom(16).hex()
        self.proc = None
        self.log = self.dir / "s3s-fs.log"
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from run import nodelay_shim
        self.shim = nodelay_shim(self.dir)

    def url(self) -> str:
        return f"s3://{self.BUCKET}/{self.PREFIX}"

    def start(self, log_requests: bool) -> None:
        self.stop()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        # s3s-fs sets no TCP_NODELAY on its connections: a small answer's body waits up to 40 ms
        # for the ACK of its headers. The tests' shim sets it (tests/common/s3s_fs_nodelay.c).
        env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(self.shim)}
        if log_requests:
            env["RUST_LOG"] = "s3s::ops=debug"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.access_key,
                 "--secret-key", self.secret_key, str(self.root)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"s3s-fs did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)
        ENV.update({
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        })

    def requests(self, pitr: str, args, cwd: str) -> str:
        """One run against the logging server: its requests, by operation."""
        before = self.log.stat().st_size
        run(pitr, self.url(), args, cwd)
        with open(self.log, "rb") as f:
            f.seek(before)
            text = f.read().decode(errors="replace")
        ops = {}
        for m in re.finditer(r"resolved route, op: (\w+)", text):
            ops[m.group(1)] = ops.get(m.group(1), 0) + 1
        total = sum(ops.values())
        detail = ", ".join(f"{name} {n:,}" for name, n in sorted(ops.items(), key=lambda kv: -kv[1]))
        return f"{total:,} ({detail})"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


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
    ap.add_argument("--s3", action="store_true",
                    help="serve --repo from s3s-fs and run against it, alternately with the local repository "
                         "(same binary), and count the requests")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--syscalls", action="store_true")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--only", help="run only the commands whose label contains this")
    a = ap.parse_args()
    s3 = None
    if a.s3:
        if a.before:
            sys.exit("--s3 compares the local repository with S3, not two binaries: drop --before")
        s3 = S3(a.repo)
        s3.start(log_requests=False)
        binaries = [("local", a.pitr, a.repo), ("S3", a.pitr, s3.url())]
    elif a.before:
        binaries = [("before", a.before, a.repo), ("after", a.pitr, a.repo)]
    else:
        binaries = [("pitr", a.pitr, a.repo)]
    try:
        rows = measure(a, binaries, s3)
    finally:
        if s3:
            s3.remove()
    header = ["command"]
    for name, _, _ in binaries:
        header += [f"{name}: seconds, median (min–max)", f"{name}: peak RSS MiB"]
        if a.cold:
            header.append(f"{name}: seconds, cold cache")
        if a.syscalls:
            header.append(f"{name}: system calls")
    if len(binaries) == 2:
        header.append("output")
    if s3:
        header.append("S3 requests (one run)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def measure(a, binaries, s3):
    with tempfile.TemporaryDirectory() as cwd:
        newdir = str(Path(cwd) / "newdir")
        rows = []
        labels = [(label, args) for label, args in commands(a.target_time, newdir) if not a.only or a.only in label]
        for label, args in labels:
            times = {name: [] for name, _, _ in binaries}
            rss = {name: 0 for name, _, _ in binaries}
            outputs = {}
            for _ in range(a.runs):
                for name, pitr, repo in binaries:
                    seconds, kib, out = run(pitr, repo, args, cwd)
                    times[name].append(seconds)
                    rss[name] = max(rss[name], kib)
                    outputs[name] = normalized(out.replace(repo, "REPO"))
            row = [label]
            for name, pitr, repo in binaries:
                row += [fmt(times[name]), f"{rss[name] / 1024:.0f}"]
                if a.cold:
                    drop_caches()
                    row.append(f"{run(pitr, repo, args, cwd)[0]:.2f}")
                if a.syscalls:
                    row.append(syscalls(pitr, repo, args, cwd))
            if len(binaries) == 2:
                first, second = (name for name, _, _ in binaries)
                same = outputs[first] == outputs[second]
                row.append("same" if same else "**DIFFERS**")
                if not same:
                    for name in outputs:
                        Path(f"/tmp/scale-{name}-{label.split()[0]}.out").write_text(outputs[name])
            rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
        if s3:
            # The requests: one more run of each command, against a server that logs them.
            s3.start(log_requests=True)
            for row, (label, args) in zip(rows, labels):
                row.append(s3.requests(a.pitr, args, cwd))
                print(f"{label}: {row[-1]}", file=sys.stderr, flush=True)
        return rows


if __name__ == "__main__":
    main()
