//! The S3 backend: objects in a bucket of Amazon S3 or an S3-compatible server, under a prefix.
//!
//! A repository `s3://bucket/prefix` keeps the object `wal/.../<name>` at the key
//! `prefix/wal/.../<name>`. Requests go through the `object_store` crate (its `aws` client:
//! SigV4 signing, the AWS credential chain, retries with backoff and jitter, timeouts).
//!
//! How the [`Storage`] contract is met:
//! - **Create-only puts**: one `PutObject` with `If-None-Match: *` ([`PutMode::Create`]). The
//!   store answers 412 (or 304) when the key exists: [`PutOutcome::AlreadyExists`]. A 409
//!   (AWS: a concurrent conditional write of that key is in flight) is retried a few times, then
//!   reported as a retryable error. A store that does not implement conditional writes (501, or
//!   `object_store`'s conditional puts disabled) makes every put fail: pitr refuses rather than
//!   overwrite. A store that silently *ignores* `If-None-Match` cannot be told apart by one put;
//!   [`crate::storage::check_create_only`] probes for it (`create-repo` runs it).
//! - **Atomic and durable**: a `PutObject` is all-or-nothing, and once S3 answers 200 the object
//!   is stored redundantly. So [`Storage::sync`] and [`Storage::sync_all_under`] have nothing to
//!   do, and a deferred put is an ordinary put.
//! - **`get` is `None` only for a true 404**: a 404 also comes back when the *bucket* is missing
//!   (some servers answer `NoSuchKey` then, and a `HEAD` has no body to tell), so the first 404
//!   of an [`S3Storage`] is confirmed with a listing, which fails when the bucket is missing.
//!   Every other failure (403, 5xx, a timeout, a refused connection) is an `Err`.
//! - **Listing**: `ListObjectsV2` with the delimiter `/`, all pages: objects and common prefixes
//!   (directory names end in `/`), sorted.
//! - **Locks**: lease objects, see [`S3Storage::try_lock`].
//!
//! The [`Storage`] trait is synchronous and is called from plain threads and from async
//! functions on the callers' tokio runtimes, where `Handle::block_on` would panic. So each
//! [`S3Storage`] owns a small tokio runtime ([`RUNTIME_THREADS`] threads) that runs every
//! request; the caller's thread waits for the answer on a channel (in `block_in_place` when it
//! is a worker of a multi-threaded runtime, so that runtime moves its other tasks elsewhere).
//!
//! Secrets: the secret key and the session token are only handed to `object_store`, which signs
//! with them and never sends or prints them. [`S3Storage`]'s and [`S3Config`]'s `Debug` print
//! neither, and every error message is scrubbed of both before it leaves this module.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

use crate::codec::SourceError;
use crate::error::{Error, Result};
use crate::fsio;
use crate::storage::{Listed, LockGuard, ObjectMeta, PutOutcome, Storage};

/// Time allowed to open a TCP (and TLS) connection to the store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one whole request, from connecting to the last byte of the answer: a
/// 16 MiB object needs at least 140 kB/s. A timed-out read is retried; a timed-out write is not
/// (the store may have it), and fails. The default of [`S3Config::request_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of one request after a 5xx, 429, 408, a failed connection or a timed-out read, with
/// exponential backoff and full jitter between [`BACKOFF_INITIAL`] and [`BACKOFF_MAX`].
pub const MAX_RETRIES: usize = 5;
/// No retry starts later than this after the first attempt.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// The first backoff before a retry (the jitter draws between this and twice the last one).
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest backoff before a retry.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A hard bound on one operation, retries included, whatever the client does: an operation
/// still running then is abandoned and reported as a retryable error. This is
/// [`operation_deadline`] of [`REQUEST_TIMEOUT`].
pub const OPERATION_DEADLINE: Duration = operation_deadline(REQUEST_TIMEOUT);

/// The bound on one operation, retries included, with requests of `request_timeout`: the last
/// retry starts within [`RETRY_TIMEOUT`] plus a backoff, and gets `request_timeout`, plus 10 s.
pub const fn operation_deadline(request_timeout: Duration) -> Duration {
    Duration::from_secs(RETRY_TIMEOUT.as_secs() + request_timeout.as_secs() + BACKOFF_MAX.as_secs() + 10)
}
/// How long a lock lasts when its holder stops renewing it (it renews every third of it).
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);
/// Threads of the runtime each [`S3Storage`] runs its requests on: requests wait on the
/// network, not on a core.
pub const RUNTIME_THREADS: usize = 2;

/// Times a create-only put answered by a 409 (a concurrent conditional write in flight) is tried.
const CONFLICT_ATTEMPTS: u32 = 5;

/// A credential that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for handing to the client that signs requests.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Where an S3 repository is and how to reach it. Built from the repository URL
/// ([`S3Config::from_url`]) and completed from the environment ([`S3Config::with_env`]);
/// what is set explicitly wins over the environment.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the repository in the bucket, without leading or trailing `/`; may be
    /// empty.
    pub prefix: String,
    /// The endpoint, `https://host[:port]` (or `http://`, the only way to allow plain HTTP);
    /// `None` for Amazon S3 itself.
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) rather than virtual-hosted
    /// (`bucket.endpoint/key`). `None`: path-style with an endpoint (S3-compatible servers), and
    /// virtual-hosted on Amazon S3 unless the bucket name has a dot (TLS certificates do not
    /// cover it then).
    pub path_style: Option<bool>,
    /// The access key id; with no keys, the credential chain (web identity, container
    /// credentials, instance metadata) is asked.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<Secret>,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// Settings of the AWS credential chain, by environment variable name (`AWS_ROLE_ARN`,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, ...), passed to
    /// `object_store` as they are.
    pub credential_chain: Vec<(String, String)>,
    /// See [`DEFAULT_LOCK_LEASE`].
    pub lock_lease: Duration,
    /// Time allowed for one request ([`REQUEST_TIMEOUT`]); it also bounds an operation
    /// ([`operation_deadline`]). Not read from the environment: tests of a store that hangs set
    /// it short.
    pub request_timeout: Duration,
    /// A PEM file of the certificate authorities that an `https` endpoint's certificate must chain
    /// to, in place of the system's trust store (`AWS_CA_BUNDLE`, or `ca_bundle` in the AWS config
    /// file, as the AWS tools read them): for a store with a private CA.
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// The environment variables of the AWS credential chain that [`S3Config::with_env`] passes on.
const CREDENTIAL_CHAIN_VARIABLES: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
];

