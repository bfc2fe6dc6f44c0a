//! Subcommand handlers: open data and devices, call the library, print and save results.

use super::{
    BenchArgs, BenchWhat, BnStats, CandidatesPerStep, Cli, Command, DataArgs, DemoArgs, EvalArgs, FinetuneArgs,
    FinetuneOpts, GlobalArgs, PipelineArgs, PruneApplyArgs, PruneArgs, SearchArgs, SearchOpts, TrainArgs,
};
use crate::backend::{self, Device};
use crate::data::{self, Dataset, OpenOptions, Split};
use crate::error::{Error, Result};
use crate::fsio::DirLock;
use crate::models::{Arch, Model};
use crate::pipeline::{self, FinetuneConfig, PipelineConfig};
use crate::prune::baselines::Method;
use crate::prune::{self, Budget, Constraints, GroupScope, Pruner};
use crate::report::{self, LinePlot, Series};
use crate::search;
use crate::search::ddpg::DdpgConfig;
use crate::search::proxy::ProxyConfig;
use crate::search::reward::{RewardConfig, Taps};
use crate::search::{SearchConfig, SearchFiles, Strategy};
use crate::tensor::Tensor;
use crate::train::{self, checkpoint, EpochLog, LrSchedule, Objective, TrainConfig};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// `lfgcl train`'s model when neither --model nor --init names one.
const DEFAULT_MODEL: &str = "resnet20";

