//! TLS on pitr's connections to PostgreSQL, against a real server with `ssl = on`, a certificate
//! for `localhost` signed by a throwaway CA (made with the openssl CLI), and a pg_hba.conf that
//! refuses every TCP connection without TLS (`hostnossl ... reject`, `hostssl` only). The
//! queries' connection (`pitr backup`, `pitr names record`) and the replication connection
//! (`pitr slot`, the receiver of `pitr watch --slot`) are both tried with libpq's sslmode values.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

/// The throwaway CA, the server's certificate (for `localhost` only, so that `127.0.0.1` is
/// another host name), a client certificate for role `certuser`, and a second CA that signed
/// nothing of this server's.
struct Certificates {
    dir: TestDir,
}

impl Certificates {
    fn make() -> Certificates {
        let dir = TestDir::new("pgtls");
        let d = dir.path().to_path_buf();
        let openssl = |args: &[&str]| openssl(&d, args);
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (key_file, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=pitr test {ca}"));
            let mut args = vec!["req", "-x509"];
            args.extend(key);
            args.extend([
                "-keyout",
                &key_file,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ]);
            openssl(&args);
        }
        for (name, subject, extensions) in [
            (
                "server",
                "/CN=localhost",
                "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "/CN=certuser",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
            ),
        ] {
            let (key_file, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.cnf"),
            );
            let mut args = vec!["req"];
            args.extend(key);
            args.extend(["-keyout", &key_file, "-out", &csr, "-subj", subject]);
            openssl(&args);
            std::fs::write(d.join(&ext), extensions).unwrap();
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
            std::fs::set_permissions(d.join(&key_file), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        give_to_server_user(dir.path());
        Certificates { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path(&self, name: &str) -> String {
        self.file(name).to_str().unwrap().to_string()
    }
}

/// A cluster listening on 127.0.0.1 with TLS, whose pg_hba.conf takes TCP connections only
/// over TLS (role `certuser` only with its client certificate).
fn tls_cluster(certs: &Certificates, archive: bool) -> Cluster {
    let quoted = |name: &str| format!("'{}'", certs.path(name));
    let c = Cluster::start(
        ClusterOptions::default()
            .archive(archive)
            .setting("listen_addresses", "'127.0.0.1'")
            .setting("ssl", "on")
            .setting("ssl_cert_file", &quoted("server.crt"))
            .setting("ssl_key_file", &quoted("server.key"))
            .setting("ssl_ca_file", &quoted("ca.pem")),
    );
    write_hba(
        &c,
        "hostnossl all all all reject\n\
         hostnossl replication all all reject\n\
         hostssl all certuser 127.0.0.1/32 cert\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostssl replication all 127.0.0.1/32 trust\n",
    );
    c.psql("CREATE ROLE certuser LOGIN SUPERUSER REPLICATION");
    c
}

/// pg_hba.conf: local connections trusted, then `tcp_lines`; reloaded.
fn write_hba(c: &Cluster, tcp_lines: &str) {
    let hba = c.data_dir().join("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("local all all trust\nlocal replication all trust\n{tcp_lines}"),
    )
    .unwrap();
    give_to_server_user(&hba);
    c.reload();
}

/// The server without TLS (`ssl` is reloadable), taking TCP connections without it.
fn turn_tls_off(c: &mut Cluster) {
    c.set("ssl", "off");
    write_hba(
        c,
        "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
    );
}

/// A pitr command for `c`'s repository that reaches the server over TCP at `host`, with
/// `vars` (PGSSLMODE and the like) and no client certificate unless `vars` names one.
fn over_tcp(c: &Cluster, certs: &Certificates, host: &str, vars: &[(&str, &str)]) -> Command {
    let mut cmd = c.pitr_cmd();
    cmd.env("PGHOST", host)
        .env("PGPORT", c.port().to_string())
        .env("PGDATABASE", "postgres")
        .env("PGSSLCERT", certs.file("none.crt"))
        .env("PGSSLKEY", certs.file("none.key"));
    for (key, value) in vars {
        cmd.env(key, value);
    }
    cmd.arg("--repo").arg(c.repo());
    cmd
}

/// Every file under `dir` with its size: what a refused command must leave as it was.
fn files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                found.insert(entry.path(), meta.len());
            }
        }
    }
    found
}

