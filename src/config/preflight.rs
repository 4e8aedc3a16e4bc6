//! Pre-flight checks: what reading the file cannot tell, looked up on this machine
//! now. Each pool's command must resolve to an executable and its `cwd` must be a
//! directory orchd can enter.
//!
//! The callers decide what a finding means: an error for `--check` and `plan`, a
//! warning at start-up and reload (the file may become runnable later, and a failed
//! spawn is retried with backoff).
//!
//! The command is resolved the way an instance's spawn resolves it
//! (`src/supervisor/spawn.rs`): a program name with a slash is a path, relative to
//! the pool's `cwd`; a plain name is looked up in `PATH`, the pool's `env` one if it
//! sets `PATH`, else orchd's (empty entries and relative directories mean the `cwd`,
//! as execvp does in the child). Permissions are orchd's own: a pool that runs as
//! another `user` is checked as orchd.
//!
//! A string command (run with `/bin/sh -c`) is checked through its first word only
//! when that word is a plain command name: letters, digits and `/._+-@%,:` only, not a
//! shell keyword or builtin. After `exec`, the word that follows is checked instead
//! (`exec node server.js`). Anything with shell syntax in its first word (`$VAR`,
//! quotes, `A=b cmd`, redirections, `(`) is not checked: only the shell knows.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::model::{Command, Config, Pool};

/// Where execvp looks when `PATH` is unset (glibc's `_CS_PATH`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Shell keywords and builtins (POSIX, dash and bash): a first word among these is
/// run by the shell itself, not looked up in `PATH`.
const SHELL_WORDS: &[&str] = &[
    // keywords
    "!",
    "case",
    "coproc",
    "do",
    "done",
    "elif",
    "else",
    "esac",
    "fi",
    "for",
    "function",
    "if",
    "in",
    "select",
    "then",
    "time",
    "until",
    "while",
    "[[",
    "]]",
    "{",
    "}",
    // builtins
    ".",
    ":",
    "[",
    "alias",
    "bg",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
];

/// Every problem found, sorted by position; empty when every pool can start.
/// The errors carry the key (`pool.web.command`, `pool.web.cwd`) and its position.
pub fn preflight(config: &Config) -> Vec<ConfigError> {
    let orchd_path = std::env::var_os("PATH");
    let mut out = Vec::new();
    for pool in &config.pools {
        let cwd_ok = match check_dir(&pool.cwd) {
            Ok(()) => true,
            Err(message) => {
                out.push(located(config, pool, "cwd", message));
                false
            }
        };
        let Some(program) = program_of(&pool.command) else {
            continue;
        };
        let (path, whose) = match pool.env.get("PATH") {
            Some(p) => (OsStr::new(p.as_str()), "the pool's env"),
            None => match &orchd_path {
                Some(p) => (p.as_os_str(), "orchd's environment"),
                None => (OsStr::new(DEFAULT_PATH), "the default, PATH being unset"),
            },
        };
        if let Err(message) = check_program(program, &pool.cwd, cwd_ok, path, whose) {
            out.push(located(config, pool, "command", message));
        }
    }
    out.sort_by_key(|e| (e.line, e.column));
    out
}

fn located(config: &Config, pool: &Pool, key: &str, message: String) -> ConfigError {
    let key = format!("pool.{}.{key}", pool.name);
    let (line, column) = config.positions.get(&key).copied().unwrap_or((0, 0));
    ConfigError {
        file: config.path.clone(),
        line,
        column,
        key,
        message,
    }
}

/// The program to look for, or None when only a shell could tell.
fn program_of(command: &Command) -> Option<&str> {
    match command {
        Command::Argv(v) => v.first().map(String::as_str).filter(|p| !p.is_empty()),
        Command::Shell(s) => shell_program(s),
    }
}

/// The first word of a shell command when it is a plain command name (see the
/// module docs).
fn shell_program(s: &str) -> Option<&str> {
    let mut words = s.split_ascii_whitespace();
    let first = words.next()?;
    if first == "exec" {
        // `exec` runs no builtin: what follows is looked up in PATH.
        return words.next().filter(|w| is_plain_word(w));
    }
    (is_plain_word(first) && !SHELL_WORDS.contains(&first)).then_some(first)
}

fn is_plain_word(w: &str) -> bool {
    !w.is_empty()
        && !w.starts_with('-')
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-@%,:".contains(c))
}

/// `cwd` exists, is a directory, and orchd may enter it.
fn check_dir(cwd: &Path) -> Result<(), String> {
    let d = cwd.display();
    match std::fs::metadata(cwd) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("the directory {d} does not exist"))
        }
        Err(e) => Err(format!("cannot use the directory {d}: {e}")),
        Ok(m) if !m.is_dir() => Err(format!("{d} is not a directory")),
        Ok(_) => match crate::sys::may_execute(cwd) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the directory {d} cannot be entered (no search permission)"
            )),
            Err(e) => Err(format!("cannot use the directory {d}: {e}")),
        },
    }
}