impl S3Config {
    /// The location of `s3://bucket/prefix` (the prefix may be empty), nothing else set.
    pub fn from_url(url: &str) -> Result<S3Config> {
        let bad = |why: &str| Error::InvalidInput(format!("repository URL '{url}': {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("an S3 repository is written s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, '.' or '-'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if fsio::components(prefix).is_err() || prefix.contains(['?', '#', '%', '\\']) {
            return Err(bad(
                "the prefix must be plain names separated by single '/' (no '.', '..', '?', '#', '%')",
            ));
        }
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            credential_chain: Vec::new(),
            lock_lease: DEFAULT_LOCK_LEASE,
            request_timeout: REQUEST_TIMEOUT,
            ca_bundle: None,
        })
    }

    /// [`S3Config::from_url`] completed from the process environment and the AWS profile files.
    pub fn from_url_and_env(url: &str) -> Result<S3Config> {
        Ok(S3Config::from_url(url)?.with_process_environment())
    }

    /// Completed from this process's environment ([`S3Config::with_env`]), then from the AWS
    /// profile files it names ([`S3Config::with_profile_files`]).
    pub fn with_process_environment(self) -> S3Config {
        let lookup = |name: &str| std::env::var(name).ok();
        self.with_env(lookup)
            .with_profile_files(lookup, |path| std::fs::read_to_string(path).ok())
    }

    /// Fills what is still not set from the AWS profile files, as the AWS tools read them: the
    /// profile `AWS_PROFILE` (default `default`) of the credentials file
    /// (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`: `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_session_token`) and of the config file (`AWS_CONFIG_FILE`,
    /// default `~/.aws/config`, sections `[profile NAME]` and `[default]`: the same keys,
    /// `region`, `endpoint_url`). The credentials file wins over the config file. A missing or
    /// unreadable file is skipped: the credential chain (instance metadata) comes next.
    pub fn with_profile_files(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
        read: impl Fn(&std::path::Path) -> Option<String>,
    ) -> S3Config {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let home = get("HOME").map(std::path::PathBuf::from);
        let file = |variable: &str, default: &str| {
            get(variable)
                .map(std::path::PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let profile = get("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
            .and_then(|path| read(&path))
            .map(|text| profile_section(&text, &profile))
            .unwrap_or_default();
        let config_section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        let config = file("AWS_CONFIG_FILE", "config")
            .and_then(|path| read(&path))
            .map(|text| profile_section(&text, &config_section))
            .unwrap_or_default();
        let value = |key: &str| {
            credentials
                .iter()
                .chain(&config)
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        if self.access_key_id.is_none() && self.secret_access_key.is_none() && self.credential_chain.is_empty() {
            if let (Some(id), Some(secret)) = (value("aws_access_key_id"), value("aws_secret_access_key")) {
                self.access_key_id = Some(id);
                self.secret_access_key = Some(Secret(secret));
                self.session_token = value("aws_session_token").map(Secret);
            }
        }
        if self.region.is_none() {
            self.region = value("region");
        }
        if self.endpoint.is_none() {
            self.endpoint = value("endpoint_url");
        }
        if self.ca_bundle.is_none() {
            self.ca_bundle = value("ca_bundle").map(Into::into);
        }
        self
    }

    /// Fills what is not set yet from the AWS environment variables, read through `lookup`
    /// (empty values count as unset):
    /// - endpoint: `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else `AWS_ENDPOINT`;
    /// - region: `AWS_REGION`, else `AWS_DEFAULT_REGION`;
    /// - `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
    /// - path-style: `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` (`true`/`false`, `object_store`'s name);
    /// - the credential chain's own variables (see [`S3Config::credential_chain`]).
    ///
    /// Profile files are [`S3Config::with_profile_files`]'s.
    pub fn with_env(mut self, lookup: impl Fn(&str) -> Option<String>) -> S3Config {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let first = |names: &[&str]| names.iter().find_map(|n| get(n));
        if self.endpoint.is_none() {
            self.endpoint = first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]);
        }
        if self.region.is_none() {
            self.region = first(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        }
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = get("AWS_ACCESS_KEY_ID");
            self.secret_access_key = get("AWS_SECRET_ACCESS_KEY").map(Secret);
            if self.session_token.is_none() {
                self.session_token = get("AWS_SESSION_TOKEN").map(Secret);
            }
        }
        if self.path_style.is_none() {
            self.path_style = match get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").as_deref() {
                Some("true") => Some(false),
                Some("false") => Some(true),
                _ => None,
            };
        }
        if self.ca_bundle.is_none() {
            self.ca_bundle = get("AWS_CA_BUNDLE").map(Into::into);
        }
        for name in CREDENTIAL_CHAIN_VARIABLES {
            if let Some(value) = get(name) {
                if !self.credential_chain.iter().any(|(n, _)| n == name) {
                    self.credential_chain.push((name.to_string(), value));
                }
            }
        }
        self
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn uses_path_style(&self) -> bool {
        self.path_style
            .unwrap_or(self.endpoint.is_some() || self.bucket.contains('.'))
    }

    /// The endpoint `object_store` is given: with virtual-hosted addressing it must name the
    /// bucket itself.
    fn client_endpoint(&self) -> Result<Option<(String, bool)>> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
            Error::InvalidInput(format!(
                "S3 endpoint '{endpoint}': write it as https://host[:port] (or http:// to allow plain HTTP)"
            ))
        })?;
        let allow_http = match scheme {
            "https" => false,
            "http" => true,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "S3 endpoint '{endpoint}': the scheme must be https:// (or http:// to allow plain HTTP)"
                )))
            }
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(Error::InvalidInput(format!(
                "S3 endpoint '{endpoint}': give only the scheme, the host and the port"
            )));
        }
        let host = if self.uses_path_style() {
            rest.to_string()
        } else {
            format!("{}.{rest}", self.bucket)
        };
        Ok(Some((format!("{scheme}://{host}"), allow_http)))
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("url", &self.url())
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.uses_path_style())
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field(
                "credential_chain",
                &self.credential_chain.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("lock_lease", &self.lock_lease)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `options` with the certificates an `https` endpoint is checked against: the system's trust
/// store, or only those of the configured CA bundle. A plain `http` endpoint needs none: loading
/// the system's store reads and parses every file of `/etc/ssl/certs`, on each pitr process.
fn trusted_roots(
    options: ClientOptions,
    config: &S3Config,
    plain_http: bool,
) -> std::result::Result<ClientOptions, String> {
    let Some(path) = &config.ca_bundle else {
        return Ok(options.with_no_system_certificates(plain_http));
    };
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certificates = object_store::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM bundle of certificates: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    let options = certificates.into_iter().fold(options, |options, certificate| {
        options.with_root_certificate(certificate)
    });
    Ok(options.with_no_system_certificates(true))
}

/// Batches of an answer's body held between the runtime that receives them and the reader that
/// uses them ([`S3Storage::get_streamed`]).
const STREAM_DEPTH: usize = 4;

/// How much of a body the runtime gathers into one batch before it hands it over: a body comes
/// in pieces of a TLS record (16 KiB) or less, often one at a time, and handing each over on its
/// own costs the reader a wakeup (a context switch) per piece.
const STREAM_BATCH: usize = 128 << 10;

/// What the runtime hands the reader of a body: pieces of it, its end, or the error that ended it.
enum BodyPart {
    Pieces(Vec<bytes::Bytes>),
    End,
    Failed(object_store::Error),
}

/// The next pieces of a body polled with `poll_next`, at least [`STREAM_BATCH`] bytes of them
/// unless the body ends first, and its end or error when it came: the pieces before an end are
/// never dropped, nor an end after pieces.
async fn next_batch(
    mut poll_next: impl FnMut(&mut Context<'_>) -> Poll<Option<object_store::Result<bytes::Bytes>>>,
) -> (Vec<bytes::Bytes>, Option<BodyPart>) {
    let mut pieces = Vec::new();
    let mut gathered = 0;
    std::future::poll_fn(|cx| loop {
        match poll_next(cx) {
            Poll::Ready(Some(Ok(piece))) => {
                gathered += piece.len();
                pieces.push(piece);
                if gathered >= STREAM_BATCH {
                    return Poll::Ready((std::mem::take(&mut pieces), None));
                }
            }
            Poll::Ready(None) => return Poll::Ready((std::mem::take(&mut pieces), Some(BodyPart::End))),
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready((std::mem::take(&mut pieces), Some(BodyPart::Failed(e))));
            }
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// The body of a GET, read while it arrives (see [`S3Storage::get_streamed`]). A channel closed
/// before [`BodyPart::End`] is a body cut short.
struct BodyReader {
    /// Keeps the runtime alive and maps errors.
    storage: S3Storage,
    key: String,
    received: tokio::sync::mpsc::Receiver<BodyPart>,
    /// The pieces received and not read yet, the first one partly read maybe.
    pieces: std::collections::VecDeque<bytes::Bytes>,
    ended: bool,
}

impl BodyReader {
    /// The next part from the runtime, waited for in a way that works inside a tokio runtime too.
    fn next_part(&mut self) -> Option<BodyPart> {
        let received = &mut self.received;
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| received.blocking_recv())
            }
            Ok(_) => std::thread::scope(|scope| {
                scope
                    .spawn(|| received.blocking_recv())
                    .join()
                    .expect("receiving does not panic")
            }),
            Err(_) => received.blocking_recv(),
        }
    }

    /// The error for a body that stopped without an end.
    fn cut_short(&self) -> Error {
        Error::Remote {
            action: "read",
            location: self.storage.describe(&self.key),
            status: None,
            retryable: true,
            reason: format!(
                "the answer's body stopped before its end (no more within {}s); the store may be \
                 overloaded, try again later",
                self.storage.inner.deadline.as_secs()
            ),
        }
    }
}

impl std::io::BufRead for BodyReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pieces.front().is_none_or(|piece| piece.is_empty()) && !self.ended {
            self.pieces.pop_front();
            if !self.pieces.is_empty() {
                continue;
            }
            match self.next_part() {
                Some(BodyPart::Pieces(pieces)) => self.pieces.extend(pieces),
                Some(BodyPart::End) => self.ended = true,
                Some(BodyPart::Failed(e)) => {
                    return Err(SourceError::into_io(self.storage.error("read", &self.key, &e)));
                }
                None => return Err(SourceError::into_io(self.cut_short())),
            }
        }
        Ok(self.pieces.front().map_or(&[], |piece| &piece[..]))
    }

    fn consume(&mut self, n: usize) {
        if let Some(piece) = self.pieces.front_mut() {
            bytes::Buf::advance(piece, n);
        }
    }
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = std::io::BufRead::fill_buf(self)?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// Objects in an S3 bucket under a prefix. Cheap to clone: clones share the client and the
/// runtime.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    client: Arc<AmazonS3>,
    /// `Some` until dropped: dropping a runtime blocks, which panics inside another runtime, so
    /// [`Drop`] shuts it down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    /// The prefix as a path; `None` for the bucket's top.
    prefix: Option<Path>,
    endpoint: String,
    region: String,
    path_style: bool,
    /// What error messages are scrubbed of.
    secrets: Vec<String>,
    /// Whether a listing has shown that the bucket exists (a 404 is then a missing object).
    bucket_seen: AtomicBool,
    lock_lease: Duration,
    /// [`operation_deadline`] of the configured request timeout.
    deadline: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("url", &self.inner.url)
            .field("endpoint", &self.inner.endpoint)
            .field("region", &self.inner.region)
            .field("path_style", &self.inner.path_style)
            .field("credentials", &"redacted")
            .finish()
    }
}

