//! The measuring half of bench/dedup_study.py (issue #18). Two commands:
//!
//! `dedup_probe scan PGDATA STATE_DIR OUT_JSON` reads every file a pitr backup would copy from
//! PGDATA (pitr's exclusions, see docs/design.md "Backups"), cuts each into pieces by every scheme
//! (fixed sizes aligned to file offsets, and FastCDC), and counts the pieces whose content (BLAKE3)
//! no earlier scan with the same STATE_DIR has seen: their bytes, their zstd-3 size, their number.
//! STATE_DIR keeps the hashes seen so far, one file per scheme. OUT_JSON gets those counts and,
//! per file, its size, mtime, ctime, inode and BLAKE3, with a stat taken before and after the read.
//!
//! `dedup_probe readhash PGDATA LIST` reads the files LIST names (one path relative to PGDATA a
//! line) and hashes them in 8 KiB pieces with BLAKE3, on one thread, and prints the seconds and
//! bytes as JSON: the least work of a deduplicating backup that reads those files.
//!
//! `dedup_probe hashspeed SECONDS` prints BLAKE3 and SHA-256 throughput on one thread, as JSON.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::Digest;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// How a file is cut into pieces.
#[derive(Clone, Copy)]
enum Scheme {
    /// Pieces of this many bytes at offsets 0, size, 2 × size, ...; the last one shorter.
    Fixed(usize),
    /// FastCDC (2020) with these minimum, average and maximum sizes.
    Cdc { min: usize, avg: usize, max: usize },
}

impl Scheme {
    fn name(self) -> String {
        match self {
            Scheme::Fixed(size) => format!("fixed_{}k", size / KIB),
            Scheme::Cdc { avg, .. } => format!("cdc_{}k", avg / KIB),
        }
    }

    /// (offset, length) of each piece of `data`.
    fn cut(self, data: &[u8]) -> Vec<(usize, usize)> {
        match self {
            Scheme::Fixed(size) => (0..data.len())
                .step_by(size)
                .map(|o| (o, size.min(data.len() - o)))
                .collect(),
            Scheme::Cdc { min, avg, max } => fastcdc::v2020::FastCDC::new(data, min as u32, avg as u32, max as u32)
                .map(|c| (c.offset, c.length))
                .collect(),
        }
    }
}

const SCHEMES: [Scheme; 8] = [
    Scheme::Fixed(8 * KIB),
    Scheme::Fixed(64 * KIB),
    Scheme::Fixed(256 * KIB),
    Scheme::Fixed(MIB),
    Scheme::Fixed(4 * MIB),
    Scheme::Fixed(16 * MIB),
    Scheme::Cdc {
        min: 16 * KIB,
        avg: 64 * KIB,
        max: 256 * KIB,
    },
    Scheme::Cdc {
        min: 256 * KIB,
        avg: MIB,
        max: 4 * MIB,
    },
];

/// What one scheme found in one scan.
#[derive(Default)]
struct Tally {
    pieces: u64,
    distinct: u64,
    bytes: u64,
    new_objects: u64,
    new_bytes: u64,
    new_zstd: u64,
    /// zstd-3 size of the new pieces put one after another into frames of [`FRAME`] bytes, as a
    /// pack of small pieces could store them.
    new_zstd_framed: u64,
    /// New pieces not yet in a frame.
    frame: Vec<u8>,
}

/// The bytes of new pieces compressed together in `new_zstd_framed`.
const FRAME: usize = 256 * KIB;

impl Tally {
    fn add_to_frame(&mut self, piece: &[u8], zstd: &mut zstd::bulk::Compressor, last: bool) -> io::Result<()> {
        self.frame.extend_from_slice(piece);
        if self.frame.len() >= FRAME || (last && !self.frame.is_empty()) {
            self.new_zstd_framed += zstd.compress(&self.frame)?.len() as u64;
            self.frame.clear();
        }
        Ok(())
    }
}

/// One scheme's hashes seen by earlier scans, and this scan's.
struct Seen {
    before: HashSet<[u8; 32]>,
    now: HashSet<[u8; 32]>,
    added: Vec<[u8; 32]>,
}

