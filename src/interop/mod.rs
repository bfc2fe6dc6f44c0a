//! Interoperability with the tools pruned nets come from and go to:
//! - [`import`]: a PyTorch state dict (safetensors, CIFAR naming) becomes an lfgcl checkpoint;
//! - [`onnx`]: any lfgcl net, pruned or not, exported to ONNX (schema subset in [`proto`]).
//!
//! (`crate::bench::deploy` times the baseline and the pruned net in lfgcl and in onnxruntime.)
//!
//! onnxruntime is reached through Python (`scripts/ort_bench.py`, embedded in the binary), found
//! as `$LFGCL_PYTHON` or `python3`, with `$LFGCL_PYTHONPATH` put in front of `PYTHONPATH` (where
//! `.ci/run` installs onnxruntime, numpy and safetensors). `lfgcl bench cpu` also reaches PyTorch
//! this way (`scripts/torch_cpu_bench.py`), through `$LFGCL_TORCH_PYTHON` when that is set.

pub mod import;
pub mod onnx;
pub mod proto;

/// A `python3` command with lfgcl's Python path (`$LFGCL_PYTHONPATH`) in front of `PYTHONPATH`.
pub fn python_command() -> std::process::Command {
    let exe = std::env::var("LFGCL_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = std::process::Command::new(exe);
    if let Ok(extra) = std::env::var("LFGCL_PYTHONPATH") {
        let path = match std::env::var("PYTHONPATH") {
            Ok(p) if !p.is_empty() => format!("{extra}:{p}"),
            _ => extra,
        };
        cmd.env("PYTHONPATH", path);
    }
    cmd
}

/// The Python that runs the PyTorch timings: `$LFGCL_TORCH_PYTHON` as it is (a distribution's
/// `python3` with its own torch, say), else the one `python_command` gives.
pub fn torch_python_command() -> std::process::Command {
    match std::env::var("LFGCL_TORCH_PYTHON") {
        Ok(exe) if !exe.is_empty() => std::process::Command::new(exe),
        _ => python_command(),
    }
}

/// Writes `files` (name, text) into `dir`, runs `cmd` on the first of them with `args`, and
/// reads its stdout as JSON. `Err(reason)`, one line, when Python cannot be started, the script
/// fails (its last line of stderr, e.g. `ModuleNotFoundError: No module named 'onnxruntime'`) or
/// its output cannot be read: callers report the reason and carry on without that runtime.
pub(crate) fn run_script<T: serde::de::DeserializeOwned>(
    mut cmd: std::process::Command,
    dir: &std::path::Path,
    files: &[(&str, &str)],
    args: &[String],
) -> std::result::Result<T, String> {
    let (main, _) = files.first().ok_or_else(|| "no script to run".to_string())?;
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let out = cmd
        .arg(dir.join(main))
        .args(args)
        .output()
        .map_err(|e| format!("cannot start {} ({e}); set LFGCL_PYTHON", cmd.get_program().to_string_lossy()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().map(str::trim).find(|l| !l.is_empty());
        let hint = if last.is_some_and(|l| l.starts_with("ModuleNotFoundError")) {
            " (pip install it, or point LFGCL_PYTHON, LFGCL_TORCH_PYTHON for PyTorch, or LFGCL_PYTHONPATH at a Python that has it)"
        } else {
            ""
        };
        return Err(format!(
            "scripts/{main} failed: {}{hint}",
            last.map_or_else(|| out.status.to_string(), str::to_string)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable output of scripts/{main}: {e}"))
}
