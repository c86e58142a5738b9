//! The `pitr` binary: parses arguments, loads settings, calls into the `pitr` library, prints,
//! and maps every outcome to an exit code in one place ([`exit_code`]).

mod cli;
mod commands;
mod logging;
mod manuals;
mod output;
mod settings;
mod verify;
mod watch;

use std::ffi::OsString;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;

use crate::cli::{Command, Invocation};
use crate::commands::Done;
use crate::settings::Settings;
use clap::error::ErrorKind;

/// Exit code of archive-get for anything but "found" and "not found". PostgreSQL treats exit
/// codes above 125 like death by a signal and aborts recovery, instead of reading the error as
/// "file missing" and promoting early. 200 is clear of 126/127 (which PostgreSQL reports as
/// "command not executable/not found") and of 143 (SIGTERM, a quiet shutdown).
const EXIT_RESTORE_ERROR: u8 = 200;

/// Exit code of `pitr init` when changes are pending: found by a dry run, or a restart of
/// PostgreSQL that the applied settings wait for. Clear of 1 (failed) and 2 (bad arguments).
const EXIT_PENDING: u8 = 3;

/// What a command ended with, before it becomes an exit code.
enum Outcome {
    /// Done.
    Success,
    /// archive-get: the file is not in the archive.
    NotFound,
    /// verify: warnings only (the report says which).
    Warnings,
    /// verify, check-integrity: something critical (the report says what).
    Critical,
    /// init: changes pending (a dry run that found some, or a restart of PostgreSQL).
    Pending,
    /// A failure, with its one-line message.
    Failed(String),
    /// Stopped by SIGINT or SIGTERM, with what was left behind.
    Interrupted(String),
    /// Bad arguments or settings, with clap's message (possibly several lines).
    Usage(String),
    /// The reader of stdout went away (as after `| head`).
    BrokenPipe,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    quiet_broken_pipe();
    let mut definition = cli::definition();
    // Before anything can fail: the subcommand the command line names, so that a failure to
    // parse it, or a panic, still gets that subcommand's exit code (archive-get: 200).
    let mut command = cli::subcommand_in(&definition, &args);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match cli::parse(&mut definition, &args) {
        Ok(invocation) => {
            command = Some(invocation.name.clone());
            run(invocation)
        }
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => Outcome::Usage(e.to_string()),
    }))
    .unwrap_or_else(|panic| {
        if is_broken_pipe(&*panic) {
            Outcome::BrokenPipe
        } else {
            Outcome::Failed("internal error (panic); please report it".into())
        }
    });
    report(&outcome, command.as_deref());
    let restore = command.as_deref() == Some("archive-get");
    let verification = matches!(command.as_deref(), Some("verify" | "check-integrity"));
    ExitCode::from(exit_code(&outcome, restore, verification))
}

/// `pitr list | head` closes stdout early: that ends the output, it is not a crash.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default(info)
        }
    }));
}

fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

/// The one mapping from outcomes to exit codes. `restore`: archive-get; `verification`: verify
/// and check-integrity, where 1 means "warnings only", so their failures are 2 like anything
/// critical.
fn exit_code(outcome: &Outcome, restore: bool, verification: bool) -> u8 {
    match (outcome, restore) {
        (Outcome::BrokenPipe, _) => 141,
        (Outcome::Success, _) => 0,
        (Outcome::NotFound | Outcome::Warnings, _) => 1,
        (Outcome::Critical, _) => 2,
        (Outcome::Pending, _) => EXIT_PENDING,
        (Outcome::Failed(_) | Outcome::Usage(_) | Outcome::Interrupted(_), true) => EXIT_RESTORE_ERROR,
        // As a shell reports a command ended by SIGINT.
        (Outcome::Interrupted(_), false) => 130,
        (Outcome::Failed(_), false) if verification => 2,
        (Outcome::Failed(_), false) => 1,
        (Outcome::Usage(_), false) => 2,
    }
}

