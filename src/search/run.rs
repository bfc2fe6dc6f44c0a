//! The loop around [`Search`]: output folder, log, checkpoints, signals, progress, final files.

use super::saved;
use super::{AccuracyReport, CandidateRecord, Search, SearchConfig, SearchOutcome, Strategy};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::fsio::remove_if_exists;
use crate::models::Model;
use crate::prune::Pruner;
use crate::report::{self, BarChart, JsonlWriter, LinePlot, ScatterPlot, Series, SeriesStyle};
use crate::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Files a search writes into its output directory.
pub struct SearchFiles {
    pub dir: PathBuf,
}

impl SearchFiles {
    pub fn log(&self) -> PathBuf {
        self.dir.join("candidates.jsonl")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("search_state.safetensors")
    }
    pub fn policy(&self) -> PathBuf {
        self.dir.join("best_policy.json")
    }
    pub fn pruned(&self) -> PathBuf {
        self.dir.join("pruned.safetensors")
    }
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
}

/// How the loop runs, apart from what is searched.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Continue the search saved in the output folder (a new search when there is none).
    pub resume: bool,
    pub progress: bool,
    /// Save the state at most this often (and always at the end and on SIGINT/SIGTERM).
    pub checkpoint_every: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { resume: false, progress: false, checkpoint_every: Duration::from_secs(5) }
    }
}

/// Writes checkpoints on a thread of its own, so the loop only pays for copying the state; one
/// write at a time, each atomic, and an error surfaces at the next save or at the end.
#[derive(Default)]
struct StateWriter {
    pending: Option<std::thread::JoinHandle<Result<()>>>,
}

impl StateWriter {
    fn save(&mut self, path: &Path, state: saved::SavedSearch) -> Result<()> {
        self.wait()?;
        let path = path.to_path_buf();
        self.pending = Some(std::thread::spawn(move || saved::write(&path, &state)));
        Ok(())
    }

    fn wait(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(h) => h.join().unwrap_or_else(|_| Err(Error::Invalid("the checkpoint writer panicked".into()))),
            None => Ok(()),
        }
    }
}

