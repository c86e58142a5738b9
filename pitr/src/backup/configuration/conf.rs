//! postgresql.conf as PostgreSQL reads it (src/backend/utils/misc/guc-file.l, and the docs'
//! "Managing Configuration File Contents"): one `name [=] value` per line, `#` comments, and the
//! `include`, `include_if_exists` and `include_dir` directives, whose relative paths are relative
//! to the including file's directory. [`expand`] turns a configuration into one text, every
//! include inlined where it stood (so settings keep their order, and later ones still win), and
//! the settings that name the original server's own files disabled.
//!
//! Files are bytes (a configuration may hold comments in any encoding); names and paths are text.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// Settings that name the original server's own files or directories: a copy that kept them would
/// run on the original's data directory, use its authentication files, or overwrite its PID file
/// and statistics. They are disabled, so the copy uses its defaults: everything in its own data
/// directory.
pub const DISABLED_IN_COPY: [&str; 5] = [
    "data_directory",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "stats_temp_directory",
];

/// How deep includes may nest (PostgreSQL's CONF_FILE_MAX_DEPTH).
const MAX_DEPTH: usize = 10;

/// What [`expand`] reads configuration files from: the server's files at a backup, the stored
/// ones at a restore.
pub trait Source {
    /// The content of the file at the absolute `path`; `None` when there is none.
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>>;
    /// The absolute paths of the files `include_dir` takes from `dir` (names ending in `.conf`,
    /// not starting with `.`, no directories), in name order; `None` when `dir` does not exist.
    fn conf_files(&mut self, dir: &str) -> Result<Option<Vec<String>>>;
}

/// A configuration with its includes inlined.
#[derive(Debug, Default)]
pub struct Expanded {
    /// The text.
    pub text: Vec<u8>,
    /// The files it was made of, each once, the top file first.
    pub files: Vec<String>,
    /// Files and directories named by `include` or `include_dir` that did not exist (the server
    /// could not start with them either).
    pub missing: Vec<String>,
}

/// Expands the configuration file at the absolute path `config_file`.
pub fn expand(config_file: &str, source: &mut dyn Source) -> Result<Expanded> {
    let mut expanded = Expanded::default();
    let Some(content) = source.read(config_file)? else {
        return Err(Error::Refused(format!(
            "the server's configuration file {config_file} does not exist"
        )));
    };
    expanded.files.push(config_file.to_string());
    expand_into(config_file, &content, source, 0, &mut expanded)?;
    Ok(expanded)
}

fn expand_into(path: &str, content: &[u8], source: &mut dyn Source, depth: usize, out: &mut Expanded) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(Error::Refused(format!(
            "the configuration's includes nest deeper than {MAX_DEPTH} at {path} (PostgreSQL's limit; an \
             include cycle?): the server could not start with it; fix its include directives"
        )));
    }
    for line in content.split_inclusive(|&b| b == b'\n') {
        let Some(assignment) = parse_line(line) else {
            out.text.extend_from_slice(line);
            continue;
        };
        let name = assignment.name.as_str();
        if DISABLED_IN_COPY.contains(&name) {
            disable(line, "disabled, the original server's own", out);
            continue;
        }
        let Some(kind) = Include::of(name) else {
            out.text.extend_from_slice(line);
            continue;
        };
        let target = resolve(path, &text_of(&assignment.value, path)?);
        inline(kind, line, &target, source, depth, out)?;
    }
    if !out.text.is_empty() && !out.text.ends_with(b"\n") {
        out.text.push(b'\n');
    }
    Ok(())
}

