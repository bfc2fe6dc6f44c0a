//! The `lfgcl` binary under test: the one cargo built for this test, or, when the tests run
//! from a bundle on another machine (../shared/gpu/bundle.sh) where that path does not exist,
//! the `lfgcl` on PATH. `LFGCL_TEST_EXE=/path/to/lfgcl` runs the tests against another build
//! (e.g. an older one, to see which cases it fails).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

pub fn lfgcl_exe() -> std::ffi::OsString {
    if let Some(exe) = std::env::var_os("LFGCL_TEST_EXE") {
        return exe;
    }
    let built = env!("CARGO_BIN_EXE_lfgcl");
    if std::path::Path::new(built).exists() {
        built.into()
    } else {
        "lfgcl".into()
    }
}

/// `lfgcl ARGS` as the tests run it: 2 worker threads (the CI machine's cores), no stdin.
pub fn lfgcl<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(lfgcl_exe());
    c.args(args).env("RAYON_NUM_THREADS", "2").stdin(Stdio::null());
    c
}

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs `lfgcl ARGS`, which must succeed; returns its stdout.
pub fn run_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let o = lfgcl(&args).output().expect("run lfgcl");
    let (out, err) = text(&o);
    assert!(o.status.success(), "lfgcl {shown:?} failed ({})\nstdout: {out}\nstderr: {err}", o.status);
    out
}
