//! Connection settings the way psql finds them: a conninfo string (keyword/value or URI) first,
//! then the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE and the
//! PGSSL* variables), then libpq's defaults. tokio-postgres reads no environment by itself, and
//! knows neither libpq's stronger `sslmode` values nor the certificate files, so this module
//! takes the TLS keywords out of the conninfo ([`parse_conninfo`]) and keeps their settings
//! ([`TlsSettings`]) next to tokio-postgres' [`Config`] in a [`ConnectionSettings`].

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::tls::{SslMode, TlsKeywords, TlsSettings};
use crate::error::{Error, Result};

/// Where and how to connect: tokio-postgres' settings, and the TLS settings both of pitr's
/// connection paths (`Server::connect`, the replication connection) follow.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Host, port, user, database, password and the other libpq settings tokio-postgres knows;
    /// its `ssl_mode` is set for each connection attempt from `tls`.
    pub config: Config,
    /// `sslmode` and the certificate files.
    pub tls: TlsSettings,
}

impl ConnectionSettings {
    /// `config` without TLS: for pitr's own servers, reached over their Unix socket.
    pub fn without_tls(config: Config) -> ConnectionSettings {
        ConnectionSettings {
            config,
            tls: TlsSettings::disabled(),
        }
    }
}

/// The environment variables consulted, as a lookup function (the process environment in the
/// binary, a map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Builds the connection settings from an optional conninfo and the libpq environment.
pub fn connection_settings(conninfo: Option<&str>, env: Env) -> Result<ConnectionSettings> {
    let (mut config, keywords) = match conninfo {
        Some(text) => parse_conninfo(text)
            .map_err(|reason| Error::InvalidInput(format!("invalid --dbname connection string: {reason}")))?,
        None => (Config::new(), TlsKeywords::default()),
    };
    if config.get_hosts().is_empty() {
        let hosts = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
        for host in hosts.split(',') {
            config.host(host);
        }
    }
    if config.get_ports().is_empty() {
        let port = env("PGPORT").unwrap_or_else(|| "5432".into());
        let port = port
            .parse()
            .map_err(|_| Error::InvalidInput(format!("PGPORT '{port}' is not a port number")))?;
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());
        config.user(user);
    }
    if config.get_dbname().is_none() {
        let dbname = env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_string());
        config.dbname(dbname);
    }
    if config.get_application_name().is_none() {
        config.application_name("pitr");
    }
    if config.get_password().is_none() {
        if let Some(password) = env("PGPASSWORD").or_else(|| password_from_file(&config, env)) {
            config.password(password);
        }
    }
    let tls = TlsSettings::resolve(keywords, env)?;
    Ok(ConnectionSettings { config, tls })
}

/// Parses a conninfo (keyword/value or URI): the TLS keywords, and tokio-postgres' settings from
/// the rest. The error says why without repeating `text` (it may hold a password).
pub fn parse_conninfo(text: &str) -> std::result::Result<(Config, TlsKeywords), String> {
    let (rest, keywords) = split_tls_keywords(text)?;
    if let Some(mode) = &keywords.mode {
        SslMode::parse(mode).map_err(|e| e.to_string())?;
    }
    let config = rest
        .parse::<Config>()
        .map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => cause.to_string(),
            None => e.to_string(),
        })?;
    Ok((config, keywords))
}

