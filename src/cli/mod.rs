//! The `lfgcl` command line: argument parsing, progress and reporting only. Every subcommand is
//! a thin layer over library functions, so tests reach the same code through `lfgcl::cli::run`.

mod commands;
mod info;
mod interop;

use crate::backend::{DeviceChoice, Precision};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

pub use commands::run_command;

#[derive(Parser, Debug)]
#[command(
    name = "lfgcl",
    version,
    about = "Label-free, globally searched network pruning (LFGCL) on a from-scratch CNN engine",
    long_about = "lfgcl trains CNNs (torchvision's ResNet-18/34/50/101/152, ResNeXt and wide ResNets and \
MobileNetV2, imported or trained here; the CIFAR ResNet-20..110, VGG-16 and a small CNN), searches \
the keep ratio of every prunable channel group at once with a DDPG agent scored without labels, \
prunes, fine-tunes and evaluates them, and exports them to ONNX. It runs on the CPU everywhere and on \
NVIDIA GPUs through hand-written CUDA kernels when one is found.\n\nStart with `lfgcl demo`, which trains a small net on \
the built-in synthetic data in a couple of minutes and needs no download.",
    after_help = "Data specs (--data):\n  synthetic | fashion-mnist[:DIR] | mnist:DIR | cifar10:DIR | cifar100:DIR | folder:DIR\n\nRun `lfgcl <command> --help` for the options of each command."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Where to run: `auto` uses a CUDA GPU when one is found, else the CPU.
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Convolution arithmetic on CUDA: `f32` (exact), `tf32` or `bf16` tensor cores (forward and
    /// input gradient; docs/devices.md gives the accuracy bounds). The CPU computes in f32 only.
    #[arg(long, global = true, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// The widest vector instructions the CPU kernels may use: `avx512`, `avx2` or `portable`
    /// (default: `$LFGCL_CPU_ISA`, else the widest the CPU has). An AVX-512 machine measures what
    /// AVX2 users get; results keep their bits, only the speed changes (the GEMM library behind
    /// 1x1 convolutions and linears picks its own).
    #[arg(long, global = true, value_name = "ISA")]
    pub cpu_isa: Option<String>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model from scratch (or from --init) with labels.
    Train(TrainArgs),
    /// Top-1 accuracy and loss of a checkpoint on a labelled dataset.
    Eval(EvalArgs),
    /// Layer table of a model or checkpoint: output shapes, params, MACs, totals.
    Info(InfoArgs),
    /// The whole method on the built-in synthetic data (no download, a few minutes on 2 cores):
    /// train, LFGCL search, random-search and uniform baselines, label-free fine-tuning, evaluation.
    Demo(DemoArgs),
    /// Measure throughput: `cpu` (GEMM peak, inference and training images/s), `search`
    /// (candidates/s), `kernels` (CUDA kernels against the device's measured peaks).
    Bench(BenchArgs),
    /// Prune a checkpoint with a given policy (--ratios FILE) or uniformly at a budget (--uniform).
    PruneApply(PruneApplyArgs),
    /// LFGCL: search every layer's keep ratio at once with a DDPG agent, scored without labels.
    Search(SearchArgs),
    /// Fine-tune a pruned net: label-free distillation from its baseline (or with labels).
    Finetune(FinetuneArgs),
    /// Search, prune, fine-tune and evaluate in one command, next to uniform and random-search baselines.
    Pipeline(PipelineArgs),
    /// Turn a PyTorch state dict (.safetensors; torchvision or CIFAR names) into an lfgcl checkpoint.
    Import(ImportArgs),
    /// Export a checkpoint, pruned or not, to ONNX (BN folded, dynamic batch).
    ExportOnnx(ExportOnnxArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The PyTorch state dict: a .safetensors file (for a .pt/.th pickle, lfgcl prints the
    /// command of scripts/torch_to_safetensors.py that converts it).
    #[arg(long)]
    pub from: PathBuf,
    /// The architecture: a torchvision family (resnet18..resnet152, resnext50_32x4d,
    /// wide_resnet50_2, mobilenet_v2[_<mult>]), a CIFAR one (resnet20..resnet110, any
    /// resnet<6n+2> or cifar_resnet<6n+2>, vgg16) or smallcnn (docs/models.md). Widths, pruned
    /// or not, are read from the tensor shapes.
    #[arg(long)]
    pub model: String,
    /// The lfgcl checkpoint to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Per-channel input mean the net was trained with, on pixels scaled to [0,1] (e.g.
    /// 0.4914,0.4822,0.4465). Without --mean/--std the normalisation is recorded as unknown.
    #[arg(long, value_delimiter = ',', requires = "std", value_parser = parse_f32)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel input std (e.g. 0.2470,0.2435,0.2616).
    #[arg(long, value_delimiter = ',', requires = "mean", value_parser = parse_f32)]
    pub std: Option<Vec<f32>>,
    /// Check the classifier has this many outputs (default: whatever it has).
    #[arg(long)]
    pub classes: Option<usize>,
    /// The input images' size: `S` for SxS, or `HxW` (e.g. 224 or 256x192). Default: the
    /// family's usual input (224 for torchvision's ResNets and MobileNetV2, 32 for the CIFAR
    /// nets). Search, fine-tuning and evaluation then bring the data to this size.
    #[arg(long, value_parser = parse_input_size)]
    pub input_size: Option<InputSize>,
}

/// `--input-size`: `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputSize(pub [usize; 2]);

fn parse_input_size(s: &str) -> std::result::Result<InputSize, String> {
    let bad = || format!("'{s}' is not an image size: expected S or HxW, such as 224 or 256x192");
    let dims: Vec<usize> = s
        .split(['x', 'X'])
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<std::result::Result<_, _>>()?;
    match dims[..] {
        [s] => Ok(InputSize([s, s])),
        [h, w] => Ok(InputSize([h, w])),
        _ => Err(bad()),
    }
}

#[derive(Args, Debug, Clone)]
pub struct ExportOnnxArgs {
    /// The lfgcl checkpoint, pruned or not.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// The .onnx file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep batch norms as BatchNormalization nodes (default: folded into the conv/linear weights).
    #[arg(long)]
    pub keep_bn: bool,
    /// ONNX opset (13 to 21).
    #[arg(long, default_value_t = 13)]
    pub opset: i64,
}

#[derive(Args, Debug, Clone)]
pub struct FinetuneOpts {
    /// Fine-tuning epochs.
    #[arg(long = "ft-epochs", default_value_t = 10)]
    pub epochs: usize,
    /// Fine-tuning base learning rate (cosine schedule).
    #[arg(long = "ft-lr", default_value_t = 0.01, value_parser = parse_f32)]
    pub lr: f32,
    #[arg(long = "ft-batch-size", default_value_t = 128)]
    pub batch_size: usize,
    /// Distillation temperature.
    #[arg(long, default_value_t = 4.0, value_parser = parse_f32)]
    pub temperature: f32,
    /// Fine-tune with labels (cross-entropy) instead of label-free distillation.
    #[arg(long)]
    pub labels: bool,
    /// Feature distillation beside KL: this weight times the mean squared difference of the
    /// student's and the baseline's penultimate features over their variance (0: KL only).
    /// Default: 1 when the pruned net keeps the baseline's penultimate width, 0 when it does not
    /// (--streams) or with --labels. Given above 0, refused with --labels and --streams.
    #[arg(long = "ft-feature-weight", value_parser = parse_f32)]
    pub feature_weight: Option<f32>,
}

#[derive(Args, Debug, Clone)]
pub struct FinetuneArgs {
    /// The pruned checkpoint to fine-tune.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// The unpruned baseline it learns from (required for label-free distillation).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub ft: FinetuneOpts,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory: model.safetensors, train_log.jsonl, summary.json, training.svg.
    #[arg(long, default_value = "runs/finetune")]
    pub out: PathBuf,
    /// Continue the interrupted fine-tuning saved in --out (same flags), from its last finished
    /// epoch; the result is bit-identical to an uninterrupted run on the CPU.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// The trained baseline checkpoint.
    #[arg(long)]
    pub ckpt: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub prune: PruneArgs,
    #[command(flatten)]
    pub search: SearchOpts,
    #[command(flatten)]
    pub ft: FinetuneOpts,
    /// The pruned nets to make, in order: lfgcl (the search), random (random search with the same
    /// number of evaluations), uniform (same keep ratio everywhere, L1), uniform-fpgm, global
    /// (one threshold over mean-normalised filter L1 norms). Every one meets the same exact
    /// budget and is fine-tuned the same way.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lfgcl,random,uniform")]
    pub methods: Vec<crate::prune::baselines::Method>,
    /// Skip the random-search baseline.
    #[arg(long)]
    pub no_random: bool,
    /// Skip the uniform-pruning baseline.
    #[arg(long)]
    pub no_uniform: bool,
    /// Classify each LFGCL candidate on this many test images, for the reward/accuracy report
    /// only (0: none; default: the whole test split).
    #[arg(long)]
    pub report_accuracy: Option<usize>,
    /// Fine-tuning proxy: fine-tune the K best candidates of each search (at least --proxy-spread
    /// apart) for --proxy-steps steps of the label-free fine-tuning, and keep the one whose
    /// outputs then match the baseline's best (lowest KL on the reward's unlabeled images)
    /// instead of the best reward. Applies to lfgcl and random search alike; 0: off.
    #[arg(long, default_value_t = 0)]
    pub proxy_top: usize,
    /// Steps (batches of --ft-batch-size, at the fine-tuning's starting learning rate, held
    /// constant) of each --proxy-top candidate's short fine-tuning.
    #[arg(long, default_value_t = 50)]
    pub proxy_steps: usize,
    /// Least mean absolute difference of keep ratios between two --proxy-top candidates, so
    /// that the proxy compares different policies rather than near-copies of the best.
    #[arg(long, default_value_t = 0.1)]
    pub proxy_spread: f64,
    /// Skip the deployment table (each pruned net against the baseline in lfgcl and onnxruntime).
    #[arg(long)]
    pub no_deploy_bench: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "runs/pipeline")]
    pub out: PathBuf,
    /// Continue an interrupted pipeline in --out: fine-tuning stages go on from their last
    /// finished epoch; the searches run again (deterministic on the CPU, so they find the same nets).
    #[arg(long)]
    pub resume: bool,
}