/// The log lines a saved state covers: its first `log_bytes` bytes, which must end a line. A log
/// shorter than that was not written by the run that saved the state.
fn covered_log(path: &Path, log_bytes: u64) -> Result<Vec<CandidateRecord>> {
    let bytes = crate::fsio::read_regular(path, crate::limits::MAX_DATA_FILE_BYTES)?;
    let have = bytes.len() as u64;
    if log_bytes > have {
        return Err(Error::Invalid(format!(
            "field log_bytes: {log_bytes}, but {} holds {have} bytes; the log was changed or replaced",
            path.display()
        )));
    }
    if log_bytes == 0 || bytes[log_bytes as usize - 1] != b'\n' {
        return Err(Error::Invalid(format!(
            "field log_bytes: {log_bytes} does not end a line of {} (the state does not match the log)",
            path.display()
        )));
    }
    bytes[..log_bytes as usize]
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| serde_json::from_slice(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Cuts the log back to `len` bytes (what the saved state covers, checked by [`covered_log`]).
fn truncate_log(path: &Path, len: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
    file.set_len(len).map_err(|e| Error::io(path, e))
}

/// Runs (or with `opts.resume` continues) a search and writes its files into `files.dir`.
/// `images`: the unlabeled, normalised batch the reward uses.
pub fn run(
    base: &mut Model,
    dev: &Device,
    images: &Tensor,
    cfg: &SearchConfig,
    files: &SearchFiles,
    report: Option<AccuracyReport>,
    opts: &RunOptions,
) -> Result<SearchOutcome> {
    let started = Instant::now();
    // From here on, Ctrl-C and SIGTERM stop the search at the next step, with its state saved.
    crate::interrupt::install()?;
    cfg.validate()?;
    std::fs::create_dir_all(&files.dir).map_err(|e| Error::io(&files.dir, e))?;
    let _lock = crate::fsio::DirLock::acquire(&files.dir)?;
    // A summary describes a finished search; one left from an earlier run must not survive this one.
    remove_if_exists(&files.summary())?;
    let mut search = Search::new(base, dev, images, cfg.clone(), report)?;
    let state_path = files.state();
    let mut log = if opts.resume && crate::fsio::exists(&state_path)? {
        let saved = saved::read(&state_path)?;
        let in_state = |e: Error| Error::Invalid(format!("{}: {e}", state_path.display()));
        search.check_resumable(&saved.meta).map_err(in_state)?;
        // Every field of the state is checked against the log before the log is cut back to it.
        let records = covered_log(&files.log(), saved.meta.log_bytes).map_err(in_state)?;
        search.check_saved_state(&saved.meta, &records).map_err(in_state)?;
        truncate_log(&files.log(), saved.meta.log_bytes)?;
        search.resume(saved, &records)?;
        JsonlWriter::append(files.log())?
    } else {
        if opts.resume {
            // A log with episodes but no state is work this run cannot continue: refuse rather
            // than overwrite it. A log holding only the uniform reference (a run killed before
            // its first state was written) loses nothing by starting over.
            let has_episodes = crate::fsio::exists(&files.log())?
                && report::read_jsonl::<CandidateRecord>(files.log())
                    .map_or(true, |r| r.iter().any(|r| r.episode >= 0));
            if has_episodes {
                return Err(Error::Invalid(format!(
                    "{} holds a search log but no saved state ({}) to resume from; use a new --out, or run without --resume to start over",
                    files.dir.display(),
                    state_path.display()
                )));
            }
            eprintln!("note: nothing to resume in {}; starting a new search", files.dir.display());
        }
        remove_if_exists(&state_path)?;
        let uniform = search.start()?;
        let mut log = JsonlWriter::create(files.log())?;
        let bytes = log.write(&uniform)? as u64;
        // A state from the very start: a log is never left without one to resume from.
        saved::write(&state_path, &search.snapshot(bytes))?;
        log
    };
    let pb = if opts.progress { ProgressBar::new(cfg.episodes as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} episodes {msg} ({elapsed}<{eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix("search");
    pb.set_position(search.episodes_done() as u64);
    let mut log_bytes = std::fs::metadata(files.log()).map_err(|e| Error::io(files.log(), e))?.len();
    let mut last_save: Option<Instant> = None;
    let mut writer = StateWriter::default();
    let mut lap = started;
    while !search.done() {
        let records = match search.step() {
            Ok(r) => r,
            Err(e) => {
                // The last state saved stays whole: let its write finish before stopping.
                let _ = writer.wait();
                return Err(e);
            }
        };
        let book = Instant::now();
        for r in &records {
            log_bytes += log.write(r)? as u64;
        }
        let stop = crate::interrupt::requested();
        let save_due = last_save.is_none_or(|t| t.elapsed() >= opts.checkpoint_every);
        // The last state holds the whole time (its own write excepted), so a finished search
        // that is resumed reports the time of the runs that did the work.
        let last = search.done() || stop;
        if last {
            let now = Instant::now();
            search.add_time(now - lap, now - book);
        }
        if save_due || last {
            writer.save(&state_path, search.snapshot(log_bytes))?;
            last_save = Some(Instant::now());
            if last {
                writer.wait()?;
            }
        }
        if !last {
            let now = Instant::now();
            search.add_time(now - lap, now - book);
            lap = now;
        }
        if stop {
            pb.abandon();
            return Err(Error::Interrupted(format!(
                "the search was saved after {} of {} episodes in {}; continue it with the same command and --resume",
                search.episodes_done(),
                cfg.episodes,
                state_path.display()
            )));
        }
        let b = search.best().expect("a stepped search has a best candidate");
        let t = search.time();
        pb.set_message(format!(
            "best {:.5} (uniform {:.5}) FLOPs {:.1}% | {:.2} cand/s, {}",
            b.reward,
            search.uniform().map_or(f64::NAN, |u| u.reward),
            100.0 * b.policy.flops_fraction,
            t.candidates_per_second(search.evaluated()),
            t.shares()
        ));
        pb.inc(1);
    }
    pb.finish_and_clear();
    finish(&search, dev, files)
}

/// Writes the best policy, its pruned net, the plots and the summary.
fn finish(search: &Search, dev: &Device, files: &SearchFiles) -> Result<SearchOutcome> {
    let cfg = search.config();
    let source = match cfg.strategy {
        Strategy::Ddpg => "lfgcl search",
        Strategy::Random => "random search",
    };
    let (policy, pruned) = search.best_net(source)?;
    let best = search.best().expect("checked by best_net").clone();
    let uniform = search.uniform().expect("a run search has its uniform reference").clone();
    let mut policy_json = serde_json::to_value(&policy).expect("policy serialises");
    policy_json["reward"] = serde_json::json!(best.reward);
    policy_json["uniform_reward"] = serde_json::json!(uniform.reward);
    report::write_json(files.policy(), &policy_json)?;
    // Saved as it was scored: with the BN statistics the reward used.
    crate::train::checkpoint::save(&pruned, files.pruned(), &policy_json)?;
    let records: Vec<CandidateRecord> = report::read_jsonl(files.log())?;
    let spearman = {
        let with: Vec<&CandidateRecord> = records.iter().filter(|r| r.top1.is_some()).collect();
        let x: Vec<f64> = with.iter().map(|r| r.reward).collect();
        let y: Vec<f64> = with.iter().map(|r| r.top1.expect("filtered")).collect();
        report::spearman(&x, &y)
    };
    plots(files, search.pruner(), &records, &uniform, &best, spearman)?;
    let outcome = search.outcome(spearman, policy)?;
    report::write_json(
        files.summary(),
        &serde_json::json!({ "config": cfg, "outcome": &outcome, "device": dev.describe() }),
    )?;
    Ok(outcome)
}

fn plots(
    files: &SearchFiles,
    pruner: &Pruner,
    records: &[CandidateRecord],
    uniform: &CandidateRecord,
    best: &CandidateRecord,
    spearman: Option<f64>,
) -> Result<()> {
    let episodes = records.iter().map(|r| r.episode).max().unwrap_or(0).max(0) as usize + 1;
    let (mut mean, mut best_so_far) = (Vec::new(), Vec::new());
    let mut running = f64::NEG_INFINITY;
    for e in 0..episodes {
        let rs: Vec<f64> = records.iter().filter(|r| r.episode == e as i64).map(|r| r.reward).collect();
        if rs.is_empty() {
            continue;
        }
        running = running.max(rs.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
        mean.push((e as f64, rs.iter().sum::<f64>() / rs.len() as f64));
        best_so_far.push((e as f64, running));
    }
    LinePlot::new("LFGCL search: label-free reward per episode", "episode", "reward (-normalised feature MSE)")
        .with_series(Series::new("episode mean", mean, SeriesStyle::Points))
        .with_series(Series::line("best so far", best_so_far))
        .with_hline(uniform.reward, "uniform pruning")
        .save(files.dir.join("reward.svg"))?;
    BarChart::new("Keep ratio per group: best policy vs uniform", "group", "keep ratio")
        .with_categories(pruner.group_names())
        .with_series("LFGCL best", best.policy.ratios.clone())
        .with_series("uniform", uniform.policy.ratios.clone())
        .save(files.dir.join("ratios.svg"))?;
    if let Some(rho) = spearman {
        let pts: Vec<(f64, f64)> = records.iter().filter_map(|r| r.top1.map(|a| (r.reward, 100.0 * a))).collect();
        ScatterPlot {
            title: "Label-free reward vs top-1 before fine-tuning".into(),
            x_label: "reward".into(),
            y_label: "top-1 (%)".into(),
            points: pts,
            annotation: Some(format!(
                "Spearman rho = {rho:.3} over {} candidates",
                records.iter().filter(|r| r.top1.is_some()).count()
            )),
        }
        .save(files.dir.join("reward_vs_accuracy.svg"))?;
    }
    Ok(())
}
