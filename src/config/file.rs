//! Reading a config file (CONFIG at start-up, `--check`, reload, and `plan PATH`):
//! only a regular file, after following symlinks, of at most [`MAX_CONFIG_BYTES`].
//!
//! These reads run on the event loop, so nothing here may block or grow without bound:
//! a FIFO would block `open(2)` until a writer comes and `read(2)` until it closes, and
//! `/dev/zero` never ends. The path is checked with `stat(2)` first (a device is never
//! opened), then opened with `O_NONBLOCK` (opening a FIFO swapped in meanwhile does not
//! wait for a writer) and checked again with `fstat(2)`; at most one byte more than
//! the cap is read, to tell a file at the cap from a larger one.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config file read: 16 MiB.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// What a non-regular file is, for "not a regular file (fifo)".
fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "unknown file type"
    }
}

fn regular(t: FileType) -> io::Result<()> {
    if t.is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind(t)),
        ))
    }
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("larger than {} MiB", MAX_CONFIG_BYTES / (1024 * 1024)),
    )
}

/// The bytes of the regular file at `path` (symlinks followed). A FIFO, device,
/// socket or directory is an error, and so is a file larger than [`MAX_CONFIG_BYTES`];
/// neither blocks nor reads more than the cap.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    regular(std::fs::metadata(path)?.file_type())?;
    // The path may have been swapped between the stat and the open: O_NONBLOCK keeps
    // the open of a FIFO from waiting, O_NOCTTY keeps a terminal from becoming ours.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    regular(meta.file_type())?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    read_capped(file, meta.len())
}

/// At most [`MAX_CONFIG_BYTES`] + 1 bytes of `file` (its size may change while read).
fn read_capped(file: File, size_hint: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(size_hint).unwrap_or(0));
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("orchd-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_are_read_through_symlinks() {
        let dir = temp_dir("regular");
        let f = dir.join("a.toml");
        std::fs::write(&f, "x = 1\n").unwrap();
        std::os::unix::fs::symlink(&f, dir.join("link.toml")).unwrap();
        assert_eq!(read_file(&f).unwrap(), b"x = 1\n");
        assert_eq!(read_file(&dir.join("link.toml")).unwrap(), b"x = 1\n");
        let e = read_file(&dir.join("missing.toml")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn other_file_types_are_refused_without_blocking() {
        let dir = temp_dir("types");
        let e = read_file(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (character device)");
        let e = read_file(&dir).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (directory)");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let e = read_file(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (fifo)");
        std::os::unix::fs::symlink(&fifo, dir.join("link")).unwrap();
        let e = read_file(&dir.join("link")).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (fifo)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_size_cap_is_inclusive() {
        let dir = temp_dir("cap");
        let f = dir.join("big.toml");
        let cap = MAX_CONFIG_BYTES as usize;
        std::fs::write(&f, vec![b'#'; cap]).unwrap();
        assert_eq!(read_file(&f).unwrap().len(), cap);
        std::fs::write(&f, vec![b'#'; cap + 1]).unwrap();
        let e = read_file(&f).unwrap_err();
        assert_eq!(e.to_string(), "larger than 16 MiB");
        // A file that grows while read (its size said less) is still cut at the cap.
        let grown = File::open(&f).unwrap();
        let e = read_capped(grown, 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