/// Replaces an include directive by the files it names.
fn inline(
    kind: Include,
    line: &[u8],
    target: &str,
    source: &mut dyn Source,
    depth: usize,
    out: &mut Expanded,
) -> Result<()> {
    let files = match kind {
        Include::File | Include::IfExists => match source.read(target)? {
            Some(content) => vec![(target.to_string(), content)],
            None => {
                if kind == Include::File {
                    out.missing.push(target.to_string());
                }
                disable(line, &format!("{target} did not exist at the backup"), out);
                return Ok(());
            }
        },
        Include::Dir => {
            let Some(paths) = source.conf_files(target)? else {
                out.missing.push(target.to_string());
                disable(line, &format!("{target} did not exist at the backup"), out);
                return Ok(());
            };
            let mut files = Vec::new();
            for path in paths {
                if let Some(content) = source.read(&path)? {
                    files.push((path, content));
                }
            }
            files
        }
    };
    disable(line, "inlined below", out);
    for (path, content) in files {
        if !out.files.contains(&path) {
            out.files.push(path.clone());
        }
        out.text
            .extend_from_slice(format!("# pitr: begin of {path}\n").as_bytes());
        expand_into(&path, &content, source, depth + 1, out)?;
        out.text
            .extend_from_slice(format!("# pitr: end of {path}\n").as_bytes());
    }
    Ok(())
}

/// Writes `line` commented out, after `# pitr: <why>: `. The setting's name does not follow the
/// `#` directly, so that tools that enable a commented-out setting in place (postgresql-common's
/// `pg_createcluster` and `pg_conftool` set `data_directory`, `hba_file`, ...) append their own
/// line instead of turning this one back on under pitr's comment.
fn disable(line: &[u8], why: &str, out: &mut Expanded) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    out.text.extend_from_slice(format!("# pitr: {why}: ").as_bytes());
    out.text.extend_from_slice(trim_start(body));
    out.text.push(b'\n');
}

/// The include directives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Include {
    File,
    IfExists,
    Dir,
}

impl Include {
    fn of(name: &str) -> Option<Include> {
        match name {
            "include" => Some(Include::File),
            "include_if_exists" => Some(Include::IfExists),
            "include_dir" => Some(Include::Dir),
            _ => None,
        }
    }
}

/// A `name = value` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The setting's name, in lower case.
    pub name: String,
    /// Its value, quotes removed and escapes resolved.
    pub value: Vec<u8>,
}

/// The setting a line assigns (`name = value`, `name value`, `name = 'quoted'`, a trailing
/// comment), or `None` for a comment, a blank line or a line PostgreSQL would not accept.
pub fn parse_line(line: &[u8]) -> Option<Assignment> {
    let line = trim_start(line);
    let name_len = line
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'$'))
        .unwrap_or(line.len());
    let first = *line.first()?;
    if name_len == 0 || !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let name = String::from_utf8_lossy(&line[..name_len]).to_ascii_lowercase();
    let mut rest = trim_start(&line[name_len..]);
    if let Some(after) = rest.strip_prefix(b"=") {
        rest = trim_start(after);
    }
    let value = match rest.first()? {
        b'\'' => unquote(&rest[1..])?,
        b'#' | b'\n' | b'\r' => return None,
        _ => rest
            .iter()
            .take_while(|b| !b.is_ascii_whitespace() && **b != b'#')
            .copied()
            .collect(),
    };
    Some(Assignment { name, value })
}

