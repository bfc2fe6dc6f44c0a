//! Training and evaluation loops, the optimiser and schedules, and checkpoints.

pub mod checkpoint;
pub mod optim;
mod resumable;

pub use optim::{LrSchedule, Sgd};
pub use resumable::{fit_in_dir, RunDir, LOG_FILE, SUMMARY_FILE, TRAIN_STATE_FILE};

use crate::backend::Device;
use crate::data::{Augment, Batch, Dataset, Loader, Normalization};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::Mode;
use crate::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What the student learns from.
pub enum Objective<'a> {
    /// Softmax cross-entropy against the labels.
    Labels,
    /// Label-free knowledge distillation: KL divergence to a teacher's softened outputs, plus
    /// `feature_weight` times [`feature_distill`] on the penultimate features (0: KL only).
    Distill { teacher: &'a mut Model, temperature: f32, feature_weight: f32 },
}

/// The feature distillation weight of label-free fine-tuning when `--ft-feature-weight` is not
/// given (and the student keeps the baseline's penultimate width). Issue 21's pairs, the same
/// ResNet-20 net fine-tuned by one binary with KL only and with KL plus this term, gained
/// +0.08 pt top-1 [+0.05, +0.11] over 3 seeds for LFGCL's nets and +0.09 for uniform L1's, at no
/// measurable cost in time (docs/results.md).
pub const DEFAULT_FEATURE_WEIGHT: f32 = 1.0;

/// The feature distillation weight for fine-tuning `student` from `teacher` without labels:
/// `given` when the user gave one, else [`DEFAULT_FEATURE_WEIGHT`] when the student keeps the
/// teacher's penultimate width, else 0 (a net pruned with `--streams`, or a family whose last
/// features are prunable, has nothing to match channel for channel).
pub fn feature_weight_for(given: Option<f32>, student: &Model, teacher: &Model) -> f32 {
    let width = |m: &Model| m.graph.nodes.get(m.penultimate_node()).map(|n| n.out_shape.clone());
    match given {
        Some(w) => w,
        None if width(student) == width(teacher) => DEFAULT_FEATURE_WEIGHT,
        None => 0.0,
    }
}

impl<'a> Objective<'a> {
    /// Label-free distillation of `student` from `teacher`, with the feature weight
    /// [`feature_weight_for`] resolves from `given`.
    pub fn distill(teacher: &'a mut Model, temperature: f32, given: Option<f32>, student: &Model) -> Objective<'a> {
        let feature_weight = feature_weight_for(given, student, teacher);
        Objective::Distill { teacher, temperature, feature_weight }
    }

    /// The weight of feature distillation (0 for labels, or for KL only).
    pub fn feature_weight(&self) -> f32 {
        match self {
            Objective::Labels => 0.0,
            Objective::Distill { feature_weight, .. } => *feature_weight,
        }
    }
}

/// `weight` times the mean squared difference between a student's and a teacher's features,
/// over the variance of the teacher's features on the (global) batch (the label-free reward's
/// normalisation, so that 1 weighs it like the reward does), and its gradient with respect to the
/// student's features. The student must keep the teacher's width there: nets pruned with
/// `--streams` lose channels of the penultimate features and are refused.
pub fn feature_distill(dev: &Device, student: &Tensor, teacher: &Tensor, weight: f32) -> Result<(f32, Tensor)> {
    if student.dims() != teacher.dims() {
        return Err(Error::Invalid(format!(
            "feature distillation compares the penultimate features, but the student's are {:?} and the teacher's {:?} \
             (a net pruned with --streams has fewer channels there: fine-tune it without --ft-feature-weight)",
            student.dims(),
            teacher.dims()
        )));
    }
    let s = student.to_vec()?;
    let t = teacher.to_vec()?;
    let n = t.len().max(1) as f64;
    // The variance of the global batch: under data-parallel training each rank holds a share
    // of it, and a share's own variance would scale the term differently on every rank.
    let world = crate::dist::world();
    let mut totals = [t.iter().map(|&v| v as f64).sum::<f64>(), n];
    world.all_reduce_f64(&mut totals)?;
    let mean = totals[0] / totals[1];
    let mut squares = [t.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()];
    world.all_reduce_f64(&mut squares)?;
    // A constant teacher feature has nothing to match; the floor keeps the scale finite.
    let var = (squares[0] / totals[1]).max(1e-12);
    let mse = s.iter().zip(&t).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum::<f64>() / n;
    let scale = 2.0 * weight as f64 / (n * var);
    let grad: Vec<f32> = s.iter().zip(&t).map(|(&a, &b)| (scale * (a as f64 - b as f64)) as f32).collect();
    Ok(((weight as f64 * mse / var) as f32, dev.from_host(student.dims(), &grad)?))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    pub schedule: LrSchedule,
    /// Epochs of linear warm-up from lr/10 (0 for none).
    pub warmup_epochs: f64,
    pub augment: bool,
    pub seed: u64,
    pub eval_batch_size: usize,
    /// Draw progress bars (they also hide themselves when stderr is not a terminal).
    #[serde(skip)]
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
            schedule: LrSchedule::Cosine { min_lr: 0.0 },
            warmup_epochs: 0.0,
            augment: true,
            seed: 0,
            eval_batch_size: 256,
            progress: true,
        }
    }
}

