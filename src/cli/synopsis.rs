//! Which subcommands and long flags of a clap command the usage lines of the
//! documentation leave out. The tests that keep README.md's and
//! OPERATIONS.md's command lists complete call it with the worker's command
//! tree and with the benchmark's (a crate of its own), so both are read the
//! same way and the parsing lives here once.

use std::collections::{BTreeMap, BTreeSet};

/// Flags clap adds to every command by itself; `--help` lists them.
const AUTOMATIC: [&str; 2] = ["help", "version"];

/// What `docs` fail to mention of `command`, one line per omission
/// (empty when nothing is missing):
///
/// - every subcommand, at every depth, needs a usage line: a line in a
///   fenced code block that starts with the program's name followed, among
///   its other words, by the subcommand's path (`session-guard [--config
///   FILE] limits set --user U`);
/// - every long flag of a subcommand needs to appear on one of its usage
///   lines or their continuations (the indented lines right below that
///   start with `[` or `--`);
/// - a global flag or one of a command without subcommands, on any usage
///   line of the program.
pub fn undocumented(command: &clap::Command, docs: &[&str]) -> Vec<String> {
    let program = command.get_name().to_owned();
    let mut usage: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let mut everywhere = BTreeSet::new();
    for doc in docs {
        for (path, flags) in usage_lines(command, &program, doc) {
            everywhere.extend(flags.iter().cloned());
            usage.entry(path).or_default().extend(flags);
        }
    }
    let mut missing = Vec::new();
    let root: Vec<String> = Vec::new();
    for flag in long_flags(command) {
        if !everywhere.contains(&flag) {
            missing.push(format!("{program}: --{flag}"));
        }
    }
    let mut stack = vec![(root, command)];
    while let Some((path, cmd)) = stack.pop() {
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let mut sub_path = path.clone();
            sub_path.push(sub.get_name().to_owned());
            let shown = format!("{program} {}", sub_path.join(" "));
            if sub.has_subcommands() {
                stack.push((sub_path, sub));
                continue;
            }
            let Some(flags) = usage.get(&sub_path) else {
                missing.push(format!("{shown}: no usage line"));
                continue;
            };
            for flag in long_flags(sub) {
                let global = command
                    .get_arguments()
                    .any(|a| a.is_global_set() && a.get_long() == Some(flag.as_str()));
                if !global && !flags.contains(&flag) {
                    missing.push(format!("{shown}: --{flag}"));
                }
            }
        }
    }
    missing.sort();
    missing
}

/// The long flags of `command` itself (not of its subcommands), without
/// clap's own.
fn long_flags(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !AUTOMATIC.contains(l))
        .map(str::to_owned)
        .collect()
}

/// The usage lines of `program` in `doc`'s fenced code blocks: each one's
/// subcommand path and the flags on it and its continuation lines.
fn usage_lines(
    command: &clap::Command,
    program: &str,
    doc: &str,
) -> Vec<(Vec<String>, BTreeSet<String>)> {
    let mut found: Vec<(Vec<String>, BTreeSet<String>)> = Vec::new();
    let mut fenced = false;
    let mut open = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            open = false;
            continue;
        }
        if !fenced {
            continue;
        }
        // Comments after `#` explain; they are not usage.
        let text = line.split(" #").next().unwrap_or_default();
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.first() == Some(&program) {
            found.push((subcommand_path(command, &words[1..]), flags(text)));
            open = true;
        } else if open
            && line.starts_with(char::is_whitespace)
            && (words
                .first()
                .is_some_and(|w| w.starts_with('[') || w.starts_with("--")))
        {
            if let Some((_, last)) = found.last_mut() {
                last.extend(flags(text));
            }
        } else {
            open = false;
        }
    }
    found
}

/// The subcommands named among `words`, in order, each one of the previous
/// one's: `[--config FILE] limits set --user U` gives `limits set`.
fn subcommand_path(command: &clap::Command, words: &[&str]) -> Vec<String> {
    let mut here = command;
    let mut path = Vec::new();
    for word in words {
        if let Some(sub) = here.find_subcommand(word) {
            path.push(sub.get_name().to_owned());
            here = sub;
        }
    }
    path
}

/// The long flags written in `text` (`--max-global`, `[--mix A|B]`), without
/// their dashes.
fn flags(text: &str) -> BTreeSet<String> {
    text.split("--")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, Command};

    use super::*;

    fn tool() -> Command {
        Command::new("tool")
            .arg(Arg::new("config").long("config").global(true))
            .subcommand(Command::new("run"))
            .subcommand(
                Command::new("limits").subcommand(
                    Command::new("set")
                        .arg(Arg::new("user").long("user"))
                        .arg(Arg::new("max-global").long("max-global"))
                        .arg(Arg::new("json").long("json").action(ArgAction::SetTrue)),
                ),
            )
    }

    #[test]
    fn usage_lines_and_their_continuations_document_flags() {
        let doc = "```\ntool [--config FILE] run\n\
                   tool limits set --user U [--max-global N]\n\
                   \x20          [--json]   # for scripts\n```\n";
        assert_eq!(undocumented(&tool(), &[doc]), Vec::<String>::new());
    }

    #[test]
    fn omissions_are_named_and_prose_does_not_count() {
        // Outside a code block, in a comment, or on a line that is not a
        // continuation, a flag is not on the usage line.
        let doc = "tool limits set --json\n```\ntool run # also --config\n\
                   tool limits set --user U\nsee also --max-global\n```\n";
        assert_eq!(
            undocumented(&tool(), &[doc]),
            [
                "tool limits set: --json",
                "tool limits set: --max-global",
                "tool: --config",
            ]
        );
        assert_eq!(
            undocumented(&tool(), &["```\ntool --config F run\n```"]),
            ["tool limits set: no usage line"]
        );
    }
}
