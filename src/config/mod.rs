//! Loading the config file: TOML text to a checked [`Config`], or every error found.
//!
//! Pipeline (one pass, as many errors as possible):
//! 1. `toml::de::DeTable::parse_recoverable`: every syntax error, with its position.
//!    When there is any, only the syntax errors are reported: the recovered document
//!    may lack keys or hold misplaced ones, and checking it would report errors that
//!    are not there.
//! 2. Each section (`[orchd]`, each `[pool.NAME]`, each `[[route]]`) is deserialized
//!    on its own with `serde_path_to_error`, so one bad pool does not hide the errors
//!    of another; within a section, a rejected key (wrong type, unknown key) is
//!    reported, dropped, and the section deserialized again, so every bad key is
//!    reported once.
//! 3. Semantic checks (ranges, names, regexes, pool references, addresses), each
//!    error located through the spans of the parsed document.
//!
//! Errors are sorted by position. Key paths count routes from 1: the first
//! `[[route]]` is `route[1]`.

pub mod model;
pub use model::*;

mod describe;
mod error;
mod file;
mod listen;
mod preflight;
mod raw;
mod signal;
mod source;
mod supervision;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_health;

pub use describe::{describe, size as describe_size};
pub use error::{ConfigError, ConfigErrors};
pub use file::{read_file, MAX_CONFIG_BYTES};
pub use preflight::preflight;
pub use signal::{parse_signal, signal_by_name, signal_name};
pub use supervision::*;

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Syntax errors reported at most (the parser's recovery can cascade).
const MAX_SYNTAX_ERRORS: usize = 20;

/// Reads and checks the config file at `path`. An unreadable file (missing, not a
/// regular file, larger than [`MAX_CONFIG_BYTES`]) gives one error with line 0,
/// column 0 and an empty key.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = read_file(path).map_err(|e| read_error(path, &e))?;
    parse_bytes(path, &bytes)
}

/// The error for a config file that [`read_file`] refused.
pub fn read_error(path: &Path, e: &std::io::Error) -> ConfigError {
    ConfigError::without_position(path, format!("cannot read the config file: {e}"))
}

/// Checks config `bytes` read from `path`: [`parse_str`] once they are known to be
/// UTF-8 (an error at the first invalid byte otherwise).
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Config, ConfigErrors> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_str(path, text),
        Err(e) => {
            let valid = bytes
                .get(..e.valid_up_to())
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("");
            let (line, column) = source::line_col(valid, valid.len());
            Err(ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: "the file is not valid UTF-8 (TOML files must be UTF-8)".into(),
            }
            .into())
        }
    }
}

/// Checks config `text` as if read from `path`. `path` names the file in errors and
/// in [`Config::path`]; relative paths in the config are resolved against its
/// directory (made absolute with the current directory when `path` is relative).
pub fn parse_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let dir = config_dir(path)?;
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax_errors(path, text, &syntax));
    }
    let root = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
    let mut checker = validate::Checker::new(path, text, &root, &dir);
    let config = checker.config(path);
    let mut errors = checker.errors;
    if errors.is_empty() {
        match config {
            Some(c) => return Ok(c),
            None => errors.push(ConfigError::without_position(
                path,
                "internal error: the config was rejected without a reason",
            )),
        }
    }
    Err(finish(errors))
}

/// The directory relative paths in the config are resolved against: the config
/// file's parent, absolute.
fn config_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.is_absolute() {
        return Ok(validate::normalize(parent));
    }
    match std::env::current_dir() {
        Ok(cwd) => Ok(validate::normalize(&cwd.join(parent))),
        Err(e) => Err(ConfigError::without_position(
            path,
            format!("cannot resolve the config's directory: current directory unknown: {e}"),
        )),
    }
}

fn syntax_errors(path: &Path, text: &str, errors: &[toml::de::Error]) -> ConfigErrors {
    let mut out: Vec<ConfigError> = errors
        .iter()
        .map(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| source::line_col(text, s.start));
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: format!("TOML syntax error: {message}"),
            }
        })
        .collect();
    out.sort_by_key(|e| (e.line, e.column));
    out.dedup();
    out.truncate(MAX_SYNTAX_ERRORS);
    ConfigErrors(out)
}

fn finish(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    ConfigErrors(errors)
}