/// The content of a quoted value, after its opening quote: `''` and `\'` are quotes, `\n`,
/// `\t`, `\b`, `\f`, `\r` and octal escapes are resolved, `\` before anything else is dropped.
/// `None` when the closing quote is missing.
fn unquote(text: &[u8]) -> Option<Vec<u8>> {
    let mut value = Vec::new();
    let mut i = 0;
    loop {
        match *text.get(i)? {
            b'\'' if text.get(i + 1) == Some(&b'\'') => {
                value.push(b'\'');
                i += 2;
            }
            b'\'' => return Some(value),
            b'\n' => return None,
            b'\\' => {
                let next = *text.get(i + 1)?;
                let octal = text[i + 1..]
                    .iter()
                    .take(3)
                    .take_while(|b| (b'0'..=b'7').contains(b))
                    .count();
                if octal > 0 {
                    let digits = std::str::from_utf8(&text[i + 1..i + 1 + octal]).ok()?;
                    value.push(u8::from_str_radix(digits, 8).ok()?);
                    i += 1 + octal;
                    continue;
                }
                value.push(match next {
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => other,
                });
                i += 2;
            }
            other => {
                value.push(other);
                i += 1;
            }
        }
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn text_of(value: &[u8], file: &str) -> Result<String> {
    String::from_utf8(value.to_vec()).map_err(|_| {
        Error::Refused(format!(
            "{file} includes a path that is not UTF-8: pitr stores configuration files by name; rename it"
        ))
    })
}

/// An include's path as PostgreSQL takes it: absolute, or relative to the directory of the
/// including file; `.` and `..` resolved, doubled `/` folded (as its canonicalize_path does).
pub fn resolve(including: &str, target: &str) -> String {
    let joined = if target.starts_with('/') {
        target.to_string()
    } else {
        let dir = including.rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{dir}/{target}")
    };
    normalize(&joined)
}

/// An absolute path without `.`, `..`, empty components or a trailing `/`.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The names `include_dir` takes from a directory's entries (`name`, is a directory), in the
/// order it takes them.
pub fn conf_file_names(entries: impl IntoIterator<Item = (String, bool)>) -> Vec<String> {
    let names: BTreeSet<String> = entries
        .into_iter()
        .filter(|(name, is_dir)| !is_dir && !name.starts_with('.') && name.len() > 5 && name.ends_with(".conf"))
        .map(|(name, _)| name)
        .collect();
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Files in memory.
    struct Files(BTreeMap<String, String>);

    impl Source for Files {
        fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
            Ok(self.0.get(path).map(|t| t.as_bytes().to_vec()))
        }

        fn conf_files(&mut self, dir: &str) -> Result<Option<Vec<String>>> {
            let prefix = format!("{dir}/");
            let names: Vec<(String, bool)> = self
                .0
                .keys()
                .filter_map(|p| p.strip_prefix(&prefix))
                .map(|rest| match rest.split_once('/') {
                    Some((sub, _)) => (sub.to_string(), true),
                    None => (rest.to_string(), false),
                })
                .collect();
            Ok((!names.is_empty()).then(|| {
                conf_file_names(names)
                    .into_iter()
                    .map(|n| format!("{dir}/{n}"))
                    .collect()
            }))
        }
    }

    fn files(list: &[(&str, &str)]) -> Files {
        Files(list.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect())
    }

    #[test]
    fn lines_parse_as_postgresql_reads_them() {
        let parse = |line: &str| parse_line(line.as_bytes()).map(|a| (a.name, String::from_utf8(a.value).unwrap()));
        let some = |n: &str, v: &str| Some((n.to_string(), v.to_string()));
        assert_eq!(parse("port = 5432\n"), some("port", "5432"));
        assert_eq!(parse("  Port=5432 # the port\n"), some("port", "5432"));
        assert_eq!(parse("include_dir 'conf.d'\t# dir\n"), some("include_dir", "conf.d"));
        assert_eq!(parse("include = 'it''s.conf'\n"), some("include", "it's.conf"));
        assert_eq!(parse(r"x = 'a\'b\tc\101'"), some("x", "a'b\tcA"));
        assert_eq!(parse("shared_buffers = 128MB\n"), some("shared_buffers", "128MB"));
        assert_eq!(
            parse("pg_stat_statements.max = 100\n"),
            some("pg_stat_statements.max", "100")
        );
        for none in ["# port = 1\n", "\n", "   \n", "port =\n", "x = 'unterminated\n", "=1\n"] {
            assert_eq!(parse(none), None, "{none:?}");
        }
    }

    #[test]
    fn includes_are_inlined_in_place_and_the_originals_own_files_disabled() {
        let mut source = files(&[
            (
                "/etc/postgresql/15/main/postgresql.conf",
                "data_directory = '/var/lib/postgresql/15/main'\nhba_file = '/etc/postgresql/15/main/pg_hba.conf'\n\
                 port = 5432\ninclude_dir = 'conf.d'\ninclude_if_exists 'absent.conf'\ninclude '/etc/common/x.conf'\n\
                 work_mem = '8MB'",
            ),
            ("/etc/postgresql/15/main/conf.d/b.conf", "archive_mode = on\n"),
            (
                "/etc/postgresql/15/main/conf.d/a.conf",
                "external_pid_file = '/run/x.pid'\ninclude '../extra.conf'\n",
            ),
            ("/etc/postgresql/15/main/conf.d/.hidden.conf", "port = 1\n"),
            ("/etc/postgresql/15/main/conf.d/notes.txt", "port = 2\n"),
            ("/etc/postgresql/15/main/extra.conf", "max_connections = 50\n"),
            ("/etc/common/x.conf", "port = 5433\n"),
        ]);
        let expanded = expand("/etc/postgresql/15/main/postgresql.conf", &mut source).unwrap();
        let text = String::from_utf8(expanded.text).unwrap();
        assert_eq!(
            text,
            "# pitr: disabled, the original server's own: data_directory = '/var/lib/postgresql/15/main'\n\
             # pitr: disabled, the original server's own: hba_file = '/etc/postgresql/15/main/pg_hba.conf'\n\
             port = 5432\n\
             # pitr: inlined below: include_dir = 'conf.d'\n\
             # pitr: begin of /etc/postgresql/15/main/conf.d/a.conf\n\
             # pitr: disabled, the original server's own: external_pid_file = '/run/x.pid'\n\
             # pitr: inlined below: include '../extra.conf'\n\
             # pitr: begin of /etc/postgresql/15/main/extra.conf\n\
             max_connections = 50\n\
             # pitr: end of /etc/postgresql/15/main/extra.conf\n\
             # pitr: end of /etc/postgresql/15/main/conf.d/a.conf\n\
             # pitr: begin of /etc/postgresql/15/main/conf.d/b.conf\n\
             archive_mode = on\n\
             # pitr: end of /etc/postgresql/15/main/conf.d/b.conf\n\
             # pitr: /etc/postgresql/15/main/absent.conf did not exist at the backup: include_if_exists 'absent.conf'\n\
             # pitr: inlined below: include '/etc/common/x.conf'\n\
             # pitr: begin of /etc/common/x.conf\n\
             port = 5433\n\
             # pitr: end of /etc/common/x.conf\n\
             work_mem = '8MB'\n"
        );
        assert_eq!(
            expanded.files,
            [
                "/etc/postgresql/15/main/postgresql.conf",
                "/etc/postgresql/15/main/conf.d/a.conf",
                "/etc/postgresql/15/main/extra.conf",
                "/etc/postgresql/15/main/conf.d/b.conf",
                "/etc/common/x.conf",
            ]
        );
        assert!(expanded.missing.is_empty(), "include_if_exists may miss");
    }

    #[test]
    fn a_missing_include_is_named_and_a_cycle_refused() {
        let mut source = files(&[("/c/postgresql.conf", "include 'gone.conf'\ninclude_dir 'nodir'\n")]);
        let expanded = expand("/c/postgresql.conf", &mut source).unwrap();
        assert_eq!(expanded.missing, ["/c/gone.conf", "/c/nodir"]);
        let mut cycle = files(&[("/c/postgresql.conf", "include 'postgresql.conf'\n")]);
        let err = expand("/c/postgresql.conf", &mut cycle).unwrap_err();
        assert!(err.to_string().contains("nest deeper than 10"), "{err}");
        let mut none = files(&[]);
        assert!(expand("/c/postgresql.conf", &mut none).is_err());
    }

    #[test]
    fn paths_resolve_against_the_including_file() {
        assert_eq!(resolve("/etc/pg/postgresql.conf", "conf.d"), "/etc/pg/conf.d");
        assert_eq!(resolve("/etc/pg/conf.d/a.conf", "../b.conf"), "/etc/pg/b.conf");
        assert_eq!(resolve("/etc/pg/postgresql.conf", "/srv//x/./y.conf"), "/srv/x/y.conf");
        assert_eq!(resolve("/etc/pg/postgresql.conf", "../../../../z"), "/z");
    }
}
