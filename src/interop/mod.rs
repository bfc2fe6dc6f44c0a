//! Interoperability with the tools pruned nets come from and go to:
//! - [`import`]: a PyTorch state dict (safetensors, CIFAR naming) becomes an lfgcl checkpoint;
//! - [`onnx`]: any lfgcl net, pruned or not, exported to ONNX (schema subset in [`proto`]);
//! - [`deploy`]: the baseline and the pruned net timed in lfgcl and in onnxruntime, same cores.
//!
//! onnxruntime is reached through Python (`scripts/ort_bench.py`, embedded in the binary), found
//! as `$LFGCL_PYTHON` or `python3`, with `$LFGCL_PYTHONPATH` put in front of `PYTHONPATH` (where
//! `.ci/run` installs onnxruntime, numpy and safetensors).

pub mod deploy;
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
