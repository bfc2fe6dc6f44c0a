//! The `lfgcl` binary under test: the one cargo built for this test, or, when the tests run
//! from a bundle on another machine (../shared/gpu/bundle.sh) where that path does not exist,
//! the `lfgcl` on PATH.
#![allow(dead_code)]

pub fn lfgcl_exe() -> std::ffi::OsString {
    let built = env!("CARGO_BIN_EXE_lfgcl");
    if std::path::Path::new(built).exists() {
        built.into()
    } else {
        "lfgcl".into()
    }
}
