//! The harness of the hostile tests: `lfgcl` run as a child process under a virtual-memory limit,
//! with a deadline, its output captured, and assertions on how it refused its input.
//!
//! `LFGCL_TEST_EXE=/path/to/lfgcl` runs the same cases against another build (e.g. an older one,
//! to see which cases it fails).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Address-space limit of every child (KiB): far below what any hostile input would make an
/// unchecked reader allocate, far above what the tiny legitimate runs here need.
pub const CHILD_MEMORY_KIB: u64 = 1_500_000;
/// A hung child is killed after this long; it only guards against a runaway case.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(120);

pub struct Outcome {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A running child.
pub struct Spawned {
    args: Vec<String>,
    child: Child,
    out: JoinHandle<Vec<u8>>,
    err: JoinHandle<Vec<u8>>,
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut pipe, &mut s).ok();
        s
    })
}

/// Starts `lfgcl ARGS` under `ulimit -v` (the shell execs it: the child's pid is lfgcl's), with 2
/// threads and few malloc arenas.
pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Spawned {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("ulimit -v {CHILD_MEMORY_KIB}; exec \"$0\" \"$@\""))
        .arg(super::exe::lfgcl_exe())
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn bash");
    // Drained on threads so that a chatty child cannot block on a full pipe.
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let args = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    Spawned { args, child, out, err }
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) to the child.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the child; one still running after `deadline` is killed and the test fails.
    pub fn finish(mut self, deadline: Duration) -> Outcome {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break Some(st);
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = String::from_utf8_lossy(&self.err.join().unwrap()).into_owned();
        let status =
            status.unwrap_or_else(|| panic!("{:?} still ran after {deadline:?} (hung?)\nstderr: {stderr}", self.args));
        Outcome {
            args: self.args,
            code: status.code(),
            stdout: String::from_utf8_lossy(&self.out.join().unwrap()).into_owned(),
            stderr,
        }
    }
}

/// Runs `lfgcl ARGS` to the end (see [`spawn`]).
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Outcome {
    spawn(args).finish(CHILD_DEADLINE)
}

/// Runs `lfgcl ARGS`, which must end within `deadline`.
pub fn run_within<S: AsRef<OsStr>>(args: &[S], deadline: Duration) -> Outcome {
    spawn(args).finish(deadline)
}

impl Outcome {
    pub fn context(&self) -> String {
        format!("{:?}\nstdout: {}\nstderr: {}", self.args, self.stdout, self.stderr)
    }

    /// The first `error:` line of stderr.
    pub fn error_line(&self) -> String {
        self.stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line: {}", self.context()))
            .to_string()
    }
}

/// The child refused its input cleanly, and its error line names every one of `names`.
pub fn assert_refused(o: &Outcome, names: &[&str]) {
    let ctx = o.context();
    let code = o.code.unwrap_or_else(|| panic!("killed by a signal (abort?): {ctx}"));
    assert_ne!(code, 0, "accepted: {ctx}");
    assert_ne!(code, 101, "panicked: {ctx}");
    assert!(!o.stderr.contains("panicked"), "panicked: {ctx}");
    let line = o.error_line();
    for bad in ["out of memory", "memory allocation", "capacity overflow", "corrupt"] {
        assert!(!line.contains(bad), "a runaway allocation, not a refusal ('{bad}'): {ctx}");
    }
    for n in names {
        assert!(line.contains(n), "the error should name '{n}': {ctx}");
    }
}

pub fn assert_ok(o: &Outcome) {
    assert_eq!(o.code, Some(0), "{}", o.context());
}

pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A tiny, fast training run on the synthetic set; `extra` holds flags (with their values, if
/// any) that replace the defaults or are added.
pub fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--device",
        "cpu",
        "-q",
        "train",
        "--model",
        "smallcnn",
        "--data",
        "synthetic",
        "--limit",
        "64",
        "--test-limit",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(s(out));
    with_flags(v, extra)
}

/// `v` with `extra` flags replacing or added to it (a flag followed by its value, if any).
pub fn with_flags(mut v: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let value = extra.get(i + 1).filter(|x| !x.starts_with("--"));
        match (v.iter().position(|a| a == flag), value) {
            (Some(at), Some(val)) => v[at + 1] = val.to_string(),
            (_, val) => {
                v.push(flag.to_string());
                if let Some(val) = val {
                    v.push(val.to_string());
                }
            }
        }
        i += 1 + value.is_some() as usize;
    }
    v
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Waits (at most `deadline`) until `path` exists.
pub fn wait_for(path: &Path, deadline: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < deadline, "{} did not appear within {deadline:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}