impl Seen {
    fn load(path: &Path) -> io::Result<Seen> {
        let raw = match fs::read(path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let before = raw.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
        Ok(Seen {
            before,
            now: HashSet::new(),
            added: Vec::new(),
        })
    }

    fn save(&self, path: &Path) -> io::Result<()> {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&self.added.concat())
    }
}

/// A file's stat, as far as the study needs it.
#[derive(PartialEq, Clone, Copy)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stat {
    fn of(path: &Path) -> io::Result<Stat> {
        let m = fs::symlink_metadata(path)?;
        Ok(Stat {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        })
    }
}

/// Directories whose contents a backup leaves out (only the directory is recorded): a copy of
/// `EMPTIED_TOP_DIRS` in pitr/src/backup/source.rs (this probe stays outside pitr's workspace, so
/// it cannot import it); keep the two equal.
const CONTENTS_EXCLUDED: [&str; 8] = [
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
const TOP_FILES_EXCLUDED: [&str; 7] = [
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

fn is_temp_relation(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.starts_with(|c: char| c.is_ascii_digit())
        })
}

fn excluded(rel: &Path, name: &str, top: bool, is_dir: bool) -> bool {
    if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") || name == ".DS_Store" {
        return true;
    }
    if top && !is_dir && TOP_FILES_EXCLUDED.contains(&name) {
        return true;
    }
    let in_db_dir = rel.parent().is_some_and(|p| p.starts_with("base"));
    !is_dir && in_db_dir && is_temp_relation(name)
}