/// One line of the per-epoch JSON log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub lr: f32,
    pub train_loss: f64,
    /// Training accuracy on the augmented batches (None when the objective reads no labels and
    /// the data has none).
    pub train_top1: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_top1: Option<f64>,
    pub images_per_sec: f64,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    pub loss: f64,
    pub top1: f64,
    pub images: usize,
}

/// Errors unless `ds` holds images of the model's input shape.
pub fn check_compatible(model: &Model, ds: &Dataset) -> Result<()> {
    let want = model.arch.input_chw();
    let got = ds.image_dims();
    if got != want {
        // Commands bring data to a square net's size unless --image-size says otherwise: say
        // which two sizes disagree and what would make them agree.
        let hint = if got[0] != want[0] {
            String::new()
        } else if want[1] == want[2] {
            format!(
                "; the net was built (or imported) for {}x{} inputs: leave out --image-size to bring the data to \
                 that size, or build the net for {}x{} (`lfgcl import --input-size`, `lfgcl train --image-size`)",
                want[1], want[2], got[1], got[2]
            )
        } else {
            format!(
                "; the net was built (or imported) for {}x{} inputs, and --image-size brings data to squares only: \
                 build the net for {}x{} (`lfgcl import --input-size`)",
                want[1], want[2], got[1], got[2]
            )
        };
        return Err(Error::Shape(format!(
            "dataset {} has images {:?} but {} expects {:?} (C,H,W){hint}",
            ds.name, got, model.arch.model, want
        )));
    }
    if ds.labels.is_some() && ds.num_classes > model.arch.num_classes {
        return Err(Error::Shape(format!(
            "dataset {} has {} classes but the model outputs {}",
            ds.name, ds.num_classes, model.arch.num_classes
        )));
    }
    Ok(())
}

/// The model's input normalisation, or the statistics of `ds` when it has none yet.
pub fn normalization_for(model: &Model, ds: &Dataset) -> Result<Normalization> {
    let norm = model.normalization.clone().unwrap_or_else(|| ds.channel_stats());
    norm.check(ds.channels)?;
    Ok(norm)
}

fn upload(dev: &Device, batch: &Batch) -> Result<Tensor> {
    dev.from_host(&batch.dims, &batch.images)
}

