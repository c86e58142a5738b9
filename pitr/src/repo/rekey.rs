//! The key sets of an encrypted repository and `pitr rotate-key`.
//!
//! Set 1 is the recipients repo.json records; `rotate-key` adds set n + 1 as a plain,
//! checksummed, create-only record `keys/<n + 1>.json` holding the recipients configured now.
//! From then on writers must have exactly the newest set, and every new object names its set in
//! its envelope; older objects stay readable by the identities of their own set.
//!
//! `rotate-key --rewrite` re-encrypts every object of an older set for the newest, under the
//! backup lock (no backup, expire or sync changes objects meanwhile), one object at a time:
//! the new object is stored aside as `<key>.rekey` first, then the old one is deleted and the
//! new one stored under its key, then the one aside is deleted. Readers see `<key>.rekey` in
//! place of `<key>` while `<key>` is missing ([`super::sealed`]), so a recovery reading the
//! repository meanwhile never finds a hole. A run that dies anywhere is resumed by the next: an
//! object aside whose key is missing is put back first; one whose key exists is a leftover.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Repo, KEYS_DIR};
use crate::codec::json;
use crate::crash_point;
use crate::crypt::{self, Envelope};
use crate::error::{Error, Result};
use crate::storage::{PutOutcome, Storage};

/// The suffix of an object stored aside while it is re-encrypted.
pub(crate) const REKEY_SUFFIX: &str = ".rekey";

/// `keys/<n>.json`: key set n >= 2.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySetRecord {
    key_set: u32,
    /// The recipients' fingerprints, sorted.
    recipients: Vec<String>,
    /// When it was recorded.
    since: DateTime<Utc>,
}

/// What `pitr rotate-key` did.
#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    /// The repository.
    pub repository: String,
    /// The newest key set's number.
    pub key_set: u32,
    /// Its recipients' fingerprints.
    pub recipients: Vec<String>,
    /// Whether this run recorded it (false: the configured recipients were the newest set already).
    pub recorded: bool,
    /// Objects re-encrypted for it (with --rewrite).
    pub rewritten: u64,
    /// Objects that were encrypted for it already (with --rewrite).
    pub current: u64,
    /// Objects a run that died had left aside, put back (with --rewrite).
    pub resumed: u64,
}

/// The fingerprints of every key set, oldest first: `first` (repo.json's), then the records.
pub(crate) fn read_key_sets(store: &dyn Storage, first: Vec<String>) -> Result<Vec<Vec<String>>> {
    let mut sets = vec![first];
    let mut numbers = Vec::new();
    for name in store.list(KEYS_DIR)? {
        let n = name
            .strip_suffix(".json")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 2 && name == format!("{n}.json"))
            .ok_or_else(|| Error::Corrupt {
                what: store.describe(&format!("{KEYS_DIR}{name}")),
                reason: "is not a key set record (<n>.json, n >= 2): move it out of the repository".into(),
            })?;
        numbers.push(n);
    }
    numbers.sort_unstable();
    for n in numbers {
        let key = key_set_key(n);
        let what = store.describe(&key);
        let bytes = store.get(&key)?.ok_or_else(|| Error::Corrupt {
            what: what.clone(),
            reason: "was listed, then could not be found: check who changes the repository".into(),
        })?;
        let record: KeySetRecord = json::from_slice(&bytes, &what)?;
        if record.key_set != n || n as usize != sets.len() + 1 {
            return Err(Error::Corrupt {
                what,
                reason: format!(
                    "records key set {} where set {} comes next: the key set records are not whole",
                    record.key_set,
                    sets.len() + 1
                ),
            });
        }
        sets.push(record.recipients);
    }
    Ok(sets)
}

fn key_set_key(n: u32) -> String {
    format!("{KEYS_DIR}{n}.json")
}