/// `program` resolves to an executable file; see the module docs. `cwd_ok`: the
/// cwd exists (when it does not, that error is enough: paths relative to it are not
/// looked at).
fn check_program(
    program: &str,
    cwd: &Path,
    cwd_ok: bool,
    path: &OsStr,
    whose: &str,
) -> Result<(), String> {
    if program.contains('/') {
        let p = Path::new(program);
        if p.is_relative() && !cwd_ok {
            return Ok(());
        }
        return check_executable(&super::validate::normalize(&cwd.join(p))).map_err(|why| match p
            .is_relative()
        {
            true => format!("{program:?} (relative to the cwd): {why}"),
            false => why,
        });
    }
    let mut not_executable: Option<(PathBuf, String)> = None;
    for dir in std::env::split_paths(path) {
        let dir = if dir.as_os_str().is_empty() || dir.is_relative() {
            if !cwd_ok {
                continue;
            }
            cwd.join(dir)
        } else {
            dir
        };
        let candidate = dir.join(program);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => match check_executable(&candidate) {
                Ok(()) => return Ok(()),
                Err(why) => {
                    not_executable.get_or_insert((candidate, why));
                }
            },
            _ => {}
        }
    }
    Err(match not_executable {
        // execvp goes on past a file it may not execute, and fails if nothing follows.
        Some((_, why)) => format!("{program:?} found in PATH, but {why}"),
        None => format!(
            "{program:?} not found in PATH ({}, from {whose})",
            path.to_string_lossy()
        ),
    })
}

/// `p` is a regular file orchd may execute.
fn check_executable(p: &Path) -> Result<(), String> {
    let d = p.display();
    let m = match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{d} does not exist"))
        }
        Err(e) => return Err(format!("cannot use {d}: {e}")),
        Ok(m) => m,
    };
    if m.is_dir() {
        return Err(format!("{d} is a directory"));
    }
    if !m.is_file() {
        return Err(format!("{d} is not a regular file"));
    }
    match crate::sys::may_execute(p) {
        Ok(true) => Ok(()),
        Ok(false) => {
            use std::os::unix::fs::PermissionsExt;
            Err(format!(
                "{d} is not executable (mode {:04o})",
                m.permissions().mode() & 0o7777
            ))
        }
        Err(e) => Err(format!("cannot use {d}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_word_of_a_shell_command() {
        assert_eq!(shell_program("cat"), Some("cat"));
        assert_eq!(shell_program("  ./w.sh --x"), Some("./w.sh"));
        assert_eq!(shell_program("exec cat"), Some("cat"));
        assert_eq!(shell_program("exec node server.js"), Some("node"));
        // Builtins, keywords, shell syntax: not checked.
        for s in [
            "exec",
            "exec -a x cat",
            "exec 2>&1 cat",
            "echo hi",
            "while read l; do echo $l; done",
            "A=1 cat",
            "$CMD x",
            "\"my prog\" x",
            "(cat)",
            "cat|tr a b",
            "{ cat; }",
            "~/bin/w",
            "",
        ] {
            assert_eq!(shell_program(s), None, "{s:?}");
        }
    }

    #[test]
    fn program_lookup() {
        let root = Path::new("/");
        let sys_path = OsStr::new("/nonexistent-dir:/bin:/usr/bin");
        assert_eq!(check_program("sh", root, true, sys_path, "x"), Ok(()));
        assert_eq!(check_program("/bin/sh", root, true, sys_path, "x"), Ok(()));
        let e = check_program(
            "no-such-program-xyz",
            root,
            true,
            sys_path,
            "orchd's environment",
        )
        .unwrap_err();
        assert!(
            e.contains(
                "not found in PATH (/nonexistent-dir:/bin:/usr/bin, from orchd's environment)"
            ),
            "{e}"
        );
        let e = check_program("/etc/passwd", root, true, sys_path, "x").unwrap_err();
        assert!(e.contains("is not executable"), "{e}");
        let e = check_program("/etc", root, true, sys_path, "x").unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        // Relative paths: from the cwd; not looked at when the cwd is missing.
        assert_eq!(check_program("bin/sh", root, true, sys_path, "x"), Ok(()));
        assert_eq!(
            check_program("./x/y", Path::new("/nope"), false, sys_path, "x"),
            Ok(())
        );
        // An empty PATH entry is the cwd.
        assert_eq!(
            check_program("sh", Path::new("/bin"), true, OsStr::new(":"), "x"),
            Ok(())
        );
    }

    #[test]
    fn directories() {
        assert_eq!(check_dir(Path::new("/")), Ok(()));
        assert!(check_dir(Path::new("/no/such/dir"))
            .unwrap_err()
            .contains("does not exist"));
        assert!(check_dir(Path::new("/etc/passwd"))
            .unwrap_err()
            .contains("not a directory"));
    }
}
