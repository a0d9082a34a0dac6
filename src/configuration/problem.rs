//! What loading the settings can refuse, as errors callers match on: a
//! file that cannot be read, and every unknown key or bad value with where
//! it came from.

use std::path::PathBuf;

/// Why the configuration could not be loaded. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `--config` names nothing.
    #[error("config file {} not found", .0.display())]
    FileNotFound(PathBuf),
    /// `--config` names a directory.
    #[error("config file {} is a directory, not a file", .0.display())]
    FileIsDirectory(PathBuf),
    /// The file exists but cannot be read (permissions, not UTF-8...).
    // Not a `source`: the message already says it, and a chain would say
    // it twice.
    #[error("config file {} cannot be read: {reason}", .path.display())]
    FileUnreadable {
        /// The file given.
        path: PathBuf,
        /// What the operating system said.
        reason: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {}: {message}", .path.display())]
    FileSyntax {
        /// The file given.
        path: PathBuf,
        /// Where and what: "line 3, column 7: invalid string".
        message: String,
    },
    /// Unknown keys and bad values, every one found.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

/// One unknown key or bad value, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// "config file PATH", "environment variable NAME" or "built-in
    /// defaults"; `None` for checks across keys of several layers.
    pub origin: Option<String>,
    /// The key, dotted as in the docs: `limits.max_sessions`, `limits.rules[0].policy`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
