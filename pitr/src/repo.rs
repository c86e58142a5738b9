//! The repository's layout on top of [`Storage`]: where each kind of file lives, and the metadata
//! that binds a repository to one cluster.
//!
//! ```text
//! <repo>/repo.json                         metadata: the cluster, written once (create-repo, or
//!                                          the first segment or backup of an empty repository)
//! <repo>/wal/.pitr-archive                 says wal/ is the archive's (a missing or unmounted
//!                                          wal/ lacks it: archive-get then fails, never "absent")
//! <repo>/wal/<TTTTTTTTXXXXXXXX>/<name>     segments, .partial and .backup files, grouped by
//!                                          timeline + log id so no directory grows without bound
//! <repo>/wal/history/<TTTTTTTT>.history    timeline history files, kept forever
//! <repo>/<tier>/<id>/files/<path>          a base backup's files (tier: hourly, daily, weekly)
//! <repo>/<tier>/<id>/backup_label          ... the label from pg_backup_stop (+ tablespace_map)
//! <repo>/<tier>/<id>/backup.incomplete     ... a marker while the backup is taken (or deleted)
//! <repo>/<tier>/<id>/backup.manifest.copy  ... a copy of the manifest, written just before it
//! <repo>/<tier>/<id>/backup.manifest       ... and its manifest, written last: the commit point
//! <repo>/locks/<name>.lock                 advisory locks (one backup at a time)
//! ```
//!
//! Every file under `wal/` is a [`codec`](crate::codec) object: it records its compression and
//! the CRC-32 of the original bytes, so integrity can be checked without a server. `repo.json` is
//! a checksummed JSON record ([`codec::json`](crate::codec::json)).

use serde::{Deserialize, Serialize};

use crate::codec::{self, json};
use crate::error::{Error, Result};
use crate::storage::{LocalStorage, ObjectMeta, PutOutcome, Storage};
use crate::wal::{LongPageHeader, WalFileName};

/// The key of the metadata object.
const METADATA_KEY: &str = "repo.json";
/// The key of the object that marks `wal/` as this repository's archive.
const WAL_MARKER_KEY: &str = "wal/.pitr-archive";
/// Top-level directories that hold a repository's data (locks do not count).
const DATA_DIRS: [&str; 5] = ["wal/", "hourly/", "daily/", "weekly/", "restore_points/"];
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

