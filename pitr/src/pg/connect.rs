//! Connection settings the way psql finds them: a conninfo string (keyword/value or URI) first,
//! then the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE), then
//! libpq's defaults. tokio-postgres reads no environment by itself, so this module does.

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use crate::error::{Error, Result};

/// The environment variables consulted, as a lookup function (the process environment in the
/// binary, a map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Builds the connection settings from an optional conninfo and the libpq environment.
pub fn connection_config(conninfo: Option<&str>, env: Env) -> Result<Config> {
    let mut config = match conninfo {
        Some(text) => text
            .parse::<Config>()
            .map_err(|e| Error::InvalidInput(format!("invalid --dbname connection string: {e}")))?,
        None => Config::new(),
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
    Ok(config)
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

    use super::*;

    fn config(conninfo: Option<&str>, vars: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        connection_config(conninfo, &|k| map.get(k).cloned()).unwrap()
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
        let err = connection_config(Some("host=x bogus_key=1"), &|_| None).unwrap_err();
        assert!(err.to_string().contains("invalid --dbname"), "{err}");
        let err = connection_config(None, &|k| (k == "PGPORT").then(|| "abc".to_string())).unwrap_err();
        assert!(err.to_string().contains("PGPORT"), "{err}");
    }
}