fn progress_bar(show: bool, len: usize, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

/// Top-1 accuracy and mean cross-entropy on a labelled dataset, in inference mode. A net whose
/// outputs are not finite (the loss is NaN or infinite) gives an error, not a result.
pub fn evaluate(
    model: &mut Model,
    dev: &Device,
    ds: &Dataset,
    batch_size: usize,
    progress: bool,
) -> Result<EvalResult> {
    let r = evaluate_raw(model, dev, ds, batch_size, progress)?;
    if !r.loss.is_finite() {
        return Err(Error::Invalid(format!(
            "the {} net's outputs are not finite on {} (loss {}); its weights are finite, but too large for \
             these inputs",
            model.arch.model, ds.name, r.loss
        )));
    }
    Ok(r)
}

/// [`evaluate`], returning a non-finite loss as it is.
fn evaluate_raw(
    model: &mut Model,
    dev: &Device,
    ds: &Dataset,
    batch_size: usize,
    progress: bool,
) -> Result<EvalResult> {
    check_compatible(model, ds)?;
    let labels = ds.labels_or_err()?;
    let norm = normalization_for(model, ds)?;
    let loader = Loader::try_new(ds, batch_size, &norm)?;
    let pb = progress_bar(progress, loader.num_batches(), "eval".into());
    let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    for batch in loader.batches(0) {
        let batch = batch?;
        let logits = model.graph.forward(dev, upload(dev, &batch)?, Mode::Eval)?;
        let batch_labels: Vec<u32> = batch.indices.iter().map(|&i| labels[i]).collect();
        let ce = dev.softmax_cross_entropy(&logits, &batch_labels)?;
        loss += ce.loss as f64 * batch.len() as f64;
        correct += ce.correct;
        seen += batch.len();
        pb.inc(1);
    }
    pb.finish_and_clear();
    if seen == 0 {
        return Err(Error::Invalid(format!("dataset {} is empty", ds.name)));
    }
    Ok(EvalResult { loss: loss / seen as f64, top1: correct as f64 / seen as f64, images: seen })
}

/// The name of the first parameter or buffer holding a NaN or infinity, if any.
pub fn first_non_finite(model: &Model) -> Result<Option<String>> {
    for (name, entry) in model.graph.state() {
        if let crate::nn::StateRef::F32(t) = entry {
            if t.to_vec()?.iter().any(|x| !x.is_finite()) {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

impl TrainConfig {
    /// Every number must be finite and in range: a NaN or negative rate would train silently.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(Error::Invalid("epochs and batch sizes must be positive".into()));
        }
        crate::limits::check_positive("learning rate", self.lr as f64)?;
        crate::limits::check_non_negative("weight decay", self.weight_decay as f64)?;
        crate::limits::check_non_negative("warm-up epochs", self.warmup_epochs)?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Invalid(format!("momentum must be in [0, 1), got {}", self.momentum)));
        }
        self.schedule.validate()
    }
}

/// Statistics of one optimisation step.
pub struct StepStats {
    pub loss: f32,
    pub correct: Option<usize>,
    /// A stop was requested (SIGINT/SIGTERM, on any rank under mpirun).
    pub stop: bool,
}

/// Forward, loss, backward and SGD update on one batch.
pub fn train_step(
    model: &mut Model,
    dev: &Device,
    batch: &Batch,
    objective: &mut Objective<'_>,
    opt: &mut Sgd,
    lr: f32,
) -> Result<StepStats> {
    let x = upload(dev, batch)?;
    let (teacher_logits, teacher_features, x) = match objective {
        Objective::Distill { teacher, feature_weight, .. } => {
            let taps = if *feature_weight > 0.0 { vec![teacher.penultimate_node()] } else { Vec::new() };
            let (t, features) = teacher.graph.forward_taps(dev, dev.copy(&x)?, Mode::Eval, &taps)?;
            (Some(t), features.into_iter().next(), x)
        }
        Objective::Labels => (None, None, x),
    };
    let trace = model.graph.forward_train(dev, x)?;
    // The feature term's gradient enters the backward pass at the student's penultimate node.
    let mut feature_loss = 0.0f32;
    let mut feature_grads = Vec::new();
    if let (Objective::Distill { feature_weight, .. }, Some(tf)) = (&*objective, &teacher_features) {
        let node = model.penultimate_node();
        let sf = trace
            .value(node)
            .ok_or_else(|| Error::Invalid("the student's penultimate features are not kept for backward".into()))?;
        let (l, g) = feature_distill(dev, sf, tf, *feature_weight)?;
        feature_loss = l;
        feature_grads.push((node, g));
    }
    let (loss, dlogits, correct) = match (objective, teacher_logits) {
        (Objective::Labels, _) => {
            let labels = batch
                .labels
                .as_ref()
                .ok_or_else(|| Error::Invalid("training with labels on a dataset that has none".into()))?;
            let ce = dev.softmax_cross_entropy(trace.output(), labels)?;
            (ce.loss, ce.dlogits, Some(ce.correct))
        }
        (Objective::Distill { temperature, .. }, Some(t)) => {
            let (kl, d) = dev.distill_kl(trace.output(), &t, *temperature)?;
            let loss = kl + feature_loss;
            // Accuracy is only reported, never trained on, and only when labels exist.
            let correct = match &batch.labels {
                Some(l) => Some(dev.softmax_cross_entropy(trace.output(), l)?.correct),
                None => None,
            };
            (loss, d, correct)
        }
        (Objective::Distill { .. }, None) => unreachable!("teacher logits computed above"),
    };
    if !loss.is_finite() {
        return Err(Error::Diverged(format!("loss is {loss} (lower the learning rate)")));
    }
    model.graph.zero_grad();
    model.graph.backward_with(dev, trace, dlogits, feature_grads)?;
    // Under mpirun: gradients (and the loss) summed over the ranks' shares of the global batch.
    let t = crate::dist::dp::reduce_step(dev, &mut model.graph, loss, correct)?;
    opt.step(dev, &mut model.graph, lr)?;
    Ok(StepStats { loss: t.loss, correct: t.correct, stop: t.stop })
}

/// Trains for `cfg.epochs` epochs, evaluating on `test` after each one, and calls `on_epoch`
/// with the epoch's log and the model (to save checkpoints and logs as the run goes).
pub fn fit(
    model: &mut Model,
    dev: &Device,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    objective: &mut Objective<'_>,
    on_epoch: &mut dyn FnMut(&EpochLog, &Model) -> Result<()>,
) -> Result<Vec<EpochLog>> {
    fit_from(model, dev, train, test, cfg, objective, None, &mut |log, m, _| on_epoch(log, m))
}

/// The batches training on `ds` with `cfg` draws, epoch by epoch: shuffled and augmented from
/// `cfg.seed`, the last partial batch dropped. The fine-tuning proxy draws the same.
pub fn training_loader<'a>(ds: &'a Dataset, cfg: &TrainConfig, norm: &Normalization) -> Result<Loader<'a>> {
    let loader = Loader::try_new(ds, cfg.batch_size, norm)?.shuffle(cfg.seed).drop_last(ds.len() > cfg.batch_size);
    Ok(if cfg.augment { loader.augment(Augment::standard(), cfg.seed ^ 0x5eed) } else { loader })
}

