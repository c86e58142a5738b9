//! The S3 backend against a real S3-compatible server: s3s-fs, started by each test on a free
//! loopback port with a temporary root and random credentials, killed when the test ends.
//! Install it with `bash .ci/install-s3s-fs` (it prints `PITR_S3S_FS=...`); it is found through
//! `PITR_S3S_FS`, then `/var/cache/pitr/s3s-fs/bin/s3s-fs`, then `PATH`. A missing server fails
//! the tests: they are never skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::free_port;
use common::s3::{objects_under, random_hex, S3Server};
use pitr::storage::conformance::{check_backend_with_quirks, ServerQuirks};
use pitr::storage::s3::Secret;
use pitr::storage::{PutOutcome, S3Config, S3Storage, Storage};

#[test]
fn s3_storage_meets_the_contract() {
    let server = S3Server::start();
    let started = Instant::now();
    // s3s-fs checks If-None-Match before it writes, not atomically with the write: concurrent
    // creates of one key may all succeed there (Amazon S3, MinIO and Ceph serialize them).
    let quirks = ServerQuirks {
        non_atomic_conditional_puts: true,
    };
    check_backend_with_quirks(Arc::new(server.storage("repos/conformance")), quirks);
    eprintln!("conformance suite on s3s-fs: {:?}", started.elapsed());
    let outside: Vec<_> = objects_under(&server.bucket_dir())
        .into_iter()
        .filter(|f| !f.starts_with("repos/conformance/"))
        .collect();
    assert!(outside.is_empty(), "objects outside the prefix: {outside:?}");
}

#[test]
fn a_second_put_is_refused_by_the_server_and_keeps_the_first_object() {
    let server = S3Server::start();
    let store = server.storage("repo");
    assert_eq!(store.put_if_absent("wal/x", b"first").unwrap(), PutOutcome::Created);
    assert_eq!(
        store.put_if_absent("wal/x", b"second").unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(
        std::fs::read(server.bucket_dir().join("repo/wal/x")).unwrap(),
        b"first",
        "the server's copy is the first one"
    );
    pitr::storage::check_create_only(&store, "probe").unwrap();
    assert!(
        store.get("probe").unwrap().is_none(),
        "the probe cleans up after itself"
    );
}

#[test]
fn a_truly_absent_key_is_none_and_a_missing_bucket_is_an_error() {
    let server = S3Server::start();
    let store = server.storage("repo");
    assert_eq!(
        store.get("wal/0000000100000000/000000010000000000000001").unwrap(),
        None
    );
    // A fresh storage, whose first 404 is a HEAD.
    assert_eq!(server.storage("repo").head("never/written").unwrap(), None);
    assert!(store.list("wal/").unwrap().is_empty());

    let mut config = server.config("repo");
    config.bucket = "no-such-bucket".into();
    let missing = S3Storage::open(config).unwrap();
    let err = missing
        .get("wal/x")
        .expect_err("a missing bucket is an error, never 'absent'");
    assert!(err.to_string().contains("bucket does not exist"), "{err}");
    let err = missing.head("wal/x").expect_err("head too");
    assert!(err.to_string().contains("bucket does not exist"), "{err}");
    missing.list("wal/").expect_err("list too");
    missing.delete("wal/x").expect_err("delete too");
    // (A put is no test here: s3s-fs creates a missing bucket on PutObject.)
}

#[test]
fn a_server_that_is_down_is_an_error_within_bounded_time() {
    let port = free_port(); // nothing listens there
    let mut config = S3Config::from_url("s3://pitr-test/repo").unwrap();
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.access_key_id = Some("AKDOWN".into());
    config.secret_access_key = Some(Secret::new("secret-of-a-server-that-is-down"));
    let store = Arc::new(S3Storage::open(config).unwrap());
    type Call = fn(&S3Storage) -> pitr::Result<()>;
    let calls: [(&str, Call); 4] = [
        ("get", |s| s.get("wal/x").map(drop)),
        ("head", |s| s.head("wal/x").map(drop)),
        ("put_if_absent", |s| s.put_if_absent("wal/x", b"x").map(drop)),
        ("list", |s| s.list("wal/").map(drop)),
    ];
    let threads: Vec<_> = calls
        .into_iter()
        .map(|(name, call)| {
            let store = store.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let result = call(&store);
                (name, result, started.elapsed())
            })
        })
        .collect();
    for thread in threads {
        let (name, result, took) = thread.join().unwrap();
        let err = result.expect_err(name);
        eprintln!("{name} against a closed port: {took:?}: {err}");
        assert!(took < Duration::from_secs(30), "{name} took {took:?}");
        assert!(err.is_retryable(), "{name}: a refused connection is retryable: {err:?}");
        assert!(
            matches!(err, pitr::Error::Remote { status: None, .. }),
            "{name}: no status without an answer: {err:?}"
        );
        assert!(err.to_string().contains("cannot be reached"), "{name}: {err}");
    }
}

