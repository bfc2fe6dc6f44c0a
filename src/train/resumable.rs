//! Training runs that live in a folder and survive being killed: after every epoch the log line,
//! the caller's outputs (checkpoint, plot) and then a resume state are written, each atomically;
//! `resume` continues from the last state exactly as if the run had never stopped.

use super::checkpoint;
use super::{fit_from, EpochLog, Objective, ResumePoint, TrainConfig};
use crate::backend::Device;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::fsio::{remove_if_exists, write_atomic, DirLock};
use crate::models::Model;
use crate::report::JsonlWriter;
use serde_json::json;
use std::path::Path;

/// The file that lets an interrupted training or fine-tuning run continue exactly.
pub const TRAIN_STATE_FILE: &str = "train_state.safetensors";
/// The per-epoch log, one JSON object per line.
pub const LOG_FILE: &str = "train_log.jsonl";
/// Written by callers once a run completes; removed when a run starts.
pub const SUMMARY_FILE: &str = "summary.json";

/// Called after each epoch with its log, the logs of the epochs before it and the model.
pub type OnEpoch<'a> = dyn FnMut(&EpochLog, &[EpochLog], &Model) -> Result<()> + 'a;

/// Where a run lives and how it starts.
pub struct RunDir<'a> {
    pub dir: &'a Path,
    /// Continue the run saved in `dir` instead of starting afresh.
    pub resume: bool,
    /// The command's settings: a resumed run must have been started with the same ones.
    pub settings: &'a serde_json::Value,
}

/// Reads the saved state of the run in `run.dir` into `model`, checks its settings, and cuts the
/// log back to the state's epochs (a kill between the log and the state can leave one more).
fn restore(
    model: &mut Model,
    dev: &Device,
    run: &RunDir<'_>,
    settings_text: &str,
    log_lines: &mut Vec<String>,
) -> Result<ResumePoint> {
    let state_path = run.dir.join(TRAIN_STATE_FILE);
    // A symlink loop or an unreadable folder is its own error, not "not found".
    if !crate::fsio::exists(&state_path)? {
        return Err(Error::Invalid(format!(
            "--resume: {} not found, so there is no run to continue in {} (run without --resume)",
            state_path.display(),
            run.dir.display()
        )));
    }
    let state = checkpoint::load_train_state(&state_path, dev)?;
    // Compared as text: floats read back from JSON may differ in the last bit.
    let saved_text = state.record["settings_text"].as_str().unwrap_or_default();
    if saved_text != settings_text {
        let saved: serde_json::Value = serde_json::from_str(saved_text).unwrap_or_default();
        let now: serde_json::Value = serde_json::from_str(settings_text).unwrap_or_default();
        let diffs = crate::report::json_differences(&saved, &now);
        return Err(Error::Invalid(format!(
            "--resume: {} was started with other settings: {}",
            run.dir.display(),
            if diffs.is_empty() { "(unreadable)".to_string() } else { diffs.join("; ") }
        )));
    }
    if state.model.arch != model.arch {
        return Err(Error::Invalid(format!(
            "--resume: {} holds a {} with other widths than the one given",
            state_path.display(),
            state.model.arch.model
        )));
    }
    let bad = |e: serde_json::Error| Error::checkpoint(&state_path, format!("bad log in the training state: {e}"));
    // The exact text of each line is kept, for the same reason.
    *log_lines = serde_json::from_value(state.record["log_lines"].clone()).map_err(bad)?;
    let logs: Vec<EpochLog> =
        log_lines.iter().map(|l| serde_json::from_str(l)).collect::<std::result::Result<_, _>>().map_err(bad)?;
    let text: String = log_lines.iter().map(|l| format!("{l}\n")).collect();
    write_atomic(run.dir.join(LOG_FILE), text.as_bytes())?;
    *model = state.model;
    Ok(ResumePoint { logs, momentum: state.momentum })
}

/// [`super::fit`] in a folder: holds a lock on it, removes a stale summary, appends each epoch's
/// line to the log, calls `on_epoch(log, earlier_logs, model)` to write the caller's outputs, then
/// saves the resume state. With `run.resume`, continues the saved run (same settings required);
/// on the CPU the result is bit-identical to an uninterrupted run.
#[allow(clippy::too_many_arguments)]
pub fn fit_in_dir(
    model: &mut Model,
    dev: &Device,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    objective: &mut Objective<'_>,
    run: &RunDir<'_>,
    on_epoch: &mut OnEpoch<'_>,
) -> Result<Vec<EpochLog>> {
    // Under mpirun the other ranks train their shares and write nothing; rank 0 sends them its
    // state (resumed or not) when training starts.
    if !crate::dist::world().is_root() {
        return fit_from(model, dev, train, None, cfg, objective, None, &mut |_, _, _| Ok(()));
    }
    let _lock = DirLock::acquire(run.dir)?;
    let log_path = run.dir.join(LOG_FILE);
    let state_path = run.dir.join(TRAIN_STATE_FILE);
    remove_if_exists(&run.dir.join(SUMMARY_FILE))?;
    let settings_text = json!({ "settings": run.settings, "config": cfg }).to_string();
    let mut log_lines: Vec<String> = Vec::new();
    let resume = if run.resume {
        Some(restore(model, dev, run, &settings_text, &mut log_lines)?)
    } else {
        remove_if_exists(&state_path)?;
        None
    };
    let mut jsonl = if run.resume { JsonlWriter::append(&log_path)? } else { JsonlWriter::create(&log_path)? };
    let mut earlier: Vec<EpochLog> = resume.as_ref().map(|r| r.logs.clone()).unwrap_or_default();
    let result = fit_from(model, dev, train, test, cfg, objective, resume, &mut |log, m, opt| {
        jsonl.write(log)?;
        on_epoch(log, &earlier, m)?;
        earlier.push(log.clone());
        log_lines.push(serde_json::to_string(log).expect("log serialises"));
        checkpoint::save_train_state(
            &state_path,
            m,
            opt.momentum_buffers(),
            &json!({ "settings_text": settings_text, "log_lines": log_lines }),
        )
    });
    // Stopped by a signal: every finished epoch is saved already; say where, and how to go on.
    result.map_err(|e| match e {
        Error::Interrupted(m) if earlier.is_empty() => {
            Error::Interrupted(format!("{m}; no epoch had finished, so there is nothing to resume"))
        }
        Error::Interrupted(m) => Error::Interrupted(format!(
            "{m}; the {} finished epoch(s) are saved in {}: continue with the same command and --resume",
            earlier.len(),
            state_path.display()
        )),
        e => e,
    })
}