pub fn run_command(mut cli: Cli) -> Result<()> {
    // Under mpirun only rank 0 shows progress.
    if !crate::dist::world().is_root() {
        cli.global.quiet = true;
    }
    use crate::backend::cpu::isa;
    let limit = match &cli.global.cpu_isa {
        Some(v) => Some(isa::Isa::parse(v).map_err(|e| Error::Invalid(format!("--cpu-isa: {e}")))?),
        None => isa::limit_from_env()?,
    };
    if let Some(limit) = limit {
        isa::set_isa_limit(limit);
    }
    if let Some(n) = cli.global.threads {
        crate::limits::check_count("--threads", n, crate::limits::MAX_THREADS)?;
        // Fails only if the pool was already built (a second call in one process): harmless.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    // The command runs on a worker of the pool: every parallel region inside it is then a
    // fork-join on that pool rather than a hand-off from an outside thread, which costs two
    // wake-ups per region (most of the time of a batch-1 forward on 2 cores).
    rayon::scope(move |_| dispatch(cli))
}

fn dispatch(cli: Cli) -> Result<()> {
    let g = cli.global;
    let ranks = crate::dist::world().size();
    if ranks > 1
        && !matches!(cli.command, Command::Train(_) | Command::Search(_) | Command::Finetune(_) | Command::Pipeline(_))
    {
        return Err(Error::Invalid(format!(
            "this command runs on one process; under mpirun ({ranks} ranks) only search, train, finetune and \
             pipeline share the work (run the others without mpirun)"
        )));
    }
    // Long commands stop cleanly on SIGINT/SIGTERM, saving what they can (see `crate::interrupt`).
    if matches!(
        cli.command,
        Command::Train(_)
            | Command::Demo(_)
            | Command::Bench(_)
            | Command::Search(_)
            | Command::Finetune(_)
            | Command::Pipeline(_)
    ) {
        crate::interrupt::install()?;
    }
    match cli.command {
        Command::Train(a) => cmd_train(&g, a),
        Command::Eval(a) => cmd_eval(&g, a),
        Command::Info(a) => super::info::cmd_info(a),
        Command::Demo(a) => cmd_demo(&g, a),
        Command::Bench(a) => cmd_bench(&g, a),
        Command::PruneApply(a) => cmd_prune_apply(&g, a),
        Command::Search(a) => cmd_search(&g, a),
        Command::Finetune(a) => cmd_finetune(&g, a),
        Command::Pipeline(a) => cmd_pipeline(&g, a),
        Command::Import(a) => super::interop::cmd_import(&g, a),
        Command::ExportOnnx(a) => super::interop::cmd_export_onnx(&g, a),
    }
}

pub(crate) fn open_device(g: &GlobalArgs) -> Result<Device> {
    let dev = backend::select(g.device)?;
    dev.set_conv_precision(g.precision)?;
    if !g.quiet {
        eprintln!("device: {}", dev.describe());
    }
    Ok(dev)
}

/// The side images are brought to: `--image-size` when given, else the input side of the
/// checkpoint the command reads (square inputs only), else none (see [`OpenOptions::image_size`]).
fn data_side(given: Option<usize>, model: Option<&Arch>) -> Option<usize> {
    given.or_else(|| {
        let [h, w] = model?.input_hw();
        (h == w).then_some(h)
    })
}

fn open_options(d: &DataArgs, limit: Option<usize>, side: Option<usize>) -> OpenOptions {
    OpenOptions {
        image_size: side,
        limit,
        grayscale: d.grayscale,
        augment: d.augment.resolve(&d.data, side),
        cache_bytes: d.cache_mb.saturating_mul(1 << 20),
    }
}

/// Opens the training split and, when the dataset has one, the test split, at the side of
/// `model`'s input unless `--image-size` says otherwise.
pub(crate) fn open_train_test(d: &DataArgs, model: Option<&Arch>) -> Result<(Dataset, Option<Dataset>)> {
    let side = data_side(d.image_size, model);
    for (flag, v) in [("--limit", d.limit), ("--test-limit", d.test_limit)] {
        if v == Some(0) {
            return Err(Error::Invalid(format!("{flag} 0 leaves no images; give a positive count or drop {flag}")));
        }
    }
    let train = data::open(&d.data, Split::Train, &open_options(d, d.limit, side))?;
    let test = match data::open(&d.data, Split::Test, &open_options(d, d.test_limit, side)) {
        Ok(t) => Some(t),
        // Unlabeled or single-split folders have no test split; everything else must, and a
        // folder's test split that does not load (a class the training split lacks) is refused.
        Err(e) if data::folder_has_test_split(&d.data) == Some(false) => {
            eprintln!("note: no test split ({e}); training on the whole folder, without evaluation");
            None
        }
        Err(e) => return Err(e),
    };
    if data::is_folder_spec(&d.data) {
        eprintln!("data: training split {} images, {}", train.len(), train.mode_description(128));
        if let Some(t) = &test {
            eprintln!("data: test split {} images, {}", t.len(), t.mode_description(128));
        }
    }
    Ok((train, test))
}

/// `[height, width]` of a dataset's images.
fn input_hw(ds: &Dataset) -> [usize; 2] {
    [ds.height, ds.width]
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn epoch_line(log: &EpochLog) -> String {
    let mut s = format!("epoch {:>3}  lr {:.4}  train loss {:.4}", log.epoch, log.lr, log.train_loss);
    if let Some(a) = log.train_top1 {
        s += &format!("  train top-1 {}", pct(a));
    }
    if let (Some(l), Some(a)) = (log.test_loss, log.test_top1) {
        s += &format!("  test loss {l:.4}  test top-1 {}", pct(a));
    }
    s + &format!("  {:.0} img/s  {:.1}s", log.images_per_sec, log.seconds)
}

/// Loss and accuracy curves of a training log.
pub(crate) fn training_plot(logs: &[EpochLog], title: &str) -> LinePlot {
    let pts = |f: &dyn Fn(&EpochLog) -> Option<f64>| -> Vec<(f64, f64)> {
        logs.iter().filter_map(|l| f(l).map(|v| (l.epoch as f64, v))).collect()
    };
    let mut plot = LinePlot::new(title, "epoch", "top-1 accuracy (%)");
    let train = pts(&|l| l.train_top1.map(|a| 100.0 * a));
    if !train.is_empty() {
        plot = plot.with_series(Series::line("train (augmented)", train));
    }
    let test = pts(&|l| l.test_top1.map(|a| 100.0 * a));
    if !test.is_empty() {
        plot = plot.with_series(Series::line("test", test));
    }
    plot
}

/// Everything a training run needs besides the model and data.
pub(crate) struct RunFiles<'a> {
    pub out: &'a Path,
    pub info: serde_json::Value,
    pub quiet: bool,
    /// Continue the run saved in `out` instead of starting afresh.
    pub resume: bool,
    /// The command's settings: a resumed run must have been started with the same ones.
    pub settings: serde_json::Value,
}

/// Runs `fit` in `files.out` (see [`train::fit_in_dir`]: lock, log, resume state, `--resume`),
/// saving the checkpoint and the plot after every epoch and the summary at the end.
pub(crate) fn fit_and_save(
    model: &mut Model,
    dev: &Device,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    objective: &mut Objective<'_>,
    files: &RunFiles<'_>,
) -> Result<Vec<EpochLog>> {
    let ckpt_path = files.out.join("model.safetensors");
    let start = Instant::now();
    let run = train::RunDir { dir: files.out, resume: files.resume, settings: &files.settings };
    let logs = train::fit_in_dir(model, dev, train, test, cfg, objective, &run, &mut |log, earlier, m| {
        let mut info = files.info.clone();
        info["epochs_done"] = json!(log.epoch);
        info["test_top1"] = json!(log.test_top1);
        checkpoint::save(m, &ckpt_path, &info)?;
        let mut history = earlier.to_vec();
        history.push(log.clone());
        training_plot(&history, "training").save(files.out.join("training.svg"))?;
        if !files.quiet {
            println!("{}", epoch_line(log));
        }
        Ok(())
    })?;
    if !crate::dist::world().is_root() {
        return Ok(logs);
    }
    let last = logs.last().expect("at least one epoch");
    report::write_json(
        files.out.join(train::SUMMARY_FILE),
        &json!({
            "model": model.arch,
            "config": cfg,
            "info": files.info,
            "final": last,
            "wall_seconds": start.elapsed().as_secs_f64(),
            "checkpoint": crate::fsio::path_json(&ckpt_path),
        }),
    )?;
    Ok(logs)
}

/// The data flags, as recorded for `--resume`.
/// Whether training augments (`--augment none` does not).
fn augments(d: &DataArgs) -> bool {
    d.augment.resolve(&d.data, d.image_size) != data::AugmentKind::None
}

fn data_settings(d: &DataArgs) -> serde_json::Value {
    let mut v = json!({
        "data": d.data,
        "limit": d.limit,
        "test_limit": d.test_limit,
        "image_size": d.image_size.unwrap_or(data::FOLDER_DEFAULT_SIDE),
        "grayscale": d.grayscale,
    });
    // Only folders have a choice of transforms (other settings files stay as they were).
    if data::is_folder_spec(&d.data) {
        v["augment"] = json!(d.augment.resolve(&d.data, d.image_size).as_str());
    }
    v
}

fn check_train_flags(a: &TrainArgs) -> Result<()> {
    use crate::limits::{check_non_negative, check_positive};
    check_positive("--lr", a.lr as f64)?;
    check_non_negative("--warmup", a.warmup)?;
    check_non_negative("--weight-decay", a.weight_decay as f64)?;
    if !(0.0..1.0).contains(&a.momentum) {
        return Err(Error::Invalid(format!("--momentum must be in [0, 1), got {}", a.momentum)));
    }
    if a.epochs == 0 {
        return Err(Error::Invalid("--epochs must be positive".into()));
    }
    crate::limits::check_count("--batch-size", a.batch_size, crate::limits::MAX_BATCH)?;
    if let Some(c) = a.classes {
        crate::limits::check_count("--classes", c, crate::limits::MAX_CLASSES)?;
    }
    Ok(())
}

fn cmd_train(g: &GlobalArgs, a: TrainArgs) -> Result<()> {
    check_train_flags(&a)?;
    let schedule = LrSchedule::parse(&a.schedule, a.epochs)?;
    let dev = open_device(g)?;
    let (train, test) = open_train_test(&a.data, None)?;
    let mut model = match &a.init {
        Some(p) => {
            let m = checkpoint::load(p, &dev)?;
            // Flags that describe the net must agree with the checkpoint it starts from.
            if let Some(name) = a.model.as_deref().filter(|n| !n.eq_ignore_ascii_case(&m.arch.model)) {
                return Err(Error::Invalid(format!(
                    "--model {name} disagrees with --init {}, which holds a {} (drop --model)",
                    p.display(),
                    m.arch.model
                )));
            }
            if let Some(c) = a.classes.filter(|&c| c != m.arch.num_classes) {
                return Err(Error::Invalid(format!(
                    "--classes {c} disagrees with --init {}, which has {} classes (drop --classes)",
                    p.display(),
                    m.arch.num_classes
                )));
            }
            m
        }
        None => {
            let classes = a.classes.unwrap_or(train.num_classes);
            if classes == 0 {
                return Err(Error::Invalid(format!("dataset {} has no labels to train on", train.name)));
            }
            let name = a.model.as_deref().unwrap_or(DEFAULT_MODEL);
            Model::new(Arch::new_hw(name, train.channels, input_hw(&train), classes)?, &dev, a.seed)?
        }
    };
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        nesterov: a.nesterov,
        schedule,
        warmup_epochs: a.warmup,
        augment: !a.no_augment && augments(&a.data),
        seed: a.seed,
        eval_batch_size: 256,
        progress: !g.quiet,
    };
    let cost = model.cost();
    if !g.quiet {
        println!(
            "training {} ({} params, {} MACs) on {} ({} images) for {} epochs -> {}",
            model.arch.model,
            crate::models::cost::human(cost.params),
            crate::models::cost::human(cost.macs),
            train.name,
            train.len(),
            cfg.epochs,
            a.out.display()
        );
    }
    let files = RunFiles {
        out: &a.out,
        info: json!({ "data": a.data.data, "trained_by": "lfgcl train" }),
        quiet: g.quiet,
        resume: a.resume,
        settings: json!({
            "command": "train",
            "model": model.arch,
            "init": crate::fsio::opt_path_json(a.init.as_deref()),
            "data": data_settings(&a.data),
        }),
    };
    let logs = fit_and_save(&mut model, &dev, &train, test.as_ref(), &cfg, &mut Objective::Labels, &files)?;
    let last = logs.last().expect("at least one epoch");
    if let Some(acc) = last.test_top1 {
        println!(
            "final test top-1 {} after {} epochs; checkpoint {}",
            pct(acc),
            last.epoch,
            a.out.join("model.safetensors").display()
        );
    }
    Ok(())
}

