//! The repository's layout on top of [`Storage`]: where each kind of file lives, and the metadata
//! that binds a repository to its clusters, one **generation** after the other.
//!
//! ```text
//! <repo>/repo.json                         metadata: the cluster the repository was created for,
//!                                          generation 1 (written by create-repo, or the first segment
//!                                          or backup of an empty repository)
//! <repo>/generations/<n>.json              generation n >= 2, written by upgrade-repo
//! <repo>/wal/.pitr-archive                 says wal/ is the archive's (a missing or unmounted
//!                                          wal/ lacks it: archive-get then fails, never "absent")
//! <repo>/wal/<TTTTTTTTXXXXXXXX>/<name>     segments, .partial and .backup files, grouped by
//!                                          timeline + log id so no directory grows without bound
//! <repo>/wal/history/<TTTTTTTT>.history    timeline history files, kept forever
//! <repo>/wal/stream/<segment>.<LLLLLLLL>   the WAL receiver's snapshot of the segment it receives:
//!                                          its first LLLLLLLL (hex) bytes, replaced twice a second
//! <repo>/wal/names/<LSN, 16 hex>.json     a map of relation and database names at that LSN (see
//!                                          [`names`](crate::names)), a checksummed JSON record
//! <repo>/wal.<n>/...                       the same for generation n >= 2 (wal/ is generation 1)
//! <repo>/<tier>/<id>/files/<path>          a base backup's files (tier: hourly, daily, weekly)
//! <repo>/<tier>/<id>/backup_label          ... the label from pg_backup_stop (+ tablespace_map)
//! <repo>/<tier>/<id>/backup.incomplete     ... a marker while the backup is taken (or deleted)
//! <repo>/<tier>/<id>/backup.manifest.copy  ... a copy of the manifest, written just before it
//! <repo>/<tier>/<id>/backup.manifest       ... and its manifest, written last: the commit point
//! <repo>/packs/<hh>/<name>                 a pack of deduplicated backups (manifest format 7): pieces
//!                                          in compressed frames, or group records; <name> is 64 hex
//!                                          digits, <hh> its first two (see `backup::packs`)
//! <repo>/gc/<UTC time>-<process>.json     packs that no backup referenced when expire marked; a
//!                                          later expire deletes them (see `backup::sweep`)
//! <repo>/drills/<YYYYMMDDTHHMMSS>_<tier>.json  a restore drill's record (see [`drill`](crate::drill)),
//!                                          a checksummed JSON record, create-only
//! <repo>/locks/<name>.lock                 advisory locks (one backup, expire, upgrade-repo or sync)
//! ```
//!
//! A generation is one cluster's WAL: after `pg_upgrade` (or a dump and restore into a new
//! cluster) the system identifier and the major version change, and segment names may repeat the
//! old cluster's, so `pitr upgrade-repo` starts generation n + 1 with a WAL directory of its own. Backups of every
//! generation share the tier directories: a manifest names its cluster, which names its
//! generation. Every generation's record is created once and never changed (the storage contract
//! has no replace): the highest is the current generation. A [`Repo`] handle acts on one
//! generation's WAL: the current one, looked up at
//! each call, or the one it is pinned to ([`Repo::pin`], [`Repo::at`]).
//!
//! Every file under a WAL directory is a [`codec`](crate::codec) object: it records its
//! compression and the CRC-32 of the original bytes, so integrity can be checked without a
//! server. `repo.json` and the generation records are checksummed JSON records
//! ([`codec::json`](crate::codec::json)); `repo.json` is the same as before generations existed,
//! so a pitr of that time reads it (and knows generation 1 only).

use std::io::BufRead;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::{self, json};
use crate::crypt::Keys;
use crate::error::{Error, Result};
use crate::storage::{LocalStorage, Location, ObjectMeta, ObjectWriter, PutOutcome, Storage};
use crate::wal::{LongPageHeader, Lsn, SegmentName, SegmentSize, WalFileName};

/// The key of the metadata object.
const METADATA_KEY: &str = "repo.json";
/// Where, in a generation's WAL directory, the WAL receiver keeps snapshots of the segment it
/// receives (see `stream.rs`).
const STREAM_DIR: &str = "stream/";

/// Where, in a generation's WAL directory, the maps of relation names are kept.
const NAMES_DIR: &str = "names/";

/// The directory of the records of generations 2 and later.
const GENERATIONS_DIR: &str = "generations/";
/// The directory of the key set records of an encrypted repository (see `repo/rekey.rs`).
const KEYS_DIR: &str = "keys/";
/// The name of the object that marks a WAL directory as this repository's archive.
const WAL_MARKER: &str = ".pitr-archive";
/// Top-level directories that hold a repository's data (locks do not count), besides the WAL
/// directories of later generations.
const DATA_DIRS: [&str; 7] = [
    "wal/",
    "hourly/",
    "daily/",
    "weekly/",
    "restore_points/",
    crate::drill::DRILLS_DIR,
    GENERATIONS_DIR,
];
mod rekey;
mod sealed;
pub use rekey::RotateReport;
pub use sealed::EnvelopeCheck;
use sealed::Sealed;

/// Layout version of repo.json.
const LAYOUT_VERSION: u32 = 1;
/// Layout version of the repo.json of an encrypted repository: a pitr from before encryption
/// refuses it instead of writing plain objects into it.
const ENCRYPTED_LAYOUT_VERSION: u32 = 2;

/// A cluster as a repository records it: what its WAL and its backups must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// The system identifier (pg_control, and every segment's long page header).
    pub system_identifier: u64,
    /// The WAL segment size in bytes.
    pub wal_segment_size: u32,
}

impl Cluster {
    /// "cluster 7301 (PostgreSQL 15)", for messages.
    pub fn describe(&self) -> String {
        format!("cluster {} (PostgreSQL {})", self.system_identifier, self.pg_version)
    }
}

/// One generation of a repository: a cluster and its WAL directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// Its number: 1 for the cluster the repository was created for, then one more at each
    /// `pitr upgrade-repo`.
    pub generation: u32,
    /// PostgreSQL major version of its cluster.
    pub pg_version: u32,
    /// Its cluster's system identifier.
    pub system_identifier: u64,
    /// Its cluster's WAL segment size in bytes.
    pub wal_segment_size: u32,
    /// When `pitr upgrade-repo` started it (absent for generation 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

impl Generation {
    /// Its cluster.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            pg_version: self.pg_version,
            system_identifier: self.system_identifier,
            wal_segment_size: self.wal_segment_size,
        }
    }

    /// Its WAL segment size.
    pub fn segment_size(&self) -> SegmentSize {
        SegmentSize::new(self.wal_segment_size).expect("sizes are checked when repo.json is read")
    }

    /// The key prefix of its WAL directory.
    pub fn wal_dir(&self) -> String {
        wal_dir(self.generation)
    }
}

/// The key prefix of generation `n`'s WAL directory: `wal/` for the first (as before
/// generations existed), `wal.<n>/` after it. A directory of its own per generation, because
/// the WAL of an upgraded cluster starts again at timeline 1 with segment names the old cluster
/// used already.
fn wal_dir(generation: u32) -> String {
    match generation {
        1 => "wal/".to_string(),
        n => format!("wal.{n}/"),
    }
}

/// The key of generation `n`'s record (`n` >= 2).
fn generation_key(n: u32) -> String {
    format!("{GENERATIONS_DIR}{n}.json")
}