#[track_caller]
fn assert_fails_saying(out: &CmdOutput, words: &[&str]) {
    assert!(!out.success(), "expected a failure:\n{}", out.describe());
    let text = out.stderr_str();
    for word in words {
        assert!(
            text.contains(word),
            "the error does not say {word:?}:\n{}",
            out.describe()
        );
    }
}

#[test]
fn backups_and_queries_follow_sslmode_against_a_server_that_takes_tls_only() {
    let certs = Certificates::make();
    let mut c = tls_cluster(&certs, true);
    c.pitr_ok(&["create-repo"]); // over the Unix socket: prefer (the default) does not try TLS there
    let ca = certs.path("ca.pem");

    // verify-full, from a key/value --dbname: the chain and the host name are checked.
    let conninfo = format!(
        "host=localhost port={} dbname=postgres sslmode=verify-full sslrootcert='{ca}'",
        c.port()
    );
    let mut backup = c.pitr_cmd();
    backup.env("PGSSLCERT", certs.file("none.crt")).args([
        "--repo",
        c.repo().to_str().unwrap(),
        "backup",
        "--fast",
        "--dbname",
        &conninfo,
    ]);
    let out = run(&mut backup);
    assert!(out.success(), "{}\n{}", out.describe(), c.log_tail());

    // A CA that did not sign the server's certificate: refused, nothing written.
    let before = files(c.repo_dir());
    let other = certs.path("other-ca.pem");
    let vars = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", other.as_str())];
    let out = run(over_tcp(&c, &certs, "localhost", &vars).args(["backup", "--fast"]));
    assert_fails_saying(&out, &["certificate was refused", "sslrootcert"]);
    assert_eq!(files(c.repo_dir()), before, "a refused backup wrote to the repository");

    // Without TLS the server refuses the connection (hostnossl ... reject); allow tries
    // without TLS first, then with it.
    let out = run(over_tcp(&c, &certs, "localhost", &[("PGSSLMODE", "disable")]).args(["names", "record"]));
    assert_fails_saying(&out, &["pg_hba.conf rejects connection", "use sslmode=require"]);
    run(over_tcp(&c, &certs, "localhost", &[("PGSSLMODE", "allow")]).args(["names", "record"])).assert_success();
    // Over the Unix socket there is no TLS, whatever the mode (as with libpq): no root file needed.
    let mut local = c.pitr_connected_cmd(c.repo());
    local
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", certs.file("no-root.crt"));
    run(local.args(["names", "record"])).assert_success();

    // require without a root certificate file: encrypted, the certificate not checked.
    let missing = certs.path("no-root.crt");
    let vars = [("PGSSLMODE", "require"), ("PGSSLROOTCERT", missing.as_str())];
    run(over_tcp(&c, &certs, "127.0.0.1", &vars).args(["names", "record"])).assert_success();
    // ...but with a root file there, require checks the chain against it, as libpq does.
    let vars = [("PGSSLMODE", "require"), ("PGSSLROOTCERT", other.as_str())];
    let out = run(over_tcp(&c, &certs, "127.0.0.1", &vars).args(["names", "record"]));
    assert_fails_saying(&out, &["certificate was refused", "sslmode=require"]);
    // prefer (libpq's default) over TCP takes the TLS the server offers.
    run(over_tcp(&c, &certs, "127.0.0.1", &[("PGSSLROOTCERT", missing.as_str())]).args(["names", "record"]))
        .assert_success();
    // verify-ca with that file missing: told where the file should be.
    let vars = [("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", missing.as_str())];
    let out = run(over_tcp(&c, &certs, "127.0.0.1", &vars).args(["names", "record"]));
    assert_fails_saying(&out, &["no-root.crt does not exist", "sslrootcert=system"]);

    // The certificate names localhost, not 127.0.0.1: verify-full refuses it there, verify-ca
    // (the chain only) takes it.
    let vars = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let out = run(over_tcp(&c, &certs, "127.0.0.1", &vars).args(["names", "record"]));
    assert_fails_saying(&out, &["certificate was refused", "does not name the host"]);
    let vars = [("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", ca.as_str())];
    run(over_tcp(&c, &certs, "127.0.0.1", &vars).args(["names", "record"])).assert_success();

    // pg_hba's `cert` method: role certuser gets in with its client certificate only.
    let (client_crt, client_key) = (certs.path("client.crt"), certs.path("client.key"));
    let mut vars = vec![
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGUSER", "certuser"),
    ];
    let out = run(over_tcp(&c, &certs, "localhost", &vars).args(["names", "record"]));
    assert_fails_saying(&out, &["requires a valid client certificate", "PGSSLCERT"]);
    vars.extend([("PGSSLCERT", client_crt.as_str()), ("PGSSLKEY", client_key.as_str())]);
    run(over_tcp(&c, &certs, "localhost", &vars).args(["names", "record"])).assert_success();
    // A key others may read is refused before any connection, as libpq does.
    std::fs::set_permissions(certs.file("client.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(over_tcp(&c, &certs, "localhost", &vars).args(["names", "record"]));
    assert_fails_saying(&out, &["client.key has access for group or others", "chmod 0600"]);
    assert!(!out.stderr_str().contains("BEGIN"), "{}", out.describe());

    // A server without TLS: require refuses it and says so, prefer goes on without TLS.
    turn_tls_off(&mut c);
    let out = run(over_tcp(&c, &certs, "localhost", &[("PGSSLMODE", "require")]).args(["names", "record"]));
    assert_fails_saying(&out, &["does not accept TLS connections", "sslmode=require"]);
    run(over_tcp(&c, &certs, "localhost", &[]).args(["names", "record"])).assert_success();
}

/// `pitr watch --slot` running against the server over TCP with `vars`; killed when dropped.
struct Receiver(Option<Child>);

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            kill_with_children(child);
        }
    }
}

