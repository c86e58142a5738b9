//! Where a repository is, as the operator writes it: `--repo`, `PITR_REPO` or `repo` in the
//! config file. A [`Location`] is parsed once, opened into a [`Storage`], and written back into
//! the commands pitr puts into PostgreSQL's configuration (`restore_command`, `archive_command`).
//!
//! - `s3://bucket/prefix`: an S3 bucket (or an S3-compatible server, `AWS_ENDPOINT_URL`);
//!   configured from the AWS environment variables, then the AWS profile files
//!   ([`S3Config::with_profile_files`]), then the credential chain of `object_store` (web
//!   identity, container credentials, instance metadata). The URL holds no secret, so nothing
//!   pitr writes or shows in `ps` does.
//! - `file:///absolute/path` or a plain path: a directory on this host.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LocalStorage, S3Config, S3Storage, Storage};
use crate::error::{Error, Result};

/// A repository's place: a local directory or an S3 bucket prefix.
#[derive(Clone, Debug)]
pub enum Location {
    /// A directory on this host, as given (relative paths are relative to the working directory).
    Local(PathBuf),
    /// A prefix in an S3 bucket; the configuration holds what the URL says, the environment
    /// and profile files complete it when it is opened.
    S3(S3Config),
}

impl Location {
    /// Parses what the operator wrote. An empty text, a `file://` URL that is not absolute or
    /// an unknown scheme (`gs://`, `http://`) is refused with what is accepted.
    pub fn parse(text: &str) -> Result<Location> {
        if text.is_empty() {
            return Err(Error::InvalidInput(
                "the repository is empty: give a directory or s3://bucket/prefix".into(),
            ));
        }
        if text.starts_with("s3://") {
            return Ok(Location::S3(S3Config::from_url(text)?));
        }
        if let Some(path) = text.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::InvalidInput(format!(
                    "repository URL '{text}': a file URL names an absolute path, file:///path"
                )));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)) {
                return Err(Error::InvalidInput(format!(
                    "repository URL '{text}': pitr keeps repositories in a directory (a path or file:///path) \
                     or on S3 (s3://bucket/prefix), not on {scheme}://"
                )));
            }
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    /// The storage there. S3 takes its endpoint, region and credentials from the environment
    /// and the AWS profile files now; no request is made yet.
    pub fn open(&self) -> Result<Arc<dyn Storage>> {
        Ok(match self {
            Location::Local(path) => Arc::new(LocalStorage::open(path)?),
            Location::S3(config) => Arc::new(S3Storage::open(config.clone().with_process_environment())?),
        })
    }

    /// The local directory, if that is where the repository is.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(path) => Some(path),
            Location::S3(_) => None,
        }
    }

    /// The location as it can be written into a command run from another directory: a local
    /// path made absolute (resolved through links when it exists), an S3 URL as it is.
    pub fn absolute(&self) -> Result<String> {
        match self {
            Location::Local(path) => {
                let resolved = match std::fs::canonicalize(path) {
                    Ok(resolved) => resolved,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::path::absolute(path).map_err(Error::io("resolve", path))?
                    }
                    Err(e) => return Err(Error::io("resolve", path)(e)),
                };
                resolved
                    .to_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::InvalidInput(format!("repository path {} is not UTF-8", path.display())))
            }
            Location::S3(config) => Ok(config.url()),
        }
    }

    /// Whether `other` (as written in a command line) names this same repository.
    pub fn is_same_as(&self, other: &str) -> bool {
        let Ok(other) = Location::parse(other) else {
            return false;
        };
        match (self, &other) {
            (Location::S3(a), Location::S3(b)) => a.url() == b.url(),
            (Location::Local(_), Location::Local(_)) => {
                matches!((self.absolute(), other.absolute()), (Ok(a), Ok(b)) if a == b)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3(config) => f.write_str(&config.url()),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = Error;

    fn from_str(text: &str) -> Result<Location> {
        Location::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_file_urls_and_s3_urls_are_told_apart() {
        assert!(
            matches!(Location::parse("/var/lib/pitr").unwrap(), Location::Local(p) if p == Path::new("/var/lib/pitr"))
        );
        assert!(matches!(Location::parse("repo").unwrap(), Location::Local(p) if p == Path::new("repo")));
        assert!(
            matches!(Location::parse("file:///srv/repo").unwrap(), Location::Local(p) if p == Path::new("/srv/repo"))
        );
        match Location::parse("s3://backups/db1/pitr").unwrap() {
            Location::S3(config) => {
                assert_eq!(
                    (config.bucket.as_str(), config.prefix.as_str()),
                    ("backups", "db1/pitr")
                );
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "file://relative",
            "gs://bucket/x",
            "http://host/x",
            "s3://UPPER/x",
            "s3://b/../x",
        ] {
            let err = Location::parse(bad).unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn the_same_repository_is_recognised_however_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let local = Location::parse(path).unwrap();
        assert!(local.is_same_as(&format!("file://{path}")));
        assert!(local.is_same_as(&format!("{path}/")));
        assert!(!local.is_same_as(&format!("{path}/other")));
        assert!(!local.is_same_as("s3://bucket/x"));
        let s3 = Location::parse("s3://bucket/x").unwrap();
        assert!(s3.is_same_as("s3://bucket/x/"));
        assert!(!s3.is_same_as("s3://bucket/y"));
        assert_eq!(s3.absolute().unwrap(), "s3://bucket/x");
        assert_eq!(
            local.absolute().unwrap(),
            std::fs::canonicalize(path).unwrap().to_str().unwrap()
        );
    }
}
