//! Faults of a remote store, with pitr's real S3 client against a real S3-compatible server
//! (s3s-fs) behind a fault-injecting proxy written here ([`FaultProxy`]): a store that is down,
//! that answers 500, that is slow, or that drops the connection in the middle of an upload.
//!
//! What must hold: archive-push exits 1 (PostgreSQL keeps the file and retries) and leaves no
//! object, or the whole one; archive-get exits 1 only for a true 404, 200 for everything else;
//! a backup that fails leaves nothing `list` shows and nothing `verify` complains about, and does
//! not block the next one; recover fails loudly, naming the store. The client retries a failed
//! request 5 times with backoff (`pitr::storage::s3::MAX_RETRIES`), so each failure here costs a
//! few seconds.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::s3::{objects_under, S3Server};
use common::*;

// ---------------------------------------------------------------------------------------------
// The fault-injecting proxy
// ---------------------------------------------------------------------------------------------

/// What the proxy does with the requests it gets from now on.
#[derive(Clone, Debug)]
enum Fault {
    /// Forwards every request to the server and its answer back.
    Pass,
    /// Answers every request with this status (and an S3 error body) itself.
    Answer(&'static str),
    /// Answers the requests whose `METHOD path` contains the first string with the status; the
    /// others pass.
    AnswerFor(&'static str, &'static str),
    /// Forwards every request, after waiting this long.
    Delay(Duration),
    /// Forwards the head and the first bytes of every request body longer than this, then
    /// closes both connections: a connection dropped mid-upload. Other requests pass.
    CutBody(usize),
    /// Forwards the requests whose `METHOD path` contains the string, and the first bytes of
    /// their answer back, then closes both connections: a connection dropped mid-download, or
    /// an answer lost after the server did the request. Other requests pass.
    CutResponse(&'static str, usize),
    /// Passes the first `n` PUT requests, then answers every further PUT with the status; other
    /// requests (GET, HEAD, DELETE, listings) pass: a store whose writes start failing in the
    /// middle of a backup.
    PassPutsThen(usize, &'static str),
    /// Passes the first `n` PUT requests (and everything before them), then answers every
    /// request with the status: a store lost in the middle of a backup.
    PassPutsThenEverything(usize, &'static str),
}

/// What the proxy did with one request, for the tests' assertions.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Done {
    Forwarded,
    Answered,
    Cut,
}

struct ProxyState {
    fault: Fault,
    /// PUT requests passed since the fault was set.
    puts: usize,
    /// `(method, path, what was done)` of every request since the fault was set.
    log: Vec<(String, String, Done)>,
}

/// A TCP proxy in front of an S3 server, one request per connection (it answers
/// `Connection: close`), that injects [`Fault`]s. std only; the signed `Host` header is passed
/// as it came, so the server's signature check still holds.
struct FaultProxy {
    port: u16,
    state: Arc<Mutex<ProxyState>>,
}

impl FaultProxy {
    fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            fault: Fault::Pass,
            puts: 0,
            log: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, upstream, &state);
                });
            }
        });
        FaultProxy { port, state }
    }

    /// Injects `fault` from now on (and forgets what was done so far).
    fn set(&self, fault: Fault) {
        let mut state = self.state.lock().unwrap();
        state.fault = fault;
        state.puts = 0;
        state.log.clear();
    }

    /// How many requests were handled with `done` since the fault was set.
    fn count(&self, done: Done) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(_, _, d)| *d == done)
            .count()
    }

    fn log(&self) -> Vec<(String, String, Done)> {
        self.state.lock().unwrap().log.clone()
    }

    /// `server`'s AWS environment with the endpoint at this proxy.
    fn env(&self, server: &S3Server) -> Vec<(String, String)> {
        endpoint_env(server, &format!("http://127.0.0.1:{}", self.port))
    }
}

