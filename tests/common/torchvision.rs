//! Whether torchvision is there to serve as the independent reference.

/// torchvision (with torch, NumPy and PIL) importable in `$LFGCL_TORCH_PYTHON` (or python3);
/// otherwise prints the skip, or panics under LFGCL_REQUIRE_PY=1.
pub fn torchvision_or_skip(test: &str) -> bool {
    let out = lfgcl::interop::torch_python_command().args(["-c", "import torch, torchvision, numpy, PIL"]).output();
    let reason = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string(),
        Err(e) => format!("python: {e}"),
    };
    if std::env::var("LFGCL_REQUIRE_PY").is_ok_and(|v| v == "1") {
        panic!("{test}: LFGCL_REQUIRE_PY=1 but torchvision does not import: {reason}");
    }
    println!("skipped: torchvision not importable ({reason}); set LFGCL_TORCH_PYTHON=/usr/bin/python3 [{test}]");
    false
}
