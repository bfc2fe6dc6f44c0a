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

/// TEMPORARY: replaced by the hardening branch's lock.
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(".lfgcl.lock");
        std::fs::write(&path, std::process::id().to_string()).map_err(|e| Error::io(&path, e))?;
        Ok(DirLock { path })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