/// An object read whole, with its ETag and time.
struct Found {
    bytes: Vec<u8>,
    e_tag: Option<String>,
    modified: SystemTime,
}

/// What a create-only put did, with the new object's ETag.
enum Created {
    New(Option<String>),
    Exists,
}

impl S3Storage {
    /// Storage at `s3://bucket/prefix`, configured from the URL and the AWS environment
    /// variables (see [`S3Config::with_env`]).
    pub fn open_url(url: &str) -> Result<S3Storage> {
        S3Storage::open(S3Config::from_url_and_env(url)?)
    }

    /// Storage as `config` says. No request is made: a wrong endpoint, bucket or credential
    /// shows at the first operation.
    pub fn open(config: S3Config) -> Result<S3Storage> {
        let url = config.url();
        let refuse = |what: &str, e: &dyn fmt::Display| Error::InvalidInput(format!("{url}: {what}: {e}"));
        let endpoint = config.client_endpoint()?;
        let allow_http = endpoint.as_ref().is_some_and(|(_, http)| *http);
        let region = config.region.clone().unwrap_or_else(|| "us-east-1".to_string());
        let path_style = config.uses_path_style();
        let client_options = trusted_roots(
            ClientOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(config.request_timeout)
                .with_allow_http(allow_http),
            &config,
            allow_http,
        )
        .map_err(|e| refuse("AWS_CA_BUNDLE (ca_bundle)", &e))?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: BACKOFF_INITIAL,
                max_backoff: BACKOFF_MAX,
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        // Never print the builder: its derived `Debug` shows the secret key.
        let mut builder = AmazonS3Builder::new();
        for (name, value) in &config.credential_chain {
            let key: AmazonS3ConfigKey = name
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| refuse("unknown credential setting", &e))?;
            builder = builder.with_config(key, value);
        }
        builder = builder
            .with_bucket_name(&config.bucket)
            .with_region(&region)
            .with_virtual_hosted_style_request(!path_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // One object, one `DELETE /key`: the core API every S3-compatible store has (not all
            // have `DeleteObjects`), and one that tells a missing bucket (404) from success.
            .with_config(AmazonS3ConfigKey::DisableBulkDelete, "true")
            .with_client_options(client_options)
            .with_retry(retry);
        if let Some((endpoint, _)) = &endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder.with_access_key_id(id).with_secret_access_key(secret.expose());
                if let Some(token) = &config.session_token {
                    builder = builder.with_token(token.expose());
                }
            }
            (None, None) => {}
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{url}: give both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (then the \
                     credential chain is asked)"
                )))
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("pitr-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Refused(format!("cannot start the threads of {url}: {e}")))?;
        let client = {
            let _entered = runtime.enter();
            builder.build().map_err(|e| refuse("bad S3 configuration", &e))?
        };
        let secrets = [&config.secret_access_key, &config.session_token]
            .into_iter()
            .flatten()
            .map(|s| s.expose().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let prefix = (!config.prefix.is_empty())
            .then(|| Path::parse(&config.prefix))
            .transpose()
            .map_err(|e| refuse("bad prefix", &e))?;
        Ok(S3Storage {
            inner: Arc::new(Inner {
                client: Arc::new(client),
                runtime: Some(runtime),
                url,
                prefix,
                endpoint: endpoint
                    .map(|(e, _)| e)
                    .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
                region,
                path_style,
                secrets,
                bucket_seen: AtomicBool::new(false),
                lock_lease: config.lock_lease,
                deadline: operation_deadline(config.request_timeout),
            }),
        })
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Runs `future` on this storage's runtime and waits for it on the calling thread, in a way
    /// that works inside and outside a tokio runtime. `None` when the operation deadline
    /// ([`operation_deadline`]) passed first or the task died.
    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let runtime = self.inner.runtime.as_ref()?;
        let (tx, rx) = mpsc::sync_channel(1);
        let deadline = self.inner.deadline;
        runtime.spawn(async move {
            if let Ok(answer) = tokio::time::timeout(deadline, future).await {
                let _ = tx.send(answer);
            }
        });
        let wait = move || rx.recv().ok();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Runs one request; the outer `Err` is the deadline.
    fn request<T: Send + 'static, F>(
        &self,
        action: &'static str,
        key: &str,
        request: impl FnOnce(Arc<AmazonS3>) -> F,
    ) -> Result<object_store::Result<T>>
    where
        F: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        self.run(request(self.inner.client.clone()))
            .ok_or_else(|| Error::Remote {
                action,
                location: self.describe(key),
                status: None,
                retryable: true,
                reason: format!(
                    "no answer within {}s, retries included; the store may be down or overloaded, try again later",
                    self.inner.deadline.as_secs()
                ),
            })
    }

    /// The store's path of `key`, a relative path of plain names.
    fn path(&self, key: &str) -> Result<Path> {
        match fsio::components(key) {
            Ok(parts) if !parts.is_empty() => {}
            _ => {
                return Err(Error::InvalidInput(format!(
                    "'{key}' is not a key: keys are plain names separated by single '/'"
                )))
            }
        }
        let full = match &self.inner.prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.to_string(),
        };
        Path::parse(&full).map_err(|e| Error::InvalidInput(format!("'{key}' is not a key: {e}")))
    }

    /// The store's path of a directory (`""` or a prefix ending in `/`), `None` for the top.
    fn dir_path(&self, dir: &str) -> Result<Option<Path>> {
        let trimmed = dir.strip_suffix('/').unwrap_or(dir);
        if trimmed.is_empty() {
            return Ok(self.inner.prefix.clone());
        }
        self.path(trimmed).map(Some)
    }

    /// pitr's error for a failed request, scrubbed of secrets.
    fn error(&self, action: &'static str, key: &str, e: &object_store::Error) -> Error {
        let (status, transport) = classify(e);
        let retryable = match (status, transport) {
            (Some(s), _) => s >= 500 || s == 429 || s == 408 || s == 409,
            (None, Some(kind)) => !matches!(kind, HttpErrorKind::Decode),
            (None, None) => false,
        };
        let cause = root_cause(e);
        let hint = match (status, transport, e) {
            _ if cause.contains("certificate") => {
                "the store's TLS certificate was not accepted: if a private CA signed it, name the CA's PEM file \
                 in AWS_CA_BUNDLE (or ca_bundle in the AWS config file)"
            }
            (_, _, object_store::Error::NotImplemented { .. }) | (Some(501), _, _) => {
                "the store does not implement this request (create-only puts need If-None-Match); \
                 pitr refuses rather than overwrite"
            }
            (Some(401 | 403), _, _) => {
                "check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and \
                 that they may get, put, list and delete in this bucket"
            }
            (Some(404), _, _) => "the bucket does not exist: create it, or fix the repository URL",
            (Some(301 | 307 | 400), _, _) => "check the region and the endpoint",
            (Some(409), _, _) => "another write of this key is in flight; trying again later may succeed",
            (None, Some(HttpErrorKind::Connect), _) => {
                "the store cannot be reached: check the endpoint and the network; trying again later may succeed"
            }
            _ if retryable => "the store failed or is overloaded; trying again later may succeed",
            _ => "",
        };
        let mut reason = e.to_string();
        if !reason.contains(&cause) {
            reason = format!("{reason}: {cause}");
        }
        let mut reason = one_line(&reason);
        for secret in &self.inner.secrets {
            reason = reason.replace(secret.as_str(), "[redacted]");
        }
        if !hint.is_empty() {
            reason = format!("{reason} ({hint})");
        }
        Error::Remote {
            action,
            location: self.describe(key),
            status,
            retryable,
            reason,
        }
    }

    /// After a 404 on `key`: `Ok` when the bucket exists (the object is truly absent), the
    /// listing's error otherwise. One listing per [`S3Storage`].
    fn confirm_absent(&self, action: &'static str, key: &str, path: &Path) -> Result<()> {
        if self.inner.bucket_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let probe = path.clone();
        match self.request(
            action,
            key,
            |c| async move { c.list_with_delimiter(Some(&probe)).await },
        )? {
            Ok(_) => {
                self.inner.bucket_seen.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.error(action, key, &e)),
        }
    }

    /// A create-only put.
    fn create(&self, key: &str, data: PutPayload) -> Result<Created> {
        let path = self.path(key)?;
        let mut attempt = 1;
        loop {
            let (path_, data_) = (path.clone(), data.clone());
            let answer = self.request("store", key, |c| async move {
                let options = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                c.put_opts(&path_, data_, options).await
            })?;
            match answer {
                Ok(done) => {
                    self.inner.bucket_seen.store(true, Ordering::Relaxed);
                    return Ok(Created::New(done.e_tag));
                }
                Err(object_store::Error::AlreadyExists { source, .. }) if is_precondition(&*source) => {
                    return Ok(Created::Exists)
                }
                Err(e) if classify(&e).0 == Some(409) && attempt < CONFLICT_ATTEMPTS => {
                    std::thread::sleep(BACKOFF_INITIAL * 2u32.pow(attempt));
                    attempt += 1;
                }
                Err(e) => return Err(self.error("store", key, &e)),
            }
        }
    }

    /// Replaces `key` if its ETag is still `e_tag`: the new ETag, or `None` when it is not.
    /// Only for lease objects, never for the repository's objects.
    fn replace_if(&self, key: &str, data: Vec<u8>, e_tag: String) -> Result<Option<Option<String>>> {
        let path = self.path(key)?;
        let answer = self.request("renew", key, |c| async move {
            let options = PutOptions {
                mode: PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag),
                    version: None,
                }),
                ..Default::default()
            };
            c.put_opts(&path, data.into(), options).await
        })?;
        match answer {
            Ok(done) => Ok(Some(done.e_tag)),
            Err(object_store::Error::Precondition { .. }) => Ok(None),
            Err(e) => Err(self.error("renew", key, &e)),
        }
    }

    /// The object with its ETag, or `None`.
    fn get_tagged(&self, key: &str) -> Result<Option<Found>> {
        let path = self.path(key)?;
        let path_ = path.clone();
        let answer = self.request("read", key, |c| async move {
            let found = c.get(&path_).await?;
            let meta = found.meta.clone();
            let bytes = found.bytes().await?;
            Ok(Found {
                bytes: Vec::from(bytes),
                e_tag: meta.e_tag,
                modified: SystemTime::from(meta.last_modified),
            })
        })?;
        match answer {
            Ok(found) => {
                self.inner.bucket_seen.store(true, Ordering::Relaxed);
                Ok(Some(found))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.confirm_absent("read", key, &path)?;
                Ok(None)
            }
            Err(e) => Err(self.error("read", key, &e)),
        }
    }

    /// [`Storage::get_reader`]: the answer's headers are waited for here (a 404 is `None`), its
    /// body is pumped on the runtime into a bounded channel that the reader drains, so at most
    /// [`STREAM_DEPTH`] batches of it (of about [`STREAM_BATCH`] each) are held while the caller is
    /// busy with the ones before.
    fn get_streamed(&self, key: &str) -> Result<Option<Box<dyn std::io::BufRead + Send>>> {
        let path = self.path(key)?;
        let path_ = path.clone();
        let answer = self.request("read", key, |c| async move { c.get(&path_).await })?;
        let found = match answer {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                self.confirm_absent("read", key, &path)?;
                return Ok(None);
            }
            Err(e) => return Err(self.error("read", key, &e)),
        };
        self.inner.bucket_seen.store(true, Ordering::Relaxed);
        let runtime = self
            .inner
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the storage");
        let (parts, received) = tokio::sync::mpsc::channel(STREAM_DEPTH);
        let deadline = self.inner.deadline;
        runtime.spawn(async move {
            let mut body = found.into_stream();
            let pump = async {
                loop {
                    let (pieces, end) = next_batch(|cx| body.as_mut().poll_next(cx)).await;
                    if !pieces.is_empty() && parts.send(BodyPart::Pieces(pieces)).await.is_err() {
                        return;
                    }
                    if let Some(end) = end {
                        let _ = parts.send(end).await;
                        return;
                    }
                }
            };
            // Past the deadline the channel closes without an end: the reader reports it.
            let _ = tokio::time::timeout(deadline, pump).await;
        });
        Ok(Some(Box::new(BodyReader {
            storage: self.clone(),
            key: key.to_string(),
            received,
            pieces: std::collections::VecDeque::new(),
            ended: false,
        })))
    }

    /// The object's ETag and time, or `None`.
    fn head_tagged(&self, key: &str) -> Result<Option<(ObjectMeta, Option<String>)>> {
        let path = self.path(key)?;
        let path_ = path.clone();
        match self.request("look up", key, |c| async move { c.head(&path_).await })? {
            Ok(meta) => {
                self.inner.bucket_seen.store(true, Ordering::Relaxed);
                let found = ObjectMeta {
                    size: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                };
                Ok(Some((found, meta.e_tag)))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.confirm_absent("look up", key, &path)?;
                Ok(None)
            }
            Err(e) => Err(self.error("look up", key, &e)),
        }
    }
}

