//! Logical dumps in the runbook's format, `pg_dump -Fc | gzip` saved as `*.backup.gz`: the gzip
//! stream must decompress whole with its checksums (`gzip -t`), and `pg_restore --list` must read
//! the archive's table of contents from it, as the runbook's verify_backup.sh checks.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};
use crate::pg::ctl;

/// A dump that passed both checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoundDump {
    /// Bytes after decompression.
    pub bytes: u64,
    /// Entries in its table of contents.
    pub entries: usize,
}

/// Checks the dump at `path`: `Ok(Err(reason))` when it is corrupt, `Err` when it could not be
/// checked at all.
pub fn check_dump(path: &Path) -> Result<std::result::Result<SoundDump, String>> {
    let bytes = match io::copy(&mut decompress(path)?, &mut io::sink()) {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Err(format!("the gzip test fails: {e}"))),
    };
    Ok(list_contents(path)?.map(|entries| SoundDump { bytes, entries }))
}

fn decompress(path: &Path) -> Result<MultiGzDecoder<BufReader<File>>> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    Ok(MultiGzDecoder::new(BufReader::new(file)))
}

/// Runs `pg_restore --list` on the decompressed dump; the number of entries it lists.
fn list_contents(path: &Path) -> Result<std::result::Result<usize, String>> {
    let program = pg_restore();
    let mut child = Command::new(&program)
        .arg("--list")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Refused(format!(
                "cannot run {}: {e}; checking a dump needs pg_restore: install the PostgreSQL client programs \
                 (Debian: apt-get install postgresql-client) or set PITR_PG_BINDIR",
                program.display()
            ))
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let output = std::thread::scope(|scope| {
        // pg_restore may stop reading once it has the table of contents: a closed pipe is fine.
        scope.spawn(move || decompress(path).map(|mut dump| io::copy(&mut dump, &mut stdin)));
        child.wait_with_output()
    })
    .map_err(Error::io("run", &program))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or("no message");
        return Ok(Err(format!(
            "pg_restore --list cannot read it ({}): {first}",
            output.status
        )));
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(Ok(listing
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count()))
}

/// The newest installed pg_restore (it reads dumps of every older version), else the one on PATH.
fn pg_restore() -> PathBuf {
    ctl::newest_bindir()
        .ok()
        .map(|(dir, _)| dir.join("pg_restore"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "pg_restore".into())
}