fn parse_split(s: &str) -> Result<Split> {
    match s {
        "test" => Ok(Split::Test),
        "train" => Ok(Split::Train),
        _ => Err(Error::Invalid(format!("unknown split '{s}' (expected test or train)"))),
    }
}

fn cmd_eval(g: &GlobalArgs, a: EvalArgs) -> Result<()> {
    let split = parse_split(&a.split)?;
    crate::limits::check_count("--batch-size", a.batch_size, crate::limits::MAX_BATCH)?;
    let dev = open_device(g)?;
    let mut model = checkpoint::load(&a.ckpt, &dev)?;
    let limit = if split == Split::Test { a.data.test_limit } else { a.data.limit };
    let ds = data::open(
        &a.data.data,
        split,
        &open_options(&a.data, limit, data_side(a.data.image_size, Some(&model.arch))),
    )?;
    let start = Instant::now();
    let r = train::evaluate(&mut model, &dev, &ds, a.batch_size, !g.quiet)?;
    let secs = start.elapsed().as_secs_f64();
    let cost = model.cost();
    println!(
        "{}: {} on {} ({} images): top-1 {}  loss {:.4}  ({} MACs, {} params, {:.0} img/s)",
        a.ckpt.display(),
        model.arch.model,
        ds.name,
        r.images,
        pct(r.top1),
        r.loss,
        crate::models::cost::human(cost.macs),
        crate::models::cost::human(cost.params),
        r.images as f64 / secs.max(1e-9)
    );
    if let Some(p) = &a.json {
        report::write_json(
            p,
            &json!({ "checkpoint": crate::fsio::path_json(&a.ckpt), "data": ds.name, "result": r, "macs": cost.macs, "params": cost.params }),
        )?;
    }
    Ok(())
}