/// Where an interrupted run stopped: the epochs it finished (their logs) and the optimiser's
/// momentum buffers after the last of them. The model is the caller's, restored alongside.
pub struct ResumePoint {
    pub logs: Vec<EpochLog>,
    pub momentum: Vec<Option<Tensor>>,
}

/// [`fit`], optionally continuing from a [`ResumePoint`]: the shuffling and augmentation of an
/// epoch depend only on the seed and the epoch number, so a run resumed at an epoch boundary with
/// the same model and momentum buffers computes exactly what the uninterrupted run would.
/// `on_epoch` also sees the optimiser, to save its state.
#[allow(clippy::too_many_arguments)]
pub fn fit_from(
    model: &mut Model,
    dev: &Device,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    objective: &mut Objective<'_>,
    resume: Option<ResumePoint>,
    on_epoch: &mut dyn FnMut(&EpochLog, &Model, &Sgd) -> Result<()>,
) -> Result<Vec<EpochLog>> {
    check_compatible(model, train)?;
    if let Some(t) = test {
        check_compatible(model, t)?;
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(Error::Invalid("epochs and batch size must be positive".into()));
    }
    cfg.validate()?;
    if train.is_empty() {
        return Err(Error::Invalid(format!("dataset {} holds no training images", train.name)));
    }
    if matches!(objective, Objective::Labels) {
        train.labels_or_err()?;
    }
    let norm = normalization_for(model, train)?;
    model.normalization = Some(norm.clone());
    let loader = training_loader(train, cfg, &norm)?;
    let mut opt = Sgd::new(cfg.momentum, cfg.weight_decay, cfg.nesterov)?;
    let steps = loader.num_batches();
    crate::dist::dp::check_batch(cfg.batch_size, train.len())?;
    // Not preallocated: --epochs is a user's number.
    let mut logs = Vec::new();
    if let Some(r) = resume {
        if r.logs.len() > cfg.epochs {
            return Err(Error::Invalid(format!(
                "the saved run has done {} epochs, more than the {} asked for",
                r.logs.len(),
                cfg.epochs
            )));
        }
        logs = r.logs;
        opt.set_momentum_buffers(r.momentum);
    }
    // Under mpirun: every rank starts from rank 0's model, momentum and finished epochs, and
    // batch norms use the statistics of the whole global batch.
    let _sync_bn = if crate::dist::world().size() > 1 {
        let mut momentum: Vec<Option<Tensor>> = opt
            .momentum_buffers()
            .iter()
            .map(|m| m.as_ref().map(|t| dev.copy(t)).transpose())
            .collect::<Result<_>>()?;
        crate::dist::dp::sync_start(dev, &mut model.graph, &mut momentum, &mut logs)?;
        opt.set_momentum_buffers(momentum);
        Some(crate::dist::sync_bn())
    } else {
        None
    };
    for epoch in logs.len()..cfg.epochs {
        let pb = progress_bar(cfg.progress, steps, format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut labelled, mut seen) = (0.0f64, 0usize, 0usize, 0usize);
        let mut lr = cfg.lr;
        for (step, batch) in loader.batches(epoch).enumerate() {
            let batch = crate::dist::dp::shard_batch(batch?)?;
            let progress = epoch as f64 + step as f64 / steps.max(1) as f64;
            lr = cfg.schedule.lr(cfg.lr, progress, cfg.epochs, cfg.warmup_epochs);
            if !(lr.is_finite() && lr >= 0.0) {
                return Err(Error::Invalid(format!(
                    "the schedule gives learning rate {lr} at epoch {} step {}",
                    epoch + 1,
                    step + 1
                )));
            }
            let s = train_step(model, dev, &batch, objective, &mut opt, lr).map_err(|e| match e {
                Error::Diverged(m) => Error::Diverged(format!("at epoch {} step {}: {m}", epoch + 1, step + 1)),
                e => e,
            })?;
            // Counted over the global batch (this rank's share times the ranks).
            let global = batch.len() * crate::dist::world().size();
            loss_sum += s.loss as f64 * global as f64;
            seen += global;
            if let Some(c) = s.correct {
                correct += c;
                labelled += global;
            }
            pb.inc(1);
            if s.stop {
                pb.abandon();
                return Err(Error::Interrupted(format!(
                    "training stopped in epoch {} of {} (after step {} of {steps})",
                    epoch + 1,
                    cfg.epochs,
                    step + 1
                )));
            }
            let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
            let acc = if labelled > 0 {
                format!(" acc {:.2}%", 100.0 * correct as f64 / labelled as f64)
            } else {
                String::new()
            };
            pb.set_message(format!("loss {:.4}{acc} lr {lr:.4} {rate:.0} img/s", loss_sum / seen as f64));
        }
        dev.synchronize()?;
        // Never save or evaluate a net whose weights or statistics went non-finite.
        if let Some(name) = first_non_finite(model)? {
            return Err(Error::Diverged(format!(
                "in epoch {} (after step {steps}): {name} holds a non-finite value (lower the learning rate)",
                epoch + 1
            )));
        }
        let train_secs = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let eval = match test {
            Some(t) if t.labels.is_some() => Some(evaluate_raw(model, dev, t, cfg.eval_batch_size, cfg.progress)?),
            _ => None,
        };
        // Finite weights whose outputs overflow are a divergence too: nothing of it is saved.
        if let Some(e) = eval.filter(|e| !e.loss.is_finite()) {
            return Err(Error::Diverged(format!(
                "at epoch {} step {steps}: the evaluation loss on {} is {} (the net's outputs are not finite; \
                 lower the learning rate)",
                epoch + 1,
                test.map_or("", |t| t.name.as_str()),
                e.loss
            )));
        }
        let log = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: (labelled > 0).then(|| correct as f64 / labelled as f64),
            test_loss: eval.map(|e| e.loss),
            test_top1: eval.map(|e| e.top1),
            images_per_sec: seen as f64 / train_secs.max(1e-9),
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&log, model, &opt)?;
        logs.push(log);
    }
    Ok(logs)
}
