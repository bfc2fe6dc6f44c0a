//! The whole method in one call: baseline (trained or given) -> LFGCL search -> pruning ->
//! label-free fine-tuning -> evaluation, next to the baselines a user compares against
//! (uniform pruning and random search at the same budget and the same number of candidate
//! evaluations). Every step writes its files into its own folder, so any step can be rerun or
//! replaced on its own with the matching subcommand.

use crate::backend::Device;
use crate::data::{Dataset, Normalization};
use crate::error::Result;
use crate::models::Model;
use crate::prune::baselines::{self, Method};
use crate::prune::{Policy, Pruner};
use crate::report::{self, BarChart};
use crate::search::proxy::{self, ProxyConfig, ProxyResult};
use crate::search::{self, CandidateRecord, RunOptions, SearchConfig, SearchFiles, Strategy};
use crate::tensor::Tensor;
use crate::train::{self, checkpoint, EpochLog, Objective, TrainConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How pruned nets are fine-tuned.
#[derive(Clone, Debug, Serialize)]
pub struct FinetuneConfig {
    pub train: TrainConfig,
    /// Label-free distillation from the baseline (`None`: cross-entropy with labels).
    pub distill_temperature: Option<f32>,
    /// Weight of feature distillation (penultimate features) beside the KL term; 0: none;
    /// `None`: the default for each pruned net (`train::feature_weight_for`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature_weight: Option<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineConfig {
    pub search: SearchConfig,
    pub finetune: FinetuneConfig,
    /// The pruned nets to make, in this order: the LFGCL search, random search with the same
    /// number of candidate evaluations, and the baselines at the same exact budget
    /// (`prune::baselines`). The search's scope (`--streams`) applies to every method.
    pub methods: Vec<Method>,
    /// Rank every stream group on its own, as before issue 21, instead of keeping the channels
    /// an option-A shortcut copies jointly with their source (comparisons only).
    #[serde(default)]
    pub independent_streams: bool,
    /// Test images each LFGCL candidate is also classified on, for the reward/accuracy report
    /// (labels never reach the search): `None` the whole test split, `Some(0)` none.
    #[serde(default)]
    pub report_accuracy: Option<usize>,
    /// The short fine-tuning proxy that re-ranks each search's top candidates (`top == 0`: off,
    /// the search's best reward is the pick).
    #[serde(default, skip_serializing_if = "ProxyConfig::is_off")]
    pub proxy: ProxyConfig,
    /// Continue the fine-tuning stages of an interrupted run from their saved state (the
    /// searches run again; on the CPU they are deterministic, so they find the same nets).
    #[serde(skip)]
    pub resume: bool,
}

impl PipelineConfig {
    /// The settings of `lfgcl demo`: small CNN on the synthetic set, a short search at a FLOPs
    /// budget with the random-search and uniform baselines, label-free fine-tuning.
    pub fn demo(flops: f64, episodes: usize, ft_epochs: usize, seed: u64, progress: bool) -> PipelineConfig {
        use crate::prune::{Budget, Constraints, Criterion, GroupScope};
        use crate::search::ddpg::DdpgConfig;
        use crate::search::reward::RewardConfig;
        // A fifth of the episodes warm up; the agent then trains 4 times per candidate and keeps
        // a noise floor, as `lfgcl search` does by default. With 40 episodes the demo's best reward
        // beats random search's for seeds 0, 1 and 2 (docs/benchmarks.md); with AMC's 1 update per candidate
        // and no floor it did not.
        let warmup = (episodes / 5).max(2);
        PipelineConfig {
            search: SearchConfig {
                budget: Budget { flops: Some(flops), params: None },
                constraints: Constraints { lower: 0.2, round: 1 },
                scope: GroupScope::Inner,
                criterion: Criterion::L1,
                strategy: Strategy::Ddpg,
                episodes,
                candidates_per_step: 8,
                updates_per_episode: 32,
                overlap_agent: false,
                seed,
                ddpg: DdpgConfig {
                    warmup_episodes: warmup,
                    noise_decay: 0.9,
                    noise_min: 0.05,
                    ..DdpgConfig::default()
                },
                reward: RewardConfig::default(),
            },
            finetune: FinetuneConfig {
                train: TrainConfig {
                    epochs: ft_epochs,
                    batch_size: 64,
                    lr: 0.01,
                    seed,
                    progress,
                    ..TrainConfig::default()
                },
                distill_temperature: Some(4.0),
                feature_weight: None,
            },
            methods: vec![Method::Lfgcl, Method::Random, Method::Uniform],
            independent_streams: false,
            report_accuracy: None,
            proxy: ProxyConfig::default(),
            resume: false,
        }
    }
}

/// One pruned net's results.
#[derive(Clone, Debug, Serialize)]
pub struct PrunedResult {
    pub method: String,
    /// The method's command-line name (`lfgcl`, `random`, `uniform`, `uniform-fpgm`, `global`).
    pub key: String,
    /// Whether the residual streams were pruned too (`--streams`).
    pub streams: bool,
    pub reward: f64,
    pub flops_fraction: f64,
    pub params_fraction: f64,
    pub macs: u64,
    pub params: u64,
    pub top1_before_finetune: f64,
    /// `None` when the pipeline ran without fine-tuning (`--ft-epochs 0`).
    pub top1_after_finetune: Option<f64>,
    /// Kept channels per group.
    pub kept: Vec<usize>,
    /// Candidate evaluations of its search (0 for the baselines).
    pub evaluations: usize,
    /// Wall time of its search (or of choosing the baseline's channels), seconds. A resumed
    /// search counts the time of the runs before it (kept in its saved state).
    pub search_seconds: f64,
    /// Wall time of its fine-tuning epochs, seconds, summed over every run that did them (a
    /// resumed fine-tuning counts the epochs it continues from).
    pub finetune_seconds: f64,
    /// The fine-tuning proxy's scores of the search's top candidates, when it ran (its seconds
    /// are part of `search_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyResult>,
    #[serde(serialize_with = "crate::fsio::serialize_path")]
    pub checkpoint: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineReport {
    pub baseline_top1: f64,
    pub baseline_macs: u64,
    pub baseline_params: u64,
    pub pruned: Vec<PrunedResult>,
    /// Candidates per second of the LFGCL search (0 without it).
    pub search_candidates_per_second: f64,
    pub reward_accuracy_spearman: Option<f64>,
    /// Wall time of this invocation, seconds (a resumed run's own time only; the stages' times
    /// above count every run).
    pub seconds: f64,
}

impl PipelineReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<26}{:>11}{:>10}{:>10}{:>16}{:>15}\n",
            "net", "reward", "FLOPs", "params", "top-1 (pruned)", "top-1 (tuned)"
        );
        s += &format!(
            "{:<26}{:>11}{:>10}{:>10}{:>16}{:>15}\n",
            "baseline",
            "0",
            "100.0%",
            "100.0%",
            format!("{:.2}%", 100.0 * self.baseline_top1),
            "-"
        );
        for p in &self.pruned {
            s += &format!(
                "{:<26}{:>11.5}{:>9.1}%{:>9.1}%{:>15.2}%{:>15}\n",
                p.method,
                p.reward,
                100.0 * p.flops_fraction,
                100.0 * p.params_fraction,
                100.0 * p.top1_before_finetune,
                p.top1_after_finetune.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a))
            );
        }
        s
    }

    /// The fine-tuning proxy's comparison for each method it ran for (empty without it).
    pub fn proxy_lines(&self) -> String {
        let mut s = String::new();
        for p in &self.pruned {
            let Some(proxy) = &p.proxy else { continue };
            s += &format!(
                "fine-tuning proxy of {} ({} steps each; the lowest KL is kept):\n",
                p.method, proxy.config.steps
            );
            for (i, c) in proxy.scores.iter().enumerate() {
                s += &format!(
                    "  {} candidate {}: reward {:.5}, KL after {:.5}{}\n",
                    if c.chosen { "*" } else { " " },
                    i + 1,
                    c.reward,
                    c.kl_after,
                    c.top1_after.map_or(String::new(), |a| format!(", report top-1 {:.2}%", 100.0 * a))
                );
            }
        }
        s
    }
}

