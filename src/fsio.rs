//! File-system rules every reader and writer follows, in one place:
//! - a file is read only once it is known to be a regular file: it is opened without blocking
//!   (a FIFO would wait forever for a writer) and its type checked on the open descriptor;
//! - an output is written atomically (temporary file beside it, fsync, rename), and only over a
//!   regular file or a new path: devices, FIFOs, sockets and directories are refused, and a
//!   symlink is followed to the file it names, which is replaced while the link stays;
//! - temporary names fit the 255-byte name limit, and temporaries left by killed processes are
//!   removed by the next write of the same file;
//! - an output folder is locked with `flock(2)` on `<dir>/.lfgcl.lock`, which the kernel releases
//!   when its holder dies, so a stale lock is taken over in the same atomic step that takes it.

use crate::error::{Error, Result};
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Longest file name most file systems accept (bytes).
const NAME_MAX: usize = 255;
/// Symlinks followed before a path is called a loop (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// A path as recorded in JSON (summaries, checkpoint info, resume settings): its text, with any
/// bytes that are not UTF-8 replaced (serde refuses such a path, and `json!` would panic on it).
/// A UTF-8 path gives the same JSON as serialising the path itself.
pub fn path_json(p: &Path) -> serde_json::Value {
    serde_json::Value::String(p.to_string_lossy().into_owned())
}

/// [`path_json`] for `Option<PathBuf>` fields: `null` when absent.
pub fn opt_path_json(p: Option<&Path>) -> serde_json::Value {
    p.map_or(serde_json::Value::Null, path_json)
}

/// `#[serde(serialize_with = "crate::fsio::serialize_path")]` on a path field: see [`path_json`].
pub fn serialize_path<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// What kind of file `meta` describes, for messages: "a FIFO", "a directory", ...
pub fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (after following symlinks). The open does not
/// block, so a FIFO is refused instead of waiting for a writer, and a device or directory is
/// refused before anything is read. Errors name the path and what it is.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(path, format!("is {}, not a regular file", kind_name(&meta))));
    }
    Ok(file)
}

/// Reads a regular file of at most `max` bytes: devices, FIFOs and directories are refused before
/// anything is read (`/dev/zero` never ends), the read is bounded even if the file grows, and the
/// buffer is reserved fallibly (a file too large for the memory left is an error, not an abort).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(Error::format(path, format!("{len} bytes is larger than the {max} bytes this reader accepts")));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|_| Error::format(path, format!("not enough memory to read its {len} bytes")))?;
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::format(path, format!("grew past the {max} bytes this reader accepts while it was read")));
    }
    Ok(bytes)
}

/// Whether something is at `path` (symlinks followed). Unlike `Path::exists`, an error other than
/// "not found" (a symlink loop, a permission denied) is an error naming the path, not `false`.
pub fn exists(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Removes the file at `path`; a file that is not there is no error.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The file an output path names: `path` itself, or the end of its chain of symlinks. Refuses a
/// path that exists and is not a regular file, and a symlink loop.
fn output_target(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(Error::io(path, e)),
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                p = match p.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            Ok(m) if m.is_file() => return Ok(p),
            Ok(m) => {
                let via = if p == path { String::new() } else { format!(" (the symlink names {})", p.display()) };
                return Err(Error::Invalid(format!(
                    "{}: refusing to write over {}{via}; outputs replace only regular files",
                    path.display(),
                    kind_name(&m)
                )));
            }
        }
    }
    Err(Error::Invalid(format!("{}: too many levels of symbolic links (a symlink loop?)", path.display())))
}

/// FNV-1a, to tell apart long names cut to the same prefix.
fn short_hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// `.<name>.<pid>.tmp`, cut to fit the name limit: a long name keeps its first bytes and a hash
/// of the whole (`.<prefix>~<hash>.<pid>.tmp`).
fn temp_name(name: &OsStr, pid: u32) -> OsString {
    let suffix = format!(".{pid}.tmp");
    let bytes = name.as_bytes();
    let mut out = b".".to_vec();
    if 1 + bytes.len() + suffix.len() <= NAME_MAX {
        out.extend_from_slice(bytes);
    } else {
        let hash = format!("~{:08x}", short_hash(bytes));
        let keep = NAME_MAX - 1 - suffix.len() - hash.len();
        out.extend_from_slice(&bytes[..keep]);
        out.extend_from_slice(hash.as_bytes());
    }
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

/// Removes the temporaries of `name` in `dir` that processes no longer running left behind (a
/// SIGKILL between create and rename). Best effort: a listing or removal that fails is ignored.
fn remove_stale_temporaries(dir: &Path, name: &OsStr) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(head) = file_name.as_bytes().strip_suffix(b".tmp") else { continue };
        let Some(dot) = head.iter().rposition(|&b| b == b'.') else { continue };
        let Some(pid) = std::str::from_utf8(&head[dot + 1..]).ok().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid != me && temp_name(name, pid) == file_name && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A reader never sees a half-written file, and an interrupted write leaves the old file intact.
/// Only a regular file or a new path is replaced; a symlink is followed (the link stays and the
/// file it names is replaced); devices, FIFOs, sockets and directories are refused.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_at(path.as_ref(), bytes)
}