/// Prints failures to stderr (which archive commands share with the server log); success and
/// "not found" are silent. A closed stderr is ignored: a panic here would exit 101, which
/// PostgreSQL reads from archive-get as "absent".
fn report(outcome: &Outcome, command: Option<&str>) {
    let pitr = command.map_or_else(|| "pitr".to_string(), |name| format!("pitr {name}"));
    let archive_command = matches!(command, Some("archive-get" | "archive-push"));
    let text = match outcome {
        Outcome::Success
        | Outcome::NotFound
        | Outcome::Warnings
        | Outcome::Critical
        | Outcome::Pending
        | Outcome::BrokenPipe => return,
        Outcome::Failed(message) | Outcome::Interrupted(message) => format!("{pitr}: error: {message}\n"),
        // The archive commands' stderr lands in the server log: one line there, clap's usage elsewhere.
        Outcome::Usage(message) if archive_command => format!("{pitr}: usage error: {}\n", one_line(message)),
        Outcome::Usage(message) => message.clone(),
    };
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// A usage message (clap's, over several lines) as one line for the server log: "error: " and the
/// pointer to --help dropped; the indented items after a line ending in ':' follow it, joined by
/// ", "; the other lines are joined by "; ".
fn one_line(message: &str) -> String {
    let mut joined = String::new();
    let mut in_list = false;
    for raw in message.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("For more information") {
            in_list = false;
            continue;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let line = line
            .strip_prefix("Usage: ")
            .map_or_else(|| line.to_string(), |usage| format!("usage: {usage}"));
        let item = in_list && raw.starts_with(char::is_whitespace);
        if !joined.is_empty() {
            joined.push_str(match (joined.ends_with(':'), item) {
                (true, _) => " ",
                (false, true) => ", ",
                (false, false) => "; ",
            });
        }
        joined.push_str(&line);
        in_list = line.ends_with(':') || item;
    }
    joined
}

fn run(invocation: Invocation) -> Outcome {
    let Invocation { command, global, .. } = invocation;
    match command {
        Command::Demo { keep, json } => return done(commands::demo(keep, json)),
        // Generated from the definitions alone: no settings.
        Command::Completions { shell } => return done(manuals::completions(shell)),
        Command::Man { out } => return done(manuals::man_pages(&out)),
        Command::Keygen { out } => return done(commands::keygen(&out)),
        _ => {}
    }
    // A dump or a WAL file needs no repository: settings are loaded only for a backup id.
    if let Command::CheckIntegrity { target, jobs, json } = &command {
        let settings = Settings::load(&global);
        return done(verify::check_integrity(target, *jobs, *json, settings.as_ref()));
    }
    // init writes the config file: one that does not exist yet is not an error.
    let loaded = match command {
        Command::Init { .. } => Settings::load_for_init(&global),
        _ => Settings::load(&global),
    };
    let settings = match loaded {
        Ok(settings) => settings,
        // Bad settings are bad arguments: nothing was tried.
        Err(message) => return Outcome::Usage(format!("error: {message}\n")),
    };
    // PostgreSQL's archive_command and restore_command never read the daemon's, verify's and
    // drill's sections: a mistake there must not leave WAL piling up in pg_wal. Every other
    // command reports it.
    if !matches!(command, Command::ArchivePush { .. } | Command::ArchiveGet { .. }) {
        if let Err(message) = settings.service() {
            return Outcome::Usage(format!("error: {message}\n"));
        }
    }
    if let Err(message) = commands::check_arguments(&command, &settings) {
        return Outcome::Usage(format!("error: {message}\n"));
    }
    done(commands::run(&command, &settings))
}

fn done(result: pitr::Result<Done>) -> Outcome {
    match result {
        Ok(Done::Ok) => Outcome::Success,
        Ok(Done::NotFound) => Outcome::NotFound,
        Ok(Done::Warnings) => Outcome::Warnings,
        Ok(Done::Critical) => Outcome::Critical,
        Ok(Done::Pending) => Outcome::Pending,
        Err(e @ pitr::Error::Interrupted(_)) => Outcome::Interrupted(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_of_archive_get_exits_200() {
        for outcome in [
            Outcome::Failed("corrupt".into()),
            Outcome::Usage("error: bad\n".into()),
            Outcome::Failed("internal error (panic); please report it".into()),
        ] {
            assert_eq!(exit_code(&outcome, true, false), EXIT_RESTORE_ERROR);
        }
        assert_eq!(exit_code(&Outcome::NotFound, true, false), 1);
        assert_eq!(exit_code(&Outcome::Success, true, false), 0);
        assert_eq!(exit_code(&Outcome::Pending, false, false), 3);
        assert_eq!(exit_code(&Outcome::Usage("error: bad\n".into()), false, false), 2);
        assert_eq!(exit_code(&Outcome::Failed("refused".into()), false, false), 1);
        assert_eq!(exit_code(&Outcome::Interrupted("stopped".into()), false, false), 130);
        assert_eq!(
            exit_code(&Outcome::Interrupted("stopped".into()), true, false),
            EXIT_RESTORE_ERROR
        );
    }

    #[test]
    fn a_usage_message_becomes_one_line() {
        let clap = "error: the following required arguments were not provided:\n  <NAME>\n  <DEST>\n\n\
                    Usage: pitr archive-get <NAME> <DEST>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(clap),
            "the following required arguments were not provided: <NAME>, <DEST>; usage: pitr archive-get <NAME> <DEST>"
        );
        let clap = "error: unexpected argument '--x' found\n\n  tip: to pass '--x' as a value, use '-- --x'\n\n\
                    Usage: pitr archive-push [OPTIONS] <PATH>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(clap),
            "unexpected argument '--x' found; tip: to pass '--x' as a value, use '-- --x'; \
             usage: pitr archive-push [OPTIONS] <PATH>"
        );
        assert_eq!(one_line("error: no repository given\n"), "no repository given");
    }
}