/// Everything the pipeline reads.
pub struct PipelineInputs<'a> {
    pub baseline: &'a mut Model,
    /// Unlabeled training images: the search's batch is drawn from them, fine-tuning uses them all.
    pub train: &'a Dataset,
    /// Labelled test images, for evaluation only.
    pub test: &'a Dataset,
    /// The fixed unlabeled batch the reward is computed on (normalised).
    pub search_images: &'a Tensor,
}

#[allow(clippy::too_many_arguments)]
fn finetune(
    student: &mut Model,
    teacher: &mut Model,
    dev: &Device,
    inputs: &PipelineInputs<'_>,
    cfg: &FinetuneConfig,
    out: &Path,
    resume: bool,
    quiet: bool,
) -> Result<Vec<EpochLog>> {
    let ckpt = out.join("model.safetensors");
    let mut objective = match cfg.distill_temperature {
        Some(t) => Objective::distill(teacher, t, cfg.feature_weight, student),
        None => Objective::Labels,
    };
    // Label-free fine-tuning really reads no label: the training set goes in without them.
    let train_set;
    let train_ds = if cfg.distill_temperature.is_some() {
        train_set = inputs.train.clone().without_labels();
        &train_set
    } else {
        inputs.train
    };
    let mut settings = serde_json::json!({ "command": "pipeline fine-tuning", "widths": student.arch.widths });
    if objective.feature_weight() > 0.0 {
        settings["feature_weight"] = objective.feature_weight().into();
    }
    let run = train::RunDir { dir: out, resume, settings: &settings };
    train::fit_in_dir(student, dev, train_ds, Some(inputs.test), &cfg.train, &mut objective, &run, &mut |log, _, m| {
        checkpoint::save(m, &ckpt, &serde_json::json!({ "finetuned": log.epoch, "test_top1": log.test_top1 }))?;
        if !quiet {
            eprintln!(
                "  fine-tune epoch {}: loss {:.4}, test top-1 {}",
                log.epoch,
                log.train_loss,
                log.test_top1.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a))
            );
        }
        Ok(())
    })
}