fn write_atomic_at(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = output_target(path)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file_name = target.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    remove_stale_temporaries(&dir, file_name);
    let tmp = dir.join(temp_name(file_name, std::process::id()));
    let result = (|| {
        // A temporary of ours left by an earlier failed write of this process, or a link planted
        // under its name: never written through.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Whether a process with this pid runs (Linux: `/proc/<pid>`, zombies excluded; elsewhere assume
/// it does, so that nothing is ever taken from a live run).
pub(crate) fn process_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether process `pid` runs the lfgcl binary (its command name).
fn process_is_lfgcl(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "lfgcl")
}

/// The command name of this process, for the lock record.
fn own_program() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|c| c.trim().to_string())
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "lfgcl".to_string())
}

/// An exclusive lock on an output folder, so that two runs writing into the same folder cannot
/// interleave their files: `flock(2)` on `<dir>/.lfgcl.lock`, which records the holder (pid,
/// program, start time) for the message another run prints. The kernel drops the lock when its
/// holder exits or is killed, so a lock file left by a killed run is simply locked again: taking
/// it over is the same single atomic step as taking a new one, and a live process that merely
/// reuses a dead holder's pid holds nothing. Released (and the file removed) when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    pub const FILE_NAME: &'static str = ".lfgcl.lock";

    /// Locks `dir` (created if needed), or says which live process holds it.
    pub fn acquire(dir: impl AsRef<Path>) -> Result<DirLock> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(Self::FILE_NAME);
        let in_use = |holder: &str| {
            Error::Invalid(format!(
                "{} is in use by a running lfgcl process ({holder}, lock file {}); wait for it to finish or choose \
                 another --out",
                dir.display(),
                path.display()
            ))
        };
        // A holder that releases the lock removes the file first: the file locked here must still
        // be the one at `path`, else the lock is taken again on the new file.
        for _ in 0..16 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
            if !meta.is_file() {
                return Err(Error::format(&path, format!("is {}, not a lock file", kind_name(&meta))));
            }
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = (&file).take(4096).read_to_string(&mut text);
                    return Err(in_use(&describe_holder(&text)));
                }
                // A file system without flock: the run goes on unlocked rather than not at all.
                Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                    eprintln!("warning: {}: cannot lock ({e}); make sure no other run writes here", path.display());
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            let same = std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if !same {
                continue;
            }
            let mut text = String::new();
            let _ = (&file).take(4096).read_to_string(&mut text);
            // A lock of an older lfgcl, which wrote its bare pid and did not flock: held while
            // that pid is a live lfgcl process.
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && process_alive(pid) && process_is_lfgcl(pid) {
                    return Err(in_use(&format!("pid {pid}")));
                }
            }
            let record = format!(
                "pid {}\nprogram {}\nstarted {}\n",
                std::process::id(),
                own_program(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
            );
            file.set_len(0)
                .and_then(|_| file.write_all(record.as_bytes()))
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io(&path, e))?;
            return Ok(DirLock { path, _file: file });
        }
        Err(Error::Invalid(format!("{}: could not take the lock {}", dir.display(), path.display())))
    }
}

/// `pid 123, lfgcl, started <unix seconds>` from a lock record.
fn describe_holder(text: &str) -> String {
    let field = |key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string())).filter(|v| !v.is_empty())
    };
    match (field("pid "), field("program "), field("started ")) {
        (Some(pid), Some(program), Some(started)) => {
            format!("pid {pid}, {program}, started at unix time {started}")
        }
        (Some(pid), _, _) => format!("pid {pid}"),
        _ => match text.trim().parse::<u32>() {
            Ok(pid) => format!("pid {pid}"),
            Err(_) => "its record is unreadable".to_string(),
        },
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still locked (the descriptor closes after this), so that a waiting run
        // that opened the old file notices it is gone and locks the new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_fit_the_name_limit_and_keep_short_names() {
        assert_eq!(temp_name(OsStr::new("model.safetensors"), 42), OsStr::new(".model.safetensors.42.tmp"));
        let long = "x".repeat(255);
        let t = temp_name(OsStr::new(&long), u32::MAX);
        assert!(t.len() <= NAME_MAX, "{}", t.len());
        let other = format!("{}y", "x".repeat(254));
        assert_ne!(t, temp_name(OsStr::new(&other), u32::MAX));
    }
}
