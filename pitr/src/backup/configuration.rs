//! The server's configuration when it lies outside the data directory, as postgresql-common
//! (Debian, Ubuntu) keeps it: `/etc/postgresql/<version>/<cluster>/postgresql.conf` with
//! `data_directory` pointing elsewhere and `include_dir = 'conf.d'`, pg_hba.conf and
//! pg_ident.conf beside it. The data directory then holds no postgresql.conf, and a backup of it
//! alone could not be started.
//!
//! At a backup pitr asks the server where it read its configuration (`config_file`, `hba_file`,
//! `ident_file`) and, when that is outside the data directory, stores those files and every file
//! postgresql.conf includes with the backup ([`Configuration`] in the manifest), so that a
//! recovery on a fresh host needs the repository only. A restore writes them into the new data
//! directory as the copy's own configuration: postgresql.conf with its includes inlined and the
//! settings that name the original server's files disabled ([`conf::expand`]), pg_hba.conf and
//! pg_ident.conf beside it. The copy starts with a plain `pg_ctl -D`, never reads or edits the
//! original's files, and `pg_createcluster <version> <name> -d <dir>` can make it a
//! postgresql-common cluster of its own (it takes exactly these three files).
//!
//! Files the configuration only names (SSL keys and certificates, `ssl_passphrase_command`'s
//! program) are never stored: they are secrets or belong to the host. Running as root, pitr reads
//! only files the server's OS user can read itself, so that a configuration that user can edit
//! cannot make pitr copy a file of root's (`include_if_exists '/etc/shadow'`) into the repository.

mod conf;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::Serialize;

use super::manifest::{config_key, Configuration, FileEntry};
use super::restore::with_verified;
use crate::codec::{Codec, ObjectHeader};
use crate::error::{Error, Result};
use crate::fsio::{Dir, Perms};
use crate::pg::ctl::Owner;
use crate::pg::Server;
use crate::progress::Progress;
use crate::repo::Repo;

/// The largest configuration file pitr stores.
const MAX_FILE_SIZE: u64 = 4 << 20;

/// The server's configuration, read at a backup.
#[derive(Debug)]
pub(super) struct Found {
    data_directory: String,
    config_file: String,
    hba_file: String,
    ident_file: String,
    files: Vec<FoundFile>,
}

#[derive(Debug)]
struct FoundFile {
    path: String,
    bytes: Vec<u8>,
    mode: u32,
    mtime: i64,
}

/// The copy's own configuration a restore wrote, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnConfiguration {
    /// The original server's postgresql.conf: the copy's postgresql.conf is its content with the
    /// includes inlined.
    pub from: String,
    /// The original server's data directory.
    pub original_data_directory: String,
    /// The original's postgresql-common cluster, when its configuration lay in
    /// `/etc/postgresql/<version>/<cluster>/`.
    pub debian_cluster: Option<DebianCluster>,
}

/// A postgresql-common cluster: `pg_ctlcluster <version> <name> ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebianCluster {
    /// Its major version as postgresql-common names it (`15`).
    pub version: String,
    /// Its name (`main`).
    pub name: String,
}

impl DebianCluster {
    /// The cluster whose postgresql.conf is at `config_file`, if it lies where postgresql-common
    /// keeps one.
    pub fn of(config_file: &str) -> Option<DebianCluster> {
        let rest = config_file.strip_prefix("/etc/postgresql/")?;
        let mut parts = rest.split('/');
        let (version, name, file) = (parts.next()?, parts.next()?, parts.next()?);
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        (file == "postgresql.conf" && parts.next().is_none() && plain(version) && plain(name)).then(|| DebianCluster {
            version: version.to_string(),
            name: name.to_string(),
        })
    }
}