/// Runs search, baselines, fine-tuning and evaluation; writes everything under `out`.
pub fn run(
    mut inputs: PipelineInputs<'_>,
    dev: &Device,
    cfg: &PipelineConfig,
    out: &Path,
    progress: bool,
) -> Result<PipelineReport> {
    let start = Instant::now();
    let quiet = !progress;
    check_proxy(cfg)?;
    let norm: Normalization = train::normalization_for(inputs.baseline, inputs.test)?;
    let test_images = search::batch_tensor(inputs.test, &norm)?;
    let test_labels = inputs.test.labels_or_err()?.to_vec();
    let baseline_top1 = search::top1(inputs.baseline, dev, &test_images, &test_labels)?;
    let base_cost = inputs.baseline.cost();
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    say(format!("baseline top-1 {:.2}%", 100.0 * baseline_top1));

    // Label-free search (the accuracy report uses the test labels, never the search).
    // With --resume a search continues from its saved state (a finished one only rewrites its outputs).
    let run_opts = RunOptions { resume: cfg.resume, progress, ..RunOptions::default() };
    let streams = cfg.search.scope == crate::prune::GroupScope::All;
    let suffix = if streams { " --streams" } else { "" };
    let pruner_for = |base: &Model, criterion| pruner(base, cfg, criterion);
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut lfgcl_rate = 0.0;
    let mut spearman = None;
    for &method in &cfg.methods {
        let t = Instant::now();
        let c = match searched(method, cfg, &inputs, &norm, &test_labels)? {
            Some(s) => {
                say(if method == Method::Lfgcl {
                    "LFGCL search ...".into()
                } else {
                    "random search with the same number of evaluations ...".into()
                });
                // Under mpirun the other ranks score shares of the candidates until this drops.
                let _stop_scoring_ranks = crate::dist::shard::StopWorkersOnDrop::new();
                let files = SearchFiles { dir: out.join(s.dir) };
                // The proxy classifies its candidates on the same report images, when there are some.
                let proxy_report = match (&s.report, cfg.proxy.is_off()) {
                    (Some(r), false) => Some(r.duplicate()?),
                    _ => None,
                };
                let found =
                    search::run(inputs.baseline, dev, inputs.search_images, &s.config, &files, s.report, &run_opts)?;
                if method == Method::Lfgcl {
                    lfgcl_rate = found.candidates_per_second;
                    spearman = found.reward_accuracy_spearman;
                }
                let proxy_started = Instant::now();
                let (policy, reward, proxy) = if cfg.proxy.is_off() {
                    (found.best_policy, found.best.reward, None)
                } else {
                    say(format!(
                        "fine-tuning proxy: the {} best candidates at least {} apart, {} steps each ...",
                        cfg.proxy.top, cfg.proxy.spread, cfg.proxy.steps
                    ));
                    let source = format!("{} + fine-tuning proxy", method.label());
                    let (policy, reward, result) =
                        proxy_pick(&mut inputs, dev, cfg, &files, proxy_report.as_ref(), &source)?;
                    (policy, reward, Some(result))
                };
                Chosen {
                    method,
                    policy,
                    reward: Some(reward),
                    evaluations: found.evaluated,
                    // The search's own clock (it survives a resume), plus the proxy's time.
                    seconds: found.seconds + if proxy.is_some() { proxy_started.elapsed().as_secs_f64() } else { 0.0 },
                    proxy,
                }
            }
            None => {
                let criterion = match method {
                    Method::UniformFpgm => crate::prune::Criterion::Fpgm,
                    _ => crate::prune::Criterion::L1,
                };
                let pruner = pruner_for(inputs.baseline, criterion)?;
                let p = match method {
                    Method::Global => {
                        baselines::global_threshold(&pruner, &cfg.search.budget, &cfg.search.constraints)?
                    }
                    _ => baselines::uniform_exact(&pruner, &cfg.search.budget, &cfg.search.constraints)?,
                };
                let policy = pruner.policy(inputs.baseline, &p, &cfg.search.constraints, method.label());
                Chosen { method, policy, reward: None, evaluations: 0, seconds: t.elapsed().as_secs_f64(), proxy: None }
            }
        };
        chosen.push(c);
    }
    // Under mpirun the other ranks fine-tune the same nets, data-parallel.
    let policies: Vec<Policy> = chosen.iter().map(|c| c.policy.clone()).collect();
    crate::dist::broadcast_json(Some(&policies))?;
    let search_images = dev.to_device(inputs.search_images)?;
    let mut pruned_results = Vec::new();
    for c in chosen {
        let Chosen { method, policy, reward, evaluations, seconds, proxy } = c;
        let label = format!("{}{suffix}", method.label());
        // Measured as the search scored it (BN statistics of the unlabeled images, when the
        // reward re-estimates them).
        let pruner = pruner_for(inputs.baseline, policy.criterion)?;
        let keep = pruner.keep_indices(&policy.kept)?;
        let reward = match reward {
            Some(r) => r,
            None => {
                let scorer = search::reward::Scorer::new(
                    inputs.baseline,
                    dev,
                    &search_images,
                    &pruner.groups,
                    cfg.search.reward.clone(),
                )?;
                let mut cand = scorer.candidate(inputs.baseline, &pruner.groups, &keep)?;
                scorer.score(&mut cand, &keep)?
            }
        };
        let mut net = scored_net(inputs.baseline, dev, &pruner, &keep, &search_images, cfg)?;
        let before = search::top1(&mut net, dev, &test_images, &test_labels)?;
        let dir = out.join(format!("finetune-{}", method.dir_name()));
        let (after, finetune_seconds) = if cfg.finetune.train.epochs > 0 {
            say(format!(
                "fine-tuning the {label} net ({:.1}% FLOPs, top-1 before {:.2}%) ...",
                100.0 * policy.flops_fraction,
                100.0 * before
            ));
            let mut teacher = inputs.baseline.duplicate()?;
            // A stage killed before its first epoch has no state yet: it starts afresh.
            let resume = cfg.resume && dir.join(train::TRAIN_STATE_FILE).is_file();
            let epochs = finetune(&mut net, &mut teacher, dev, &inputs, &cfg.finetune, &dir, resume, quiet)?;
            // The epochs' own times: a resumed stage's log holds those of the runs before it.
            let seconds = epochs.iter().map(|e| e.seconds).sum();
            (Some(search::top1(&mut net, dev, &test_images, &test_labels)?), seconds)
        } else {
            say(format!(
                "{label}: {:.1}% FLOPs, top-1 {:.2}% (no fine-tuning)",
                100.0 * policy.flops_fraction,
                100.0 * before
            ));
            (None, 0.0)
        };
        let cost = net.cost();
        pruned_results.push(PrunedResult {
            method: label,
            key: method.key().to_string(),
            streams,
            reward,
            flops_fraction: cost.macs as f64 / base_cost.macs as f64,
            params_fraction: cost.params as f64 / base_cost.params as f64,
            macs: cost.macs,
            params: cost.params,
            top1_before_finetune: before,
            top1_after_finetune: after,
            kept: policy.kept.clone(),
            evaluations,
            search_seconds: seconds,
            finetune_seconds,
            proxy,
            checkpoint: dir.join("model.safetensors"),
        });
    }
    let report = PipelineReport {
        baseline_top1,
        baseline_macs: base_cost.macs,
        baseline_params: base_cost.params,
        pruned: pruned_results,
        search_candidates_per_second: lfgcl_rate,
        reward_accuracy_spearman: spearman,
        seconds: start.elapsed().as_secs_f64(),
    };
    let methods: Vec<String> = report.pruned.iter().map(|p| p.method.clone()).collect();
    BarChart::new("Top-1 of the pruned nets", "method", "top-1 (%)")
        .with_categories(methods)
        .with_series("before fine-tuning", report.pruned.iter().map(|p| 100.0 * p.top1_before_finetune).collect())
        .with_series(
            "after fine-tuning",
            report.pruned.iter().map(|p| 100.0 * p.top1_after_finetune.unwrap_or(f64::NAN)).collect(),
        )
        .save(out.join("accuracy.svg"))?;
    report::write_json(out.join("report.json"), &serde_json::json!({ "config": cfg, "report": &report }))?;
    Ok(report)
}