fn cmd_demo(g: &GlobalArgs, a: DemoArgs) -> Result<()> {
    let _lock = DirLock::acquire(&a.out)?;
    let dev = open_device(g)?;
    let t0 = Instant::now();
    let train_ds = data::synthetic::generate(Split::Train);
    let test = data::synthetic::generate(Split::Test);
    println!(
        "demo 1/2: training a smallcnn baseline on the built-in synthetic set ({} train / {} test images, {} classes), {} epochs",
        train_ds.len(),
        test.len(),
        train_ds.num_classes,
        a.epochs
    );
    let arch = Arch::new_hw("smallcnn", train_ds.channels, input_hw(&train_ds), train_ds.num_classes)?;
    let mut model = Model::new(arch, &dev, a.seed)?;
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: 64,
        lr: 0.05,
        seed: a.seed,
        progress: !g.quiet,
        ..TrainConfig::default()
    };
    let files = RunFiles {
        out: &a.out.join("baseline"),
        info: json!({ "data": "synthetic", "trained_by": "lfgcl demo" }),
        quiet: g.quiet,
        resume: false,
        settings: json!({ "command": "demo" }),
    };
    fit_and_save(&mut model, &dev, &train_ds, Some(&test), &cfg, &mut Objective::Labels, &files)?;
    let pcfg = PipelineConfig::demo(a.flops, a.episodes, a.ft_epochs, a.seed, !g.quiet);
    println!(
        "demo 2/2: LFGCL search at {:.0}% FLOPs ({} episodes x {} candidates, {} of warm-up), random search and uniform pruning at the same budget, label-free fine-tuning ({} epochs)",
        100.0 * a.flops,
        a.episodes,
        pcfg.search.candidates_per_step,
        pcfg.search.ddpg.warmup_episodes,
        a.ft_epochs
    );
    run_pipeline(g, &dev, &mut model, &train_ds, &test, &pcfg, 256, &a.out)?;
    println!("demo done in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Raw candidate scoring rate on a checkpoint and, with `--strategy`, the whole search loop on
/// the same checkpoint next to the raw rate of the very candidates it scored.
fn bench_search(g: &GlobalArgs, a: &BenchArgs) -> Result<()> {
    let ckpt = a.ckpt.as_ref().ok_or_else(|| Error::Invalid("bench search needs --ckpt".into()))?;
    if !(a.keep > 0.0 && a.keep <= 1.0) {
        return Err(Error::Invalid(format!("--keep must be a fraction in (0, 1], got {}", a.keep)));
    }
    crate::limits::check_count("--images", a.images, 1 << 16)?;
    crate::limits::check_count("--candidates", a.candidates, 1 << 16)?;
    crate::limits::check_count("--episodes", a.episodes, crate::search::MAX_EPISODES)?;
    let dev = open_device(g)?;
    let mut model = checkpoint::load(ckpt, &dev)?;
    let r = crate::bench::search::search_bench(&dev, &mut model, a.images, a.candidates, a.keep)?;
    println!("machine: {}", r.machine);
    println!(
        "{} on {}: {} images per candidate, keep {:.2}: {:.2} candidates/s one at a time, {:.2} candidates/s {} at once",
        r.model, r.device, r.images, r.keep, r.sequential_candidates_per_second, r.batched_candidates_per_second, r.candidates
    );
    let mut json = serde_json::to_value(&r).expect("report serialises");
    if let Some(strategy) = a.strategy {
        let l = crate::bench::search::search_loop_bench(
            &dev,
            &mut model,
            a.images,
            a.candidates,
            a.episodes,
            strategy,
            !g.quiet,
        )?;
        println!("{}", l.table());
        json["loop"] = serde_json::to_value(&l).expect("report serialises");
    }
    if let Some(p) = &a.json {
        report::write_json(p, &json)?;
    }
    Ok(())
}

fn cmd_bench(g: &GlobalArgs, a: BenchArgs) -> Result<()> {
    for &b in a.batch.iter().flatten() {
        crate::limits::check_count("--batch", b, crate::limits::MAX_BATCH)?;
    }
    crate::limits::check_count("--train-batch", a.train_batch, crate::limits::MAX_BATCH)?;
    if let Some(r) = a.reps {
        crate::limits::check_count("--reps", r, crate::limits::MAX_REPS)?;
    }
    let batch = a.batch.as_ref().and_then(|b| b.first().copied()).unwrap_or(64);
    match a.what {
        BenchWhat::Cpu => {
            crate::limits::check_count("--rounds", a.rounds, crate::limits::MAX_REPS)?;
            // Checkpoints, ONNX files and the timing scripts go to --onnx-dir or a temporary folder.
            let temp = a.onnx_dir.is_none();
            let work_dir = a
                .onnx_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join(format!("lfgcl-bench-cpu-{}", std::process::id())));
            let opts = crate::bench::cpu::CpuBenchOptions {
                image_size: a.image_size,
                models: a.model.cpu_models(),
                batches: a.batch.clone().unwrap_or_else(|| vec![1, 64]),
                train_batch: a.train_batch,
                reps: a.reps.unwrap_or(5),
                rounds: a.rounds,
                work_dir: work_dir.clone(),
                onnxruntime: !a.no_ort,
                torch: !a.no_torch,
                verbose: !g.quiet,
            };
            let result = crate::bench::cpu::cpu_bench(&opts);
            if temp {
                let _ = std::fs::remove_dir_all(&work_dir);
            }
            let report = result?;
            println!("{}", report.table());
            if let Some(p) = &a.json {
                report::write_json(p, &report)?;
            }
            Ok(())
        }
        BenchWhat::Train | BenchWhat::Infer => {
            let train = a.what == BenchWhat::Train;
            let dev = open_device(g)?;
            let batch = if train { a.train_batch } else { batch };
            let net = bench_net(&a)?;
            let r = crate::bench::cpu::model_bench(&dev, net, batch, train, 3, a.reps.unwrap_or(5))?;
            let t = &r.throughput;
            println!("machine: {}", r.machine);
            println!(
                "{} {} on {}, batch {}: {:.1} img/s, {:.1} GFLOP/s (median {:.2} ms, min {:.2}, max {:.2}, {} reps after 3 warm-up)",
                r.model,
                r.what,
                r.device,
                t.batch,
                t.images_per_sec,
                t.gflops,
                1e3 * t.timing.median_s,
                1e3 * t.timing.min_s,
                1e3 * t.timing.max_s,
                t.timing.reps
            );
            #[derive(serde::Serialize)]
            #[serde(untagged)]
            enum Profile {
                Infer(crate::bench::layers::LayerProfile),
                Train(crate::bench::layers::TrainProfile),
            }
            let reps = a.reps.unwrap_or(5);
            let layers = match (a.layers, train) {
                (false, _) => None,
                (true, false) => {
                    let p = crate::bench::layers::layer_profile(&dev, net, batch, 3, reps)?;
                    println!("\n{}", p.table());
                    Some(Profile::Infer(p))
                }
                (true, true) => {
                    let p = crate::bench::layers::train_profile(&dev, net, batch, 3, reps)?;
                    println!("\n{}", p.table());
                    Some(Profile::Train(p))
                }
            };
            if let Some(p) = &a.json {
                #[derive(serde::Serialize)]
                struct WithLayers<'a> {
                    #[serde(flatten)]
                    bench: &'a crate::bench::cpu::ModelBench,
                    layers: &'a Option<Profile>,
                }
                report::write_json(p, &WithLayers { bench: &r, layers: &layers })?;
            }
            Ok(())
        }
        BenchWhat::Search => bench_search(g, &a),
        BenchWhat::Kernels => bench_kernels(g, &a),
        BenchWhat::Deploy => super::interop::bench_deploy(g, &a),
        BenchWhat::Data => {
            let dev = open_device(g)?;
            let spec = a.data.clone().ok_or_else(|| Error::Invalid("bench data needs --data DIR".into()))?;
            let image_size = a.image_size.unwrap_or(224);
            let opts = crate::bench::data::DataBenchOptions {
                augment: a.augment.resolve(&spec, Some(image_size)),
                data: spec,
                image_size,
                grayscale: false,
                model: a.model.given().unwrap_or("resnet20").to_string(),
                batch: a.train_batch,
                reps: a.reps.unwrap_or(3),
                sample: 64,
                loader_images: a.images,
            };
            let r = crate::bench::data::data_bench(&dev, &opts)?;
            println!("{}", r.table());
            if let Some(p) = &a.json {
                report::write_json(p, &r)?;
            }
            Ok(())
        }
    }
}

