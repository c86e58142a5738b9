//! The repository's layout on top of [`Storage`]: where each kind of file lives, and the metadata
//! that binds a repository to one cluster.
//!
//! ```text
//! <repo>/repo.json                         metadata, written once on first use
//! <repo>/wal/<TTTTTTTTXXXXXXXX>/<name>     segments, .partial and .backup files, grouped by
//!                                          timeline + log id so no directory grows without bound
//! <repo>/wal/history/<TTTTTTTT>.history    timeline history files, kept forever
//! <repo>/<tier>/<id>/files/<path>          a base backup's files (tier: hourly, daily, weekly)
//! <repo>/<tier>/<id>/backup_label          ... the label from pg_backup_stop (+ tablespace_map)
//! <repo>/<tier>/<id>/backup.manifest       ... and its manifest, written last: the commit point
//! <repo>/locks/<name>.lock                 advisory locks (one backup at a time)
//! ```
//!
//! Every file under `wal/` is a [`codec`](crate::codec) object: it records its compression and
//! the CRC-32 of the original bytes, so integrity can be checked without a server.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{LocalStorage, ObjectMeta, PutOutcome, Storage};
use crate::wal::WalFileName;

/// The key of the metadata object.
const METADATA_KEY: &str = "repo.json";
/// The version of the on-disk layout this pitr writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The cluster a repository belongs to, recorded on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoInfo {
    /// Version of the repository layout.
    pub format_version: u32,
    /// PostgreSQL major version of the cluster.
    pub pg_version: u32,
    /// The cluster's system identifier (pg_control, and every segment's long page header).
    pub system_identifier: u64,
    /// The cluster's WAL segment size in bytes.
    pub wal_segment_size: u32,
}

/// A repository: storage plus layout.
pub struct Repo {
    storage: Box<dyn Storage>,
}

impl Repo {
    /// The repository in an existing local directory.
    pub fn open_local(root: impl Into<std::path::PathBuf>) -> Result<Repo> {
        Ok(Repo {
            storage: Box::new(LocalStorage::open(root)?),
        })
    }

    /// The storage underneath, for modules that keep their own objects (backups).
    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        let root = self.storage.describe("");
        match root.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed.to_string(),
            _ => root,
        }
    }

    /// The recorded cluster, or `None` for a repository nothing was written to yet.
    pub fn info(&self) -> Result<Option<RepoInfo>> {
        let Some(bytes) = self.storage.get(METADATA_KEY)? else {
            return Ok(None);
        };
        let info: RepoInfo = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            what: self.storage.describe(METADATA_KEY),
            reason: format!("unreadable repository metadata ({e})"),
        })?;
        if info.format_version != FORMAT_VERSION {
            return Err(Error::Repo {
                path: self.location().into(),
                reason: format!(
                    "has layout version {}, this pitr reads version {FORMAT_VERSION}: use a matching pitr",
                    info.format_version
                ),
            });
        }
        Ok(Some(info))
    }

    /// Records `info` as the repository's cluster unless one is recorded already, and returns the
    /// recorded one: the caller compares. Safe against concurrent first writers.
    pub fn claim(&self, info: RepoInfo) -> Result<RepoInfo> {
        let json = serde_json::to_vec_pretty(&info).expect("RepoInfo serializes");
        match self.storage.put_if_absent(METADATA_KEY, &json)? {
            PutOutcome::Created => Ok(info),
            PutOutcome::AlreadyExists => Ok(self.info()?.expect("metadata exists")),
        }
    }

    /// Stores an encoded WAL object, create-only.
    pub fn put_wal(&self, name: &WalFileName, object: &[u8]) -> Result<PutOutcome> {
        self.storage.put_if_absent(&wal_key(name), object)
    }

    /// Makes an archived WAL file durable (see [`Storage::sync`]).
    pub fn sync_wal(&self, name: &WalFileName) -> Result<()> {
        self.storage.sync(&wal_key(name))
    }

    /// Reads an encoded WAL object, `None` when it is not archived.
    pub fn get_wal(&self, name: &WalFileName) -> Result<Option<Vec<u8>>> {
        self.storage.get(&wal_key(name))
    }

    /// Whether a WAL file is archived.
    pub fn has_wal(&self, name: &WalFileName) -> Result<bool> {
        Ok(self.storage.head(&wal_key(name))?.is_some())
    }

    /// When a WAL file was archived, or `None` when it is not.
    pub fn wal_archived_at(&self, name: &WalFileName) -> Result<Option<std::time::SystemTime>> {
        Ok(self.head_wal(name)?.map(|m| m.modified))
    }

    /// Stored size and archive time of a WAL file, or `None` when it is not archived.
    pub fn head_wal(&self, name: &WalFileName) -> Result<Option<ObjectMeta>> {
        self.storage.head(&wal_key(name))
    }

    /// Every archived WAL file, sorted by name within each `wal/` directory.
    pub fn list_wal(&self) -> Result<Vec<WalFileName>> {
        let mut names = Vec::new();
        for dir in self.storage.list("wal/")? {
            for name in self.storage.list(&format!("wal/{dir}"))? {
                // Anything that is not a WAL file name is not ours to interpret (or delete).
                names.extend(WalFileName::parse(&name).ok());
            }
        }
        Ok(names)
    }

    /// Deletes an archived WAL file.
    pub fn delete_wal(&self, name: &WalFileName) -> Result<()> {
        self.storage.delete(&wal_key(name))
    }

    /// Where a WAL file is stored, for messages.
    pub fn describe_wal(&self, name: &WalFileName) -> String {
        self.storage.describe(&wal_key(name))
    }
}

/// The directory of one backup: `<tier>/<id>/`.
pub fn backup_dir(tier: &str, id: &str) -> String {
    format!("{tier}/{id}/")
}

/// The key of an archived WAL file.
fn wal_key(name: &WalFileName) -> String {
    match name {
        WalFileName::History(_) => format!("wal/history/{name}"),
        WalFileName::Segment(_) | WalFileName::Partial(_) | WalFileName::Backup(..) => {
            let text = name.to_string();
            format!("wal/{}/{text}", &text[..16])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keys_group_by_timeline_and_log() {
        let key = |n: &str| wal_key(&WalFileName::parse(n).unwrap());
        assert_eq!(
            key("0000000100000002000000FF"),
            "wal/0000000100000002/0000000100000002000000FF"
        );
        assert_eq!(key("00000003.history"), "wal/history/00000003.history");
        assert_eq!(
            key("000000010000000000000002.00000028.backup"),
            "wal/0000000100000000/000000010000000000000002.00000028.backup"
        );
        assert_eq!(
            key("000000010000000000000005.partial"),
            "wal/0000000100000000/000000010000000000000005.partial"
        );
    }

    #[test]
    fn the_first_claim_wins() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        assert_eq!(repo.info().unwrap(), None);
        let first = RepoInfo {
            format_version: 1,
            pg_version: 15,
            system_identifier: 7,
            wal_segment_size: 1 << 24,
        };
        assert_eq!(repo.claim(first).unwrap(), first);
        let second = RepoInfo {
            system_identifier: 8,
            ..first
        };
        assert_eq!(repo.claim(second).unwrap(), first);
        assert_eq!(repo.info().unwrap(), Some(first));
    }
}
