//! JSON result files and JSON-lines logs.
//!
//! Whole files (configs, final results) are written atomically; logs that grow during a run are
//! JSON lines, one object per line, each line written and flushed as soon as it is known, so a run
//! that is killed loses at most the line being written, and [`read_jsonl`] skips that line.

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `value` as pretty-printed JSON (with a final newline), atomically.
/// Paths (`a.b.c`) where two JSON values differ, as `path was OLD, now NEW` (a key missing on one
/// side counts as null). Used to name the settings a resumed run changed.
pub fn json_differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
        match (old, new) {
            (serde_json::Value::Object(o), serde_json::Value::Object(n)) => {
                let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
                for k in keys {
                    let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    let null = serde_json::Value::Null;
                    walk(&sub, o.get(k).unwrap_or(&null), n.get(k).unwrap_or(&null), out);
                }
            }
            _ if old != new => out.push(format!("{path} was {old}, now {new}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

pub fn write_json<T: Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| Error::format(path, format!("cannot serialise to JSON: {e}")))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads a JSON file; errors name the file (and, for bad content, the line and column).
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = crate::fsio::read_regular(path, crate::limits::MAX_JSON_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Appends one JSON value per line to a log file, flushing every line to the OS.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
}

impl JsonlWriter {
    /// Starts a new log, replacing any file at `path` (parent directories are created).
    pub fn create(path: impl AsRef<Path>) -> Result<JsonlWriter> {
        Self::open(path.as_ref(), false)
    }

    /// Continues the log at `path`, creating it if needed. A partial last line left by an
    /// interrupted run is cut off first, so the new lines do not run into it.
    pub fn append(path: impl AsRef<Path>) -> Result<JsonlWriter> {
        Self::open(path.as_ref(), true)
    }

    fn open(path: &Path, append: bool) -> Result<JsonlWriter> {
        let io = |e| Error::io(path, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        // Only a regular file or a new one: a FIFO or device is refused before it is opened
        // (truncated, or written until its buffer blocks).
        if let Some(m) = std::fs::metadata(path).ok().filter(|m| !m.is_file()) {
            return Err(Error::format(path, format!("is {}, not a regular file", crate::fsio::kind_name(&m))));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!append)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(Error::format(path, format!("is {}, not a regular file", crate::fsio::kind_name(&meta))));
        }
        if append {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io)?;
            let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < bytes.len() {
                file.set_len(complete as u64).map_err(io)?;
            }
            file.seek(SeekFrom::Start(complete as u64)).map_err(io)?;
        }
        Ok(JsonlWriter { path: path.to_path_buf(), file })
    }

    /// Writes `value` as one line of compact JSON and flushes it; returns the bytes written.
    pub fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<usize> {
        let mut line = serde_json::to_vec(value)
            .map_err(|e| Error::format(&self.path, format!("cannot serialise to JSON: {e}")))?;
        line.push(b'\n');
        // One write call per line: a reader sees whole lines or, after a crash, one partial tail.
        self.file.write_all(&line).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))?;
        Ok(line.len())
    }

    /// Forces the lines written so far to disk (fsync); `write` alone survives a killed process
    /// but not a power cut.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a JSON-lines file. Blank lines are skipped; a last line without its newline that does not
/// parse is taken for the tail of an interrupted write and ignored; any other bad line is an error
/// naming the file and the line number.
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    let path = path.as_ref();
    let bytes = crate::fsio::read_regular(path, crate::limits::MAX_DATA_FILE_BYTES)?;
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.into_iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == n && !complete => break,
            Err(e) => return Err(Error::format(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}
