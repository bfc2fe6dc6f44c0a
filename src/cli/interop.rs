//! `lfgcl import`, `lfgcl export-onnx` and `lfgcl bench deploy`: argument handling and printing
//! over `crate::interop`.

use super::{BenchArgs, ExportOnnxArgs, GlobalArgs, ImportArgs};
use crate::backend::{self, DeviceChoice, DeviceKind};
use crate::bench::deploy::{self, DeployOptions};
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::interop::import::{self, ImportOptions};
use crate::interop::onnx::{self, ExportOptions};
use crate::models::cost::human;
use crate::report;
use crate::train::checkpoint;

pub(crate) fn cmd_import(g: &GlobalArgs, a: ImportArgs) -> Result<()> {
    let normalization = match (a.mean, a.std) {
        (Some(mean), Some(std)) => Some(Normalization { mean, std }),
        _ => None,
    };
    if normalization.is_none() {
        eprintln!(
            "warning: no --mean/--std: the input normalisation is recorded as unknown; lfgcl will \
             normalise with the channel statistics of whatever data it is given (eval, search, fine-tuning)"
        );
    }
    let input_hw = match a.input_size {
        Some(size) => size.0,
        None => {
            let (_, side) = crate::models::family(&a.model)?.default_input();
            [side, side]
        }
    };
    let opts = ImportOptions { model: a.model, normalization, classes: a.classes, input_hw };
    let s = import::import(&a.from, &a.out, &opts)?;
    if !g.quiet {
        println!(
            "imported {} at {}x{} ({} tensors, {} classes, widths {:?}; {} MACs, {} params{}) -> {}",
            s.arch.model,
            s.arch.input_hw()[0],
            s.arch.input_hw()[1],
            s.tensors,
            s.arch.num_classes,
            s.arch.widths,
            human(s.macs),
            human(s.params),
            if s.folded_conv_biases > 0 {
                format!("; {} conv biases folded into batch norm", s.folded_conv_biases)
            } else {
                String::new()
            },
            a.out.display()
        );
    }
    Ok(())
}

pub(crate) fn cmd_export_onnx(g: &GlobalArgs, a: ExportOnnxArgs) -> Result<()> {
    let model = checkpoint::load(&a.ckpt, &backend::cpu())?;
    let s = onnx::export(&model, &a.out, &ExportOptions { opset: a.opset, keep_bn: a.keep_bn })?;
    if !g.quiet {
        println!(
            "exported {} to {} (opset {}, {} nodes, {} batch norms folded, {} bytes); input normalisation: {}",
            model.arch.model,
            a.out.display(),
            a.opset,
            s.nodes,
            s.folded_batch_norms,
            s.bytes,
            match &model.normalization {
                Some(n) =>
                    format!("mean {:?} std {:?} (metadata lfgcl.normalization; not in the graph)", n.mean, n.std),
                None => "unknown".into(),
            }
        );
    }
    Ok(())
}

pub(crate) fn bench_deploy(g: &GlobalArgs, a: &BenchArgs) -> Result<()> {
    let ckpt = a.ckpt.as_ref().ok_or_else(|| Error::Invalid("bench deploy needs --ckpt".into()))?;
    crate::limits::check_count("--rounds", a.rounds, crate::limits::MAX_REPS)?;
    crate::limits::check_seconds("--min-seconds", a.min_seconds)?;
    let gpu = match g.device {
        DeviceChoice::Cpu => None,
        choice => Some(backend::select(choice)?).filter(|d| d.kind() != DeviceKind::Cpu),
    };
    let temp = a.onnx_dir.is_none();
    let work_dir =
        a.onnx_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("lfgcl-deploy-{}", std::process::id())));
    let opts = DeployOptions {
        batches: a.batch.clone().unwrap_or_else(|| vec![1, 64]),
        threads: rayon::current_num_threads(),
        min_seconds: a.min_seconds,
        rounds: a.rounds,
        gpu,
        work_dir: work_dir.clone(),
        onnxruntime: !a.no_ort,
    };
    let result = deploy::bench_deploy(ckpt, a.pruned.as_deref(), &opts);
    if temp {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    let r = result?;
    println!("{}", r.table());
    if let Some(p) = &a.json {
        report::write_json(p, &r)?;
    }
    Ok(())
}

/// The pipeline's deployment table: each fine-tuned net against the baseline, batch 1 and 64,
/// in lfgcl (and on the pipeline's GPU) and in onnxruntime; printed and written to `deploy.json`.
pub(crate) fn pipeline_deploy(
    g: &GlobalArgs,
    dev: &crate::backend::Device,
    base_ckpt: &std::path::Path,
    report: &crate::pipeline::PipelineReport,
    out: &std::path::Path,
) -> Result<()> {
    let work_dir = out.join("deploy");
    let opts = DeployOptions {
        batches: vec![1, 64],
        threads: rayon::current_num_threads(),
        min_seconds: 0.6,
        rounds: 3,
        gpu: Some(dev.clone()).filter(|d| d.kind() != DeviceKind::Cpu),
        work_dir: work_dir.clone(),
        onnxruntime: true,
    };
    let mut tables = Vec::new();
    for p in report.pruned.iter().filter(|p| p.checkpoint.exists()) {
        if !g.quiet {
            eprintln!("deployment benchmark of the {} net ...", p.method);
        }
        let r = deploy::bench_deploy(base_ckpt, Some(&p.checkpoint), &opts)?;
        println!("deployment, {} net:\n{}", p.method, r.table());
        tables.push(
            serde_json::json!({ "method": p.method, "checkpoint": crate::fsio::path_json(&p.checkpoint), "deploy": r }),
        );
    }
    report::write_json(out.join("deploy.json"), &tables)?;
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}
