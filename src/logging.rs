//! The log of the resident commands (`watch`, `daemon`): where the library's `tracing` events
//! go, on stderr, in one of the [`LogFormat`]s, filtered by `PITR_LOG`. Other commands install
//! nothing, so archive-push and archive-get stay silent on success.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable with what to log, as `RUST_LOG` takes it: a level (`debug`), or targets with
/// levels (`pitr::watch=debug,info`).
pub const FILTER_VARIABLE: &str = "PITR_LOG";

/// How log lines look (`--log-format`, `log_format` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald's when stderr is the journal's stream (systemd sets `JOURNAL_STREAM`), else text.
    #[default]
    Auto,
    /// Plain lines with a UTC timestamp and the level.
    Text,
    /// Plain lines without a timestamp (journald adds its own), each with the `<N>` syslog
    /// priority prefix of sd-daemon(3), so journald records the level.
    Journald,
    /// One JSON object per line: timestamp, level, fields (the message among them) and target.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        <LogFormat as clap::ValueEnum>::from_str(text, false)
            .map_err(|_| format!("log_format '{text}' is not one of auto, text, journald, json"))
    }
}

/// Sends the events of this process to stderr in `format`, filtered by [`FILTER_VARIABLE`]
/// (default: pitr's own events from info up, the libraries' from warn up). A filter that does not parse is refused, saying what it takes.
pub fn install(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var(FILTER_VARIABLE) {
        Ok(text) if !text.trim().is_empty() => Targets::from_str(&text).map_err(|e| {
            format!("{FILTER_VARIABLE}='{text}' is not a log filter ({e}): give a level (error, warn, info, debug, trace) or target=level pairs")
        })?,
        // pitr's own events from info; the libraries' (the S3 client's retries among them) from warn.
        _ => Targets::new().with_default(Level::WARN).with_target("pitr", Level::INFO),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match resolve(format) {
        LogFormat::Json => registry
            .with(lines.json().with_current_span(false).with_span_list(false))
            .try_init(),
        LogFormat::Journald => registry
            .with(lines.with_ansi(false).event_format(Journald::default()))
            .try_init(),
        LogFormat::Text | LogFormat::Auto => registry
            .with(lines.with_ansi(std::io::stderr().is_terminal()).with_target(false))
            .try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// `auto` made definite.
fn resolve(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        definite => definite,
    }
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to the device and
/// inode of that stream ("<dev>:<inode>", systemd.exec(5)); a child that inherited the variable
/// but writes elsewhere does not match.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr()).is_ok_and(|stat| stream == format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// Lines for journald: the `<N>` priority prefix, then the level, message and fields, without
/// a timestamp or colours.
struct Journald(Format<Full, ()>);

impl Default for Journald {
    fn default() -> Journald {
        Journald(Format::default().without_time().with_target(false).with_ansi(false))
    }
}

/// The syslog priority of `level` (sd-daemon(3): 3 error, 4 warning, 6 info, 7 debug).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(context, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
    }

    #[test]
    fn a_format_in_the_config_file_parses_or_says_what_is_taken() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("journald".parse::<LogFormat>(), Ok(LogFormat::Journald));
        let error = "syslog".parse::<LogFormat>().unwrap_err();
        assert!(error.contains("auto, text, journald, json"), "{error}");
    }
}
