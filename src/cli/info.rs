//! `lfgcl info`: a torchinfo-like table of a model or checkpoint.

use super::InfoArgs;
use crate::backend;
use crate::error::{Error, Result};
use crate::models::cost::{human, thousands};
use crate::models::{Arch, Model};
use crate::train::checkpoint;

/// Parses `CxHxW` into (channels, [height, width]).
fn parse_input(s: &str) -> Result<(usize, [usize; 2])> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let bad = || Error::Invalid(format!("--input '{s}': expected CxHxW such as 3x32x32"));
    if parts.len() != 3 {
        return Err(bad());
    }
    let v: Vec<usize> = parts.iter().map(|p| p.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<_>>()?;
    Ok((v[0], [v[1], v[2]]))
}

/// The table `lfgcl info` prints.
pub fn info_table(model: &Model, all: bool) -> String {
    let cost = model.cost();
    let a = &model.arch;
    let [h, w] = a.input_hw();
    let mut out = format!("{} ({}x{h}x{w} input, {} classes)\n", a.model, a.in_channels, a.num_classes);
    let name_w = cost.layers.iter().map(|l| l.name.len()).max().unwrap_or(5).max(5) + 2;
    out += &format!("{:<name_w$}{:<11}{:>14}{:>12}{:>16}\n", "Layer", "Type", "Output", "Params", "MACs");
    out += &"-".repeat(name_w + 53);
    out.push('\n');
    for l in &cost.layers {
        let shows = all
            || l.params > 0
            || l.bn_params > 0
            || matches!(l.kind, "MaxPool2d" | "AvgPool" | "ShortcutA" | "Add+ReLU" | "Add");
        if !shows || l.kind == "Input" {
            continue;
        }
        let shape = l.out_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let params = if l.params > 0 {
            thousands(l.params)
        } else if l.bn_params > 0 {
            format!("({})", thousands(l.bn_params))
        } else {
            "-".into()
        };
        let macs = if l.macs > 0 { thousands(l.macs) } else { "-".into() };
        out += &format!("{:<name_w$}{:<11}{:>14}{:>12}{:>16}\n", l.name, l.kind, shape, params, macs);
    }
    out += &"-".repeat(name_w + 53);
    out.push('\n');
    out += &format!(
        "{:<name_w$}{:<11}{:>14}{:>12}{:>16}\n",
        "Total",
        "",
        "",
        thousands(cost.params),
        thousands(cost.macs)
    );
    out += &format!(
        "FLOPs (MACs of conv+linear) {}   params (conv+linear) {}   batch-norm params {} (not counted)\n",
        human(cost.macs),
        human(cost.params),
        thousands(cost.bn_params)
    );
    if let (Ok(names), Ok(default)) = (a.width_names(), a.default_widths()) {
        let pruned = a.widths != default;
        if pruned {
            if let Ok(full) = Model::new(Arch { widths: default.clone(), ..a.clone() }, &backend::cpu(), 0) {
                let fc = full.cost();
                out += &format!(
                    "pruned: {:.1}% of the unpruned FLOPs ({}), {:.1}% of its params ({})\n",
                    100.0 * cost.macs as f64 / fc.macs as f64,
                    human(fc.macs),
                    100.0 * cost.params as f64 / fc.params as f64,
                    human(fc.params)
                );
            }
        }
        out += "widths";
        out += if pruned { " (kept/original):\n" } else { ":\n" };
        let cells: Vec<String> = names
            .iter()
            .zip(a.widths.iter().zip(&default))
            .map(|(n, (w, d))| if pruned { format!("{n} {w}/{d}") } else { format!("{n} {w}") })
            .collect();
        for chunk in cells.chunks(4) {
            out += "  ";
            out += &chunk.join(", ");
            out.push('\n');
        }
    }
    out
}

/// The prunable groups: name, kind, channels and the layers each one touches.
pub fn groups_table(model: &Model, streams: bool) -> Result<String> {
    let scope = if streams { crate::prune::GroupScope::All } else { crate::prune::GroupScope::Inner };
    let groups = crate::prune::groups::groups(model, scope)?;
    let mut out = format!(
        "{} prunable groups of {} (ratio files list one keep ratio per group, in this order)\n",
        groups.len(),
        model.arch.model
    );
    let name_w = groups.iter().map(|g| g.name.len() + 2).max().unwrap_or(0).max(18);
    out += &format!("{:>3}  {:<name_w$}{:<8}{:>9}  {}\n", "#", "group", "kind", "channels", "writes / reads");
    for (i, g) in groups.iter().enumerate() {
        let names =
            |ids: &[usize]| ids.iter().map(|&n| model.graph.nodes[n].name.clone()).collect::<Vec<_>>().join(" ");
        let readers: Vec<usize> =
            g.conv_consumers.iter().copied().chain(g.linear_consumers.iter().map(|l| l.0)).collect();
        out += &format!(
            "{i:>3}  {:<name_w$}{:<8}{:>9}  {} / {}\n",
            g.name,
            format!("{:?}", g.kind).to_lowercase(),
            g.channels,
            names(&g.producers),
            names(&readers)
        );
    }
    Ok(out)
}

pub fn cmd_info(a: InfoArgs) -> Result<()> {
    let cpu = backend::cpu();
    let (model, source) = match (&a.model, &a.ckpt) {
        (Some(name), None) => {
            let (c, hw) = parse_input(&a.input)?;
            (Model::new(Arch::new_hw(name, c, hw, a.classes)?, &cpu, 0)?, None)
        }
        (None, Some(p)) => (checkpoint::load(p, &cpu)?, Some(p.clone())),
        _ => return Err(Error::Invalid("give a model name (--model resnet56) or a checkpoint (--ckpt FILE)".into())),
    };
    if a.groups {
        print!("{}", groups_table(&model, a.streams)?);
        return Ok(());
    }
    if a.json {
        let cost = model.cost();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "arch": model.arch, "cost": cost }))
                .expect("serialisable")
        );
        return Ok(());
    }
    if let Some(p) = source {
        println!("checkpoint {}", p.display());
        if let Ok(meta) = checkpoint::read_meta(&p) {
            if !meta.info.is_null() {
                println!("info: {}", meta.info);
            }
        }
    }
    print!("{}", info_table(&model, a.all));
    Ok(())
}
