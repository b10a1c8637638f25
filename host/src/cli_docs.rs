//! `taskhost --completions SHELL` and `taskhost --man`: shell completions (clap_complete) and
//! the man page (clap_mangen), generated from the same option definitions as `--help`, so
//! they never fall behind the flags.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::config::Options;

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut command = Options::command();
    clap_complete::generate(shell, &mut command, "taskhost", out);
}

/// Writes the man page, section 1, in roff to `out`: clap_mangen's sections, with an
/// ENVIRONMENT section that names each option's TASKHOST_* variable.
pub fn write_man_page(out: &mut dyn Write) -> anyhow::Result<()> {
    let command = Options::command();
    let man = clap_mangen::Man::new(command.clone());
    let written = (|| {
        man.render_title(out)?;
        man.render_name_section(out)?;
        man.render_synopsis_section(out)?;
        man.render_description_section(out)?;
        man.render_options_section(out)?;
        out.write_all(environment_section(&command).as_bytes())?;
        man.render_version_section(out)
    })();
    written.context("could not write the man page")
}

/// The ENVIRONMENT section: each variable and the flag it sets.
fn environment_section(command: &clap::Command) -> String {
    let mut roff = String::from(
        ".SH ENVIRONMENT\nEvery option can be set from a variable; flags override variables, \
         which override the \\fB\\-\\-config\\fR file.\n",
    );
    for arg in command.get_arguments() {
        if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
            roff.push_str(&format!(
                ".TP\n\\fB{}\\fR\n\\-\\-{}\n",
                env.to_string_lossy(),
                long.replace('-', "\\-")
            ));
        }
    }
    roff
}

/// Prints the completion script for `shell` on stdout.
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    write_completions(shell, &mut out);
    out.flush().context("could not write the completions")
}

/// Prints the man page on stdout.
pub fn print_man_page() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    write_man_page(&mut out)?;
    out.flush().context("could not write the man page")
}