/// The key of the record that makes generation `n` exist: repo.json for the first, its record
/// in generations/ after it (for `sync`, which copies them in order).
pub(crate) fn record_key(n: u32) -> String {
    match n {
        1 => METADATA_KEY.to_string(),
        n => generation_key(n),
    }
}

/// The key of the marker of generation `n`'s WAL directory, written before its record.
pub(crate) fn wal_marker_key(n: u32) -> String {
    format!("{}{WAL_MARKER}", wal_dir(n))
}

/// The generation a record's name (`2.json`) is of, when it is one.
fn generation_of_record(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".json")?;
    let n: u32 = digits.parse().ok()?;
    (n >= 2 && digits == n.to_string()).then_some(n)
}

/// The generation a top-level directory name (`wal/`, `wal.3/`) holds the WAL of.
fn generation_of_dir(name: &str) -> Option<u32> {
    let digits = name.strip_suffix('/')?.strip_prefix("wal")?;
    if digits.is_empty() {
        return Some(1);
    }
    let digits = digits.strip_prefix('.')?;
    let n: u32 = digits.parse().ok()?;
    (n >= 2 && digits == n.to_string()).then_some(n)
}

/// Every generation of a repository, oldest first; the last is the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Generations(Vec<Generation>);

impl Generations {
    /// The generations of a repository, checked: numbered 1, 2, ... in order, valid segment
    /// sizes, a cluster in one generation only, majors never going back.
    fn checked(list: Vec<Generation>) -> std::result::Result<Generations, String> {
        if list.is_empty() {
            return Err("it records no generation".into());
        }
        for (i, g) in list.iter().enumerate() {
            if g.generation as usize != i + 1 {
                return Err(format!("generation {} is listed in place {}", g.generation, i + 1));
            }
            if SegmentSize::new(g.wal_segment_size).is_none() {
                return Err(format!(
                    "generation {} has a segment size of {} bytes, which PostgreSQL never uses",
                    g.generation, g.wal_segment_size
                ));
            }
            if list[..i].iter().any(|e| e.system_identifier == g.system_identifier) {
                return Err(format!(
                    "cluster {} is recorded in two generations",
                    g.system_identifier
                ));
            }
            if i > 0 && g.pg_version < list[i - 1].pg_version {
                return Err(format!(
                    "generation {} is PostgreSQL {}, older than generation {}'s PostgreSQL {}",
                    g.generation,
                    g.pg_version,
                    i,
                    list[i - 1].pg_version
                ));
            }
        }
        Ok(Generations(list))
    }

    /// The current generation: where the server's WAL and backups go.
    pub fn current(&self) -> &Generation {
        self.0.last().expect("never empty")
    }

    /// Generation `n`, when there is one.
    pub fn get(&self, n: u32) -> Option<&Generation> {
        self.0.iter().find(|g| g.generation == n)
    }

    /// Every generation, oldest first.
    pub fn all(&self) -> &[Generation] {
        &self.0
    }

    /// The generation of the cluster with this system identifier (a backup's, a segment's).
    pub fn of_cluster(&self, system_identifier: u64) -> Option<&Generation> {
        self.0.iter().find(|g| g.system_identifier == system_identifier)
    }

    /// Why WAL or a backup of `found` may not go into the current generation, and what to do: the
    /// message of archive-push, backup, create-repo and check for a server that is not the
    /// current generation's cluster (only call it when it is not).
    pub fn refusal(&self, found: Cluster, repository: &str) -> String {
        let current = self.current();
        let facts = format!(
            "the server is {}, the repository's current generation is {}",
            found.describe(),
            current.cluster().describe()
        );
        let advice = match self.of_cluster(found.system_identifier) {
            Some(old) if old.generation != current.generation => format!(
                "the server's cluster was generation {} of repository {repository} until `pitr upgrade-repo` started \
                 generation {}; its WAL and backups stay there for recovery, but it archives here no more: give it \
                 a repository of its own if it runs on",
                old.generation, current.generation
            ),
            Some(_) => format!(
                "repository {repository} records this cluster with PostgreSQL {} and {}-byte segments, the server has \
                 PostgreSQL {} and {}-byte segments; after changing the segment size (pg_resetwal) start a new \
                 repository",
                current.pg_version, current.wal_segment_size, found.pg_version, found.wal_segment_size
            ),
            None if found.pg_version < current.pg_version => format!(
                "a server of an older major than the current generation never archives into repository \
                 {repository}: give it a repository of its own"
            ),
            None => format!(
                "after a major upgrade run `pitr upgrade-repo` once (connected to the upgraded server); otherwise \
                 point --repo at this cluster's own repository ({repository} belongs to another cluster)"
            ),
        };
        format!("{facts}: {advice}")
    }
}

/// repo.json: the cluster of generation 1.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataRecord {
    format_version: u32,
    pg_version: u32,
    system_identifier: u64,
    wal_segment_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<EncryptionRecord>,
}

/// repo.json's `encryption`: every object but the plain records is encrypted for these
/// recipients (see [`crate::crypt`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptionRecord {
    /// The format: `age-x25519` (age v1, X25519 recipients), in pitr's envelope.
    scheme: String,
    /// The recipients' fingerprints ([`crate::crypt::fingerprint`]), sorted.
    recipients: Vec<String>,
}

/// [`EncryptionRecord::scheme`]'s one value.
const AGE_SCHEME: &str = "age-x25519";

/// The layout version of a repo.json, read before the rest.
#[derive(Debug, Deserialize)]
struct Layout {
    format_version: u32,
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

/// A repository: storage plus layout, acting on one generation's WAL.
#[derive(Clone)]
pub struct Repo {
    storage: Arc<Sealed>,
    /// The generation whose WAL this handle reads and writes; `None`: the current one, as
    /// the repository says at each call.
    pinned: Option<u32>,
    /// The pinned generation's record once read: records are never rewritten, so a pinned
    /// handle reads them once (archive-push and archive-get make one listing and one read).
    pinned_record: Arc<OnceLock<Generation>>,
}

impl Repo {
    /// The repository at `location` (an existing local directory, or an S3 prefix), acting on
    /// its current generation.
    pub fn open(location: &Location) -> Result<Repo> {
        Ok(Repo::on(location.open()?))
    }

    /// This repository read and written with `keys` (an encrypted repository needs them: see
    /// [`crate::crypt`]).
    pub fn with_keys(self, keys: Arc<Keys>) -> Repo {
        Repo {
            storage: Arc::new(self.storage.with_keys(keys)),
            ..self
        }
    }

    /// The keys this handle reads and writes with.
    pub fn keys(&self) -> &Arc<Keys> {
        self.storage.keys()
    }

    /// Whether this handle can read the repository's objects: it is not encrypted, or an
    /// identity is given (a host that only archives has recipients only).
    pub fn can_decrypt(&self) -> Result<bool> {
        self.storage.can_read()
    }

    /// Checks, without any key, that every object of an encrypted repository is whole (its
    /// public header against its bytes) and encrypted: what `verify` can do on a host without
    /// the identity. The contents are not read.
    pub fn check_envelopes(&self) -> Result<EnvelopeCheck> {
        let mut found = EnvelopeCheck::default();
        self.storage.check_public("", &mut found)?;
        Ok(found)
    }