/// The fine-tuning proxy's settings, and that it has something to do here: refused before any
/// search runs.
fn check_proxy(cfg: &PipelineConfig) -> Result<()> {
    use crate::error::Error;
    cfg.proxy.validate()?;
    if cfg.proxy.is_off() {
        return Ok(());
    }
    proxy_temperature(cfg)?;
    if !cfg.methods.iter().any(|m| m.searches()) {
        return Err(Error::Invalid(
            "--proxy-top re-ranks a search's candidates: add lfgcl or random to --methods".into(),
        ));
    }
    Ok(())
}

/// The distillation temperature the fine-tuning proxy ranks by: none with `--labels`, refused.
fn proxy_temperature(cfg: &PipelineConfig) -> Result<f32> {
    cfg.finetune.distill_temperature.ok_or_else(|| {
        crate::error::Error::Invalid(
            "--proxy-top ranks candidates by label-free distillation: it cannot go with --labels".into(),
        )
    })
}

/// The fine-tuning proxy's pick among the top candidates of the search logged in `files` (as a
/// policy from `source`, and its reward), and its scores (kept in the search's folder as
/// `proxy.json`; with `--resume`, a proxy.json for the same candidates and settings is reused
/// rather than recomputed).
fn proxy_pick(
    inputs: &mut PipelineInputs<'_>,
    dev: &Device,
    cfg: &PipelineConfig,
    files: &SearchFiles,
    report: Option<&search::AccuracyReport>,
    source: &str,
) -> Result<(Policy, f64, ProxyResult)> {
    let records: Vec<CandidateRecord> = report::read_jsonl(files.log())?;
    let top = proxy::top_spread(&records, cfg.proxy.top, cfg.proxy.spread);
    let temperature = proxy_temperature(cfg)?;
    let path = files.dir.join("proxy.json");
    let saved = if cfg.resume && crate::fsio::exists(&path)? {
        let r: ProxyResult = report::read_json(&path)?;
        let same = r.config == cfg.proxy
            && r.training == proxy::ProxyTraining::of(&cfg.finetune.train)
            && r.temperature == temperature
            && cfg.finetune.feature_weight.is_none_or(|w| w == r.feature_weight)
            && r.scores.iter().map(|s| &s.kept).eq(top.iter().map(|c| &c.policy.kept));
        same.then_some(r)
    } else {
        None
    };
    let pruner = pruner(inputs.baseline, cfg, cfg.search.criterion)?;
    let result = match saved {
        Some(r) => r,
        None => {
            let images = dev.to_device(inputs.search_images)?;
            let r = proxy::run(
                dev,
                proxy::ProxyInputs {
                    base: inputs.baseline,
                    pruner: &pruner,
                    images: &images,
                    reward: &cfg.search.reward,
                    train: inputs.train,
                    finetune: &cfg.finetune.train,
                    temperature,
                    feature_weight: cfg.finetune.feature_weight,
                    report,
                },
                &top,
                &cfg.proxy,
            )?;
            report::write_json(&path, &r)?;
            r
        }
    };
    let chosen = result.chosen().expect("the proxy marks one candidate");
    let rec = top.iter().find(|c| c.policy.kept == chosen.kept).expect("the proxy chose among these");
    let policy = pruner.policy(inputs.baseline, &rec.policy, &cfg.search.constraints, source);
    Ok((policy, rec.reward, result))
}