impl Repo {
    /// `pitr rotate-key`: records the recipients configured now as the repository's newest key
    /// set (unless they are already), and with `rewrite` re-encrypts every older object for it.
    pub fn rotate_key(&self, rewrite: bool) -> Result<RotateReport> {
        let location = self.location();
        let sets = self.storage.key_sets()?.ok_or_else(|| {
            Error::Refused(format!(
                "repository {location} is not encrypted: there is no key to rotate (an existing repository is not \
                 encrypted after the fact)"
            ))
        })?;
        let ours = self.keys().recipient_fingerprints();
        if ours.is_empty() {
            return Err(Error::Refused(format!(
                "no recipients are configured: set `recipients_file` (PITR_RECIPIENTS_FILE) to the new recipients of \
                 repository {location}, then run rotate-key again; nothing was changed"
            )));
        }
        if rewrite && !self.keys().can_read() {
            return Err(Error::Refused(format!(
                "--rewrite decrypts the objects of repository {location}: give an identity of their recipients \
                 (`identity_file`, PITR_IDENTITY_FILE or PITR_IDENTITY); nothing was changed"
            )));
        }
        let (newest, recipients) = sets.current();
        let recorded = recipients != ours;
        let key_set = match recorded {
            false => newest,
            true => self.record_key_set(newest + 1, &ours)?,
        };
        let mut report = RotateReport {
            repository: location,
            key_set,
            recipients: ours,
            recorded,
            rewritten: 0,
            current: 0,
            resumed: 0,
        };
        if rewrite {
            let _lock = crate::backup::lock_backups(self)?;
            self.rewrite_dir("", key_set, &mut report)?;
        }
        Ok(report)
    }

    fn record_key_set(&self, n: u32, recipients: &[String]) -> Result<u32> {
        let record = KeySetRecord {
            key_set: n,
            recipients: recipients.to_vec(),
            since: Utc::now(),
        };
        match self
            .storage
            .inner()
            .put_if_absent(&key_set_key(n), &json::to_vec(&record))?
        {
            PutOutcome::Created => Ok(n),
            PutOutcome::AlreadyExists => Err(Error::Refused(format!(
                "another rotate-key recorded key set {n} of repository {} meanwhile: run rotate-key again",
                self.location()
            ))),
        }
    }

    /// Re-encrypts, for `key_set`, every object under `dir` encrypted for an older set.
    fn rewrite_dir(&self, dir: &str, key_set: u32, report: &mut RotateReport) -> Result<()> {
        let store = self.storage.inner();
        for name in store.list(dir)? {
            let key = format!("{dir}{name}");
            if name.ends_with('/') {
                if key != "locks/" && key != KEYS_DIR && key != super::GENERATIONS_DIR {
                    self.rewrite_dir(&key, key_set, report)?;
                }
            } else if let Some(base) = key.strip_suffix(REKEY_SUFFIX) {
                if store.head(base)?.is_none() {
                    let aside = store.get(&key)?.ok_or_else(|| vanished(store, &key))?;
                    store.put_if_absent(base, &aside)?;
                    report.resumed += 1;
                }
                store.delete(&key)?;
            } else if !super::sealed::is_plain_key(&key) {
                self.rewrite_object(&key, key_set, report)?;
            }
        }
        Ok(())
    }

    fn rewrite_object(&self, key: &str, key_set: u32, report: &mut RotateReport) -> Result<()> {
        let store = self.storage.inner();
        let what = store.describe(key);
        let Some(sealed) = store.get(key)? else {
            return Ok(());
        };
        if Envelope::parse(&sealed, &what)?.key_set == key_set {
            report.current += 1;
            return Ok(());
        }
        crypt::check_public(&sealed, &what)?;
        let plain = self.keys().unseal(&sealed, &what, &[])?;
        let resealed = self.keys().seal(&plain, key_set)?;
        let aside = format!("{key}{REKEY_SUFFIX}");
        store.delete(&aside)?;
        store.put_if_absent(&aside, &resealed)?;
        crash_point::reached("rekey:aside");
        store.delete(key)?;
        crash_point::reached("rekey:deleted");
        store.put_if_absent(key, &resealed)?;
        store.delete(&aside)?;
        report.rewritten += 1;
        Ok(())
    }
}

fn vanished(store: &dyn Storage, key: &str) -> Error {
    Error::Corrupt {
        what: store.describe(key),
        reason: "was listed, then could not be found: check who changes the repository".into(),
    }
}