/// The HTTP status of a failed request, or the kind of transport failure when there was no
/// answer. `object_store` keeps its request error private: the variants say the statuses it
/// maps, the message says the others ("... status code: 503 ...").
/// The `key = value` lines of section `[name]` of an AWS profile file (INI: `#` and `;`
/// comments, keys lowercased, the first section of that name).
fn profile_section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut found = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = !found && section.trim() == name;
            found |= inside;
            continue;
        }
        if let (true, Some((key, value))) = (inside, line.split_once('=')) {
            pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    pairs
}

fn classify(e: &object_store::Error) -> (Option<u16>, Option<HttpErrorKind>) {
    use object_store::Error as E;
    let mut transport = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(current) = source {
        if let Some(http) = current.downcast_ref::<HttpError>() {
            transport = Some(http.kind());
        }
        source = current.source();
    }
    let status = match e {
        E::NotFound { .. } => Some(404),
        E::Precondition { .. } => Some(412),
        E::NotModified { .. } => Some(304),
        E::PermissionDenied { .. } => Some(403),
        E::Unauthenticated { .. } => Some(401),
        E::AlreadyExists { source, .. } if is_precondition(&**source) => Some(412),
        E::AlreadyExists { .. } => Some(409),
        _ => status_in_message(&e.to_string()),
    };
    (status, if status.is_some() { None } else { transport })
}

