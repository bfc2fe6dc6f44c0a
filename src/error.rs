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

    /// The search agent's actions, rewards or weights became non-finite; the message names which.
    #[error("agent diverged: {0}")]
    AgentDiverged(String),
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