fn pruner(base: &Model, cfg: &PipelineConfig, criterion: crate::prune::Criterion) -> Result<Pruner> {
    let p = Pruner::new(base, cfg.search.scope, criterion)?;
    Ok(if cfg.independent_streams { p.with_independent_streams() } else { p })
}

/// The pruned net keeping `keep`, as the search scores it (batch-norm statistics of the unlabeled
/// images, when the reward re-estimates them).
fn scored_net(
    base: &Model,
    dev: &Device,
    pruner: &Pruner,
    keep: &[Vec<u32>],
    images: &Tensor,
    cfg: &PipelineConfig,
) -> Result<Model> {
    search::reward::scored_candidate(base, dev, &pruner.groups, keep, images, &cfg.search.reward)
}

/// A searching method's settings.
struct Searched {
    config: SearchConfig,
    /// Its folder under the pipeline's output.
    dir: &'static str,
    report: Option<search::AccuracyReport>,
}

/// The search `method` runs (`None`: a baseline, which searches nothing). Every rank computes the
/// same, so that the scoring ranks score exactly as rank 0's search does.
fn searched(
    method: Method,
    cfg: &PipelineConfig,
    inputs: &PipelineInputs<'_>,
    norm: &Normalization,
    test_labels: &[u32],
) -> Result<Option<Searched>> {
    if !method.searches() {
        return Ok(None);
    }
    if cfg.independent_streams {
        return Err(crate::error::Error::Invalid(
            "independent stream ranking is for the baselines only (uniform, uniform-fpgm, global)".into(),
        ));
    }
    let lfgcl = method == Method::Lfgcl;
    let report = if lfgcl {
        let n = cfg.report_accuracy.unwrap_or(test_labels.len()).min(test_labels.len());
        (n > 0)
            .then(|| -> Result<_> {
                Ok(search::AccuracyReport {
                    images: search::batch_tensor(&inputs.test.take(n), norm)?,
                    labels: test_labels[..n].to_vec(),
                })
            })
            .transpose()?
    } else {
        None
    };
    Ok(Some(Searched {
        config: SearchConfig { strategy: if lfgcl { Strategy::Ddpg } else { Strategy::Random }, ..cfg.search.clone() },
        dir: if lfgcl { "search" } else { "random" },
        report,
    }))
}