/// The net `bench infer|train` time: `--ckpt` as saved (a pruned net: its own widths, input size
/// and classes), or `--model` (default resnet20) with random weights at `--image-size`. Both at
/// once, or `--image-size` with a checkpoint, are refused rather than one silently ignored.
fn bench_net(a: &BenchArgs) -> Result<crate::bench::cpu::BenchNet<'_>> {
    use crate::bench::cpu::BenchNet;
    let what = if a.what == BenchWhat::Train { "train" } else { "infer" };
    match (&a.ckpt, a.model.given()) {
        (Some(_), Some(m)) => Err(Error::Invalid(format!(
            "bench {what}: give --ckpt or --model, not both (--model {m} would build a fresh net; the checkpoint names its own)"
        ))),
        (Some(_), None) if a.image_size.is_some() => Err(Error::Invalid(format!(
            "bench {what}: --image-size does not apply to --ckpt: a checkpoint runs at the input it was built for (`lfgcl info --ckpt` says which)"
        ))),
        (Some(path), None) => Ok(BenchNet::Checkpoint(path)),
        (None, _) => Ok(BenchNet::Family { model: &a.model, side: a.image_size }),
    }
}

/// Every CUDA kernel on ResNet-56 and search shapes against the device's measured peaks, then
/// ResNet-56 inference and training step through the whole engine, under the keys
/// `scripts/torch_bench.py` uses, so `--compare` can put the two side by side.
fn bench_kernels(g: &GlobalArgs, a: &BenchArgs) -> Result<()> {
    use crate::backend::cuda::CudaBackend;
    use crate::bench::kernels as bench;
    if g.device == backend::DeviceChoice::Cpu {
        return Err(Error::Invalid("bench kernels times the CUDA kernels; it cannot run with --device cpu".into()));
    }
    let cuda = std::sync::Arc::new(CudaBackend::new(0)?);
    if !g.quiet {
        eprintln!("device: {}", crate::backend::Memory::describe(&*cuda));
    }
    let opts = bench::BenchOptions {
        reps: a.reps.unwrap_or(100),
        batch: a.train_batch,
        candidates: a.candidates,
        search_images: a.images,
        flush_l2: !a.no_flush,
        filter: a.filter.clone(),
        ..bench::BenchOptions::default()
    };
    let mut timings = bench::bench_kernels(&cuda, &opts)?;
    let dev: Device = cuda.clone();
    let model_reps = (opts.reps / 2).max(10);
    let mut model_case = |key: String, train: bool, batch: usize| -> Result<()> {
        if opts.filter.as_deref().is_some_and(|f| !key.contains(f)) {
            return Ok(());
        }
        let net = crate::bench::cpu::BenchNet::Family { model: "resnet56", side: None };
        let r = crate::bench::cpu::model_bench(&dev, net, batch, train, opts.warmup, model_reps)?;
        timings.push(bench::model_timing(&key, if train { "fwd+bwd+SGD" } else { "inference" }, &r));
        Ok(())
    };
    model_case(format!("model/resnet56_train_step/n{}", a.train_batch), true, a.train_batch)?;
    let mut infer_batches = vec![a.train_batch, a.images];
    infer_batches.dedup();
    for b in infer_batches {
        model_case(format!("model/resnet56_infer/n{b}"), false, b)?;
    }
    println!("{}", bench::format_table(&timings));
    if let Some(p) = &a.json {
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            device: &'a crate::backend::cuda::DeviceInfo,
            warmup: usize,
            reps: usize,
            l2_flushed: bool,
            timings: &'a [bench::KernelTiming],
        }
        report::write_json(
            p,
            &Doc {
                device: cuda.info(),
                warmup: opts.warmup,
                reps: opts.reps,
                l2_flushed: opts.flush_l2,
                timings: &timings,
            },
        )?;
    }
    Ok(())
}

pub(crate) fn scope_of(streams: bool) -> GroupScope {
    if streams {
        GroupScope::All
    } else {
        GroupScope::Inner
    }
}

impl PruneArgs {
    pub(crate) fn budget(&self) -> Budget {
        Budget { flops: self.flops, params: self.params }
    }
    /// The constraints on `base`'s pruning: `--round` defaults to its family's channel multiple.
    pub(crate) fn constraints(&self, base: &Model) -> Result<Constraints> {
        let round = match self.round {
            Some(r) => r,
            None => base.arch.family()?.channel_multiple(),
        };
        let c = Constraints { lower: self.lower, round };
        c.validate()?;
        Ok(c)
    }
}