/// `text` without its TLS keywords, and those keywords.
fn split_tls_keywords(text: &str) -> std::result::Result<(String, TlsKeywords), String> {
    let mut keywords = TlsKeywords::default();
    let mut take = |key: &str, value: String| -> std::result::Result<bool, String> {
        if !TlsKeywords::NAMES.contains(&key) {
            return Ok(false);
        }
        keywords.set(key, value).map_err(|e| e.to_string())?;
        Ok(true)
    };
    let uri = ["postgresql://", "postgres://"].iter().any(|p| text.starts_with(p));
    let rest = if uri {
        let Some((base, query)) = text.split_once('?') else {
            return Ok((text.to_string(), keywords));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(&percent_decode(key)?, percent_decode(value)?)? {
                kept.push(pair);
            }
        }
        match kept.is_empty() {
            true => base.to_string(),
            false => format!("{base}?{}", kept.join("&")),
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in keyword_values(text)? {
            if !take(&key, value.clone())? {
                kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
            }
        }
        kept.join(" ")
    };
    Ok((rest, keywords))
}

/// The pairs of a keyword/value conninfo, as libpq reads them (`conninfo_parse` in
/// fe-connect.c): `key = value`, the value in single quotes or up to white space, `\` escaping.
fn keyword_values(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err("a keyword without \"=\" and a value".into());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of \"{key}\"")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                match c {
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `%XX` decoded, as in a URI's query.
fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or("an invalid percent-encoded character in the URI")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-encoded value in the URI that is not UTF-8".to_string())
}

/// Looks the connection up in the password file (PGPASSFILE, default ~/.pgpass), as libpq does:
/// `host:port:database:user:password`, `*` matches anything, `\` escapes `:` and `\`, and a
/// unix-socket host matches `localhost`.
fn password_from_file(config: &Config, env: Env) -> Option<String> {
    let path = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => "localhost".into(),
    };
    let wanted = [
        host,
        config.get_ports().first()?.to_string(),
        config.get_dbname()?.to_string(),
        config.get_user()?.to_string(),
    ];
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields = split_pgpass_line(line);
        let matches = fields.len() == 5 && fields.iter().zip(&wanted).all(|(f, w)| f == "*" || f == w);
        matches.then(|| fields[4].clone())
    })
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("non-empty").extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::tls::RootCert;
    use super::*;

    fn settings(conninfo: Option<&str>, vars: &[(&str, &str)]) -> ConnectionSettings {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        connection_settings(conninfo, &|k| map.get(k).cloned()).unwrap()
    }

    fn config(conninfo: Option<&str>, vars: &[(&str, &str)]) -> Config {
        settings(conninfo, vars).config
    }

    #[test]
    fn environment_fills_what_the_conninfo_leaves_out() {
        let c = config(
            Some("dbname=app"),
            &[("PGHOST", "/tmp/sock"), ("PGPORT", "5433"), ("PGUSER", "bob")],
        );
        assert_eq!(c.get_hosts(), &[Host::Unix("/tmp/sock".into())]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("bob"));
        assert_eq!(c.get_dbname(), Some("app"));
    }

    #[test]
    fn conninfo_wins_over_environment_and_uris_work() {
        let c = config(
            Some("postgresql://alice@db.example:6000/sales"),
            &[("PGHOST", "/tmp"), ("PGUSER", "bob")],
        );
        assert_eq!(c.get_hosts(), &[Host::Tcp("db.example".into())]);
        assert_eq!(c.get_ports(), &[6000]);
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_dbname(), Some("sales"));
    }

    #[test]
    fn defaults_follow_libpq() {
        let c = config(None, &[("USER", "carol")]);
        assert_eq!(c.get_hosts(), &[Host::Unix("/var/run/postgresql".into())]);
        assert_eq!(c.get_ports(), &[5432]);
        assert_eq!(c.get_dbname(), Some("carol"));
    }

    #[test]
    fn password_file_matches_with_wildcards_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "# comment\nother:*:*:*:nope\nlocalhost:5432:*:bob:s3\\:cret\n").unwrap();
        let file = file.to_str().unwrap();
        let c = config(None, &[("PGUSER", "bob"), ("PGPASSFILE", file)]);
        assert_eq!(c.get_password(), Some(&b"s3:cret"[..]));
        let c = config(None, &[("PGUSER", "eve"), ("PGPASSFILE", file)]);
        assert_eq!(c.get_password(), None);
        let c = config(None, &[("PGUSER", "bob"), ("PGPASSFILE", file), ("PGPASSWORD", "env")]);
        assert_eq!(c.get_password(), Some(&b"env"[..]));
    }

    #[test]
    fn bad_input_is_refused() {
        let err = connection_settings(Some("host=x bogus_key=1"), &|_| None).unwrap_err();
        assert!(err.to_string().contains("invalid --dbname"), "{err}");
        let err = connection_settings(None, &|k| (k == "PGPORT").then(|| "abc".to_string())).unwrap_err();
        assert!(err.to_string().contains("PGPORT"), "{err}");
        let err = connection_settings(Some("host=x password=s3cret sslmode=verify"), &|_| None).unwrap_err();
        assert!(err.to_string().contains("sslmode 'verify'"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = connection_settings(Some("host=x sslkey='/a"), &|_| None).unwrap_err();
        assert!(err.to_string().contains("unterminated"), "{err}");
    }

    #[test]
    fn tls_keywords_are_taken_from_both_forms_and_the_rest_goes_to_tokio_postgres() {
        let s = settings(
            Some(r"host=db.example sslmode = verify-full sslrootcert='/etc/a b\'s.crt' user=me sslcert=/c sslkey=/k"),
            &[("PGSSLMODE", "disable")],
        );
        assert_eq!(s.config.get_hosts(), &[Host::Tcp("db.example".into())]);
        assert_eq!(s.config.get_user(), Some("me"));
        assert_eq!(s.tls.mode, SslMode::VerifyFull);
        assert_eq!(s.tls.root_cert, Some(RootCert::File("/etc/a b's.crt".into())));
        assert_eq!((s.tls.cert.unwrap(), s.tls.key.unwrap()), ("/c".into(), "/k".into()));

        let s = settings(
            Some(
                "postgresql://me@127.0.0.1:6000/app?sslmode=verify-ca&sslrootcert=%2Ftmp%2Froot.crt&connect_timeout=5",
            ),
            &[],
        );
        assert_eq!(s.config.get_hosts(), &[Host::Tcp("127.0.0.1".into())]);
        assert_eq!(s.config.get_connect_timeout(), Some(&std::time::Duration::from_secs(5)));
        assert_eq!(s.tls.mode, SslMode::VerifyCa);
        assert_eq!(s.tls.root_cert, Some(RootCert::File("/tmp/root.crt".into())));

        let s = settings(Some("postgresql:///app?sslmode=require"), &[("PGSSLMODE", "disable")]);
        assert_eq!(s.tls.mode, SslMode::Require);
        assert_eq!(s.config.get_dbname(), Some("app"));
        assert_eq!(settings(None, &[("PGSSLMODE", "allow")]).tls.mode, SslMode::Allow);
    }
}