/// Search settings shared by `search`, `pipeline` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct SearchOpts {
    /// How many unlabeled images the reward is computed on.
    #[arg(long, default_value_t = 256)]
    pub images: usize,
    #[arg(long, default_value_t = 300)]
    pub episodes: usize,
    /// Candidates proposed and scored per episode (together), or `auto`: 8 on the CPU, and on a
    /// GPU as many as its free memory holds (up to 64).
    #[arg(long, default_value = "8", value_parser = parse_candidates)]
    pub candidates_per_step: CandidatesPerStep,
    /// Save the search state at most every this many seconds (and at the end, and on Ctrl-C or
    /// SIGTERM); 0 saves after every episode.
    #[arg(long, default_value_t = 5.0)]
    pub checkpoint_every: f64,
    /// Agent gradient steps per episode after warm-up (default: 4 x candidates per step, which
    /// found better policies than 1 x in every seed on the synthetic ResNet-20; see docs/search.md).
    #[arg(long)]
    pub updates_per_episode: Option<usize>,
    /// Episodes of random actions before the agent learns.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Features the reward compares: any of penultimate, logits, stages (comma separated).
    #[arg(long, default_value = "penultimate")]
    pub taps: String,
    /// Batch-norm statistics a candidate is scored with: `recalibrate` (re-estimated on the
    /// unlabeled images first; the default, it ranks candidates by accuracy far better) or
    /// `running` (the baseline's running statistics, as gathered).
    #[arg(long, value_enum, default_value_t = BnStats::Recalibrate)]
    pub bn_stats: BnStats,
    /// Exploration noise at the end of warm-up (truncated normal around the actor's output).
    #[arg(long, default_value_t = 0.5, value_parser = parse_f32)]
    pub noise: f32,
    /// Per-episode decay of the exploration noise.
    #[arg(long, default_value_t = 0.95, value_parser = parse_f32)]
    pub noise_decay: f32,
    /// Floor of the exploration noise (AMC has none; 0.05 keeps the search exploring once the
    /// decayed noise would otherwise stop it).
    #[arg(long, default_value_t = 0.05, value_parser = parse_f32)]
    pub noise_min: f32,
    #[arg(long, default_value_t = 1e-4, value_parser = parse_f32)]
    pub actor_lr: f32,
    #[arg(long, default_value_t = 1e-3, value_parser = parse_f32)]
    pub critic_lr: f32,
    /// Transitions kept in the replay buffer.
    #[arg(long, default_value_t = 2000)]
    pub replay: usize,
}