/// Writes a pruned net and its policy, and prints what the pruning did.
pub(crate) fn save_pruned(
    base: &crate::models::Model,
    pruned: &crate::models::Model,
    policy: &prune::Policy,
    out: &Path,
    quiet: bool,
) -> Result<()> {
    checkpoint::save(pruned, out, &serde_json::to_value(policy).expect("policy serialises"))?;
    let policy_path = out.with_extension("policy.json");
    report::write_json(&policy_path, policy)?;
    if !quiet {
        let (b, p) = (base.cost(), pruned.cost());
        println!(
            "pruned {} ({} groups, {}): FLOPs {} -> {} ({:.1}%), params {} -> {} ({:.1}%)",
            base.arch.model,
            policy.groups.len(),
            policy.source,
            crate::models::cost::human(b.macs),
            crate::models::cost::human(p.macs),
            100.0 * p.macs as f64 / b.macs as f64,
            crate::models::cost::human(b.params),
            crate::models::cost::human(p.params),
            100.0 * p.params as f64 / b.params as f64
        );
        println!("wrote {} and {}", out.display(), policy_path.display());
    }
    Ok(())
}

fn cmd_prune_apply(g: &GlobalArgs, a: PruneApplyArgs) -> Result<()> {
    let dev = open_device(g)?;
    let base = checkpoint::load(&a.ckpt, &dev)?;
    let constraints = a.prune.constraints(&base)?;
    let budget = a.prune.budget();
    let coupling = |p: Pruner| if a.prune.independent_streams { p.with_independent_streams() } else { p };
    let (projected, pruner, source, applied_constraints) = if a.uniform || a.global {
        let criterion = if a.global { prune::Criterion::L1 } else { a.prune.criterion };
        let pruner = coupling(Pruner::new(&base, scope_of(a.prune.streams), criterion)?);
        let (p, source) = if a.global {
            (prune::baselines::global_threshold(&pruner, &budget, &constraints)?, "global magnitude")
        } else if a.exact {
            (prune::baselines::uniform_exact(&pruner, &budget, &constraints)?, "uniform (exact budget)")
        } else {
            (pruner.uniform(&budget, &constraints)?, "uniform")
        };
        (p, pruner, source.to_string(), constraints)
    } else {
        let path = a.ratios.as_ref().ok_or_else(|| Error::Invalid("give --ratios FILE or --uniform".into()))?;
        let file = prune::read_ratio_file(path)?;
        // The file's own scope and rounding win unless the command line asks for streams.
        let scope = if a.prune.streams { GroupScope::All } else { file.scope.unwrap_or(GroupScope::Inner) };
        let criterion = file.criterion.unwrap_or(a.prune.criterion);
        let pruner = coupling(Pruner::new(&base, scope, criterion)?);
        let what = path.display().to_string();
        if let Some(m) = &file.model {
            if !m.eq_ignore_ascii_case(&base.arch.model) {
                return Err(Error::format(
                    path,
                    format!(
                        "field \"model\" is {m}, but {} is a {}; this policy is for another model",
                        a.ckpt.display(),
                        base.arch.model
                    ),
                ));
            }
        }
        prune::budget::check_ratios(&file.ratios, pruner.groups.len(), &what)?;
        if let Some(ch) = file.channels.as_ref().filter(|c| !c.is_empty()) {
            if ch != &pruner.cost.channels {
                return Err(Error::format(
                    path,
                    format!(
                        "field \"channels\" is {ch:?}, but the groups of {} have {:?} channels; this policy is for another net",
                        a.ckpt.display(),
                        pruner.cost.channels
                    ),
                ));
            }
        }
        if let Some(names) = &file.groups {
            if names != &pruner.group_names() {
                return Err(Error::Invalid(format!(
                    "{what} names groups {names:?}, but {} has {:?}",
                    base.arch.model,
                    pruner.group_names()
                )));
            }
        }
        let c = Constraints { round: file.round.unwrap_or(constraints.round), ..constraints };
        let p = pruner.apply_ratios(&file.ratios, &budget, &c)?;
        (p, pruner, format!("ratios from {what}"), c)
    };
    let pruned = pruner.prune(&base, &dev, &projected.kept)?;
    let policy = pruner.policy(&base, &projected, &applied_constraints, &source);
    save_pruned(&base, &pruned, &policy, &a.out, g.quiet)
}

pub(crate) fn search_config(
    p: &PruneArgs,
    s: &SearchOpts,
    strategy: Strategy,
    seed: u64,
    dev: &Device,
    base: &Model,
) -> Result<SearchConfig> {
    let budget = p.budget();
    budget.validate()?;
    let k = match s.candidates_per_step {
        CandidatesPerStep::Fixed(k) => k,
        CandidatesPerStep::Auto => search::auto_candidates_per_step(dev, base, s.images)?,
    };
    crate::limits::check_seconds("--checkpoint-every", s.checkpoint_every)?;
    let cfg = SearchConfig {
        budget,
        constraints: p.constraints(base)?,
        scope: scope_of(p.streams),
        criterion: p.criterion,
        strategy,
        episodes: s.episodes,
        candidates_per_step: k,
        updates_per_episode: s.updates_per_episode.unwrap_or(4 * k),
        // On a GPU the agent trains while the device scores; on the CPU scoring uses every core.
        overlap_agent: dev.kind() == backend::DeviceKind::Cuda,
        seed,
        ddpg: DdpgConfig {
            warmup_episodes: s.warmup,
            noise_init: s.noise,
            noise_decay: s.noise_decay,
            noise_min: s.noise_min,
            actor_lr: s.actor_lr,
            critic_lr: s.critic_lr,
            replay_capacity: s.replay,
            ..DdpgConfig::default()
        },
        reward: RewardConfig { taps: Taps::parse(&s.taps)?, recalibrate_bn: s.bn_stats == BnStats::Recalibrate },
    };
    cfg.validate()?;
    Ok(cfg)
}

fn run_options(s: &SearchOpts, resume: bool, progress: bool) -> Result<search::RunOptions> {
    let checkpoint_every = crate::limits::check_seconds("--checkpoint-every", s.checkpoint_every)?;
    Ok(search::RunOptions { resume, progress, checkpoint_every })
}