    /// The public header of an encrypted WAL file, checked against its bytes (see
    /// [`crate::crypt::check_public`]), or `None` when it is not archived.
    pub fn wal_envelope(&self, name: &WalFileName) -> Result<Option<crate::crypt::Envelope>> {
        self.storage.envelope(&self.wal_key(name)?)
    }

    /// The fingerprints of the recipients the repository is encrypted for, as repo.json
    /// records them; `None` when it is not encrypted.
    pub fn encrypted_for(&self) -> Result<Option<Vec<String>>> {
        self.storage.recorded_recipients()
    }

    /// The repository in an existing local directory, acting on its current generation.
    pub fn open_local(root: impl Into<std::path::PathBuf>) -> Result<Repo> {
        Ok(Repo::on(Arc::new(LocalStorage::open(root)?)))
    }

    /// The repository kept in `storage`, acting on its current generation.
    pub fn on(storage: Arc<dyn Storage>) -> Repo {
        Repo {
            storage: Arc::new(Sealed::new(storage, Arc::new(Keys::none()))),
            pinned: None,
            pinned_record: Arc::default(),
        }
    }

    /// This repository acting on generation `n` (refused when repo.json records no such
    /// generation; a repository without repo.json has only generation 1, to be).
    pub fn at(&self, n: u32) -> Result<Repo> {
        let generations = self.generations()?;
        let record = generations.as_ref().and_then(|g| g.get(n).copied());
        if record.is_none() && (generations.is_some() || n != 1) {
            return Err(Error::Refused(format!(
                "repository {} has no generation {n}: `pitr info` lists its generations",
                self.location()
            )));
        }
        Ok(self.pinned_to(n, record))
    }

    /// This repository acting on generation `n`, checked on first use instead of now: the record
    /// is read with the first request that needs it, and a generation repo.json does not record
    /// is refused then. archive-get pinned by `--generation` so reads the record while it reads
    /// the file ([`Repo::pin_and_get_wal`]).
    pub fn at_unchecked(&self, n: u32) -> Repo {
        self.pinned_to(n, None)
    }

    /// A handle on generation `n`, whose record is `record` when one is read already.
    fn pinned_to(&self, n: u32, record: Option<Generation>) -> Repo {
        let pinned_record = Arc::new(OnceLock::new());
        if let Some(record) = record {
            pinned_record.get_or_init(|| record);
        }
        Repo {
            storage: self.storage.clone(),
            pinned: Some(n),
            pinned_record,
        }
    }

    /// This repository pinned to the generation it acts on now: itself when pinned, else the
    /// current generation as repo.json says now (generation 1 before there is a repo.json).
    /// A command that makes several calls pins first, so that an upgrade-repo meanwhile cannot
    /// split its work between two generations.
    pub fn pin(&self) -> Result<Repo> {
        if self.pinned.is_some() {
            return Ok(self.clone());
        }
        Ok(match self.generations()? {
            Some(generations) => {
                let current = *generations.current();
                self.pinned_to(current.generation, Some(current))
            }
            None => self.pinned_to(1, None),
        })
    }

    /// [`Repo::pin`], then [`Repo::get_wal_reader`] of `name` on the pinned handle, in one round trip
    /// to an object store when the handle is pinned or the repository is in its first generation:
    /// a pinned handle's record is read while the file is; on a handle not pinned
    /// yet, the file is read from generation 1's WAL directory while the generation is looked up,
    /// and read again from the current generation's only when that is a later one (the first read
    /// is then dropped, its error too). The object is read while it arrives.
    pub fn pin_and_get_wal(&self, name: &WalFileName) -> Result<(Repo, Option<Box<dyn BufRead + Send>>)> {
        if self.local_root().is_some() {
            // On local disk no round trip is saved: one read, of the right generation.
            let pinned = self.pin()?;
            let object = pinned.get_wal_reader(name)?;
            return Ok((pinned, object));
        }
        if self.pinned.is_some() {
            // Pinned already (`--generation N`): its record, which the caller checks the file
            // against, is read while the file is.
            let (record, object) = both(|| self.generation(), || self.get_wal_reader(name));
            record?;
            return Ok((self.clone(), object?));
        }
        let first_generation_key = wal_key(&wal_dir(1), name);
        let (pinned, read) = self.side_by_side(|| self.pin(), || self.storage.get_reader(&first_generation_key));
        let pinned = pinned?;
        let object = match pinned.pinned {
            Some(1) => read?,
            _ => pinned.get_wal_reader(name)?,
        };
        Ok((pinned, object))
    }

    /// The storage underneath, for modules that keep their own objects (backups).
    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// Checks that the storage honours create-only writes (see
    /// [`crate::storage::check_create_only`]), with a probe object among the locks.
    pub fn check_create_only(&self) -> Result<()> {
        crate::storage::check_create_only(&*self.storage, CREATE_ONLY_PROBE)
    }

    /// The repository's directory, when it is on this host's file system.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.storage.local_root()
    }