/// What [`Repo::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Created {
    /// repo.json was written into an empty repository.
    Created,
    /// The repository was created for this cluster before: nothing changed.
    AlreadyCreated,
    /// repo.json was missing while the repository held data of exactly this cluster (checked
    /// against its newest segment and its backups): it was written again.
    Recreated,
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
        let info: RepoInfo = json::from_slice(&bytes, &self.storage.describe(METADATA_KEY))?;
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

    /// Records `info` as the repository's cluster on first use (the first segment archived, the
    /// first backup) unless one is recorded already, and returns the recorded one: the caller
    /// compares. Safe against concurrent first writers. A repository that holds data but no
    /// repo.json is never claimed: repo.json was lost, and another cluster must not take the
    /// repository over (`pitr create-repo` restores it after checking the data).
    pub fn claim(&self, info: RepoInfo) -> Result<RepoInfo> {
        if let Some(recorded) = self.info()? {
            return Ok(recorded);
        }
        if self.holds_data()? {
            return Err(self.lost_metadata());
        }
        self.write_metadata(info)
    }

    /// Creates the repository for the cluster `info` on purpose (`pitr create-repo`): after this,
    /// archive-get answers "absent" for a file it does not hold, even before anything is archived.
    /// Running it again for the same cluster changes nothing; another cluster is refused. When
    /// repo.json was lost but data remains, it is written again only if the newest archived
    /// segment and every readable backup manifest belong to `info`'s cluster.
    pub fn create(&self, info: RepoInfo, manifests_cluster: &[(String, (u64, u32, u32))]) -> Result<Created> {
        if let Some(recorded) = self.info()? {
            if recorded != info {
                return Err(Error::Refused(format!(
                    "repository {} was created for cluster {} (PostgreSQL {}, {}-byte segments), not for cluster {} \
                     (PostgreSQL {}, {}-byte segments): use this cluster's own repository",
                    self.location(),
                    recorded.system_identifier,
                    recorded.pg_version,
                    recorded.wal_segment_size,
                    info.system_identifier,
                    info.pg_version,
                    info.wal_segment_size
                )));
            }
            self.storage.put_if_absent(WAL_MARKER_KEY, MARKER_TEXT)?;
            return Ok(Created::AlreadyCreated);
        }
        if !self.holds_data()? {
            let recorded = self.write_metadata(info)?;
            return Ok(if recorded == info {
                Created::Created
            } else {
                Created::AlreadyCreated
            });
        }
        self.check_data_belongs_to(info, manifests_cluster)?;
        self.write_metadata(info)?;
        Ok(Created::Recreated)
    }

    fn write_metadata(&self, info: RepoInfo) -> Result<RepoInfo> {
        self.storage.put_if_absent(WAL_MARKER_KEY, MARKER_TEXT)?;
        match self.storage.put_if_absent(METADATA_KEY, &json::to_vec(&info))? {
            PutOutcome::Created => Ok(info),
            PutOutcome::AlreadyExists => Ok(self.info()?.expect("metadata exists")),
        }
    }

    /// Whether anything but locks is stored (WAL, backups, restore points).
    fn holds_data(&self) -> Result<bool> {
        for dir in DATA_DIRS {
            let names = self.storage.list(dir)?;
            if names.iter().any(|n| format!("{dir}{n}") != WAL_MARKER_KEY) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn lost_metadata(&self) -> Error {
        Error::Repo {
            path: self.location().into(),
            reason: "holds WAL or backups but no repo.json, the record of its cluster: it was deleted or lost. \
                     Nothing was written. Restore repo.json from a copy, or run `pitr create-repo` against \
                     this repository's own server, which checks the stored data before writing it again"
                .into(),
        }
    }

    /// `create` over data without repo.json: the newest archived segment and the backups must
    /// all be of `info`'s cluster.
    fn check_data_belongs_to(&self, info: RepoInfo, manifests: &[(String, (u64, u32, u32))]) -> Result<()> {
        let found = (info.system_identifier, info.pg_version, info.wal_segment_size);
        let mut checked = 0;
        if let Some((name, header)) = self.newest_segment_header()? {
            let of_segment = (header.system_identifier, header.pg_version, header.segment_size.bytes());
            if of_segment != found {
                return Err(self.not_this_cluster(&format!("the archived segment {name}"), of_segment, info));
            }
            checked += 1;
        }
        for (id, cluster) in manifests {
            if *cluster != found {
                return Err(self.not_this_cluster(&format!("backup {id}"), *cluster, info));
            }
            checked += 1;
        }
        if checked == 0 {
            return Err(Error::Refused(format!(
                "repository {} holds data but neither a readable segment nor a readable backup manifest to \
                 check its cluster by: restore repo.json from a copy",
                self.location()
            )));
        }
        Ok(())
    }

    fn not_this_cluster(&self, what: &str, (sysid, version, size): (u64, u32, u32), info: RepoInfo) -> Error {
        Error::Refused(format!(
            "repository {} has no repo.json and {what} is of cluster {sysid} (PostgreSQL {version}, {size}-byte \
             segments), not of the server's cluster {} (PostgreSQL {}, {}-byte segments): nothing was written; \
             this repository belongs to another cluster",
            self.location(),
            info.system_identifier,
            info.pg_version,
            info.wal_segment_size
        ))
    }

    /// The page header of the newest archived segment, when one is archived.
    fn newest_segment_header(&self) -> Result<Option<(WalFileName, LongPageHeader)>> {
        let newest = self
            .list_wal()?
            .into_iter()
            .filter(|n| matches!(n, WalFileName::Segment(_)))
            .max_by_key(|n| n.to_string()[8..].to_string());
        let Some(name) = newest else { return Ok(None) };
        let what = self.describe_wal(&name);
        let object = self.get_wal(&name)?.ok_or_else(|| Error::Corrupt {
            what: what.clone(),
            reason: "vanished while it was read".into(),
        })?;
        let raw = codec::decode(&object, &what)?;
        let segment = name.segment_name().expect("a segment");
        let header = LongPageHeader::validate(segment, &raw).map_err(|reason| Error::Corrupt { what, reason })?;
        Ok(Some((name, header)))
    }

    /// Whether `wal/` is this repository's WAL archive, mounted and whole: it holds the marker
    /// (or, in a repository from before the marker, WAL). When it is not, a WAL file missing
    /// from it says nothing about the archive.
    pub fn wal_archive_present(&self) -> Result<bool> {
        if self.storage.head(WAL_MARKER_KEY)?.is_some() {
            return Ok(true);
        }
        for dir in self.storage.list("wal/")?.iter().filter(|d| d.ends_with('/')) {
            if !self.storage.list(&format!("wal/{dir}"))?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
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
        for dir in self.storage.list("wal/")?.iter().filter(|d| d.ends_with('/')) {
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

/// What the WAL archive's marker says.
const MARKER_TEXT: &[u8] = b"This directory is the WAL archive of a pitr repository (see ../repo.json).\n";

/// A backup's manifest, in its directory: the backup exists once it is written.
pub const MANIFEST: &str = "backup.manifest";
/// The copy of a backup's manifest, written just before it: read when the manifest is damaged.
pub const MANIFEST_COPY: &str = "backup.manifest.copy";
/// Present while a backup is taken or deleted: a backup directory with this marker and no
/// manifest never finished, and the next backup deletes it. One with neither lost its manifest.
pub const INCOMPLETE_MARKER: &str = "backup.incomplete";

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

    fn cluster(system_identifier: u64) -> RepoInfo {
        RepoInfo {
            format_version: FORMAT_VERSION,
            pg_version: 15,
            system_identifier,
            wal_segment_size: 1 << 24,
        }
    }

    #[test]
    fn a_repository_holding_data_without_repo_json_is_never_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.storage()
            .put_if_absent("wal/0000000100000000/000000010000000000000001", b"x")
            .unwrap();
        let err = repo.claim(cluster(8)).unwrap_err().to_string();
        assert!(err.contains("no repo.json") && err.contains("create-repo"), "{err}");
        assert!(!dir.path().join("repo.json").exists(), "nothing was written");
    }

    #[test]
    fn create_is_idempotent_for_its_cluster_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        assert!(!repo.wal_archive_present().unwrap(), "no archive before creation");
        assert_eq!(repo.create(cluster(7), &[]).unwrap(), Created::Created);
        assert!(
            repo.wal_archive_present().unwrap(),
            "an empty, created archive is present"
        );
        assert_eq!(repo.create(cluster(7), &[]).unwrap(), Created::AlreadyCreated);
        let err = repo.create(cluster(8), &[]).unwrap_err().to_string();
        assert!(err.contains("not for cluster 8"), "{err}");
        assert_eq!(repo.info().unwrap(), Some(cluster(7)));
    }

    #[test]
    fn create_writes_lost_metadata_again_only_for_the_cluster_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.storage().put_if_absent("daily/b/backup.manifest", b"{}").unwrap();
        let backups = [("b".to_string(), (7, 15, 1 << 24))];
        let err = repo.create(cluster(8), &backups).unwrap_err().to_string();
        assert!(err.contains("backup b is of cluster 7"), "{err}");
        assert_eq!(repo.info().unwrap(), None);
        assert_eq!(repo.create(cluster(7), &backups).unwrap(), Created::Recreated);
        assert_eq!(repo.info().unwrap(), Some(cluster(7)));
    }

    #[test]
    fn an_emptied_or_missing_wal_directory_is_not_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.claim(cluster(7)).unwrap();
        assert!(repo.wal_archive_present().unwrap());
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        assert!(!repo.wal_archive_present().unwrap(), "missing");
        std::fs::create_dir(dir.path().join("wal")).unwrap();
        assert!(!repo.wal_archive_present().unwrap(), "an empty mount point");
    }

    #[test]
    fn a_flipped_bit_in_repo_json_is_corruption_not_another_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.claim(cluster(7)).unwrap();
        let path = dir.path().join("repo.json");
        let bytes = std::fs::read(&path).unwrap();
        let digit = bytes.iter().position(|b| *b == b'7').unwrap();
        let mut damaged = bytes.clone();
        damaged[digit] ^= 1; // '7' becomes '6'
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, damaged).unwrap();
        assert!(matches!(repo.info(), Err(Error::Corrupt { .. })));
    }
}