/// Every regular file a backup copies, relative to `pgdata`, sorted.
fn walk(pgdata: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(dir) = stack.pop() {
        if CONTENTS_EXCLUDED.iter().any(|d| dir == Path::new(d)) {
            continue;
        }
        for entry in fs::read_dir(pgdata.join(&dir))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = dir.join(&name);
            let kind = entry.file_type()?;
            if excluded(&rel, &name, dir.as_os_str().is_empty(), kind.is_dir()) {
                continue;
            }
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn scan(pgdata: &Path, state: &Path, out: &Path) -> io::Result<()> {
    fs::create_dir_all(state)?;
    let mut seen: Vec<Seen> = SCHEMES
        .iter()
        .map(|s| Seen::load(&state.join(s.name() + ".bin")))
        .collect::<io::Result<_>>()?;
    let mut tallies: Vec<Tally> = SCHEMES.iter().map(|_| Tally::default()).collect();
    let mut zstd = zstd::bulk::Compressor::new(3)?;
    let mut files_json = Vec::new();
    let started = Instant::now();
    let mut data = Vec::new();
    for rel in walk(pgdata)? {
        let path = pgdata.join(&rel);
        let Ok(before) = Stat::of(&path) else { continue };
        data.clear();
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let after = Stat::of(&path)?;
        for ((scheme, seen), tally) in SCHEMES.iter().zip(seen.iter_mut()).zip(tallies.iter_mut()) {
            for (offset, len) in scheme.cut(&data) {
                let piece = &data[offset..offset + len];
                let key = *blake3::hash(piece).as_bytes();
                tally.pieces += 1;
                tally.bytes += len as u64;
                if !seen.now.insert(key) {
                    continue;
                }
                tally.distinct += 1;
                if seen.before.contains(&key) {
                    continue;
                }
                seen.added.push(key);
                tally.new_objects += 1;
                tally.new_bytes += len as u64;
                tally.new_zstd += zstd.compress(piece)?.len() as u64;
                tally.add_to_frame(piece, &mut zstd, false)?;
            }
        }
        files_json.push(format!(
            "{{\"path\":\"{}\",\"size\":{},\"read_size\":{},\"mtime_ns\":{},\"ctime_ns\":{},\"ino\":{},\"stable\":{},\"blake3\":\"{}\"}}",
            rel.display(),
            before.size,
            data.len(),
            before.mtime_ns,
            before.ctime_ns,
            before.ino,
            before == after,
            hex(blake3::hash(&data).as_bytes())
        ));
    }
    for t in tallies.iter_mut() {
        t.add_to_frame(&[], &mut zstd, true)?;
    }
    let mut schemes_json = Vec::new();
    for ((scheme, s), t) in SCHEMES.iter().zip(&seen).zip(&tallies) {
        s.save(&state.join(scheme.name() + ".bin"))?;
        schemes_json.push(format!(
            "\"{}\":{{\"pieces\":{},\"distinct\":{},\"bytes\":{},\"new_objects\":{},\"new_bytes\":{},\"new_zstd\":{},\"new_zstd_framed\":{},\"repository_objects\":{}}}",
            scheme.name(),
            t.pieces,
            t.distinct,
            t.bytes,
            t.new_objects,
            t.new_bytes,
            t.new_zstd,
            t.new_zstd_framed,
            s.before.len() + s.added.len()
        ));
    }
    let json = format!(
        "{{\"seconds\":{:.3},\"schemes\":{{{}}},\"files\":[\n{}\n]}}\n",
        started.elapsed().as_secs_f64(),
        schemes_json.join(","),
        files_json.join(",\n")
    );
    fs::write(out, json)
}

fn readhash(pgdata: &Path, list: &Path) -> io::Result<()> {
    let started = Instant::now();
    let (mut bytes, mut sink, mut buf) = (0u64, 0u8, Vec::new());
    for rel in fs::read_to_string(list)?.lines().filter(|l| !l.is_empty()) {
        buf.clear();
        match File::open(pgdata.join(rel)).and_then(|mut f| f.read_to_end(&mut buf)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        for piece in buf.chunks(8 * KIB) {
            sink ^= blake3::hash(piece).as_bytes()[0];
        }
        bytes += buf.len() as u64;
    }
    std::hint::black_box(sink);
    println!(
        "{{\"seconds\":{:.3},\"bytes\":{bytes}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// MB/s (10^6 bytes) of `hash` over a 1 MiB buffer cut into `piece`-byte inputs, for `seconds`.
fn throughput(buf: &[u8], piece: usize, seconds: f64, hash: &dyn Fn(&[u8]) -> u8) -> f64 {
    let started = Instant::now();
    let (mut bytes, mut sink) = (0u64, 0u8);
    while started.elapsed().as_secs_f64() < seconds {
        for chunk in buf.chunks(piece) {
            sink ^= hash(chunk);
        }
        bytes += buf.len() as u64;
    }
    std::hint::black_box(sink);
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn hashspeed(seconds: f64) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let buf: Vec<u8> = (0..MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let blake3 = |d: &[u8]| blake3::hash(d).as_bytes()[0];
    let sha256 = |d: &[u8]| sha2::Sha256::digest(d)[0];
    let mut rows = Vec::new();
    for piece in [MIB, 64 * KIB, 8 * KIB] {
        for (name, f) in [("blake3", &blake3 as &dyn Fn(&[u8]) -> u8), ("sha256", &sha256)] {
            rows.push(format!(
                "{{\"hash\":\"{name}\",\"input_bytes\":{piece},\"mb_per_s\":{:.0}}}",
                throughput(&buf, piece, seconds, f)
            ));
        }
    }
    println!(
        "{{\"cpu_sha_ni\":{},\"cpu_avx2\":{},\"rows\":[{}]}}",
        std::is_x86_feature_detected!("sha"),
        std::is_x86_feature_detected!("avx2"),
        rows.join(",")
    );
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["scan", pgdata, state, out] => scan(Path::new(pgdata), Path::new(state), Path::new(out)),
        ["readhash", pgdata, list] => readhash(Path::new(pgdata), Path::new(list)),
        ["hashspeed", seconds] => {
            hashspeed(seconds.parse().map_err(|_| io::Error::other("SECONDS: a number"))?);
            Ok(())
        }
        _ => Err(io::Error::other(
            "usage: dedup_probe scan PGDATA STATE_DIR OUT_JSON | readhash PGDATA LIST | hashspeed SECONDS",
        )),
    }
}