/// A rank other than 0 of a pipeline under `mpirun`: scores its shares of each search's
/// candidates, then fine-tunes rank 0's pruned nets with it, data-parallel. Writes nothing.
pub fn serve(inputs: PipelineInputs<'_>, dev: &Device, cfg: &PipelineConfig) -> Result<()> {
    // Refused on every rank alike (the proxy runs on rank 0 alone).
    check_proxy(cfg)?;
    let norm: Normalization = train::normalization_for(inputs.baseline, inputs.test)?;
    let test_labels = inputs.test.labels_or_err()?.to_vec();
    for &method in &cfg.methods {
        if let Some(s) = searched(method, cfg, &inputs, &norm, &test_labels)? {
            search::serve(inputs.baseline, dev, inputs.search_images, s.config, s.report)?;
        }
    }
    let policies: Vec<Policy> = crate::dist::broadcast_json(None)?;
    if cfg.finetune.train.epochs == 0 {
        return Ok(());
    }
    let search_images = dev.to_device(inputs.search_images)?;
    for policy in policies {
        let pruner = pruner(inputs.baseline, cfg, policy.criterion)?;
        let keep = pruner.keep_indices(&policy.kept)?;
        // Rank 0 sends its weights when training starts; this net only has to have their shapes.
        let mut net = scored_net(inputs.baseline, dev, &pruner, &keep, &search_images, cfg)?;
        let mut teacher = inputs.baseline.duplicate()?;
        // The folder is rank 0's: this rank writes nothing there.
        finetune(&mut net, &mut teacher, dev, &inputs, &cfg.finetune, Path::new("."), false, true)?;
    }
    Ok(())
}

/// A method's pruning before fine-tuning.
struct Chosen {
    method: Method,
    policy: Policy,
    /// The reward its search scored it with (baselines are scored afterwards).
    reward: Option<f64>,
    evaluations: usize,
    seconds: f64,
    proxy: Option<ProxyResult>,
}
