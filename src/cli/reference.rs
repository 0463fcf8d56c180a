//! The command-line reference as Markdown, generated from the clap definitions (the book's
//! chapter `docs/book/src/cli.md`; `tests/cli_reference.rs` keeps it up to date).

use clap::{Arg, ArgAction, Command, CommandFactory};

/// The reference of every subcommand: usage, what it does, its arguments and flags.
pub fn reference_markdown() -> String {
    let cli = super::Cli::command();
    let mut out = String::from(
        "# The command line\n\n\
         <!-- Generated from the CLI's definitions by `PCG_BLESS=1 cargo test --release --test \
         cli_reference`; do not edit by hand. -->\n\n",
    );
    if let Some(about) = cli.get_about() {
        out.push_str(&format!("`pcg`: {about}.\n\n"));
    }
    out.push_str("```text\npcg [--memory-limit BYTES] <COMMAND> ...\n```\n\n");
    let global: Vec<&Arg> = cli.get_arguments().filter(|a| !is_builtin(a)).collect();
    if !global.is_empty() {
        out.push_str("Options of every command:\n\n");
        for a in global {
            out.push_str(&argument(a));
        }
        out.push('\n');
    }
    out.push_str("Commands:\n\n");
    for sub in cli.get_subcommands() {
        let about = sub.get_about().map(|s| s.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "- [`pcg {}`](#pcg-{}): {about}\n",
            sub.get_name(),
            sub.get_name()
        ));
    }
    out.push('\n');
    for sub in cli.get_subcommands() {
        out.push_str(&subcommand(sub));
    }
    out
}

fn is_builtin(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "help" | "version")
}

fn subcommand(sub: &Command) -> String {
    let name = sub.get_name();
    let mut out = format!("## pcg {name}\n\n");
    let about = sub
        .get_long_about()
        .or(sub.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default();
    out.push_str(&format!("{about}\n\n"));
    let mut usage = sub.clone().bin_name(format!("pcg {name}"));
    out.push_str(&format!(
        "```text\n{}\n```\n\n",
        usage
            .render_usage()
            .to_string()
            .trim_start_matches("Usage: ")
    ));
    let positional: Vec<&Arg> = sub.get_positionals().collect();
    if !positional.is_empty() {
        out.push_str("Arguments:\n\n");
        for a in positional {
            out.push_str(&argument(a));
        }
        out.push('\n');
    }
    let flags: Vec<&Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_positional() && !is_builtin(a) && !a.is_global_set())
        .collect();
    if !flags.is_empty() {
        out.push_str("Options:\n\n");
        for a in flags {
            out.push_str(&argument(a));
        }
        out.push('\n');
    }
    out
}

/// One argument as a list item: its form, its help, its choices and default.
fn argument(a: &Arg) -> String {
    let value = a
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    let takes_value = matches!(a.get_action(), ArgAction::Set | ArgAction::Append);
    let form = match (a.get_long(), a.get_short(), a.is_positional()) {
        (_, _, true) => {
            let many = matches!(a.get_action(), ArgAction::Append)
                || a.get_num_args().is_some_and(|n| n.max_values() > 1);
            format!("{value}{}", if many { "..." } else { "" })
        }
        (Some(long), _, _) if takes_value => format!("--{long} <{value}>"),
        (Some(long), _, _) => format!("--{long}"),
        (None, Some(short), _) => format!("-{short}"),
        (None, None, _) => value,
    };
    let help = a
        .get_long_help()
        .or(a.get_help())
        .map(|s| s.to_string().replace('\n', " "))
        .unwrap_or_default();
    let mut line = format!("- `{form}`");
    if !help.is_empty() {
        line.push_str(&format!(": {help}"));
    }
    let choices: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !choices.is_empty() && takes_value {
        line.push_str(&format!(" One of {}.", choices.join(", ")));
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && takes_value {
        line.push_str(&format!(" Default: `{}`.", defaults.join(" ")));
    }
    line.push('\n');
    line
}