/// `server`'s AWS environment with the endpoint `endpoint`.
fn endpoint_env(server: &S3Server, endpoint: &str) -> Vec<(String, String)> {
    server
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_ENDPOINT_URL" {
                (k, endpoint.to_string())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// The AWS environment of a store that is down: the endpoint a port where nothing listens.
fn down_env(server: &S3Server) -> Vec<(String, String)> {
    endpoint_env(server, &format!("http://127.0.0.1:{}", free_port()))
}

/// Handles the one request of a client connection.
fn serve(client: TcpStream, upstream: u16, state: &Mutex<ProxyState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        assert!(
            !lower.starts_with("transfer-encoding:"),
            "the proxy does not handle chunked request bodies: {line}"
        );
        if !lower.starts_with("connection:") {
            head.push(line);
        }
    }
    let mut words = head.first().map(|l| l.split_whitespace()).into_iter().flatten();
    let (method, path) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    let action = {
        let mut state = state.lock().unwrap();
        let action = match state.fault.clone() {
            Fault::Pass => Action::Forward(Duration::ZERO),
            Fault::Answer(status) => Action::Answer(status),
            Fault::AnswerFor(part, status) if format!("{method} {path}").contains(part) => Action::Answer(status),
            Fault::AnswerFor(..) => Action::Forward(Duration::ZERO),
            Fault::Delay(delay) => Action::Forward(delay),
            Fault::CutBody(after) if length > after => Action::CutRequest(after),
            Fault::CutBody(_) => Action::Forward(Duration::ZERO),
            Fault::CutResponse(part, after) if format!("{method} {path}").contains(part) => Action::CutResponse(after),
            Fault::CutResponse(..) => Action::Forward(Duration::ZERO),
            Fault::PassPutsThen(n, status) if method == "PUT" => {
                state.puts += 1;
                if state.puts > n {
                    Action::Answer(status)
                } else {
                    Action::Forward(Duration::ZERO)
                }
            }
            Fault::PassPutsThen(..) => Action::Forward(Duration::ZERO),
            Fault::PassPutsThenEverything(n, status) => {
                if state.puts >= n {
                    Action::Answer(status)
                } else {
                    state.puts += usize::from(method == "PUT");
                    Action::Forward(Duration::ZERO)
                }
            }
        };
        let done = match action {
            Action::Forward(_) => Done::Forwarded,
            Action::Answer(_) => Done::Answered,
            Action::CutRequest(_) | Action::CutResponse(_) => Done::Cut,
        };
        state.log.push((method.clone(), path.clone(), done));
        action
    };
    let mut client = client;
    if let Action::Answer(status) = action {
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        let body = "<Error><Code>InternalError</Code><Message>injected by the test proxy</Message></Error>";
        write!(
            client,
            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    if let Action::Forward(delay) = action {
        std::thread::sleep(delay);
    }
    let mut server = TcpStream::connect(("127.0.0.1", upstream))?;
    for line in &head {
        server.write_all(line.as_bytes())?;
    }
    server.write_all(b"Connection: close\r\n\r\n")?;
    match action {
        Action::CutRequest(after) => {
            std::io::copy(&mut (&mut reader).take(after as u64), &mut server)?;
        }
        Action::CutResponse(after) => {
            // The server finishes the request (its whole answer is read); the client gets the
            // first bytes of the answer.
            std::io::copy(&mut (&mut reader).take(length as u64), &mut server)?;
            let mut answer = Vec::new();
            server.read_to_end(&mut answer)?;
            client.write_all(&answer[..after.min(answer.len())])?;
        }
        _ => {
            std::io::copy(&mut (&mut reader).take(length as u64), &mut server)?;
            std::io::copy(&mut server, &mut client)?;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// What the proxy does with one request.
#[derive(Clone, Copy)]
enum Action {
    /// Forward it after a wait, and the answer back.
    Forward(Duration),
    /// Answer it with this status.
    Answer(&'static str),
    /// Forward the head and this many bytes of the body, then close both connections.
    CutRequest(usize),
    /// Forward it, wait for the whole answer, send this many bytes of it back, then close both
    /// connections.
    CutResponse(usize),
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `pitr <args…>` as `c`'s commands run (as the server user, from the data directory, as
/// PostgreSQL runs archive_command), with the AWS environment `env`; what it did and how long
/// it took.
fn pitr_with_env(c: &Cluster, env: &[(String, String)], args: &[&str]) -> (CmdOutput, Duration) {
    let started = Instant::now();
    let out = run(c
        .pitr_cmd_in_data_dir()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--repo")
        .arg(c.repo())
        .args(args));
    (out, started.elapsed())
}

/// A cluster whose repository is `prefix` on `server` (archiving off), with one captured 1 MiB
/// segment of `rows` md5 rows, data that does not compress away: its name and bytes.
fn cluster_with_a_segment(server: &S3Server, prefix: &str, rows: u32) -> (Cluster, String, Vec<u8>) {
    let c = Cluster::start(
        ClusterOptions::default()
            .s3(server, prefix)
            .wal_segsize_mb(1)
            .archive(false),
    );
    c.psql(&format!(
        "CREATE TABLE f AS SELECT md5(g::text) AS v FROM generate_series(1, {rows}) g"
    ));
    let (name, original) = c.capture_segment();
    (c, name, original)
}

/// archive-get of `segment` into `pg_wal/RECOVERYXLOG`, as PostgreSQL asks for it, with `env`.
fn get_to_recoveryxlog(c: &Cluster, env: &[(String, String)], segment: &str) -> (CmdOutput, Duration) {
    let _ = std::fs::remove_file(c.pg_wal().join("RECOVERYXLOG"));
    pitr_with_env(c, env, &["archive-get", segment, "pg_wal/RECOVERYXLOG"])
}

/// Asserts a failure reported in bounded time, that names the store and shows no secret.
#[track_caller]
fn assert_failed_naming_the_store(server: &S3Server, prefix: &str, out: &CmdOutput, took: Duration, code: i32) {
    eprintln!("{} took {took:?}: {}", out.cmdline, out.stderr_str().trim());
    out.assert_code(code);
    assert!(took < Duration::from_secs(60), "the failure took {took:?}");
    assert!(
        out.stderr_str().contains(&server.url(prefix)),
        "the error names the store {}:\n{}",
        server.url(prefix),
        out.describe()
    );
    assert!(!out.stderr_str().contains(&server.secret_key), "{}", out.describe());
    assert!(!out.stdout_str().contains(&server.secret_key), "{}", out.describe());
}

// ---------------------------------------------------------------------------------------------
// archive-push and archive-get
// ---------------------------------------------------------------------------------------------

/// archive-push against a store that is down, answers 500, or drops the connection in the
/// middle of the upload: exit 1 (PostgreSQL keeps the segment and retries), no object in the
/// bucket. Against a slow store: exit 0 and the whole object. Once the store is back, the same
/// push succeeds and archive-get returns the original bytes.
#[test]
fn archive_push_to_a_failing_store_exits_1_and_leaves_no_object() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    let c = Cluster::start(
        ClusterOptions::default()
            .s3(&server, "push")
            .wal_segsize_mb(1)
            .archive(false),
    );
    let repo_dir = server.bucket_dir().join("push");
    let (first, _) = c.capture_segment();
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{first}")])
        .assert_success();
    // A segment full of data that does not compress away: an upload of many kilobytes.
    c.psql("CREATE TABLE f AS SELECT md5(g::text) AS v FROM generate_series(1, 5000) g");
    let (name, original) = c.capture_segment();
    let object = stored_path(&repo_dir, &name);
    let push = ["archive-push".to_string(), format!("pg_wal/{name}")];
    let push: Vec<&str> = push.iter().map(String::as_str).collect();

    let (out, took) = pitr_with_env(&c, &down_env(&server), &push);
    assert_failed_naming_the_store(&server, "push", &out, took, 1);
    assert!(!object.exists(), "an object after a push to a store that is down");

    proxy.set(Fault::Answer("500 Internal Server Error"));
    let (out, took) = pitr_with_env(&c, &proxy.env(&server), &push);
    assert_failed_naming_the_store(&server, "push", &out, took, 1);
    assert!(
        proxy.count(Done::Answered) > 1,
        "the request was retried: {:?}",
        proxy.log()
    );
    assert!(!object.exists(), "an object after a push answered by 500s");

    // The listing and repo.json pass; only the upload of the segment is answered 500.
    proxy.set(Fault::AnswerFor(
        "PUT /pitr-test/push/wal/",
        "500 Internal Server Error",
    ));
    let (out, took) = pitr_with_env(&c, &proxy.env(&server), &push);
    assert_failed_naming_the_store(&server, "push", &out, took, 1);
    assert!(
        proxy
            .log()
            .iter()
            .any(|(m, p, d)| m == "PUT" && p.ends_with(&name) && *d == Done::Answered),
        "the upload was answered 500: {:?}",
        proxy.log()
    );
    assert!(!object.exists(), "an object after an upload answered by 500s");

    proxy.set(Fault::CutBody(4096));
    let (out, took) = pitr_with_env(&c, &proxy.env(&server), &push);
    assert_failed_naming_the_store(&server, "push", &out, took, 1);
    assert!(proxy.count(Done::Cut) >= 1, "no upload was cut: {:?}", proxy.log());
    assert!(
        !object.exists(),
        "an object after an upload cut off: {} of {} bytes",
        std::fs::metadata(&object).map(|m| m.len()).unwrap_or(0),
        original.len()
    );
    // Not half-visible either: the store answers "not archived" for it.
    let dest = c.test_dir().join("cut");
    c.pitr(&["archive-get", &name, dest.to_str().unwrap()]).assert_code(1);

    // Slow answers: the push waits, and stores the whole object.
    proxy.set(Fault::Delay(Duration::from_secs(2)));
    let (out, took) = pitr_with_env(&c, &proxy.env(&server), &push);
    out.assert_success().assert_silent();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(object.is_file(), "no object after a slow push");
    let dest = c.test_dir().join("restored");
    c.pitr(&["archive-get", &name, dest.to_str().unwrap()]).assert_success();
    assert!(read(&dest) == original, "archive-get returned other bytes");

    // The store takes the upload but the answer is lost: whatever the push says, the object is
    // whole, and PostgreSQL's next try succeeds.
    c.psql("INSERT INTO f SELECT md5(g::text) FROM generate_series(1, 5000) g");
    let (name, original) = c.capture_segment();
    let object = stored_path(&repo_dir, &name);
    proxy.set(Fault::CutResponse("PUT /pitr-test/push/wal/", 0));
    let push = ["archive-push".to_string(), format!("pg_wal/{name}")];
    let push: Vec<&str> = push.iter().map(String::as_str).collect();
    let (out, took) = pitr_with_env(&c, &proxy.env(&server), &push);
    eprintln!("push whose answer was lost: {took:?}: {}", out.describe());
    assert!(proxy.count(Done::Cut) >= 1, "{:?}", proxy.log());
    assert!(out.code() == Some(0) || out.code() == Some(1), "{}", out.describe());
    let dest = c.test_dir().join("lost-answer");
    c.pitr(&["archive-get", &name, dest.to_str().unwrap()]).assert_success();
    assert!(read(&dest) == original, "the object is not whole");
    assert!(object.is_file());
    pitr_with_env(&c, &server.env(), &push)
        .0
        .assert_success()
        .assert_silent();
}

/// archive-get exits 1 only when the store answers that the segment is truly absent; a store
/// that is down, answers 500, or a missing bucket is 200 (PostgreSQL aborts recovery rather than
/// take "not archived" for the end of WAL and promote early), also for a segment that is not
/// archived. A slow store still answers right.
#[test]
fn archive_get_exits_1_only_for_a_true_404_and_200_for_every_store_failure() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    // A segment full of data that does not compress away: a download of many kilobytes.
    let (c, name, original) = cluster_with_a_segment(&server, "get", 5000);
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success();
    let absent = later_segment_name(&name, 100, 1 << 20);
    let get = |env: &[(String, String)], segment: &str| get_to_recoveryxlog(&c, env, segment);

    let (out, _) = get(&server.env(), &absent);
    out.assert_code(1).assert_silent();

    for (what, env) in [("down", down_env(&server)), ("answering 500", proxy.env(&server))] {
        proxy.set(Fault::Answer("500 Internal Server Error"));
        for segment in [&name, &absent] {
            let (out, took) = get(&env, segment);
            eprintln!("archive-get {segment} from a store {what}: {took:?}");
            assert_failed_naming_the_store(&server, "get", &out, took, 200);
            assert!(!c.pg_wal().join("RECOVERYXLOG").exists());
        }
    }
    assert!(proxy.count(Done::Answered) > 1, "{:?}", proxy.log());

    // The repository opens; only the segment's requests fail: 500, 403, or an answer cut off.
    for fault in [
        Fault::AnswerFor("/wal/", "500 Internal Server Error"),
        Fault::AnswerFor("/wal/", "403 Forbidden"),
        Fault::CutResponse("/wal/", 1000),
    ] {
        for segment in [&name, &absent] {
            proxy.set(fault.clone());
            let (out, took) = get(&proxy.env(&server), segment);
            eprintln!("archive-get {segment} with {fault:?}: {took:?}");
            if matches!(fault, Fault::CutResponse(..)) && segment == &absent {
                // A 404 has a short body: nothing to cut, a true "not archived".
                out.assert_code(1);
                continue;
            }
            assert_failed_naming_the_store(&server, "get", &out, took, 200);
            assert!(
                proxy.count(Done::Answered) + proxy.count(Done::Cut) > 0,
                "{:?}",
                proxy.log()
            );
            assert!(!c.pg_wal().join("RECOVERYXLOG").exists(), "a file after {fault:?}");
        }
    }

    // Every answer cut well into its body: the client asks for the rest where the body stopped,
    // again and again, and the segment arrives whole, checked against its CRC-32 while it is
    // written out.
    proxy.set(Fault::CutResponse("/wal/", 50_000));
    let (out, _) = get(&proxy.env(&server), &name);
    out.assert_success().assert_silent();
    assert!(read(&c.pg_wal().join("RECOVERYXLOG")) == original);
    assert!(proxy.count(Done::Cut) >= 2, "{:?}", proxy.log());
    let _ = std::fs::remove_file(c.pg_wal().join("RECOVERYXLOG"));

    // Credentials the store refuses (403): 200, and the wrong secret is not echoed either.
    let wrong = format!("wrong-{}", common::s3::random_hex(16));
    let refused: Vec<(String, String)> = server
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_SECRET_ACCESS_KEY" {
                (k, wrong.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    for segment in [&name, &absent] {
        let (out, took) = get(&refused, segment);
        assert_failed_naming_the_store(&server, "get", &out, took, 200);
        assert!(!out.stderr_str().contains(&wrong), "{}", out.describe());
    }

    // A bucket that does not exist: 200 for every segment, never "not archived".
    let missing = server.url("get").replace("pitr-test", "pitr-missing");
    for segment in [&name, &absent] {
        let out = run(c.pitr_cmd_in_data_dir().arg("--repo").arg(&missing).args([
            "archive-get",
            segment,
            "pg_wal/RECOVERYXLOG",
        ]));
        eprintln!(
            "archive-get {segment} from a missing bucket: {}",
            out.stderr_str().trim()
        );
        out.assert_code(200);
        assert!(out.stderr_str().contains(&missing), "{}", out.describe());
    }

    proxy.set(Fault::Delay(Duration::from_secs(2)));
    let (out, _) = get(&proxy.env(&server), &name);
    out.assert_success().assert_silent();
    assert!(read(&c.pg_wal().join("RECOVERYXLOG")) == original);
    let (out, _) = get(&proxy.env(&server), &absent);
    out.assert_code(1).assert_silent();
    let _ = std::fs::remove_file(c.pg_wal().join("RECOVERYXLOG"));
}

// ---------------------------------------------------------------------------------------------
// backup and recover
// ---------------------------------------------------------------------------------------------

/// A backup whose store starts refusing writes (500) in the middle fails, and leaves no backup
/// that `list` shows and nothing `verify` names; the next backup is not blocked (its lock was
/// released). A backup against a store that is down fails naming it. recover from a store that
/// is down or answers 500 fails loudly, naming it, and leaves no server running. A backup that
/// loses the store entirely leaves its lease, and the next one's refusal says it runs out.
#[test]
fn a_backup_or_recover_against_a_failing_store_fails_cleanly() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    let c = Cluster::start(ClusterOptions::default().s3(&server, "backup"));
    let repo_dir = server.bucket_dir().join("backup");
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS id");
    let first = json_str(&backup_json(&c, &[])["backup"], "id").to_string();
    let listed = |c: &Cluster| -> Vec<String> {
        let list = parse_json(c.pitr(&["list", "--json"]).assert_success());
        list.as_array()
            .unwrap()
            .iter()
            .map(|b| json_str(b, "id").to_string())
            .collect()
    };
    let manifests = || -> Vec<String> {
        objects_under(&repo_dir)
            .into_iter()
            .filter(|p| p.ends_with("backup.manifest"))
            .collect()
    };
    let backup_through = |env: &[(String, String)], extra: &[&str]| {
        let started = Instant::now();
        let out = run(c
            .pitr_connected_cmd(c.repo())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["backup", "--fast"])
            .args(extra));
        (out, started.elapsed())
    };

    proxy.set(Fault::PassPutsThen(8, "500 Internal Server Error"));
    let (out, took) = backup_through(&proxy.env(&server), &[]);
    assert_failed_naming_the_store(&server, "backup", &out, took, 1);
    assert!(proxy.count(Done::Answered) > 0, "{:?}", proxy.log());
    // What it stored stays under its id, marked incomplete, without a manifest.
    let partial: Vec<String> = objects_under(&repo_dir.join("hourly"))
        .into_iter()
        .filter_map(|p| p.strip_suffix("/backup.incomplete").map(str::to_string))
        .collect();
    assert_eq!(
        partial.len(),
        1,
        "one incomplete backup: {:?}",
        objects_under(&repo_dir)
    );
    let partial = &partial[0];
    assert!(!repo_dir.join("hourly").join(partial).join("backup.manifest").exists());
    assert_eq!(
        listed(&c),
        std::slice::from_ref(&first),
        "only the first backup is listed"
    );
    assert_eq!(manifests().len(), 1, "one manifest in the bucket: {:?}", manifests());
    let verify = run(c
        .pitr_cmd()
        .env("PGHOST", c.dir().join("no-server-here"))
        .arg("--repo")
        .arg(c.repo())
        .args(["verify", "--json", "--log-file", "none"]));
    assert_eq!(
        verify.code(),
        Some(0),
        "verify after a failed backup:\n{}",
        verify.describe()
    );

    // The next backup (through the proxy, passing everything now) is not blocked.
    // It also deletes what the failed one left.
    proxy.set(Fault::Pass);
    let (out, took) = backup_through(&proxy.env(&server), &["--json"]);
    assert!(out.success(), "the next backup ({took:?}):\n{}", out.describe());
    assert_eq!(
        parse_json(&out)["backup"]["cleaned_up"],
        serde_json::json!([partial]),
        "{}",
        out.describe()
    );
    assert_eq!(
        objects_under(&repo_dir.join("hourly").join(partial)),
        std::collections::BTreeSet::<String>::new()
    );
    assert_eq!(listed(&c).len(), 2);

    let (out, took) = backup_through(&down_env(&server), &[]);
    assert_failed_naming_the_store(&server, "backup", &out, took, 1);
    assert_eq!(listed(&c).len(), 2);

    // recover from a store that is down, or answers 500.
    c.switch_and_archive();
    proxy.set(Fault::Answer("500 Internal Server Error"));
    for env in [down_env(&server), proxy.env(&server)] {
        let new = NewDir::new();
        let started = Instant::now();
        let out = run(c
            .pitr_cmd()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--repo")
            .arg(c.repo())
            .args(["recover", "--target", "latest", "--pgdata"])
            .arg(&new.data));
        assert_failed_naming_the_store(&server, "backup", &out, started.elapsed(), 1);
        assert!(!new.is_running(), "a server runs after a failed recover");
    }

    // The backup comes, the WAL does not: recover stops, naming the store, and leaves no server.
    proxy.set(Fault::AnswerFor(
        "GET /pitr-test/backup/wal/",
        "500 Internal Server Error",
    ));
    let new = NewDir::new();
    let started = Instant::now();
    let out = run(c
        .pitr_cmd()
        .envs(proxy.env(&server))
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--target", "latest", "--pgdata"])
        .arg(&new.data));
    assert!(proxy.count(Done::Answered) > 0, "{:?}", proxy.log());
    assert_failed_naming_the_store(&server, "backup", &out, started.elapsed(), 1);
    assert!(
        out.stderr_str().contains("wait until its store answers again"),
        "the diagnosis covers a store that fails:\n{}",
        out.describe()
    );
    assert!(!new.is_running(), "a server runs after a failed recover");

    // A backup that loses the store entirely cannot delete its lease: the next one is refused
    // until the lease runs out, and says so.
    proxy.set(Fault::PassPutsThenEverything(8, "500 Internal Server Error"));
    let (out, took) = backup_through(&proxy.env(&server), &[]);
    assert_failed_naming_the_store(&server, "backup", &out, took, 1);
    assert!(
        repo_dir.join("locks").join("backup.lock").is_file(),
        "{:?}",
        objects_under(&repo_dir.join("locks"))
    );
    let (out, took) = backup_through(&server.env(), &[]);
    assert_failed_naming_the_store(&server, "backup", &out, took, 1);
    assert!(
        out.stderr_str().contains("another pitr backup is running") && out.stderr_str().contains("its lease runs out"),
        "{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL through a failing store
// ---------------------------------------------------------------------------------------------

/// What the exit codes are for, seen from PostgreSQL: while the store answers 500 the archiver
/// keeps the segment (`.ready`, counted as failed) and archives it once the store is back; a
/// recovery whose restore_command meets 500s aborts instead of promoting early, and the same
/// copy, started again once the store is back, recovers to the end.
#[test]
fn postgresql_retries_archiving_and_aborts_recovery_while_the_store_fails() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    let mut options = ClusterOptions::default().s3(&server, "pg");
    options.env = proxy.env(&server);
    let c = Cluster::start(options);
    let repo_dir = server.bucket_dir().join("pg");
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let backup = c.base_backup();

    proxy.set(Fault::Answer("500 Internal Server Error"));
    c.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let segment = c.switch_wal();
    let failed = poll(Duration::from_secs(60), || {
        let (_, _, failed, last_failed) = c.archiver_stats();
        (failed >= 1 && last_failed == segment).then_some(())
    });
    assert!(
        failed.is_some(),
        "no failed archiving: {:?}\n{}",
        c.archiver_stats(),
        c.log_tail()
    );
    assert!(c.archive_status().1.contains(&segment), "{segment} is no longer .ready");
    assert!(!stored_path(&repo_dir, &segment).exists());

    proxy.set(Fault::Pass);
    c.switch_wal(); // wakes the archiver, which sleeps after failures
    c.wait_archived(&segment);
    assert!(stored_path(&repo_dir, &segment).is_file());

    // Recovery from the store answering 500: FATAL, not an early promotion.
    proxy.set(Fault::Answer("500 Internal Server Error"));
    let mut copy = Cluster::recover(backup, RecoveryOptions::default());
    match copy.wait_recovery_end() {
        RecoveryOutcome::Failed { log } => assert!(
            log.contains("could not restore file") || log.contains("exit code 200"),
            "{}",
            tail(&log, 40)
        ),
        RecoveryOutcome::Promoted => panic!("the copy promoted while the store answered 500:\n{}", copy.log_tail()),
    }
    proxy.set(Fault::Pass);
    assert!(copy.try_start_server(), "{}", copy.log_tail());
    copy.expect_promoted();
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "2000");
    // The servers' logs hold pitr's errors, and no secret.
    for log in [c.log(), copy.log()] {
        assert!(
            log.contains("pitr-test/pg"),
            "pitr's errors are logged:\n{}",
            tail(&log, 40)
        );
        assert!(!log.contains(&server.secret_key), "a secret in the server log");
    }
}

/// `pitr watch` while the store answers 500: it stores nothing, reports the failure with its
/// retry, keeps running, and stores every segment once the store is back; SIGTERM ends it with 0.
#[test]
fn the_watcher_rides_out_a_failing_store_and_drops_nothing() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    let mut options = ClusterOptions::default()
        .s3(&server, "watch")
        .setting("archive_command", "'/bin/false'");
    options.env = proxy.env(&server);
    let c = Cluster::start(options);
    let repo_dir = server.bucket_dir().join("watch");
    c.psql("CREATE TABLE w AS SELECT md5(g::text) AS v FROM generate_series(1, 2000) g");
    let segments = [c.switch_wal(), c.switch_wal()];

    proxy.set(Fault::Answer("500 Internal Server Error"));
    let mut command = c.pitr_cmd();
    command
        .arg("--repo")
        .arg(c.repo())
        .args(["watch", "--workers", "2", "--pgdata"])
        .arg(c.data_dir());
    let child = spawn(&mut command);
    // Each of the two workers' first push fails once the client's retries are spent: it looks the
    // generation up with two requests side by side (the listing and repo.json), 6 tries each, so
    // 24 requests; the watcher then tries again after its own backoff.
    let failing = poll(Duration::from_secs(60), || {
        (proxy.count(Done::Answered) > 28).then_some(())
    });
    assert!(failing.is_some(), "the watcher did not try: {:?}", proxy.log());
    assert!(segments.iter().all(|s| !stored_path(&repo_dir, s).exists()));

    proxy.set(Fault::Pass);
    let stored = poll(Duration::from_secs(120), || {
        segments
            .iter()
            .all(|s| stored_path(&repo_dir, s).is_file())
            .then_some(())
    });
    let out = terminate_pitr(child, "pitr watch".into(), Duration::from_secs(60));
    assert!(
        stored.is_some(),
        "not stored once the store was back:\n{}",
        out.describe()
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let log = out.stderr_str();
    assert!(
        log.contains("archiving failed; retrying") && log.contains("retry_in_s="),
        "the failure is reported with its retry:\n{log}"
    );
    assert!(
        log.contains(&server.url("watch")),
        "the failure names the store:\n{log}"
    );
    assert!(!log.contains(&server.secret_key));
    for segment in &segments {
        assert!(log.contains(&format!("archived segment={segment}")), "{log}");
        let dest = c.test_dir().join(segment);
        c.pitr(&["archive-get", segment, dest.to_str().unwrap()])
            .assert_success();
        assert!(read(&dest) == read(&c.pg_wal().join(segment)), "{segment} differs");
    }
}

// ---------------------------------------------------------------------------------------------
// A store far away: round trips
// ---------------------------------------------------------------------------------------------

/// archive-get against a store where every request waits 2 s (the proxy's delay stands for a
/// round trip far away): the segment is read while the generation is looked up, so the get
/// takes about one round trip, not three in a row, and so does a get pinned to a generation;
/// the bytes are the original ones.
#[test]
fn archive_get_waits_for_one_round_trip_not_three() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    let (c, name, original) = cluster_with_a_segment(&server, "far", 3000);
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success();
    let round_trip = Duration::from_secs(2);
    proxy.set(Fault::Delay(round_trip));
    let (out, took) = get_to_recoveryxlog(&c, &proxy.env(&server), &name);
    out.assert_success().assert_silent();
    assert!(
        std::fs::read(c.pg_wal().join("RECOVERYXLOG")).unwrap() == original,
        "archive-get returned other bytes"
    );
    let log = proxy.log();
    eprintln!("archive-get through a {round_trip:?} delay took {took:?}: {log:?}");
    assert!(
        log.iter()
            .filter(|(method, path, _)| method == "GET" && path.ends_with(&name))
            .count()
            == 1,
        "one GET of the segment: {log:?}"
    );
    assert!(
        log.len() >= 3,
        "the generation is looked up (a listing and repo.json): {log:?}"
    );
    assert!(
        took < round_trip * 2,
        "archive-get took {took:?}, more than two round trips of {round_trip:?}: its requests went one after the \
         other ({log:?})"
    );
    // As recover writes restore_command for a copy: pinned to a generation, whose record is read
    // while the segment is. (A spool of its own: the first get's prefetcher is still at work in
    // the default one, where archive-get would wait for it instead.)
    let _ = std::fs::remove_file(c.pg_wal().join("RECOVERYXLOG"));
    let spool = c.test_dir().subdir("pinned-spool");
    let (out, took) = pitr_with_env(
        &c,
        &proxy.env(&server),
        &[
            "--spool",
            spool.to_str().unwrap(),
            "archive-get",
            "--generation",
            "1",
            &name,
            "pg_wal/RECOVERYXLOG",
        ],
    );
    out.assert_success().assert_silent();
    assert!(
        std::fs::read(c.pg_wal().join("RECOVERYXLOG")).unwrap() == original,
        "archive-get --generation 1 returned other bytes"
    );
    let pinned_log = proxy.log().split_off(log.len());
    eprintln!("archive-get --generation 1 took {took:?}: {pinned_log:?}");
    assert!(pinned_log.len() >= 2, "the generation's record is read: {pinned_log:?}");
    assert!(
        took < round_trip * 2,
        "archive-get --generation 1 took {took:?}, more than two round trips of {round_trip:?} ({pinned_log:?})"
    );
}

/// `pitr recover --jobs 1` from a store where every request waits 60 ms: the backup's small
/// files are read several at a time, so the recover takes well under the time of its requests
/// one after the other; the recovered server holds the backup's rows.
#[test]
fn a_restore_from_a_store_far_away_reads_small_files_side_by_side() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port);
    let c = Cluster::start(ClusterOptions::default().s3(&server, "far"));
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS id");
    backup_json(&c, &[]);
    c.switch_and_archive();
    let round_trip = Duration::from_millis(60);
    proxy.set(Fault::Delay(round_trip));
    let new = NewDir::new();
    let started = Instant::now();
    let out = run(c
        .pitr_cmd()
        .envs(proxy.env(&server))
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--target", "immediate", "--jobs", "1"])
        .args(["--verify-sql", "SELECT count(*) FROM t", "--pgdata"])
        .arg(&new.data));
    let took = started.elapsed();
    out.assert_success();
    assert_eq!(out.stdout_line("verify: "), "10000", "{}", out.describe());
    new.stop_immediate();
    let requests = proxy.log().len();
    let in_a_row = round_trip * requests as u32;
    eprintln!("recover through a {round_trip:?} delay: {requests} requests, {took:?}");
    assert!(
        requests > 300,
        "a restore reads an object per non-empty file: {requests} requests"
    );
    assert!(
        took < in_a_row / 2,
        "recover took {took:?}, more than half of its {requests} requests one after the other ({in_a_row:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// https
// ---------------------------------------------------------------------------------------------

/// stunnel in front of an S3 server: https on its own port, with a certificate for 127.0.0.1
/// signed by a CA made for the test (`ca`, readable by the server user). Stopped on drop.
struct TlsFront {
    port: u16,
    ca: PathBuf,
    child: std::process::Child,
    _dir: TestDir,
}

impl TlsFront {
    fn start(upstream: u16) -> TlsFront {
        let dir = TestDir::new("tls");
        let d = dir.path();
        let openssl = |args: &[&str]| openssl(d, args);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pitr test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        std::fs::set_permissions(d.join("ca.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let port = free_port();
        std::fs::write(
            d.join("stunnel.conf"),
            format!(
                "foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{upstream}\n\
                 cert = {}\nkey = {}\n",
                d.join("server.crt").display(),
                d.join("server.key").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("stunnel.log")).unwrap();
        let child = std::process::Command::new("stunnel4")
            .arg(d.join("stunnel.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("stunnel4, the TLS terminator of this test: {e} (apt-get install stunnel4)"));
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "stunnel4 does not listen: {}",
                String::from_utf8_lossy(&read(&d.join("stunnel.log")))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsFront {
            port,
            ca: d.join("ca.pem"),
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An https store whose certificate a private CA signed: the system's trust store does not know
/// that CA, so archive-push fails (exit 1, nothing stored) and archive-get too (exit 200, never
/// "not archived"), naming the store. With `AWS_CA_BUNDLE` naming the CA, both work and the bytes
/// come back; a bundle that cannot be read is a clear error that changes nothing.
#[test]
fn an_https_store_is_trusted_through_the_system_roots_or_aws_ca_bundle_only() {
    let server = S3Server::start();
    let tls = TlsFront::start(server.port);
    let (c, name, original) = cluster_with_a_segment(&server, "tls", 5000);
    let object = stored_path(&server.bucket_dir().join("tls"), &name);
    let segment = format!("pg_wal/{name}");
    let https = endpoint_env(&server, &format!("https://127.0.0.1:{}", tls.port));
    let with = |extra: &[(&str, &str)]| {
        let mut env = https.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let ca = tls.ca.display().to_string();
    let get = |env: &[(String, String)]| get_to_recoveryxlog(&c, env, &name);

    let (out, took) = pitr_with_env(&c, &https, &["archive-push", &segment]);
    assert_failed_naming_the_store(&server, "tls", &out, took, 1);
    assert!(
        out.stderr_str().to_lowercase().contains("certificate"),
        "{}",
        out.describe()
    );
    assert!(!object.exists(), "stored through a certificate nobody vouched for");

    let missing = c.data_dir().join("no-such-bundle.pem").display().to_string();
    let (out, _) = pitr_with_env(&c, &with(&[("AWS_CA_BUNDLE", &missing)]), &["archive-push", &segment]);
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("AWS_CA_BUNDLE") && out.stderr_str().contains(&missing),
        "{}",
        out.describe()
    );
    assert!(!object.exists());

    let (out, _) = pitr_with_env(&c, &with(&[("AWS_CA_BUNDLE", &ca)]), &["archive-push", &segment]);
    out.assert_success().assert_silent();
    assert!(object.exists());

    let (out, took) = get(&https);
    assert_failed_naming_the_store(&server, "tls", &out, took, 200);
    assert!(!c.pg_wal().join("RECOVERYXLOG").exists());
    let (out, _) = get(&with(&[("AWS_CA_BUNDLE", &missing)]));
    out.assert_code(200);
    let (out, _) = get(&with(&[("AWS_CA_BUNDLE", &ca)]));
    out.assert_success().assert_silent();
    assert!(read(&c.pg_wal().join("RECOVERYXLOG")) == original);
    let _ = std::fs::remove_file(c.pg_wal().join("RECOVERYXLOG"));
}