/// The server's configuration, when it lies outside `pgdata`; `None` when the data directory
/// holds it (it is then backed up with the other files). Refuses when the configuration cannot
/// be located or read, since a backup without it could not be started.
pub(super) async fn find(server: &Server, pgdata: &Path, progress: &dyn Progress) -> Result<Option<Found>> {
    let config_file = match server.setting("config_file").await {
        Ok(path) => conf::normalize(&path),
        Err(_) if pgdata.join("postgresql.conf").exists() => return Ok(None),
        Err(e) => {
            return Err(Error::Refused(format!(
                "{} holds no postgresql.conf and the server's config_file cannot be read ({e}): the backup must \
                 keep the configuration to be startable; GRANT pg_read_all_settings to the backup role",
                pgdata.display()
            )))
        }
    };
    if same_directory(Path::new(&config_file).parent(), pgdata) {
        return Ok(None);
    }
    let hba_file = conf::normalize(&server.setting("hba_file").await?);
    let ident_file = conf::normalize(&server.setting("ident_file").await?);
    let data_directory = server.setting("data_directory").await?;
    let owner = if rustix::process::geteuid().is_root() {
        Some(Owner::of(pgdata)?)
    } else {
        None
    };
    let mut files = ServerFiles {
        owner,
        found: Vec::new(),
    };
    let expanded = conf::expand(&config_file, &mut files)?;
    for missing in &expanded.missing {
        progress.warn(&format!(
            "{config_file} includes {missing}, which does not exist: the server will not start with this \
             configuration, nor will a copy recovered from this backup; fix the include"
        ));
    }
    for (setting, path) in [("hba_file", &hba_file), ("ident_file", &ident_file)] {
        if conf::Source::read(&mut files, path)?.is_none() {
            return Err(Error::Refused(format!(
                "the server's {setting} {path} does not exist: restore it (the server reads it at its next start) \
                 and back up again"
            )));
        }
    }
    Ok(Some(Found {
        data_directory,
        config_file,
        hba_file,
        ident_file,
        files: files.found,
    }))
}

/// Whether `dir` is `pgdata`, symbolic links resolved.
fn same_directory(dir: Option<&Path>, pgdata: &Path) -> bool {
    let Some(dir) = dir else { return false };
    match (fs::canonicalize(dir), fs::canonicalize(pgdata)) {
        (Ok(a), Ok(b)) => a == b,
        _ => dir == pgdata,
    }
}

/// The server's configuration files, read as they are now (what the server reads at its next
/// start), each kept once.
struct ServerFiles {
    /// The server's OS user, when pitr runs as root: only what it can read is read.
    owner: Option<Owner>,
    found: Vec<FoundFile>,
}

impl conf::Source for ServerFiles {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        // O_NONBLOCK: a FIFO named by an include must not block the open (a regular file reads
        // the same with it).
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path);
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read the server's configuration file", path)(e)),
        };
        let meta = file.metadata().map_err(Error::io("inspect", path))?;
        if !meta.is_file() {
            return Err(Error::Refused(format!(
                "{path}, part of the server's configuration, is not a regular file: pitr stores regular files only"
            )));
        }
        if let Some(owner) = &self.owner {
            if !readable_by(&meta, owner) {
                return Err(Error::Refused(format!(
                    "{path}, part of the server's configuration, belongs to uid {} with mode {:o}: its OS user {} \
                     cannot read it, so pitr (running as root) does not copy it; fix its owner or mode, or the \
                     directive that names it",
                    meta.uid(),
                    meta.mode() & 0o7777,
                    owner.name
                )));
            }
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(Error::Refused(format!(
                "{path}, part of the server's configuration, has {} bytes: more than the {} MiB pitr stores",
                meta.len(),
                MAX_FILE_SIZE >> 20
            )));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(Error::io("read the server's configuration file", path))?;
        if !self.found.iter().any(|f| f.path == path) {
            self.found.push(FoundFile {
                path: path.to_string(),
                bytes: bytes.clone(),
                mode: meta.mode() & 0o777,
                mtime: meta.mtime(),
            });
        }
        Ok(Some(bytes))
    }

    fn conf_files(&mut self, dir: &str) -> Result<Option<Vec<String>>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("list the configuration directory", dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("list the configuration directory", dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(Error::Refused(format!(
                    "{dir}, included by the server's configuration, holds a file whose name is not UTF-8: rename it"
                )));
            };
            let is_dir = fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
            names.push((name, is_dir));
        }
        Ok(Some(
            conf::conf_file_names(names)
                .into_iter()
                .map(|name| format!("{dir}/{name}"))
                .collect(),
        ))
    }
}