/// Whether the source of an `AlreadyExists` is the 412/304 of a create-only put (rather than a
/// 409, which `object_store` also calls `AlreadyExists`).
fn is_precondition(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        source.downcast_ref::<object_store::Error>(),
        Some(object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. })
    )
}

fn status_in_message(message: &str) -> Option<u16> {
    let at = message.find("status code: ")? + "status code: ".len();
    message.get(at..at + 3)?.parse().ok().filter(|s| (100..600).contains(s))
}

/// An error message on one line, at most 600 characters (an XML error body can be long).
/// The innermost error under `e` (a refused certificate, a reset connection), which
/// `object_store`'s own message leaves out.
fn root_cause(e: &object_store::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn one_line(message: &str) -> String {
    let flat: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(600) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

impl Storage for S3Storage {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        match self.create(key, PutPayload::from(data.to_vec()))? {
            Created::New(_) => Ok(PutOutcome::Created),
            Created::Exists => Ok(PutOutcome::AlreadyExists),
        }
    }

    /// Nothing to do: a put S3 answered is durable.
    fn sync_all_under(&self, _dir: &str) -> Result<()> {
        Ok(())
    }

    /// Nothing to do: an object S3 shows is durable (a put is all-or-nothing and stored
    /// redundantly before the store answers it).
    fn sync(&self, _key: &str) -> Result<()> {
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_tagged(key)?.map(|found| found.bytes))
    }

    fn get_reader(&self, key: &str) -> Result<Option<Box<dyn std::io::BufRead + Send>>> {
        self.get_streamed(key)
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let path_ = path.clone();
        let answer = self.request(
            "read",
            key,
            |c| async move { c.get_range(&path_, start..start + len).await },
        )?;
        match answer {
            Ok(bytes) if bytes.len() as u64 == len => {
                self.inner.bucket_seen.store(true, Ordering::Relaxed);
                Ok(Some(Vec::from(bytes)))
            }
            Ok(bytes) => Err(Error::Corrupt {
                what: self.describe(key),
                reason: format!(
                    "answered {} bytes for the {len} bytes from {start} on that were asked for",
                    bytes.len()
                ),
            }),
            Err(object_store::Error::NotFound { .. }) => {
                self.confirm_absent("read", key, &path)?;
                Ok(None)
            }
            Err(e) => Err(self.error("read", key, &e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        Ok(self.head_tagged(key)?.map(|(meta, _)| meta))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        Ok(self.list_meta(dir)?.into_iter().map(|l| l.name).collect())
    }

    /// One listing (pages of up to 1,000 keys) that carries each object's size and time.
    fn list_meta(&self, dir: &str) -> Result<Vec<Listed>> {
        let path = self.dir_path(dir)?;
        let path_ = path.clone();
        let listed = match self.request(
            "list",
            dir,
            |c| async move { c.list_with_delimiter(path_.as_ref()).await },
        )? {
            Ok(listed) => listed,
            Err(e) => return Err(self.error("list", dir, &e)),
        };
        self.inner.bucket_seen.store(true, Ordering::Relaxed);
        let mut entries: Vec<Listed> = listed
            .objects
            .iter()
            // A "directory marker" object (key ending in '/') is the directory itself.
            .filter(|o| Some(&o.location) != path.as_ref())
            .filter_map(|o| {
                let name = o.location.filename()?.to_string();
                let meta = ObjectMeta {
                    size: o.size,
                    modified: o.last_modified.into(),
                };
                Some(Listed { name, meta: Some(meta) })
            })
            .chain(listed.common_prefixes.iter().filter_map(|p| {
                Some(Listed {
                    name: format!("{}/", p.filename()?),
                    meta: None,
                })
            }))
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        Ok(entries)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let path_ = path.clone();
        match self.request("delete", key, |c| async move { c.delete(&path_).await })? {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => self.confirm_absent("delete", key, &path),
            Err(e) => Err(self.error("delete", key, &e)),
        }
    }

    /// A lease object `locks/<name>.lock`, created only if absent, renewed by its holder every
    /// third of the lease (a conditional replace, `If-Match` its last ETag, with new content so
    /// that the ETag changes) and deleted when the guard is dropped (if it is still ours).
    ///
    /// Finding the lease held: `None` when it was written less than a lease ago by this host's
    /// clock. When it looks older, the holder may have died: the lease is watched for a whole
    /// lease period by this process's monotonic clock, and if its ETag did not change (no
    /// renewal) it is taken over with a conditional replace on that ETag, which only one taker
    /// wins. So taking a stale lock waits up to a lease, and safety never rests on clocks
    /// agreeing; only how soon a dead holder's lock is taken does.
    ///
    /// Like every lease, a holder cut off from the store for longer than the lease loses the
    /// lock without being told; the renewal thread then stops and the guard deletes nothing.
    fn try_lock(&self, name: &str) -> Result<Option<LockGuard>> {
        fsio::check_name(name).map_err(|_| Error::InvalidInput(format!("'{name}' is not a lock name")))?;
        let key = format!("locks/{name}.lock");
        let lease = Lease::new(self, &key);
        match self.create(&key, lease.body().into())? {
            Created::New(e_tag) => return lease.start(e_tag),
            Created::Exists => {}
        }
        let Some(Found {
            bytes: body,
            e_tag: Some(e_tag),
            modified: written,
        }) = self.get_tagged(&key)?
        else {
            // Released meanwhile (or a store without ETags): one more try, no waiting.
            return match self.create(&key, lease.body().into())? {
                Created::New(e_tag) => lease.start(e_tag),
                Created::Exists => Ok(None),
            };
        };
        let declared = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["lease_seconds"].as_u64())
            .map(Duration::from_secs);
        let period = declared.unwrap_or_default().max(self.inner.lock_lease);
        let age = SystemTime::now().duration_since(written).unwrap_or_default();
        if age < period {
            return Ok(None);
        }
        let watched = Instant::now();
        while watched.elapsed() < period {
            std::thread::sleep((period / 10).clamp(Duration::from_millis(100), Duration::from_secs(5)));
            match self.head_tagged(&key)? {
                Some((_, now)) if now.as_ref() == Some(&e_tag) => {}
                Some(_) => return Ok(None),
                None => {
                    return match self.create(&key, lease.body().into())? {
                        Created::New(e_tag) => lease.start(e_tag),
                        Created::Exists => Ok(None),
                    }
                }
            }
        }
        match self.replace_if(&key, lease.body(), e_tag)? {
            Some(e_tag) => lease.start(e_tag),
            None => Ok(None),
        }
    }

    /// Object stores have no free-space limit to tell.
    fn available_bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    fn describe(&self, key: &str) -> String {
        let key = key.trim_start_matches('/');
        if key.is_empty() {
            self.inner.url.clone()
        } else {
            format!("{}/{key}", self.inner.url)
        }
    }
}

/// A lock's lease object while it is held: renewed on a thread, deleted on drop.
struct Lease {
    storage: S3Storage,
    key: String,
    token: String,
    renewals: u64,
}

impl Lease {
    fn new(storage: &S3Storage, key: &str) -> Lease {
        Lease {
            storage: storage.clone(),
            key: key.to_string(),
            token: random_token(),
            renewals: 0,
        }
    }

    /// The lease's content: who holds it, for how long, and a renewal count (a renewal must
    /// change the content, or its ETag would not change).
    fn body(&self) -> Vec<u8> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        serde_json::to_vec(&serde_json::json!({
            "holder": format!("{} pid {}", host.trim(), std::process::id()),
            "token": self.token,
            "lease_seconds": self.storage.inner.lock_lease.as_secs().max(1),
            "renewal": self.renewals,
            "written": chrono::Utc::now().to_rfc3339(),
        }))
        .unwrap_or_default()
    }

    /// Starts renewing; the guard stops it and deletes the lease.
    fn start(mut self, e_tag: Option<String>) -> Result<Option<LockGuard>> {
        let e_tag = match e_tag {
            Some(tag) => Some(tag),
            None => self.storage.head_tagged(&self.key)?.and_then(|(_, tag)| tag),
        };
        let current = Arc::new(Mutex::new(e_tag));
        let (stop, stopped) = mpsc::channel::<()>();
        let every = (self.storage.inner.lock_lease / 3).max(Duration::from_millis(100));
        let held = current.clone();
        let (storage, key) = (self.storage.clone(), self.key.clone());
        let renewer = std::thread::Builder::new()
            .name("pitr-s3-lease".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let Some(tag) = held.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
                        return;
                    };
                    self.renewals += 1;
                    let renewed = match self.storage.replace_if(&self.key, self.body(), tag) {
                        Ok(Some(new)) => new,
                        // Someone took it over (this holder was presumed dead): stop; what is
                        // there now is not ours to delete.
                        Ok(None) => None,
                        // Try again at the next tick; the lease outlives two missed renewals.
                        Err(_) => continue,
                    };
                    let lost = renewed.is_none();
                    *held.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
                    if lost {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Refused(format!("cannot start the lease renewal thread: {e}")))?;
        Ok(Some(LockGuard(Box::new(HeldLease {
            storage,
            key,
            current,
            stop: Some(stop),
            renewer: Some(renewer),
        }))))
    }
}

/// The guard of a held lease.
struct HeldLease {
    storage: S3Storage,
    key: String,
    current: Arc<Mutex<Option<String>>>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        let ours = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Delete the lease only while it is still the one this holder wrote. (A takeover
        // between this look and the delete would lose its lock: it needs this holder silent
        // for a whole lease, which a holder dropping its guard is not.)
        if let (Some(ours), Ok(Some((_, Some(now))))) = (ours, self.storage.head_tagged(&self.key)) {
            if ours == now {
                let _ = self.storage.delete(&self.key);
            }
        }
    }
}

/// 128 random bits as hex, from the standard library's randomly seeded hasher.
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = |salt: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.finish()
    };
    format!("{:016x}{:016x}", word(1), word(u64::from(std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let config = S3Config::from_url("s3://my-bucket/pitr/main/").unwrap();
        assert_eq!(
            (config.bucket.as_str(), config.prefix.as_str()),
            ("my-bucket", "pitr/main")
        );
        assert_eq!(config.url(), "s3://my-bucket/pitr/main");
        let top = S3Config::from_url("s3://my-bucket").unwrap();
        assert_eq!((top.prefix.as_str(), top.url().as_str()), ("", "s3://my-bucket"));
        for bad in [
            "my-bucket/x",
            "file:///x",
            "s3://",
            "s3://ab",
            "s3://My_Bucket/x",
            "s3://b-1/a//b",
            "s3://b-1/a/../b",
            "s3://b-1/./b",
            "s3://b-1/a?x",
        ] {
            assert!(S3Config::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_files_fill_what_the_environment_left_unset() {
        let credentials = "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\
                           [ops]\n# a comment\nAWS_ACCESS_KEY_ID = OPS\naws_secret_access_key=opssecret\n\
                           aws_session_token = tok\n[ops]\naws_access_key_id = LATER\n";
        let config = "[default]\nregion = eu-west-1\n[profile ops]\nregion = eu-central-1\n\
                      endpoint_url = http://127.0.0.1:9000\nca_bundle = /etc/pitr/ca.pem\n";
        let read = |path: &std::path::Path| match path.to_str() {
            Some("/home/u/.aws/credentials") => Some(credentials.to_string()),
            Some("/home/u/.aws/config") => Some(config.to_string()),
            _ => None,
        };
        let base = || S3Config::from_url("s3://bucket/p").unwrap();
        let default = base().with_profile_files(env(&[("HOME", "/home/u")]), read);
        assert_eq!(default.access_key_id.as_deref(), Some("DEF"));
        assert_eq!(
            default.secret_access_key.as_ref().map(Secret::expose),
            Some("defsecret")
        );
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        assert_eq!(default.endpoint, None);
        let ops = base().with_profile_files(env(&[("HOME", "/home/u"), ("AWS_PROFILE", "ops")]), read);
        assert_eq!(
            ops.access_key_id.as_deref(),
            Some("OPS"),
            "the first section of a name counts"
        );
        assert_eq!(ops.session_token.as_ref().map(Secret::expose), Some("tok"));
        assert_eq!(ops.region.as_deref(), Some("eu-central-1"));
        assert_eq!(ops.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(ops.ca_bundle.as_deref(), Some(std::path::Path::new("/etc/pitr/ca.pem")));
        let bundle_from_env = base()
            .with_env(env(&[("AWS_CA_BUNDLE", "/srv/ca.pem")]))
            .with_profile_files(env(&[("HOME", "/home/u"), ("AWS_PROFILE", "ops")]), read);
        assert_eq!(
            bundle_from_env.ca_bundle.as_deref(),
            Some(std::path::Path::new("/srv/ca.pem"))
        );
        let from_env = base()
            .with_env(env(&[
                ("AWS_ACCESS_KEY_ID", "ENV"),
                ("AWS_SECRET_ACCESS_KEY", "envsecret"),
                ("AWS_REGION", "r1"),
            ]))
            .with_profile_files(env(&[("HOME", "/home/u")]), read);
        assert_eq!(from_env.access_key_id.as_deref(), Some("ENV"), "the environment wins");
        assert_eq!(from_env.region.as_deref(), Some("r1"));
        let elsewhere = base().with_profile_files(
            env(&[
                ("HOME", "/nowhere"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/home/u/.aws/credentials"),
            ]),
            read,
        );
        assert_eq!(elsewhere.access_key_id.as_deref(), Some("DEF"));
        assert_eq!(elsewhere.region, None, "no config file there");
    }

    #[test]
    fn the_environment_fills_what_is_not_set_in_the_aws_order() {
        let vars = [
            ("AWS_ENDPOINT_URL", "http://generic:9000"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-specific:9000"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "eu-central-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "the-secret"),
            ("AWS_SESSION_TOKEN", "the-token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ALLOW_HTTP", "true"),
        ];
        let config = S3Config::from_url("s3://b-1/p").unwrap().with_env(env(&vars));
        assert_eq!(config.endpoint.as_deref(), Some("http://s3-specific:9000"));
        assert_eq!(config.region.as_deref(), Some("eu-central-1"));
        assert_eq!(config.access_key_id.as_deref(), Some("AKID"));
        assert_eq!(
            config.secret_access_key.as_ref().map(Secret::expose),
            Some("the-secret")
        );
        assert_eq!(config.session_token.as_ref().map(Secret::expose), Some("the-token"));
        assert_eq!(
            config.credential_chain,
            vec![("AWS_ROLE_ARN".into(), "arn:aws:iam::1:role/r".into())]
        );

        let mut explicit = S3Config::from_url("s3://b-1/p").unwrap();
        explicit.endpoint = Some("https://mine".into());
        explicit.access_key_id = Some("MINE".into());
        explicit.secret_access_key = Some(Secret::new("my-secret"));
        let config = explicit.with_env(env(&vars));
        assert_eq!(
            config.endpoint.as_deref(),
            Some("https://mine"),
            "explicit settings win"
        );
        assert_eq!(config.access_key_id.as_deref(), Some("MINE"));
        assert_eq!(config.session_token, None, "no token of other keys");

        let only_default = [("AWS_DEFAULT_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL", "")];
        let config = S3Config::from_url("s3://b-1").unwrap().with_env(env(&only_default));
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.endpoint, None, "an empty variable is unset");
    }

    #[test]
    fn plain_http_only_when_the_endpoint_says_so_and_path_style_with_an_endpoint() {
        let mut config = S3Config::from_url("s3://b-1/p").unwrap();
        assert_eq!(config.client_endpoint().unwrap(), None);
        assert!(!config.uses_path_style(), "Amazon S3: virtual-hosted");
        assert!(S3Config::from_url("s3://b.dotted/p").unwrap().uses_path_style());
        config.endpoint = Some("https://minio.local:9000/".into());
        assert!(config.uses_path_style(), "an endpoint: path-style");
        assert_eq!(
            config.client_endpoint().unwrap(),
            Some(("https://minio.local:9000".into(), false))
        );
        config.endpoint = Some("http://127.0.0.1:9000".into());
        assert_eq!(
            config.client_endpoint().unwrap(),
            Some(("http://127.0.0.1:9000".into(), true))
        );
        config.path_style = Some(false);
        assert_eq!(
            config.client_endpoint().unwrap(),
            Some(("http://b-1.127.0.0.1:9000".into(), true)),
            "virtual-hosted: the bucket in the host"
        );
        for bad in [
            "minio:9000",
            "ftp://minio",
            "https://",
            "https://h/path",
            "https://user@h",
        ] {
            config.endpoint = Some(bad.into());
            assert!(config.client_endpoint().is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let mut config = S3Config::from_url("s3://b-1/p").unwrap();
        config.access_key_id = Some("AKID".into());
        config.secret_access_key = Some(Secret::new("the-secret"));
        config.session_token = Some(Secret::new("the-token"));
        config.credential_chain = vec![("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(), "/run/tok".into())];
        let storage = S3Storage::open(config.clone()).unwrap();
        for text in [format!("{config:?}"), format!("{storage:?}")] {
            assert!(!text.contains("the-secret") && !text.contains("the-token"), "{text}");
            assert!(text.contains("s3://b-1/p"), "{text}");
        }
        let mut half = config;
        half.access_key_id = None;
        assert!(S3Storage::open(half).is_err(), "a secret without a key id");
    }

    #[test]
    fn statuses_are_read_from_messages_and_messages_are_one_bounded_line() {
        assert_eq!(
            status_in_message(
                "Error performing GET x - Server returned non-2xx status code: 503 Service Unavailable: <Error/>"
            ),
            Some(503)
        );
        assert_eq!(status_in_message("HTTP error: error sending request"), None);
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert_eq!(one_line(&"x".repeat(1000)).len(), 603);
    }

    #[test]
    fn keys_are_relative_paths_of_plain_names_under_the_prefix() {
        let storage = S3Storage::open(S3Config::from_url("s3://b-1/p/q").unwrap()).unwrap();
        assert_eq!(storage.path("wal/x").unwrap().as_ref(), "p/q/wal/x");
        assert_eq!(storage.dir_path("").unwrap().unwrap().as_ref(), "p/q");
        assert_eq!(storage.dir_path("wal/").unwrap().unwrap().as_ref(), "p/q/wal");
        for bad in ["", "/etc/passwd", "../x", "a//b", "a/./b", "a/"] {
            assert!(storage.path(bad).is_err(), "{bad}");
        }
        assert_eq!(storage.describe("wal/x"), "s3://b-1/p/q/wal/x");
        let top = S3Storage::open(S3Config::from_url("s3://b-1").unwrap()).unwrap();
        assert_eq!(top.dir_path("").unwrap(), None);
        assert_eq!(top.path("x").unwrap().as_ref(), "x");
    }

    /// Batches of a body whose pieces come as `script` says, `None` being "not arrived yet".
    fn batches(script: Vec<Option<Option<object_store::Result<bytes::Bytes>>>>) -> Vec<(usize, &'static str)> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut script = std::collections::VecDeque::from(script);
        let mut out = Vec::new();
        runtime.block_on(async {
            loop {
                let (pieces, end) = next_batch(|cx| match script.pop_front() {
                    Some(Some(item)) => Poll::Ready(item),
                    Some(None) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    None => panic!("polled after the end"),
                })
                .await;
                let bytes = pieces.iter().map(|p| p.len()).sum();
                match end {
                    None => out.push((bytes, "more")),
                    Some(BodyPart::End) => return out.push((bytes, "end")),
                    Some(BodyPart::Failed(_)) => return out.push((bytes, "failed")),
                    Some(BodyPart::Pieces(_)) => unreachable!(),
                }
            }
        });
        out
    }

    #[test]
    fn a_body_is_handed_over_in_batches_and_its_end_or_error_is_never_dropped() {
        let piece = |n: usize| Some(Some(Ok(bytes::Bytes::from(vec![0u8; n]))));
        let failed = Some(Some(Err(object_store::Error::Generic {
            store: "S3",
            source: "the connection dropped".into(),
        })));
        // Small pieces, some not arrived yet, gathered until a batch is full.
        let mut script = vec![piece(16 << 10), None, piece(16 << 10)];
        script.extend((0..7).map(|_| piece(16 << 10)));
        script.extend([None, piece(100), Some(None)]);
        assert_eq!(batches(script), vec![(STREAM_BATCH, "more"), ((16 << 10) + 100, "end")]);
        // The pieces before an error come with it; nothing is polled after it.
        assert_eq!(batches(vec![piece(10), None, piece(20), failed]), vec![(30, "failed")]);
        assert_eq!(batches(vec![Some(None)]), vec![(0, "end")]);
    }
}