/// Batch-norm statistics a candidate is scored with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BnStats {
    /// Re-estimated on the unlabeled images before scoring.
    Recalibrate,
    /// The baseline's running statistics, as gathered.
    Running,
}

/// `--candidates-per-step`: a number, or chosen from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidatesPerStep {
    Auto,
    Fixed(usize),
}

fn parse_candidates(s: &str) -> std::result::Result<CandidatesPerStep, String> {
    if s == "auto" {
        return Ok(CandidatesPerStep::Auto);
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=crate::search::MAX_CANDIDATES_PER_STEP).contains(&n) => Ok(CandidatesPerStep::Fixed(n)),
        _ => Err(format!("expected `auto` or a count from 1 to {}", crate::search::MAX_CANDIDATES_PER_STEP)),
    }
}

#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// The trained checkpoint (the baseline whose features candidates must preserve).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Unlabeled images: a folder of images, or any dataset spec (its labels are dropped).
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Side length images are brought to (default: the checkpoint's input side). Image folders
    /// are resized; IDX and CIFAR data are resized when it differs from their own size.
    #[arg(long)]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub prune: PruneArgs,
    #[command(flatten)]
    pub search: SearchOpts,
    /// ddpg (LFGCL) or random (random search with the same evaluation budget).
    #[arg(long, value_enum, default_value_t = crate::search::Strategy::Ddpg)]
    pub strategy: crate::search::Strategy,
    /// Report each candidate's top-1 on this many labelled test images (labels are used for the
    /// report only, never by the search).
    #[arg(long)]
    pub report_accuracy: Option<usize>,
    /// Labelled data for --report-accuracy (default: the test split of --data).
    #[arg(long)]
    pub report_data: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory: candidates.jsonl, best_policy.json, pruned.safetensors, plots, summary.
    #[arg(long, default_value = "runs/search")]
    pub out: PathBuf,
    /// Continue the search saved in --out.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// Also prune each residual stage's stream channels (coupled across the stage), not only
    /// the free inner channels of each block.
    #[arg(long)]
    pub streams: bool,
    /// How to pick the channels to keep in each group.
    #[arg(long, value_enum, default_value_t = crate::prune::Criterion::L1)]
    pub criterion: crate::prune::Criterion,
    /// Round kept channel counts up to a multiple of this (1, 2, 4, 8 or 16). Default: 8 for
    /// torchvision's ResNets and MobileNetV2 (what deployment runtimes run fastest), 1 for the
    /// CIFAR nets.
    #[arg(long)]
    pub round: Option<usize>,
    /// Smallest keep ratio of any group.
    #[arg(long, default_value_t = 0.2)]
    pub lower: f64,
    /// FLOPs budget: keep at most this fraction of the model's FLOPs (MACs).
    #[arg(long)]
    pub flops: Option<f64>,
    /// Params budget: keep at most this fraction of the model's params.
    #[arg(long)]
    pub params: Option<f64>,
    /// With --streams: rank each stream on its own, as before issue 21, instead of keeping the
    /// channels a shortcut copies jointly with the stream they come from (comparisons only).
    #[arg(long, hide = true)]
    pub independent_streams: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PruneApplyArgs {
    /// The trained checkpoint to prune.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Policy: a JSON list of keep ratios (one per group, see `lfgcl info --groups`) or a policy
    /// file written by `lfgcl search`. With a budget, the ratios are projected onto it.
    #[arg(long, conflicts_with = "uniform")]
    pub ratios: Option<PathBuf>,
    /// Keep the same fraction of every group, the largest that meets the budget.
    #[arg(long)]
    pub uniform: bool,
    /// Global magnitude pruning: one threshold over every group's filter L1 norms (each group's
    /// divided by their mean), the lowest that meets the budget, the remainder spent on the next
    /// channels that fit.
    #[arg(long, conflicts_with_all = ["ratios", "uniform"])]
    pub global: bool,
    /// With --uniform: spend what the common ratio leaves of the budget, one channel at a time on
    /// the groups furthest below full width (the exact budget the pipeline's baselines use).
    #[arg(long, requires = "uniform")]
    pub exact: bool,
    #[command(flatten)]
    pub prune: PruneArgs,
    /// The pruned checkpoint to write (its policy goes beside it as .policy.json).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset: synthetic, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR.
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Use at most this many training images (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use at most this many test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Side length images are brought to. Image folders are resized to it (default 32, or the
    /// checkpoint's input side for commands that read one); IDX, CIFAR and synthetic data keep
    /// their own size unless it is given, then are resized once at load (bilinear, as
    /// torchvision's Resize), e.g. Fashion-MNIST at 64 for a torchvision net.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Image folders: decode as grayscale.
    #[arg(long)]
    pub grayscale: bool,
    /// Augmentation and preprocessing: auto (imagenet for image folders at --image-size 64 or
    /// more, else cifar), cifar (whole image resized to a square; pad-4 crop + flip when
    /// training), imagenet (RandomResizedCrop + flip when training, resize to size x 8/7 + center
    /// crop otherwise, ImageNet mean/std; folders only), none (square, no augmentation).
    #[arg(long, value_enum, default_value_t = AugmentArg::Auto)]
    pub augment: AugmentArg,
    /// Image folders: a split whose decoded images take at most this many MB is decoded once into
    /// memory, a larger one is streamed from disk batch by batch.
    #[arg(long, default_value_t = 4096)]
    pub cache_mb: u64,
}

/// `--augment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AugmentArg {
    Auto,
    Cifar,
    Imagenet,
    None,
}

impl AugmentArg {
    /// The augmentation for `--data spec` at `--image-size` (folders' default side when `None`).
    pub fn resolve(self, spec: &str, image_size: Option<usize>) -> crate::data::AugmentKind {
        use crate::data::AugmentKind as K;
        match self {
            AugmentArg::Auto => {
                K::auto(crate::data::is_folder_spec(spec), image_size.unwrap_or(crate::data::FOLDER_DEFAULT_SIDE))
            }
            AugmentArg::Cifar => K::Cifar,
            AugmentArg::Imagenet => K::Imagenet,
            AugmentArg::None => K::None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110, vgg16 or smallcnn [default: resnet20;
    /// with --init, the checkpoint's].
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output directory: model.safetensors (saved after every epoch), train_log.jsonl, summary.json, training.svg.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.1, value_parser = parse_f32)]
    pub lr: f32,
    /// constant, cosine, step (x0.1 at 50% and 75%) or step:E1,E2[@GAMMA].
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Epochs of linear learning-rate warm-up from lr/10.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 0.9, value_parser = parse_f32)]
    pub momentum: f32,
    #[arg(long, default_value_t = 5e-4, value_parser = parse_f32)]
    pub weight_decay: f32,
    #[arg(long)]
    pub nesterov: bool,
    /// Disable pad-4 random crops and horizontal flips.
    #[arg(long)]
    pub no_augment: bool,
    /// Number of classes (default: the dataset's).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Start from this checkpoint instead of a fresh initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the interrupted run saved in --out (same flags), from its last finished epoch.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (.safetensors written by lfgcl).
    #[arg(long)]
    pub ckpt: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Which split to evaluate on: test or train.
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// A model name (resnet56, vgg16, ...) ...
    #[arg(long, conflicts_with = "ckpt")]
    pub model: Option<String>,
    /// ... or a checkpoint, pruned or not.
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// Input shape CxHxW (with --model).
    #[arg(long, default_value = "3x32x32")]
    pub input: String,
    /// Number of classes (with --model).
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Show every node (ReLU, flatten, adds) instead of the layers that carry weights or change shapes.
    #[arg(long)]
    pub all: bool,
    /// Print the table as JSON instead.
    #[arg(long)]
    pub json: bool,
    /// List the prunable channel groups (with --streams, the residual streams too).
    #[arg(long)]
    pub groups: bool,
    /// With --groups: include each residual stage's stream group.
    #[arg(long)]
    pub streams: bool,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Training epochs of the baseline on the synthetic data.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Search episodes (a fifth of them, at least 2, random warm-up).
    #[arg(long, default_value_t = 40)]
    pub episodes: usize,
    /// Fine-tuning epochs of each pruned net.
    #[arg(long, default_value_t = 3)]
    pub ft_epochs: usize,
    /// FLOPs budget.
    #[arg(long, default_value_t = 0.5)]
    pub flops: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What `lfgcl bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    /// SGEMM peak, then inference and training step as fractions of it (CPU), against
    /// onnxruntime and PyTorch eager on the same weights and threads.
    Cpu,
    /// One model's inference on --device.
    Infer,
    /// One model's training step on --device.
    Train,
    /// Candidate scoring rate on --ckpt, and with --strategy the whole search loop.
    Search,
    /// Every CUDA kernel against the device's peaks.
    Kernels,
    /// Baseline and pruned net in lfgcl and onnxruntime: images/s and the speed-up from pruning.
    Deploy,
    /// An image folder's decode rate per core and the streaming loader's rate, next to a
    /// training step's images/s (--data, --image-size, --model, --train-batch).
    Data,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure: `cpu` (SGEMM peak, inference, training step, as fractions of the peak,
    /// next to onnxruntime and PyTorch eager),
    /// `infer` or `train` (one model on --device, --batch / --train-batch), `search` (candidate
    /// evaluations per second on --ckpt), `kernels` (every CUDA kernel against the device's peaks),
    /// or `deploy` (--ckpt and --pruned in lfgcl and onnxruntime, same threads, speed-up vs MACs).
    #[arg(value_enum, default_value_t = BenchWhat::Cpu)]
    pub what: BenchWhat,
    /// `bench search`: also run the whole search loop end to end with this strategy for
    /// --episodes episodes of --candidates candidates, and compare it with the raw scoring rate.
    #[arg(long, value_enum)]
    pub strategy: Option<crate::search::Strategy>,
    /// `bench search --strategy`: episodes of the end-to-end run.
    #[arg(long, default_value_t = 20)]
    pub episodes: usize,
    /// Checkpoint for `bench search` and `bench deploy` (the baseline), or the net `bench
    /// infer|train` time instead of --model (a pruned net as saved, e.g. with --layers).
    #[arg(long)]
    pub ckpt: Option<PathBuf>,
    /// `bench deploy`: the pruned net (without it: lfgcl's CPU throughput against onnxruntime's).
    #[arg(long)]
    pub pruned: Option<PathBuf>,
    /// `bench deploy`: minimum seconds of timed runs per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub min_seconds: f64,
    /// `bench cpu` and `bench deploy`: rounds the measurements are interleaved in (spreads the
    /// load of other processes over every runtime and net).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// `bench deploy` and `bench cpu`: keep the exported ONNX files (and `bench cpu`'s
    /// checkpoints) here (default: a temporary folder).
    #[arg(long)]
    pub onnx_dir: Option<PathBuf>,
    /// `bench deploy` and `bench cpu`: do not time onnxruntime.
    #[arg(long)]
    pub no_ort: bool,
    /// `bench cpu`: do not time PyTorch eager.
    #[arg(long)]
    pub no_torch: bool,
    /// `bench infer`: also time each step of the forward (each layer, or fused conv chain) and
    /// sum them by kind: where the time goes (with --json, written beside the throughput as
    /// `layers`). `bench train`: the same for the training step, each layer's forward, input
    /// gradient and weight gradient apart, then the loss and the SGD step.
    #[arg(long)]
    pub layers: bool,
    /// `bench search`: unlabeled images per candidate; `bench data`: images pulled through the
    /// loader.
    #[arg(long, default_value_t = 256)]
    pub images: usize,
    /// `bench search`: candidates to time.
    #[arg(long, default_value_t = 16)]
    pub candidates: usize,
    /// `bench search`: keep ratio of every group.
    #[arg(long, default_value_t = 0.5)]
    pub keep: f64,
    /// Model (default resnet20); `bench cpu` takes a comma-separated list (default
    /// resnet20,resnet56).
    #[arg(long, default_value = "", hide_default_value = true, value_parser = BenchModel::parse)]
    pub model: BenchModel,
    /// Inference batch size (default 64; `bench cpu` and `bench deploy` take a list, default 1,64).
    #[arg(long, value_delimiter = ',')]
    pub batch: Option<Vec<usize>>,
    /// Training-step batch size.
    #[arg(long, default_value_t = 128)]
    pub train_batch: usize,
    /// Timed repetitions per measurement (default 5 for cpu/infer/train/search, 100 per kernel;
    /// `bench cpu` spreads them over --rounds, at least one per round).
    #[arg(long)]
    pub reps: Option<usize>,
    /// `bench kernels`: only cases whose key contains this string (e.g. `conv_fwd`).
    #[arg(long)]
    pub filter: Option<String>,
    /// `bench kernels`: do not flush L2 before memory-bound cases.
    #[arg(long)]
    pub no_flush: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// `bench data`: the image folder.
    #[arg(long)]
    pub data: Option<String>,
    /// The side of the input images: `bench data` brings its images to it (default 224);
    /// `bench cpu|infer|train` build their models for it (default: each family's usual input,
    /// 32x32, 28x28 for the small CNN, 224x224 for the torchvision families).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// `bench data`: the transforms (auto: imagenet at 64 or more).
    #[arg(long, value_enum, default_value_t = AugmentArg::Auto)]
    pub augment: AugmentArg,
}

/// `bench --model`: one model name, which `bench cpu` reads as a comma-separated list; it
/// dereferences to the name as given, or to `resnet20` when none was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchModel {
    given: Option<String>,
}