/// How the search reads `spec` for the checkpoint `base`: at its input side unless `image_size`
/// says otherwise, in its channel count, with the automatic (evaluation) transforms.
fn checkpoint_data_options(base: &Model, spec: &str, image_size: Option<usize>, limit: Option<usize>) -> OpenOptions {
    let side = data_side(image_size, Some(&base.arch));
    OpenOptions {
        image_size: side,
        limit,
        grayscale: base.arch.in_channels == 1,
        augment: super::AugmentArg::Auto.resolve(spec, side),
        ..OpenOptions::default()
    }
}

/// The reward's fixed batch of unlabeled images drawn from the training split of `spec`.
/// An image folder decodes only the images drawn.
pub(crate) fn unlabeled_images(
    base: &Model,
    spec: &str,
    image_size: Option<usize>,
    n: usize,
    seed: u64,
) -> Result<Tensor> {
    let pool = data::open_sample(spec, Split::Train, &checkpoint_data_options(base, spec, image_size, None), n, seed)?;
    search::reward_batch(base, &pool, n, seed)
}

fn cmd_search(g: &GlobalArgs, a: SearchArgs) -> Result<()> {
    let dev = open_device(g)?;
    let mut base = checkpoint::load(&a.ckpt, &dev)?;
    let cfg = search_config(&a.prune, &a.search, a.strategy, a.seed, &dev, &base)?;
    let images = unlabeled_images(&base, &a.data, a.image_size, a.search.images, a.seed)?;
    let report = match a.report_accuracy {
        Some(n) => {
            let spec = a.report_data.clone().unwrap_or_else(|| a.data.clone());
            let ds = data::open(&spec, Split::Test, &checkpoint_data_options(&base, &spec, a.image_size, Some(n)))?;
            let labels = ds.labels_or_err()?.to_vec();
            let norm = train::normalization_for(&base, &ds)?;
            Some(search::AccuracyReport { images: search::batch_tensor(&ds, &norm)?, labels })
        }
        None => None,
    };
    // Under mpirun: every rank scores with rank 0's settings; only rank 0 runs the agent and writes.
    let cfg = crate::dist::broadcast_json(Some(&cfg))?;
    if !crate::dist::world().is_root() {
        return search::serve(&mut base, &dev, &images, cfg, report);
    }
    let _stop_scoring_ranks = crate::dist::shard::StopWorkersOnDrop::new();
    if !g.quiet {
        println!(
            "searching {} groups of {} ({:?}) for FLOPs {} params {} on {} unlabeled images: {} episodes x {} candidates ({:?})",
            crate::prune::groups::groups(&base, cfg.scope)?.len(),
            base.arch.model,
            cfg.scope,
            cfg.budget.flops.map_or("free".into(), |f| format!("<= {:.0}%", 100.0 * f)),
            cfg.budget.params.map_or("free".into(), |p| format!("<= {:.0}%", 100.0 * p)),
            images.dims()[0],
            cfg.episodes,
            cfg.candidates_per_step,
            cfg.strategy
        );
    }
    let files = SearchFiles { dir: a.out.clone() };
    let out =
        search::run(&mut base, &dev, &images, &cfg, &files, report, &run_options(&a.search, a.resume, !g.quiet)?)?;
    println!(
        "best reward {:.5} (uniform pruning {:.5}) at {:.1}% FLOPs, {:.1}% params; {} candidates in {:.1}s ({:.2} candidates/s end to end: {:.1}s scoring, {:.1}s agent, {:.2}s bookkeeping)",
        out.best.reward,
        out.uniform.reward,
        100.0 * out.best.policy.flops_fraction,
        100.0 * out.best.policy.params_fraction,
        out.evaluated,
        out.seconds,
        out.candidates_per_second,
        out.time.scoring_s,
        out.time.agent_s,
        out.time.bookkeeping_s
    );
    if let Some(rho) = out.reward_accuracy_spearman {
        println!("Spearman rank correlation of reward and top-1 (before fine-tuning): {rho:.3}");
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

fn finetune_config(ft: &FinetuneOpts, seed: u64, progress: bool) -> FinetuneConfig {
    FinetuneConfig {
        train: TrainConfig {
            epochs: ft.epochs,
            batch_size: ft.batch_size,
            lr: ft.lr,
            seed,
            progress,
            ..TrainConfig::default()
        },
        distill_temperature: if ft.labels { None } else { Some(ft.temperature) },
        feature_weight: ft.feature_weight,
    }
}

impl FinetuneOpts {
    fn check(&self) -> Result<()> {
        crate::limits::check_positive("--ft-lr", self.lr as f64)?;
        crate::limits::check_positive("--temperature", self.temperature as f64)?;
        if let Some(w) = self.feature_weight {
            crate::limits::check_non_negative("--ft-feature-weight", w as f64)?;
        }
        if self.labels && self.feature_weight.is_some_and(|w| w > 0.0) {
            return Err(Error::Invalid(
                "--ft-feature-weight distils from the baseline's features: it does not combine with --labels".into(),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::Invalid("--ft-epochs must be positive".into()));
        }
        crate::limits::check_count("--ft-batch-size", self.batch_size, crate::limits::MAX_BATCH)?;
        Ok(())
    }
}

fn cmd_finetune(g: &GlobalArgs, a: FinetuneArgs) -> Result<()> {
    a.ft.check()?;
    let dev = open_device(g)?;
    let mut student = checkpoint::load(&a.ckpt, &dev)?;
    let mut cfg = finetune_config(&a.ft, a.seed, !g.quiet);
    cfg.train.augment = augments(&a.data);
    let (train_ds, test) = open_train_test(&a.data, Some(&student.arch))?;
    let mut teacher =
        match (&a.teacher, a.ft.labels) {
            (Some(t), _) => Some(checkpoint::load(t, &dev)?),
            (None, true) => None,
            (None, false) => return Err(Error::Invalid(
                "label-free fine-tuning distils from the unpruned net: give --teacher BASE.safetensors (or --labels)"
                    .into(),
            )),
        };
    let mut objective = match (&mut teacher, cfg.distill_temperature) {
        (Some(t), Some(temp)) => Objective::distill(t, temp, cfg.feature_weight, &student),
        _ => Objective::Labels,
    };
    let train_ds = if a.ft.labels { train_ds } else { train_ds.without_labels() };
    let mut files = RunFiles {
        out: &a.out,
        info: json!({
            "finetuned_from": crate::fsio::path_json(&a.ckpt),
            "teacher": crate::fsio::opt_path_json(a.teacher.as_deref()),
            "label_free": !a.ft.labels, "data": a.data.data }),
        quiet: g.quiet,
        resume: a.resume,
        settings: json!({
            "command": "finetune",
            "ckpt": crate::fsio::path_json(&a.ckpt),
            "teacher": crate::fsio::opt_path_json(a.teacher.as_deref()),
            "data": data_settings(&a.data),
            "temperature": a.ft.temperature,
            "labels": a.ft.labels,
        }),
    };
    if objective.feature_weight() > 0.0 {
        // Only when used, so that runs made without it still resume.
        files.settings["feature_weight"] = objective.feature_weight().into();
    }
    let logs = fit_and_save(&mut student, &dev, &train_ds, test.as_ref(), &cfg.train, &mut objective, &files)?;
    if let Some(acc) = logs.last().and_then(|l| l.test_top1) {
        println!("fine-tuned test top-1 {}; checkpoint {}", pct(acc), a.out.join("model.safetensors").display());
    }
    Ok(())
}

/// Runs the pipeline on opened data and prints its table.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    g: &GlobalArgs,
    dev: &Device,
    base: &mut Model,
    train_ds: &Dataset,
    test: &Dataset,
    cfg: &PipelineConfig,
    search_images: usize,
    out: &Path,
) -> Result<pipeline::PipelineReport> {
    let images = search::reward_batch(base, train_ds, search_images, cfg.search.seed)?;
    let report = pipeline::run(
        pipeline::PipelineInputs { baseline: base, train: train_ds, test, search_images: &images },
        dev,
        cfg,
        out,
        !g.quiet,
    )?;
    print!("{}", report.table());
    print!("{}", report.proxy_lines());
    if let Some(rho) = report.reward_accuracy_spearman {
        println!("Spearman rank correlation of the label-free reward and top-1 over the search's candidates: {rho:.3}");
    }
    println!(
        "search: {:.2} candidates/s; done in {:.0}s; outputs in {} (report.json, accuracy.svg, search/, random/, finetune-*/)",
        report.search_candidates_per_second,
        report.seconds,
        out.display()
    );
    Ok(report)
}

fn cmd_pipeline(g: &GlobalArgs, a: PipelineArgs) -> Result<()> {
    // --ft-epochs 0: the pruned nets are measured before fine-tuning only.
    if a.ft.epochs > 0 {
        a.ft.check()?;
    }
    if a.ft.feature_weight.is_some_and(|w| w > 0.0) && a.prune.streams {
        return Err(Error::Invalid(
            "--ft-feature-weight matches the baseline's penultimate features, whose channels --streams prunes: use one or the other"
                .into(),
        ));
    }
    // Under mpirun only rank 0 writes (and locks) the folder.
    let root = crate::dist::world().is_root();
    let _lock = if root { Some(DirLock::acquire(&a.out)?) } else { None };
    let dev = open_device(g)?;
    let mut base = checkpoint::load(&a.ckpt, &dev)?;
    let search = search_config(&a.prune, &a.search, Strategy::Ddpg, a.seed, &dev, &base)?;
    // Every rank scores with rank 0's settings (`--candidates-per-step auto` depends on the device).
    let search = crate::dist::broadcast_json(Some(&search))?;
    let (train_ds, test) = open_train_test(&a.data, Some(&base.arch))?;
    let test =
        test.ok_or_else(|| Error::Invalid(format!("{} has no labelled test split to evaluate on", a.data.data)))?;
    train::check_compatible(&base, &train_ds)?;
    if a.ft.epochs > 0 {
        // Before the searches, not after them.
        crate::dist::dp::check_batch(a.ft.batch_size, train_ds.len())?;
    }
    let methods: Vec<_> = a
        .methods
        .iter()
        .copied()
        .filter(|m| !(a.no_random && *m == Method::Random || a.no_uniform && *m == Method::Uniform))
        .fold(Vec::new(), |mut v, m| {
            if !v.contains(&m) {
                v.push(m);
            }
            v
        });
    if methods.is_empty() {
        return Err(Error::Invalid("no method left to run (--methods, --no-random, --no-uniform)".into()));
    }
    if a.prune.independent_streams && methods.iter().any(|m| m.searches()) {
        return Err(Error::Invalid(
            "--independent-streams is for the baselines only (--methods uniform,uniform-fpgm,global)".into(),
        ));
    }
    let cfg = PipelineConfig {
        search,
        finetune: {
            let mut f = finetune_config(&a.ft, a.seed, !g.quiet);
            f.train.augment = augments(&a.data);
            f
        },
        methods,
        independent_streams: a.prune.independent_streams,
        report_accuracy: a.report_accuracy,
        proxy: ProxyConfig { top: a.proxy_top, steps: a.proxy_steps, spread: a.proxy_spread },
        resume: a.resume,
    };
    if !root {
        let images = search::reward_batch(&base, &train_ds, a.search.images, cfg.search.seed)?;
        let inputs =
            pipeline::PipelineInputs { baseline: &mut base, train: &train_ds, test: &test, search_images: &images };
        return pipeline::serve(inputs, &dev, &cfg);
    }
    let report = run_pipeline(g, &dev, &mut base, &train_ds, &test, &cfg, a.search.images, &a.out)?;
    if !a.no_deploy_bench {
        super::interop::pipeline_deploy(g, &dev, &a.ckpt, &report, &a.out)?;
    }
    Ok(())
}