#[test]
fn the_receiver_streams_over_tls_with_verify_full() {
    let certs = Certificates::make();
    let mut c = tls_cluster(&certs, false);
    c.pitr_ok(&["create-repo"]);
    let (ca, other) = (certs.path("ca.pem"), certs.path("other-ca.pem"));

    // The replication connection checks the certificate too.
    let vars = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", other.as_str())];
    let out = run(over_tcp(&c, &certs, "localhost", &vars).args(["slot", "create", "--slot", "pitr"]));
    assert_fails_saying(&out, &["certificate was refused", "sslrootcert"]);
    let out =
        run(over_tcp(&c, &certs, "localhost", &[("PGSSLMODE", "disable")]).args(["slot", "create", "--slot", "pitr"]));
    assert_fails_saying(
        &out,
        &["pg_hba.conf rejects replication connection", "use sslmode=require"],
    );

    let vars = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    run(over_tcp(&c, &certs, "localhost", &vars).args(["slot", "create", "--slot", "pitr"])).assert_success();
    let mut watch = over_tcp(&c, &certs, "localhost", &vars);
    watch
        .args(["watch", "--workers", "1", "--slot", "pitr", "--pgdata"])
        .arg(c.data_dir());
    let receiver = Receiver(Some(spawn(&mut watch)));
    c.psql("CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 2000) g");
    let name = c.switch_wal();
    let stored = poll(Duration::from_secs(60), || {
        stored_path(c.repo_dir(), &name).exists().then_some(())
    });
    assert!(stored.is_some(), "the receiver did not store {name}\n{}", c.log_tail());
    let dest = c.test_dir().join("got");
    c.pitr(&["archive-get", &name, dest.to_str().unwrap()]).assert_success();
    assert!(
        read(&dest) == read(&c.pg_wal().join(&name)),
        "{name} differs from pg_wal's"
    );
    // The walsender's connection is the receiver's, and it is encrypted.
    let ssl = c.psql("SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)");
    assert_eq!(ssl, "t", "the replication connection is not over TLS");
    drop(receiver);
    let inactive = poll(Duration::from_secs(30), || {
        (c.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pitr'") == "f").then_some(())
    });
    assert!(inactive.is_some(), "the slot stays active after the receiver ended");

    // A server without TLS: require refuses it and says so, prefer goes on without TLS.
    turn_tls_off(&mut c);
    let slot = ["slot", "drop", "--slot", "pitr"];
    let out = run(over_tcp(&c, &certs, "localhost", &[("PGSSLMODE", "require")]).args(slot));
    assert_fails_saying(&out, &["does not accept TLS connections", "sslmode=require"]);
    run(over_tcp(&c, &certs, "localhost", &[]).args(slot)).assert_success();
}
