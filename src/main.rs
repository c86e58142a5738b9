//! The `pitr` binary: parses arguments, loads settings, calls into the `pitr` library, prints,
//! and maps every outcome to an exit code in one place ([`exit_code`]).

mod cli;
mod commands;
mod output;
mod settings;
mod verify;
mod watch;

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::commands::Done;
use crate::settings::Settings;
use clap::error::ErrorKind;
use clap::Parser;

/// Exit code of archive-get for anything but "found" and "not found". PostgreSQL treats exit
/// codes above 125 like death by a signal and aborts recovery, instead of reading the error as
/// "file missing" and promoting early. 200 is clear of 126/127 (which PostgreSQL reports as
/// "command not executable/not found") and of 143 (SIGTERM, a quiet shutdown).
const EXIT_RESTORE_ERROR: u8 = 200;

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
    /// A failure, with its one-line message.
    Failed(String),
    /// Bad arguments.
    Usage(String),
    /// The reader of stdout went away (as after `| head`).
    BrokenPipe,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = Command::name_in(&args);
    quiet_broken_pipe();
    let outcome = match Cli::try_parse_from(&args) {
        Ok(cli) => std::panic::catch_unwind(|| run(cli)).unwrap_or_else(|panic| {
            if is_broken_pipe(&*panic) {
                Outcome::BrokenPipe
            } else {
                Outcome::Failed("internal error (panic); please report it".into())
            }
        }),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => Outcome::Usage(e.to_string()),
    };
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
        (Outcome::Failed(_) | Outcome::Usage(_), true) => EXIT_RESTORE_ERROR,
        (Outcome::Failed(_), false) if verification => 2,
        (Outcome::Failed(_), false) => 1,
        (Outcome::Usage(_), false) => 2,
    }
}

/// Prints failures to stderr (which archive commands share with the server log); success and
/// "not found" are silent.
fn report(outcome: &Outcome, command: Option<&str>) {
    let archive_command = matches!(command, Some("archive-get" | "archive-push"));
    match outcome {
        Outcome::Success | Outcome::NotFound | Outcome::Warnings | Outcome::Critical | Outcome::BrokenPipe => {}
        Outcome::Failed(message) => eprintln!("pitr {}: error: {message}", command.unwrap_or("")),
        // The archive commands' stderr lands in the server log: one line there, clap's usage elsewhere.
        Outcome::Usage(message) if archive_command => {
            let first = message.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("pitr {}: usage error: {first}", command.unwrap_or(""))
        }
        Outcome::Usage(message) => eprint!("{message}"),
    }
}

fn run(cli: Cli) -> Outcome {
    if let Command::Demo { keep, json } = cli.command {
        return done(commands::demo(keep, json));
    }
    // A dump or a WAL file needs no repository: settings are loaded only for a backup id.
    if let Command::CheckIntegrity { target, jobs, json } = &cli.command {
        let settings = Settings::load(&cli.global);
        return done(verify::check_integrity(target, *jobs, *json, settings.as_ref()));
    }
    let settings = match Settings::load(&cli.global) {
        Ok(settings) => settings,
        Err(message) => return Outcome::Failed(message),
    };
    done(commands::run(&cli.command, &settings))
}

fn done(result: pitr::Result<Done>) -> Outcome {
    match result {
        Ok(Done::Ok) => Outcome::Success,
        Ok(Done::NotFound) => Outcome::NotFound,
        Ok(Done::Warnings) => Outcome::Warnings,
        Ok(Done::Critical) => Outcome::Critical,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
