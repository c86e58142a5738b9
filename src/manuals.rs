//! Shell completions and man pages, generated from the clap definitions ([`cli::definition`]) so
//! that they always match the options the binary takes: `pitr completions bash|zsh|fish`, and the
//! hidden `pitr man --out DIR` that packaging/build-deb runs.

use std::io::Write;
use std::path::Path;

use clap_complete::Shell;
use pitr::fsio::{Dir, Perms};
use pitr::Result;

use crate::cli::{self, CompletionShell};
use crate::commands::Done;

/// The name the completions and man pages are written for.
const BINARY: &str = "pitr";

/// Man pages are documentation for every user of the machine: readable by all, whatever the umask.
const PAGE_PERMS: Perms = Perms {
    dir_mode: 0o755,
    file_mode: 0o644,
    owner: None,
};

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: CompletionShell) -> Result<Done> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut without_hidden(cli::definition()), BINARY, &mut script);
    std::io::stdout()
        .write_all(&script)
        .map_err(pitr::Error::io("write", "stdout"))?;
    Ok(Done::Ok)
}

/// `definition` less its hidden subcommands, which clap_complete would otherwise offer: the same
/// options and visible subcommands under a new top-level command (clap cannot remove one).
fn without_hidden(definition: clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> = definition
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new(BINARY)
        .version(env!("CARGO_PKG_VERSION"))
        .args(definition.get_arguments().cloned())
        .subcommands(visible)
}

/// Writes `pitr.1` and one page per visible subcommand (`pitr-recover.1`, `pitr-wal-events.1`)
/// into the existing directory `out`, each replaced whole (never through a symbolic link).
pub fn man_pages(out: &Path) -> Result<Done> {
    let dir = Dir::open(out).map_err(pitr::Error::io("open the man page directory", out))?;
    let mut definition = cli::definition().disable_help_subcommand(true);
    definition.build();
    write_pages(&dir, definition)?;
    Ok(Done::Ok)
}

/// Writes the page of `command` and, recursively, those of its visible subcommands.
fn write_pages(dir: &Dir, command: clap::Command) -> Result<()> {
    for subcommand in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(dir, subcommand.clone())?;
    }
    let page = clap_mangen::Man::new(command)
        .source(format!("{BINARY} {}", env!("CARGO_PKG_VERSION")))
        .manual("pitr manual");
    let name = page.get_filename();
    let mut roff = Vec::new();
    page.render(&mut roff).map_err(pitr::Error::io("render", &name))?;
    dir.replace(&name, &roff, &PAGE_PERMS)
        .map_err(pitr::Error::io("write", dir.path_of(&name)))
}
