//! One error type for the whole crate. Every message is meant to be read by a user on one line:
//! it names the file, the tensor or the argument that is wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shape that does not fit the operation or the model.
    #[error("shape mismatch: {0}")]
    Shape(String),

    /// A bad argument or option value (unknown model name, ratio out of range, ...).
    #[error("{0}")]
    Invalid(String),

    /// An I/O failure, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that exists but whose content is not what its format promises.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// A checkpoint that does not describe the network it is loaded into.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// A budget the pruning constraints cannot reach.
    #[error("budget: {0}")]
    Budget(String),

    /// No usable CUDA device, or a CUDA call that failed.
    #[error("cuda: {0}")]
    Cuda(String),

    /// Training produced a non-finite loss or weight; the message names the epoch and step.
    #[error("training diverged {0}")]
    Diverged(String),

    /// A tensor living on a device the operation does not run on.
    #[error("device mismatch: {0}")]
    Device(String),

    /// Stopped by SIGINT or SIGTERM after saving what it had (the message says how to resume).
    #[error("interrupted: {0}")]
    Interrupted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn checkpoint(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
}

/// `bail!(Invalid, "...")`-style early returns keep call sites short.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::Error::$kind(format!($($arg)*)))
    };
}

/// Removes the file at `path`; a file that is not there is no error.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A reader never sees a half-written file, and an interrupted write leaves the old file intact.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file_name = path.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// An exclusive lock on an output folder: `<dir>/.lfgcl.lock`, created with `O_EXCL` and holding
/// the owner's pid, so that two runs writing into the same folder cannot interleave their files.
/// A lock left by a process that no longer runs (killed) is taken over; the lock is released
/// when the value is dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    pub const FILE_NAME: &'static str = ".lfgcl.lock";

    /// Locks `dir` (created if needed), or says which live process holds it.
    pub fn acquire(dir: impl AsRef<Path>) -> Result<DirLock> {
        use std::io::Write;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(Self::FILE_NAME);
        // Two attempts: the second after removing a stale lock.
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(std::process::id().to_string().as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| Error::io(&path, e))?;
                    return Ok(DirLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<u32>() {
                        Ok(pid) if process_alive(pid) => {
                            return Err(Error::Invalid(format!(
                                "{} is in use by a running lfgcl process (pid {pid}, lock file {}); wait for it to \
                                 finish or choose another --out",
                                dir.display(),
                                path.display()
                            )));
                        }
                        // Dead owner, or a lock half written by a killed process: stale.
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::Invalid(format!("{}: could not take the lock {}", dir.display(), path.display())))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this pid exists (Linux: `/proc/<pid>`; elsewhere assume it does, so a
/// lock is never stolen from a live run).
fn process_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    // A zombie (killed but not yet reaped) holds no lock any more.
    match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