impl BenchModel {
    const DEFAULT: &'static str = "resnet20";
    /// `bench cpu`'s models when --model is not given.
    pub const CPU_DEFAULT: [&'static str; 2] = ["resnet20", "resnet56"];

    fn parse(s: &str) -> Result<BenchModel, String> {
        let s = s.trim();
        Ok(BenchModel { given: (!s.is_empty()).then(|| s.to_string()) })
    }

    /// The name given with --model, if one was.
    pub fn given(&self) -> Option<&str> {
        self.given.as_deref()
    }

    /// The models `bench cpu` measures: the list given, or resnet20 and resnet56.
    pub fn cpu_models(&self) -> Vec<String> {
        match &self.given {
            Some(list) => list.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect(),
            None => Self::CPU_DEFAULT.iter().map(|m| m.to_string()).collect(),
        }
    }
}

impl std::ops::Deref for BenchModel {
    type Target = str;
    fn deref(&self) -> &str {
        self.given.as_deref().unwrap_or(Self::DEFAULT)
    }
}

/// A 32-bit float flag: any number whose magnitude fits an f32. A value beyond that range is
/// refused as it was given (`1e308`), where a plain parse would have made it `inf`.
fn parse_f32(s: &str) -> std::result::Result<f32, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && v.abs() > f32::MAX as f64 {
        return Err(format!("{s} is out of range: this flag takes numbers of magnitude at most {:e}", f32::MAX));
    }
    Ok(v as f32)
}