    /// `a` and `b`, side by side ([`both`]) where each is a round trip to an object store, one
    /// after the other on local disk, where a thread would cost more than the reads (archive-push
    /// and archive-get pin the repository on every call).
    fn side_by_side<A: Send, B>(&self, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
        match self.local_root() {
            Some(_) => (a(), b()),
            None => both(a, b),
        }
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        let root = self.storage.describe("");
        match root.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed.to_string(),
            _ => root,
        }
    }

    /// Whether `written` (a `--repo` value read from a command line) names this repository: the
    /// same directory however the path is spelled, or the same S3 URL.
    pub fn is_named_by(&self, written: &str) -> bool {
        Location::parse(&self.location()).is_ok_and(|here| here.is_same_as(written))
    }

    /// Every generation (repo.json, then the records in generations/), or `None` for a
    /// repository nothing was written to yet.
    ///
    /// The listing of generations/ and the read of repo.json go out together: one round trip
    /// to an object store, not two.
    pub fn generations(&self) -> Result<Option<Generations>> {
        let (later, first) =
            self.side_by_side(|| self.storage.list(GENERATIONS_DIR), || self.storage.get(METADATA_KEY));
        let (later, first) = (later?, first?);
        let Some(bytes) = first else {
            if later.is_empty() {
                return Ok(None);
            }
            return Err(Error::Corrupt {
                what: self.storage.describe(METADATA_KEY),
                reason: format!(
                    "is missing while {} records later generations: restore repo.json from a copy",
                    self.storage.describe(GENERATIONS_DIR)
                ),
            });
        };
        let what = self.storage.describe(METADATA_KEY);
        let format_version = json::from_slice::<Layout>(&bytes, &what)?.format_version;
        if format_version != LAYOUT_VERSION && format_version != ENCRYPTED_LAYOUT_VERSION {
            return Err(Error::Repo {
                path: self.location().into(),
                reason: format!(
                    "has layout version {format_version}, this pitr reads versions {LAYOUT_VERSION} and \
                     {ENCRYPTED_LAYOUT_VERSION}: use a matching pitr"
                ),
            });
        }
        let first: MetadataRecord = json::from_slice(&bytes, &what)?;
        if (format_version == ENCRYPTED_LAYOUT_VERSION) != first.encryption.is_some() {
            return Err(Error::Corrupt {
                what,
                reason: "says layout version 2 without encryption, or encryption with layout version 1".into(),
            });
        }
        if let Some(scheme) = first
            .encryption
            .as_ref()
            .map(|e| &e.scheme)
            .filter(|s| *s != AGE_SCHEME)
        {
            return Err(Error::Repo {
                path: self.location().into(),
                reason: format!(
                    "is encrypted with scheme '{scheme}', this pitr knows '{AGE_SCHEME}': use a matching pitr"
                ),
            });
        }
        self.storage.learn(first.encryption.as_ref())?;
        let mut list = vec![Generation {
            generation: 1,
            pg_version: first.pg_version,
            system_identifier: first.system_identifier,
            wal_segment_size: first.wal_segment_size,
            since: None,
        }];
        let mut numbers = Vec::with_capacity(later.len());
        for name in &later {
            let n = generation_of_record(name).ok_or_else(|| Error::Corrupt {
                what: self.storage.describe(&format!("{GENERATIONS_DIR}{name}")),
                reason: "is not a generation record (<n>.json, n >= 2): move it out of the repository".into(),
            })?;
            numbers.push(n);
        }
        numbers.sort_unstable();
        for n in numbers {
            list.push(self.generation_record(n)?);
        }
        Generations::checked(list)
            .map(Some)
            .map_err(|reason| Error::Corrupt { what, reason })
    }

    /// Generation `n`'s record, which must say it is generation `n`.
    fn generation_record(&self, n: u32) -> Result<Generation> {
        let key = generation_key(n);
        let what = self.storage.describe(&key);
        let bytes = self.storage.get(&key)?.ok_or_else(|| Error::Corrupt {
            what: what.clone(),
            reason: "was listed, then could not be found: check who changes the repository".into(),
        })?;
        let record: Generation = json::from_slice(&bytes, &what)?;
        if record.generation != n {
            return Err(Error::Corrupt {
                what,
                reason: format!("records generation {}", record.generation),
            });
        }
        Ok(record)
    }

    /// The generation this handle acts on, or `None` for a repository nothing was written to.
    pub fn generation(&self) -> Result<Option<Generation>> {
        if let Some(record) = self.pinned_record.get() {
            return Ok(Some(*record));
        }
        let Some(generations) = self.generations()? else {
            return Ok(None);
        };
        match self.pinned {
            None => Ok(Some(*generations.current())),
            Some(n) => {
                let record = generations.get(n).copied().ok_or_else(|| Error::Repo {
                    path: self.location().into(),
                    reason: format!(
                        "records no generation {n} (`pitr info` lists its generations; if it did a moment ago, \
                         check who changed it)"
                    ),
                })?;
                Ok(Some(*self.pinned_record.get_or_init(|| record)))
            }
        }
    }

    /// The cluster of the generation this handle acts on, or `None` for a repository nothing
    /// was written to yet.
    pub fn info(&self) -> Result<Option<Cluster>> {
        Ok(self.generation()?.map(|g| g.cluster()))
    }

    /// The key prefix of the WAL directory this handle acts on.
    fn wal_dir(&self) -> Result<String> {
        Ok(match self.pinned {
            Some(n) => wal_dir(n),
            None => self.generation()?.map_or_else(|| wal_dir(1), |g| g.wal_dir()),
        })
    }

    /// Records `found` as the repository's cluster on first use (the first segment archived,
    /// the first backup) unless one is recorded already, and returns the recorded one (of the
    /// generation this handle acts on): the caller compares. Safe against concurrent first
    /// writers. A repository that holds data but no repo.json is never claimed: repo.json was
    /// lost, and another cluster must not take the repository over (`pitr create-repo` restores
    /// it after checking the data).
    pub fn claim(&self, found: Cluster) -> Result<Cluster> {
        if let Some(recorded) = self.info()? {
            return Ok(recorded);
        }
        if self.holds_data()? {
            return Err(self.lost_metadata());
        }
        self.write_first(found)
    }

    /// Creates the repository for the cluster `found` on purpose (`pitr create-repo`): after
    /// this, archive-get answers "absent" for a file it does not hold, even before anything is
    /// archived. Running it again for the current generation's cluster changes nothing; another
    /// cluster is refused (after a major upgrade, with the advice to run upgrade-repo). When
    /// repo.json was lost but data remains, it is written again only if the newest archived
    /// segment and every readable backup manifest belong to `found`'s cluster.
    pub fn create(&self, found: Cluster, manifests_cluster: &[(String, Cluster)]) -> Result<Created> {
        if let Some(generations) = self.generations()? {
            let current = generations.current();
            if current.cluster() != found {
                return Err(Error::Refused(format!(
                    "repository {} was not created for this server: {}",
                    self.location(),
                    generations.refusal(found, &self.location())
                )));
            }
            self.storage
                .put_if_absent(&format!("{}{WAL_MARKER}", current.wal_dir()), MARKER_TEXT)?;
            return Ok(Created::AlreadyCreated);
        }
        if !self.holds_data()? {
            let recorded = self.write_first(found)?;
            return Ok(if recorded == found {
                Created::Created
            } else {
                Created::AlreadyCreated
            });
        }
        self.check_data_belongs_to(found, manifests_cluster)?;
        self.write_first(found)?;
        Ok(Created::Recreated)
    }

    /// Starts the next generation for the cluster `found` (`pitr upgrade-repo`, holding the
    /// backup lock): its WAL directory with the marker first, then its record, created only if
    /// absent, which commits it (of two concurrent upgrades one wins, the other is refused). Refused, changing nothing, when the repository has no
    /// repo.json, when `found` is the current generation's cluster or an earlier one's, when it
    /// is of an older major, or when the new WAL directory holds files already.
    pub fn upgrade(&self, found: Cluster, since: DateTime<Utc>) -> Result<Generation> {
        let location = self.location();
        let generations = self.generations()?.ok_or_else(|| {
            Error::Refused(format!(
                "repository {location} has no repo.json: there is no generation to upgrade from; for a new \
                 repository run `pitr create-repo` against the server"
            ))
        })?;
        let current = *generations.current();
        let refuse = |why: String| Err(Error::Refused(format!("nothing was changed: {why}")));
        if SegmentSize::new(found.wal_segment_size).is_none() {
            return refuse(format!(
                "the server reports a segment size of {} bytes",
                found.wal_segment_size
            ));
        }
        match generations.of_cluster(found.system_identifier) {
            Some(g) if g.generation == current.generation => {
                return refuse(format!(
                    "the server is {}, already the current generation {} of repository {location}; there is \
                     nothing to upgrade (run it once, after pg_upgrade, against the upgraded server)",
                    found.describe(),
                    g.generation
                ))
            }
            Some(g) => {
                return refuse(format!(
                    "the server is {}, generation {} of repository {location}, which generation {} replaced; a \
                     repository never goes back to an earlier generation: give that cluster a repository of its own",
                    found.describe(),
                    g.generation,
                    current.generation
                ))
            }
            None => {}
        }
        if found.pg_version < current.pg_version {
            return refuse(format!(
                "the server is {}, an older major than the current generation's {}: an upgrade never goes back to \
                 an older major; give this server a repository of its own",
                found.describe(),
                current.cluster().describe()
            ));
        }
        let next = Generation {
            generation: current.generation + 1,
            pg_version: found.pg_version,
            system_identifier: found.system_identifier,
            wal_segment_size: found.wal_segment_size,
            since: Some(since),
        };
        let dir = next.wal_dir();
        let leftovers: Vec<String> = self
            .storage
            .list(&dir)?
            .into_iter()
            .filter(|n| n != WAL_MARKER)
            .collect();
        if !leftovers.is_empty() {
            return refuse(format!(
                "{} holds {} although the repository records no generation {}: it is not this repository's; move it \
                 aside",
                self.storage.describe(&dir),
                leftovers.join(", "),
                next.generation
            ));
        }
        self.storage.put_if_absent(&format!("{dir}{WAL_MARKER}"), MARKER_TEXT)?;
        match self
            .storage
            .put_if_absent(&generation_key(next.generation), &json::to_vec(&next))?
        {
            PutOutcome::Created => Ok(next),
            PutOutcome::AlreadyExists => refuse(format!(
                "another upgrade-repo started generation {} of repository {location} meanwhile: `pitr info` \
                 shows it",
                next.generation
            )),
        }
    }

    /// Writes repo.json for the first generation (create-only) and the marker of its WAL
    /// directory; returns the cluster recorded, by this call or a concurrent one.
    fn write_first(&self, found: Cluster) -> Result<Cluster> {
        self.storage
            .put_if_absent(&format!("{}{WAL_MARKER}", wal_dir(1)), MARKER_TEXT)?;
        let keys = self.storage.keys();
        let encryption = keys.can_write().then(|| EncryptionRecord {
            scheme: AGE_SCHEME.into(),
            recipients: keys.recipient_fingerprints(),
        });
        let record = MetadataRecord {
            format_version: match encryption {
                Some(_) => ENCRYPTED_LAYOUT_VERSION,
                None => LAYOUT_VERSION,
            },
            pg_version: found.pg_version,
            system_identifier: found.system_identifier,
            wal_segment_size: found.wal_segment_size,
            encryption,
        };
        match self.storage.put_if_absent(METADATA_KEY, &json::to_vec(&record))? {
            PutOutcome::Created => Ok(found),
            PutOutcome::AlreadyExists => Ok(self.info()?.expect("metadata exists")),
        }
    }

    /// Whether anything but locks is stored (WAL of any generation, backups, restore points).
    fn holds_data(&self) -> Result<bool> {
        let later_wal = self
            .storage
            .list("")?
            .into_iter()
            .filter(|name| generation_of_dir(name).is_some_and(|n| n > 1));
        for dir in DATA_DIRS.iter().map(|d| d.to_string()).chain(later_wal) {
            let names = self.storage.list(&dir)?;
            if names.iter().any(|n| n != WAL_MARKER || !dir.starts_with("wal")) {
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
    /// all be of `found`'s cluster.
    fn check_data_belongs_to(&self, found: Cluster, manifests: &[(String, Cluster)]) -> Result<()> {
        let mut checked = 0;
        if let Some((name, header)) = self.at(1)?.newest_segment_header()? {
            let of_segment = Cluster {
                pg_version: header.pg_version,
                system_identifier: header.system_identifier,
                wal_segment_size: header.segment_size.bytes(),
            };
            if of_segment != found {
                return Err(self.not_this_cluster(&format!("the archived segment {name}"), of_segment, found));
            }
            checked += 1;
        }
        for (id, cluster) in manifests {
            if *cluster != found {
                return Err(self.not_this_cluster(&format!("backup {id}"), *cluster, found));
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

    fn not_this_cluster(&self, what: &str, of_data: Cluster, found: Cluster) -> Error {
        Error::Refused(format!(
            "repository {} has no repo.json and {what} is of {} with {}-byte segments, not of the server's {} with \
             {}-byte segments: nothing was written; this repository belongs to another cluster (a repository \
             with several generations needs its repo.json back from a copy)",
            self.location(),
            of_data.describe(),
            of_data.wal_segment_size,
            found.describe(),
            found.wal_segment_size
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

    /// Whether this generation's WAL directory is the repository's WAL archive, mounted and
    /// whole: it holds the marker (or, in a repository from before the marker, WAL). When it is
    /// not, a WAL file missing from it says nothing about the archive.
    pub fn wal_archive_present(&self) -> Result<bool> {
        let dir = self.wal_dir()?;
        if self.storage.head(&format!("{dir}{WAL_MARKER}"))?.is_some() {
            return Ok(true);
        }
        for sub in self.storage.list(&dir)?.iter().filter(|d| d.ends_with('/')) {
            if !self.storage.list(&format!("{dir}{sub}"))?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores an encoded WAL object, create-only.
    pub fn put_wal(&self, name: &WalFileName, object: &[u8]) -> Result<PutOutcome> {
        self.storage.put_if_absent(&self.wal_key(name)?, object)
    }

    /// Starts storing an encoded WAL object in pieces (see [`Storage::put_writer`]).
    pub fn wal_writer(&self, name: &WalFileName) -> Result<Box<dyn ObjectWriter + '_>> {
        self.storage.put_writer(&self.wal_key(name)?)
    }

    /// Makes an archived WAL file durable (see [`Storage::sync`]).
    pub fn sync_wal(&self, name: &WalFileName) -> Result<()> {
        self.storage.sync(&self.wal_key(name)?)
    }

    /// Reads an encoded WAL object, `None` when it is not archived.
    pub fn get_wal(&self, name: &WalFileName) -> Result<Option<Vec<u8>>> {
        self.storage.get(&self.wal_key(name)?)
    }

    /// [`Repo::get_wal`] as a reader of the object while it arrives ([`Storage::get_reader`]).
    pub fn get_wal_reader(&self, name: &WalFileName) -> Result<Option<Box<dyn BufRead + Send>>> {
        self.storage.get_reader(&self.wal_key(name)?)
    }

    /// Whether a WAL file is archived.
    pub fn has_wal(&self, name: &WalFileName) -> Result<bool> {
        Ok(self.head_wal(name)?.is_some())
    }

    /// When a WAL file was archived, or `None` when it is not.
    pub fn wal_archived_at(&self, name: &WalFileName) -> Result<Option<std::time::SystemTime>> {
        Ok(self.head_wal(name)?.map(|m| m.modified))
    }

    /// Stored size and archive time of a WAL file, or `None` when it is not archived.
    pub fn head_wal(&self, name: &WalFileName) -> Result<Option<ObjectMeta>> {
        self.storage.head(&self.wal_key(name)?)
    }

    /// Every archived WAL file of this generation, sorted by name within each directory.
    pub fn list_wal(&self) -> Result<Vec<WalFileName>> {
        let wal = self.wal_dir()?;
        self.in_wal_dirs(&wal, |dir, names| {
            // Anything that is not a WAL file name is not ours to interpret (or delete).
            names.extend(
                self.storage
                    .list(dir)?
                    .iter()
                    .filter_map(|n| WalFileName::parse(n).ok()),
            );
            Ok(())
        })
    }

    /// Every archived WAL file of this generation with its stored size and archive time, sorted
    /// by name within each directory: what [`Repo::list_wal`] and a [`Repo::head_wal`] per file
    /// tell, from one listing with metadata per directory. A file deleted meanwhile is left out.
    pub fn list_wal_meta(&self) -> Result<Vec<(WalFileName, ObjectMeta)>> {
        let wal = self.wal_dir()?;
        self.in_wal_dirs(&wal, |dir, files| {
            for entry in self.storage.list_meta(dir)? {
                let Ok(name) = WalFileName::parse(&entry.name) else {
                    continue; // not ours to interpret
                };
                let key = wal_key(&wal, &name);
                let meta = match entry.meta {
                    Some(meta) if key.strip_prefix(dir) == Some(&entry.name) => Some(meta),
                    // Not a plain object, or not where its name belongs: what a head of its
                    // key says (why it is refused, or the object under its key).
                    _ => self.storage.head(&key)?,
                };
                files.extend(meta.map(|meta| (name, meta)));
            }
            Ok(())
        })
    }

    /// What `each` finds in the directories of the WAL directory `wal`, in their order, several
    /// directories at once: a million segments lie in thousands of directories, and listing
    /// them one after the other leaves the other cores (or a remote store's latency) idle. A
    /// few dozen directories at a time, so that no more than their findings are held twice.
    fn in_wal_dirs<T: Send>(&self, wal: &str, each: impl Fn(&str, &mut Vec<T>) -> Result<()> + Sync) -> Result<Vec<T>> {
        use rayon::prelude::*;
        let dirs: Vec<String> = self
            .storage
            .list(wal)?
            .into_iter()
            .filter(|d| d.ends_with('/'))
            .map(|d| format!("{wal}{d}"))
            .collect();
        let mut found = Vec::new();
        for batch in dirs.chunks(WAL_DIRS_AT_ONCE) {
            let parts = batch
                .par_iter()
                .map(|dir| {
                    let mut part = Vec::new();
                    each(dir, &mut part).map(|()| part)
                })
                .collect::<Result<Vec<Vec<T>>>>()?;
            parts.into_iter().for_each(|part| found.extend(part));
        }
        Ok(found)
    }

    /// Stores a snapshot of segment `name` while the WAL receiver still receives it: `object`
    /// encodes its first `len` bytes. Create-only, under `<wal dir>stream/<segment>.<len, 8 hex>`
    /// (not a WAL file name, so listings of the archive pass over it).
    pub fn put_stream_snapshot(&self, name: SegmentName, len: u64, object: &[u8]) -> Result<PutOutcome> {
        let key = format!("{}{STREAM_DIR}{name}.{len:08X}", self.wal_dir()?);
        self.storage.put_if_absent(&key, object)
    }

    /// The newest (longest) snapshot of segment `name`, encoded, or `None` when there is none.
    pub fn newest_stream_snapshot(&self, name: SegmentName) -> Result<Option<Vec<u8>>> {
        let dir = format!("{}{STREAM_DIR}", self.wal_dir()?);
        let newest = self
            .stream_snapshots(&dir, name)?
            .into_iter()
            .max_by_key(|(len, _)| *len);
        match newest {
            Some((_, entry)) => self.storage.get(&format!("{dir}{entry}")),
            None => Ok(None),
        }
    }

    /// Deletes the snapshots of segment `name`, but the one of `keep` bytes.
    pub fn delete_stream_snapshots(&self, name: SegmentName, keep: Option<u64>) -> Result<()> {
        let dir = format!("{}{STREAM_DIR}", self.wal_dir()?);
        for (len, entry) in self.stream_snapshots(&dir, name)? {
            if Some(len) != keep {
                self.storage.delete(&format!("{dir}{entry}"))?;
            }
        }
        Ok(())
    }

    /// The snapshots of `name` in `dir`: (length, entry name).
    fn stream_snapshots(&self, dir: &str, name: SegmentName) -> Result<Vec<(u64, String)>> {
        let prefix = format!("{name}.");
        Ok(self
            .storage
            .list(dir)?
            .into_iter()
            .filter_map(|entry| {
                let len = entry.strip_prefix(&prefix)?;
                let valid = len.len() == 8 && len.bytes().all(|b| b.is_ascii_hexdigit());
                valid.then(|| u64::from_str_radix(len, 16).ok().map(|len| (len, entry.clone())))?
            })
            .collect())
    }

    /// Stores a map of names, create-only, under its LSN.
    pub fn put_names(&self, map: &crate::names::NamesMap) -> Result<PutOutcome> {
        let key = format!("{}{NAMES_DIR}{:016X}.json", self.wal_dir()?, map.lsn.0);
        self.storage.put_if_absent(&key, &json::to_vec(map))
    }

    /// The maps of names of this generation, oldest first. A damaged one is an error.
    pub fn names_maps(&self) -> Result<Vec<crate::names::NamesMap>> {
        self.names_keys()?.iter().map(|key| self.names_map(key)).collect()
    }

    /// The newest map of names, if any.
    pub fn newest_names(&self) -> Result<Option<crate::names::NamesMap>> {
        self.names_keys()?.last().map(|key| self.names_map(key)).transpose()
    }

    /// Deletes the maps of names no WAL from `kept_from` on needs: all older than it but the
    /// newest of those (which names what existed when that WAL began); all of them when
    /// `kept_from` is `None` (the generation keeps no WAL). Returns how many went.
    pub fn expire_names(&self, kept_from: Option<Lsn>) -> Result<usize> {
        let keys = self.names_keys()?;
        let older = match kept_from {
            Some(lsn) => {
                let boundary = format!("{:016X}.json", lsn.0);
                let older = keys
                    .iter()
                    .filter(|k| k.rsplit('/').next() < Some(boundary.as_str()))
                    .count();
                older.saturating_sub(1)
            }
            None => keys.len(),
        };
        for key in &keys[..older] {
            self.storage.delete(key)?;
        }
        Ok(older)
    }

    /// The directory of this generation's maps of names.
    pub(crate) fn names_dir(&self) -> Result<String> {
        Ok(format!("{}{NAMES_DIR}", self.wal_dir()?))
    }

    /// The keys of the maps of names, oldest first; entries that are not a map's name are passed over.
    fn names_keys(&self) -> Result<Vec<String>> {
        let dir = self.names_dir()?;
        let mut entries: Vec<String> = self
            .storage
            .list(&dir)?
            .into_iter()
            .filter(|entry| is_names_entry(entry))
            .collect();
        entries.sort();
        Ok(entries.into_iter().map(|entry| format!("{dir}{entry}")).collect())
    }

    fn names_map(&self, key: &str) -> Result<crate::names::NamesMap> {
        let bytes = self.storage.get(key)?.ok_or_else(|| Error::Corrupt {
            what: self.storage.describe(key),
            reason: "it was listed, then could not be found".into(),
        })?;
        json::from_slice(&bytes, &self.storage.describe(key))
    }

    /// Deletes an archived WAL file.
    pub fn delete_wal(&self, name: &WalFileName) -> Result<()> {
        self.storage.delete(&self.wal_key(name)?)
    }

    /// Where a WAL file is stored, for messages.
    pub fn describe_wal(&self, name: &WalFileName) -> String {
        let dir = self.wal_dir().unwrap_or_else(|_| wal_dir(self.pinned.unwrap_or(1)));
        self.storage.describe(&wal_key(&dir, name))
    }

    /// The key of an archived WAL file of this generation in [`Repo::storage`].
    pub fn wal_key(&self, name: &WalFileName) -> Result<String> {
        Ok(wal_key(&self.wal_dir()?, name))
    }
}

/// The generation whose WAL directory holds the stored file at `path_in_repo` (a path relative
/// to the repository's root, such as `wal.2/0000000100000000/<name>`), for `check-integrity`.
pub fn generation_of_path(path_in_repo: &std::path::Path) -> Option<u32> {
    let first = path_in_repo.components().next()?.as_os_str().to_str()?;
    generation_of_dir(&format!("{first}/"))
}

/// Whether `entry` is the name of a map of names: `<LSN, 16 upper-case hex digits>.json`.
pub(crate) fn is_names_entry(entry: &str) -> bool {
    entry
        .strip_suffix(".json")
        .is_some_and(|lsn| lsn.len() == 16 && lsn.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
}

/// WAL directories listed at once by [`Repo::in_wal_dirs`] (256 segments of 16 MiB each).
const WAL_DIRS_AT_ONCE: usize = 64;

/// What the WAL archive's marker says.
const MARKER_TEXT: &[u8] = b"This directory is the WAL archive of a pitr repository (see ../repo.json).\n";

/// A backup's manifest, in its directory: the backup exists once it is written.
pub const MANIFEST: &str = "backup.manifest";
/// The object `create-repo` writes twice and deletes, to check create-only writes.
const CREATE_ONLY_PROBE: &str = "locks/create-only.probe";
/// The copy of a backup's manifest, written just before it: read when the manifest is damaged.
pub const MANIFEST_COPY: &str = "backup.manifest.copy";
/// Present while a backup is taken or deleted: a backup directory with this marker and no
/// manifest never finished, and the next backup deletes it. One with neither lost its manifest.
pub const INCOMPLETE_MARKER: &str = "backup.incomplete";

/// The directory of expire's records of condemned packs.
pub const GC_DIR: &str = "gc/";

/// The directory of the packs of deduplicated backups.
pub const PACKS_DIR: &str = "packs/";

/// The key of the pack named `name` (64 hex digits): `packs/<first two digits>/<name>`, so that
/// no directory holds more than a 256th of the packs.
pub fn pack_key(name: &str) -> String {
    format!("{PACKS_DIR}{}/{name}", &name[..2])
}

/// The directory of one backup: `<tier>/<id>/`.
pub fn backup_dir(tier: &str, id: &str) -> String {
    format!("{tier}/{id}/")
}

/// Runs `a` on a thread of its own while `b` runs on this one: two reads of an object store
/// wait for one round trip, not two.
fn both<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|scope| {
        let a = scope.spawn(a);
        let b = b();
        (a.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), b)
    })
}

/// The key of an archived WAL file in the WAL directory `dir`.
fn wal_key(dir: &str, name: &WalFileName) -> String {
    match name {
        WalFileName::History(_) => format!("{dir}history/{name}"),
        WalFileName::Segment(_) | WalFileName::Partial(_) | WalFileName::Backup(..) => {
            let text = name.to_string();
            format!("{dir}{}/{text}", &text[..16])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keys_group_by_timeline_and_log_in_their_generation() {
        let key = |dir: &str, n: &str| wal_key(dir, &WalFileName::parse(n).unwrap());
        assert_eq!(
            key("wal/", "0000000100000002000000FF"),
            "wal/0000000100000002/0000000100000002000000FF"
        );
        assert_eq!(key("wal/", "00000003.history"), "wal/history/00000003.history");
        assert_eq!(
            key("wal/", "000000010000000000000002.00000028.backup"),
            "wal/0000000100000000/000000010000000000000002.00000028.backup"
        );
        assert_eq!(
            key("wal/", "000000010000000000000005.partial"),
            "wal/0000000100000000/000000010000000000000005.partial"
        );
        assert_eq!(wal_dir(1), "wal/");
        assert_eq!(
            key(&wal_dir(2), "000000010000000000000005"),
            "wal.2/0000000100000000/000000010000000000000005"
        );
    }

    #[test]
    fn generation_directories_are_recognized_exactly() {
        assert_eq!(generation_of_dir("wal/"), Some(1));
        assert_eq!(generation_of_dir("wal.2/"), Some(2));
        assert_eq!(generation_of_dir("wal.17/"), Some(17));
        for other in ["wal.1/", "wal.02/", "wal.x/", "wal./", "wal2/", "wal.2", "hourly/"] {
            assert_eq!(generation_of_dir(other), None, "{other}");
        }
        assert_eq!(
            generation_of_path(std::path::Path::new("wal.3/0000000100000000/000000010000000000000005")),
            Some(3)
        );
    }

    fn cluster(system_identifier: u64) -> Cluster {
        Cluster {
            pg_version: 15,
            system_identifier,
            wal_segment_size: 1 << 24,
        }
    }

    fn upgraded(system_identifier: u64, pg_version: u32) -> Cluster {
        Cluster {
            pg_version,
            ..cluster(system_identifier)
        }
    }

    fn at(minute: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 5, 4, 3, minute, 0).unwrap()
    }

    #[test]
    fn maps_of_names_go_with_the_wal_they_name_but_the_one_naming_the_oldest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.claim(cluster(7)).unwrap();
        let map = |lsn: u64| crate::names::NamesMap {
            lsn: Lsn(lsn),
            time: at(0),
            databases: Vec::new(),
            relations: Vec::new(),
            unreadable: Vec::new(),
        };
        for lsn in [0x100, 0x200, 0x300, 0x400] {
            assert_eq!(repo.put_names(&map(lsn)).unwrap(), PutOutcome::Created);
        }
        // A stray object in the directory is no map, and is left alone.
        repo.storage().put_if_absent("wal/names/notes.txt", b"x").unwrap();
        let lsns = |repo: &Repo| -> Vec<u64> { repo.names_maps().unwrap().iter().map(|m| m.lsn.0).collect() };

        assert_eq!(repo.expire_names(Some(Lsn(0x100))).unwrap(), 0);
        assert_eq!(
            repo.expire_names(Some(Lsn(0x350))).unwrap(),
            2,
            "0x300 names the WAL from 0x350"
        );
        assert_eq!(lsns(&repo), [0x300, 0x400]);
        assert_eq!(repo.newest_names().unwrap().map(|m| m.lsn), Some(Lsn(0x400)));
        assert_eq!(repo.expire_names(None).unwrap(), 2);
        assert_eq!(lsns(&repo), Vec::<u64>::new());
        assert!(dir.path().join("wal/names/notes.txt").exists());
    }

    #[test]
    fn the_first_claim_wins() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        assert_eq!(repo.info().unwrap(), None);
        assert_eq!(repo.claim(cluster(7)).unwrap(), cluster(7));
        assert_eq!(repo.claim(cluster(8)).unwrap(), cluster(7));
        assert_eq!(repo.info().unwrap(), Some(cluster(7)));
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

        let later = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(later.path()).unwrap();
        repo.storage()
            .put_if_absent("wal.2/0000000100000000/000000010000000000000001", b"x")
            .unwrap();
        assert!(repo.claim(cluster(8)).is_err(), "WAL of a later generation is data too");
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
        let err = repo.create(upgraded(8, 16), &[]).unwrap_err().to_string();
        assert!(
            err.contains(
                "the server is cluster 8 (PostgreSQL 16), the repository's current generation is cluster 7 \
                 (PostgreSQL 15): after a major upgrade run `pitr upgrade-repo` once"
            ),
            "{err}"
        );
        assert_eq!(repo.info().unwrap(), Some(cluster(7)));
    }

    #[test]
    fn create_writes_lost_metadata_again_only_for_the_cluster_of_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.storage().put_if_absent("daily/b/backup.manifest", b"{}").unwrap();
        let backups = [("b".to_string(), cluster(7))];
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

    #[test]
    fn a_repo_json_of_pitr_before_generations_reads_as_generation_one_and_is_written_alike() {
        let dir = tempfile::tempdir().unwrap();
        // As pitr wrote it before generations existed (and as it still writes one generation).
        let before = "{\n  \"format_version\": 1,\n  \"pg_version\": 15,\n  \"system_identifier\": 7,\n  \
                      \"wal_segment_size\": 16777216\n}\n";
        std::fs::write(dir.path().join("repo.json"), before).unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let generations = repo.generations().unwrap().unwrap();
        assert_eq!(generations.all().len(), 1);
        assert_eq!(generations.current().generation, 1);
        assert_eq!(generations.current().cluster(), cluster(7));

        let fresh = tempfile::tempdir().unwrap();
        Repo::open_local(fresh.path()).unwrap().claim(cluster(7)).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fresh.path().join("repo.json")).unwrap()).unwrap();
        assert_eq!(written["format_version"], 1);
        assert_eq!(written["system_identifier"], 7);
        assert!(written.get("generations").is_none(), "{written}");
    }

    #[test]
    fn upgrade_starts_a_generation_with_its_own_wal_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.claim(cluster(7)).unwrap();
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        repo.put_wal(&name, b"old cluster").unwrap();

        let second = repo.upgrade(upgraded(8, 16), at(1)).unwrap();
        assert_eq!((second.generation, second.pg_version), (2, 16));
        assert_eq!(repo.info().unwrap(), Some(upgraded(8, 16)), "the current generation");
        assert_eq!(repo.list_wal().unwrap(), [], "generation 2 holds no WAL yet");
        assert!(repo.wal_archive_present().unwrap(), "its WAL directory is marked");
        repo.put_wal(&name, b"new cluster").unwrap();
        assert_eq!(repo.get_wal(&name).unwrap().unwrap(), b"new cluster");
        let first = repo.at(1).unwrap();
        assert_eq!(first.info().unwrap(), Some(cluster(7)));
        assert_eq!(first.get_wal(&name).unwrap().unwrap(), b"old cluster");
        assert!(dir
            .path()
            .join("wal.2/0000000100000000/000000010000000000000003")
            .is_file());

        let first: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("repo.json")).unwrap()).unwrap();
        assert_eq!(first["system_identifier"], 7, "repo.json stays as it was: {first}");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("generations/2.json")).unwrap()).unwrap();
        assert_eq!(
            (&record["generation"], &record["pg_version"]),
            (&2.into(), &16.into()),
            "{record}"
        );
        assert!(repo.at(3).is_err(), "no generation 3");

        let pinned = repo.pin().unwrap();
        repo.upgrade(upgraded(9, 17), at(2)).unwrap();
        assert_eq!(pinned.info().unwrap(), Some(upgraded(8, 16)), "a pinned handle stays");
        assert_eq!(repo.info().unwrap(), Some(upgraded(9, 17)));
    }

    #[test]
    fn upgrade_refuses_what_it_cannot_verify_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let err = repo.upgrade(upgraded(8, 16), at(1)).unwrap_err().to_string();
        assert!(err.contains("no repo.json") && err.contains("create-repo"), "{err}");
        repo.claim(cluster(7)).unwrap();
        let refused = |found: Cluster, expect: &str| {
            let before = std::fs::read(dir.path().join("repo.json")).unwrap();
            let err = repo.upgrade(found, at(1)).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert_eq!(std::fs::read(dir.path().join("repo.json")).unwrap(), before);
        };
        refused(cluster(7), "already the current generation 1");
        refused(upgraded(8, 14), "older major");
        repo.storage()
            .put_if_absent("wal.2/0000000100000000/000000010000000000000001", b"x")
            .unwrap();
        refused(upgraded(8, 16), "move it aside");
        repo.storage()
            .delete("wal.2/0000000100000000/000000010000000000000001")
            .unwrap();
        repo.upgrade(upgraded(8, 16), at(1)).unwrap();
        refused(cluster(7), "generation 1 of repository");
        let same_major = Cluster {
            system_identifier: 9,
            ..upgraded(8, 16)
        };
        assert_eq!(
            repo.upgrade(same_major, at(2)).unwrap().generation,
            3,
            "a new cluster of the same major (dump and restore) is a generation too"
        );
    }

    #[test]
    fn the_refusal_says_what_to_do_for_each_kind_of_stranger() {
        let generations = Generations::checked(vec![
            Generation {
                generation: 1,
                pg_version: 15,
                system_identifier: 7,
                wal_segment_size: 1 << 24,
                since: None,
            },
            Generation {
                generation: 2,
                pg_version: 16,
                system_identifier: 8,
                wal_segment_size: 1 << 24,
                since: Some(at(1)),
            },
        ])
        .unwrap();
        let says = |found: Cluster| generations.refusal(found, "/r");
        assert!(says(upgraded(9, 17)).contains("run `pitr upgrade-repo` once"));
        assert!(says(upgraded(9, 14)).contains("older major"));
        assert!(says(cluster(7)).contains("was generation 1"));
        assert!(says(Cluster {
            wal_segment_size: 1 << 20,
            ..upgraded(8, 16)
        })
        .contains("segment size"));
    }

    #[test]
    fn a_repo_json_whose_generations_do_not_add_up_is_corrupt() {
        let generation = |generation, pg_version, system_identifier| Generation {
            generation,
            pg_version,
            system_identifier,
            wal_segment_size: 1 << 24,
            since: None,
        };
        for bad in [
            vec![generation(2, 15, 7)],
            vec![generation(1, 15, 7), generation(3, 16, 8)],
            vec![generation(1, 15, 7), generation(2, 16, 7)],
            vec![generation(1, 16, 7), generation(2, 15, 8)],
            vec![Generation {
                wal_segment_size: 1000,
                ..generation(1, 15, 7)
            }],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repo::open_local(dir.path()).unwrap();
            for g in &bad {
                if g.generation == 1 {
                    repo.write_first(g.cluster()).unwrap();
                } else {
                    let key = format!("{GENERATIONS_DIR}{}.json", g.generation);
                    repo.storage().put_if_absent(&key, &json::to_vec(g)).unwrap();
                }
            }
            assert!(matches!(repo.generations(), Err(Error::Corrupt { .. })), "{bad:?}");
        }
        // A record under another generation's name, a stray object, repo.json lost.
        let upgraded_repo = || {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repo::open_local(dir.path()).unwrap();
            repo.claim(cluster(7)).unwrap();
            repo.upgrade(upgraded(8, 16), at(1)).unwrap();
            (dir, repo)
        };
        let (_dir, repo) = upgraded_repo();
        let third = Generation {
            generation: 3,
            ..generation(3, 17, 9)
        };
        repo.storage()
            .put_if_absent("generations/4.json", &json::to_vec(&third))
            .unwrap();
        assert!(matches!(repo.generations(), Err(Error::Corrupt { .. })));
        let (_dir, repo) = upgraded_repo();
        repo.storage().put_if_absent("generations/notes.txt", b"x").unwrap();
        assert!(matches!(repo.generations(), Err(Error::Corrupt { .. })));
        let (dir, repo) = upgraded_repo();
        std::fs::remove_file(dir.path().join("repo.json")).unwrap();
        assert!(matches!(repo.generations(), Err(Error::Corrupt { .. })));
        assert!(repo.claim(upgraded(8, 16)).is_err(), "never claimed again");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("repo.json"),
            json::to_vec(&serde_json::json!({"format_version": 3})),
        )
        .unwrap();
        let err = Repo::open_local(dir.path()).unwrap().info().unwrap_err().to_string();
        assert!(err.contains("use a matching pitr"), "{err}");
    }
}