/// Whether the OS user `owner` may read a file with these owner, group and mode (its own
/// supplementary groups aside).
fn readable_by(meta: &fs::Metadata, owner: &Owner) -> bool {
    let mode = meta.mode();
    (meta.uid() == owner.uid && mode & 0o400 != 0)
        || (meta.gid() == owner.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

/// Stores the files found under `config/` in the backup directory `dir`.
pub(super) fn store(repo: &Repo, dir: &str, found: Found, codec: &Codec) -> Result<Configuration> {
    let mut files = Vec::new();
    for file in found.files {
        let key = config_key(dir, &file.path);
        let object = codec.encode(&file.bytes);
        repo.storage().put_if_absent_deferred(&key, &object)?;
        let header = ObjectHeader::parse(&object, &key)?;
        files.push(FileEntry {
            path: file.path,
            size: header.raw_len,
            mode: file.mode,
            mtime: file.mtime,
            crc32: header.raw_crc,
            stored_size: object.len() as u64,
            parts: vec![],
            groups: vec![],
            stat: None,
        });
    }
    Ok(Configuration {
        data_directory: found.data_directory,
        config_file: found.config_file,
        hba_file: found.hba_file,
        ident_file: found.ident_file,
        files,
    })
}

/// Writes the copy's own configuration into the restored data directory `target`:
/// postgresql.conf (expanded), pg_hba.conf and pg_ident.conf, each verified against the manifest.
pub(super) fn write(
    repo: &Repo,
    dir: &str,
    configuration: &Configuration,
    target: &Dir,
    perms: &Perms,
) -> Result<OwnConfiguration> {
    let mut stored = StoredFiles(BTreeMap::new());
    for piece in configuration.pieces() {
        let bytes = with_verified(repo, dir, &piece, |raw| Ok(raw.to_vec()))?;
        stored.0.insert(piece.file.path.clone(), bytes);
    }
    let expanded = conf::expand(&configuration.config_file, &mut stored)?;
    let mut postgresql_conf = format!(
        "# pitr: the configuration of the server whose data directory was {}, read from {} at the backup:\n\
         # pitr: its includes are inlined, the settings that named that server's own files disabled.\n",
        configuration.data_directory, configuration.config_file
    )
    .into_bytes();
    postgresql_conf.extend_from_slice(&expanded.text);
    let file_perms = Perms {
        file_mode: 0o600,
        ..*perms
    };
    for (name, bytes) in [
        ("postgresql.conf", &postgresql_conf),
        ("pg_hba.conf", stored.get(&configuration.hba_file)?),
        ("pg_ident.conf", stored.get(&configuration.ident_file)?),
    ] {
        target
            .replace(name, bytes, &file_perms)
            .map_err(Error::io("write", target.path_of(name)))?;
    }
    Ok(OwnConfiguration {
        from: configuration.config_file.clone(),
        original_data_directory: configuration.data_directory.clone(),
        debian_cluster: DebianCluster::of(&configuration.config_file),
    })
}

/// A backup's configuration files, read from the repository.
struct StoredFiles(BTreeMap<String, Vec<u8>>);

impl StoredFiles {
    fn get(&self, path: &str) -> Result<&Vec<u8>> {
        self.0.get(path).ok_or_else(|| Error::Corrupt {
            what: "the backup's configuration".into(),
            reason: format!("{path} is not among its files"),
        })
    }
}

impl conf::Source for StoredFiles {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(path).cloned())
    }

    /// The stored files of `dir` that `include_dir` took at the backup: the backup stored every
    /// one of them, and only files that were in `dir` are stored under it. (A directory missing
    /// at the backup, which the backup warned about, reads as an empty one.)
    fn conf_files(&mut self, dir: &str) -> Result<Option<Vec<String>>> {
        let prefix = format!("{dir}/");
        let names: Vec<(String, bool)> = self
            .0
            .keys()
            .filter_map(|path| path.strip_prefix(&prefix))
            .map(|rest| match rest.split_once('/') {
                Some((sub, _)) => (sub.to_string(), true),
                None => (rest.to_string(), false),
            })
            .collect();
        Ok(Some(
            conf::conf_file_names(names)
                .into_iter()
                .map(|name| format!("{dir}/{name}"))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn found(files: &[(&str, &str)]) -> Found {
        let main = "/etc/postgresql/15/main";
        Found {
            data_directory: "/var/lib/postgresql/15/main".into(),
            config_file: format!("{main}/postgresql.conf"),
            hba_file: format!("{main}/pg_hba.conf"),
            ident_file: format!("{main}/pg_ident.conf"),
            files: files
                .iter()
                .map(|(name, text)| FoundFile {
                    path: format!("{main}/{name}"),
                    bytes: text.as_bytes().to_vec(),
                    mode: 0o640,
                    mtime: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn a_fifo_named_by_the_configuration_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("extra.conf");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let mut files = ServerFiles {
            owner: None,
            found: Vec::new(),
        };
        let err = conf::Source::read(&mut files, fifo.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("is not a regular file"), "{err}");
    }

    #[test]
    fn a_stored_configuration_is_written_as_the_copys_own() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let files = [
            (
                "postgresql.conf",
                "data_directory = '/var/lib/postgresql/15/main'\nport = 5432\ninclude_dir = 'conf.d'\n",
            ),
            ("conf.d/archive.conf", "archive_mode = on\n"),
            ("pg_hba.conf", "local all all peer\n"),
            ("pg_ident.conf", "# empty\n"),
        ];
        let configuration = store(&repo, "daily/b/", found(&files), &Codec::default()).unwrap();
        assert_eq!(configuration.files.len(), 4);
        let target_dir = tempfile::tempdir().unwrap();
        let target = Dir::open(target_dir.path()).unwrap();
        let own = write(&repo, "daily/b/", &configuration, &target, &Perms::private(None)).unwrap();
        assert_eq!(own.debian_cluster.unwrap().name, "main");
        let read = |name: &str| fs::read_to_string(target_dir.path().join(name)).unwrap();
        let conf = read("postgresql.conf");
        assert!(
            conf.contains(
                "\n# pitr: disabled, the original server's own: data_directory = '/var/lib/postgresql/15/main'\n"
            ),
            "{conf}"
        );
        assert!(conf.contains("\narchive_mode = on\n"), "{conf}");
        assert_eq!(read("pg_hba.conf"), "local all all peer\n");
        assert_eq!(read("pg_ident.conf"), "# empty\n");
        let mode = fs::metadata(target_dir.path().join("pg_hba.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A stored file that is not what the manifest says is refused.
        let key = config_key("daily/b/", "/etc/postgresql/15/main/conf.d/archive.conf");
        repo.storage().delete(&key).unwrap();
        repo.storage()
            .put_if_absent(&key, &Codec::default().encode(b"archive_mode = off\n"))
            .unwrap();
        let err = write(&repo, "daily/b/", &configuration, &target, &Perms::private(None)).unwrap_err();
        assert!(err.to_string().contains("the manifest says"), "{err}");
    }

    #[test]
    fn as_root_only_what_the_servers_user_can_read_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "x").unwrap();
        let meta = fs::metadata(&path).unwrap();
        let mine = Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            name: "me".into(),
        };
        let stranger = Owner {
            uid: meta.uid() + 1000,
            gid: meta.gid() + 1000,
            name: "stranger".into(),
        };
        for (mode, mine_reads, stranger_reads) in [(0o600, true, false), (0o640, true, false), (0o644, true, true)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(readable_by(&meta, &mine), mine_reads, "{mode:o}");
            assert_eq!(readable_by(&meta, &stranger), stranger_reads, "{mode:o}");
        }
        let group = Owner {
            gid: meta.gid(),
            ..stranger.clone()
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(readable_by(&fs::metadata(&path).unwrap(), &group));
        let mut files = ServerFiles {
            owner: Some(stranger),
            found: Vec::new(),
        };
        let err = conf::Source::read(&mut files, path.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("cannot read it, so pitr"), "{err}");
        assert!(files.found.is_empty());
    }

    #[test]
    fn debian_clusters_are_recognized_by_their_configuration_path() {
        assert_eq!(
            DebianCluster::of("/etc/postgresql/15/main/postgresql.conf"),
            Some(DebianCluster {
                version: "15".into(),
                name: "main".into()
            })
        );
        for other in [
            "/etc/postgresql/15/main/conf.d/postgresql.conf",
            "/etc/postgresql/15/postgresql.conf",
            "/srv/pg/postgresql.conf",
            "/etc/postgresql/15/my cluster/postgresql.conf",
        ] {
            assert_eq!(DebianCluster::of(other), None, "{other}");
        }
    }
}