/// A clap error as one `error:` line: the message, its continuation lines joined, without the
/// usage block (`lfgcl <command> --help` prints it).
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let body = text.split("\n\nUsage:").next().unwrap_or_default();
    let body = body.split("\n\nFor more information").next().unwrap_or_default();
    let mut line = body.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    if !line.starts_with("error:") {
        line = format!("error: {line}");
    }
    line + " (see --help)"
}

/// Parses `args` (including the program name) and runs the command; returns the process exit
/// code. Errors, flag errors included, are printed as one `error:` line on stderr, with exit code 1.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        // --help and --version print to stdout and succeed.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e));
            return 1;
        }
    };
    match run_command(cli) {
        Ok(()) => 0,
        Err(e) => {
            let w = crate::dist::world();
            let rank = if w.size() > 1 { format!("rank {} of {}: ", w.rank(), w.size()) } else { String::new() };
            eprintln!("error: {rank}{e}");
            1
        }
    }
}

/// Entry point of the binary. Under `mpirun` it first joins the process group (and refuses to run
/// when built without MPI); ranks other than 0 print nothing on stdout.
pub fn main() -> ! {
    // Before any other thread starts (MPI's included): they inherit it.
    crate::backend::cpu::denormals::flush_unless_kept();
    let guard = match crate::dist::init() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    };
    if !crate::dist::world().is_root() {
        silence_stdout();
    }
    let code = run(std::env::args_os());
    let w = crate::dist::world();
    if code != 0 && w.size() > 1 {
        // Other ranks may be waiting on this one in a collective: end the whole job (mpirun
        // names this rank).
        w.abort(code);
    }
    guard.finalize();
    std::process::exit(code)
}

/// Points stdout at /dev/null: only rank 0 reports (errors still go to stderr).
fn silence_stdout() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto the process's own stdout descriptor; `null` stays valid for the call.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench_args(args: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(["lfgcl", "bench"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bench(a) => a,
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn bench_model_defaults_to_resnet20_and_bench_cpu_to_resnet20_and_56() {
        let a = bench_args(&["infer"]);
        assert_eq!(&*a.model, "resnet20");
        assert_eq!(a.model.given(), None);
        assert_eq!(a.model.cpu_models(), ["resnet20", "resnet56"]);
        let a = bench_args(&["cpu", "--model", "resnet32"]);
        assert_eq!((&*a.model, a.model.cpu_models()), ("resnet32", vec!["resnet32".to_string()]));
        let a = bench_args(&["cpu", "--model", "smallcnn, resnet110"]);
        assert_eq!(a.model.cpu_models(), ["smallcnn", "resnet110"]);
    }
}