#[test]
fn no_secret_appears_in_errors_or_debug_output() {
    let server = S3Server::start();
    let token = format!("session-token-{}", random_hex(16));
    let mut texts = Vec::new();

    // The right key id with a wrong secret (the one that must not show), and a session token.
    let wrong_secret = format!("wrong-secret-{}", random_hex(16));
    let mut config = server.config("repo");
    config.secret_access_key = Some(Secret::new(wrong_secret.clone()));
    config.session_token = Some(Secret::new(token.clone()));
    texts.push(format!("{config:?}"));
    let store = S3Storage::open(config).unwrap();
    texts.push(format!("{store:?}"));
    for err in [
        store.get("wal/x").unwrap_err(),
        store.head("wal/x").unwrap_err(),
        store.put_if_absent("wal/x", b"x").unwrap_err(),
        store.list("wal/").unwrap_err(),
        store.delete("wal/x").unwrap_err(),
        store.get("../x").unwrap_err(),
    ] {
        eprintln!("with a wrong secret: {err}");
        if let pitr::Error::Remote { status, .. } = &err {
            assert!(matches!(status, Some(401 | 403)), "a bad signature is refused: {err}");
            assert!(!err.is_retryable(), "{err}");
        }
        texts.push(err.to_string());
        texts.push(format!("{err:?}"));
    }

    // The right credentials, with a session token, against a server that is down.
    let mut config = server.config("repo");
    config.session_token = Some(Secret::new(token.clone()));
    config.endpoint = Some(format!("http://127.0.0.1:{}", free_port()));
    let down = S3Storage::open(config).unwrap();
    let err = down.get("wal/x").unwrap_err();
    texts.push(err.to_string());
    texts.push(format!("{err:?}"));

    for text in &texts {
        for secret in [&wrong_secret, &server.secret_key, &token] {
            assert!(!text.contains(secret.as_str()), "a secret in: {text}");
        }
    }
    assert!(
        texts
            .iter()
            .any(|t| t.contains("could not read s3://pitr-test/repo/wal/x")),
        "errors say what failed where: {texts:#?}"
    );
}

#[test]
fn the_storage_works_inside_a_multi_threaded_runtime() {
    let server = S3Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoint_config = server.config("in-runtime");
    runtime.block_on(async move {
        // Opened, used and dropped inside async code on the caller's runtime.
        let store = S3Storage::open(endpoint_config).unwrap();
        assert_eq!(store.put_if_absent("a/b", b"x").unwrap(), PutOutcome::Created);
        let clone = store.clone();
        let task = tokio::spawn(async move { clone.get("a/b").unwrap() });
        assert_eq!(task.await.unwrap().as_deref(), Some(&b"x"[..]));
        let blocking = store.clone();
        let listed = tokio::task::spawn_blocking(move || blocking.list("a/").unwrap())
            .await
            .unwrap();
        assert_eq!(listed, vec!["b"]);
        let lock = store.try_lock("backup").unwrap().expect("lock taken");
        drop(lock);
        drop(store);
    });
}

#[tokio::test]
async fn the_storage_works_inside_a_current_thread_runtime() {
    let server = S3Server::start();
    let store = S3Storage::open(server.config("in-test")).unwrap();
    assert_eq!(store.put_if_absent("k", b"v").unwrap(), PutOutcome::Created);
    assert_eq!(store.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(store.head("k").unwrap().map(|m| m.size), Some(1));
    let lock = store.try_lock("expire").unwrap().expect("lock taken");
    assert!(store.try_lock("expire").unwrap().is_none());
    drop(lock);
    drop(store);
}

#[test]
fn a_dead_holders_lock_is_taken_after_its_lease_and_a_live_one_is_not() {
    let server = S3Server::start();
    let lease = Duration::from_secs(2);
    let open = || {
        let mut config = server.config("locks");
        config.lock_lease = lease;
        S3Storage::open(config).unwrap()
    };
    let (first, second) = (open(), open());

    // A live holder renews: its lock outlives several leases.
    let held = first.try_lock("backup").unwrap().expect("a free lock is taken");
    std::thread::sleep(lease * 2);
    assert!(second.try_lock("backup").unwrap().is_none(), "a renewed lease is held");
    drop(held);
    let taken = second.try_lock("backup").unwrap().expect("a released lock is free");
    drop(taken);
    assert_eq!(
        first.get("locks/backup.lock").unwrap(),
        None,
        "released leases are deleted"
    );

    // A holder that died left its lease: nobody renews it.
    first
        .put_if_absent("locks/backup.lock", br#"{"holder":"a dead process","lease_seconds":2}"#)
        .unwrap();
    assert!(second.try_lock("backup").unwrap().is_none(), "a fresh lease is held");
    std::thread::sleep(lease);
    let started = Instant::now();
    let taken = second
        .try_lock("backup")
        .unwrap()
        .expect("a lease not renewed for a whole lease is taken over");
    let waited = started.elapsed();
    assert!(
        waited >= lease,
        "the taker watched the lease for a whole lease first: {waited:?}"
    );
    assert!(first.try_lock("backup").unwrap().is_none());
    drop(taken);
}

/// A server that answers every request with `status` and an S3 error body (a fault injector, not
/// an S3 implementation); counts the requests.
fn fault_server(status: &'static str, code: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let counted = counted.clone();
            std::thread::spawn(move || answer_every_request(stream, status, code, &counted));
        }
    });
    (port, requests)
}

fn answer_every_request(mut stream: TcpStream, status: &str, code: &str, counted: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if first {
                counted.fetch_add(1, SeqCst);
                first = false;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = format!("<Error><Code>{code}</Code><Message>injected</Message></Error>");
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn storage_at(port: u16) -> S3Storage {
    S3Storage::open(config_at(port)).unwrap()
}

fn config_at(port: u16) -> S3Config {
    let mut config = S3Config::from_url("s3://pitr-test/repo").unwrap();
    config.endpoint = Some(format!("http://127.0.0.1:{port}"));
    config.access_key_id = Some("AKFAULT".into());
    config.secret_access_key = Some(Secret::new("secret-of-a-faulty-store"));
    config
}

/// A server that accepts connections, reads what comes and never answers (a hung store); counts
/// the requests (each head's first line).
fn hanging_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut at_start = true;
                // Until the client gives up and closes the connection.
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if at_start && line.contains(" HTTP/1.1") {
                        counted.fetch_add(1, SeqCst);
                    }
                    at_start = line == "\r\n";
                    line.clear();
                }
            });
        }
    });
    (port, requests)
}

/// A store that takes connections and never answers: a read is retried after each request
/// timeout and then is a retryable error; a write is tried once (the store may have it) and is
/// a retryable error. All within a bound set by the request timeout, short here.
#[test]
fn a_store_that_never_answers_is_a_retryable_error_after_the_request_timeout() {
    let (port, requests) = hanging_server();
    let mut config = config_at(port);
    config.request_timeout = Duration::from_secs(1);
    let store = S3Storage::open(config).unwrap();

    let started = Instant::now();
    let err = store.get("wal/x").expect_err("no answer is an error");
    let took = started.elapsed();
    eprintln!("get from a hung store: {took:?}: {err}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(err, pitr::Error::Remote { status: None, .. }), "{err:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(40),
        "{took:?}"
    );
    assert_eq!(
        requests.load(SeqCst),
        1 + pitr::storage::s3::MAX_RETRIES,
        "a read is retried"
    );

    requests.store(0, SeqCst);
    let started = Instant::now();
    let err = store.put_if_absent("wal/x", b"x").expect_err("no answer is an error");
    let took = started.elapsed();
    eprintln!("put to a hung store: {took:?}: {err}");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(requests.load(SeqCst), 1, "a write that timed out is not tried again");
    assert!(took < Duration::from_secs(40), "{took:?}");
}

/// 503s: the error is retryable, carries the status, and comes after the client's retries.
#[test]
fn a_store_answering_503_is_a_retryable_error_with_its_status() {
    let (port, requests) = fault_server("503 Service Unavailable", "SlowDown");
    let store = storage_at(port);
    let started = Instant::now();
    let err = store.get("wal/x").expect_err("a 503 is an error");
    eprintln!("get against 503s: {:?}: {err}", started.elapsed());
    assert!(
        matches!(
            err,
            pitr::Error::Remote {
                status: Some(503),
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        requests.load(SeqCst),
        1 + pitr::storage::s3::MAX_RETRIES,
        "the first request and every retry"
    );
    let err = store.put_if_absent("wal/x", b"x").expect_err("a 503 is an error");
    assert!(err.is_retryable(), "{err:?}");
    assert!(store.list("wal/").expect_err("list").is_retryable());
}

/// Amazon S3 answers 409 to a conditional put while another conditional write of the key is in
/// flight: tried again a few times, then a retryable error, never "already exists".
#[test]
fn a_conflicting_conditional_put_is_retried_then_a_retryable_error() {
    let (port, requests) = fault_server("409 Conflict", "ConditionalRequestConflict");
    let store = storage_at(port);
    let err = store
        .put_if_absent("wal/x", b"x")
        .expect_err("a 409 is not 'already exists'");
    assert!(
        matches!(
            err,
            pitr::Error::Remote {
                status: Some(409),
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(requests.load(SeqCst) > 1, "the put was tried again");
}
