//! SGD with momentum, weight decay and Nesterov (PyTorch's semantics), and learning-rate
//! schedules.

use crate::backend::{Device, SgdStep};
use crate::error::{Error, Result};
use crate::nn::Graph;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// One momentum buffer per parameter, in `visit_params_mut` order, created on first use.
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(momentum: f32, weight_decay: f32, nesterov: bool) -> Result<Sgd> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::Invalid(format!("momentum must be in [0, 1), got {momentum}")));
        }
        if weight_decay < 0.0 || !weight_decay.is_finite() {
            return Err(Error::Invalid(format!("weight decay must be non-negative, got {weight_decay}")));
        }
        if nesterov && momentum == 0.0 {
            return Err(Error::Invalid("Nesterov momentum needs a non-zero momentum".into()));
        }
        Ok(Sgd { momentum, weight_decay, nesterov, buffers: Vec::new() })
    }

    /// The momentum buffers, by parameter index (saved to resume a run exactly).
    pub fn momentum_buffers(&self) -> &[Option<Tensor>] {
        &self.buffers
    }

    /// Restores buffers saved by [`Sgd::momentum_buffers`].
    pub fn set_momentum_buffers(&mut self, buffers: Vec<Option<Tensor>>) {
        self.buffers = buffers;
    }

    /// Updates every parameter that has a gradient.
    pub fn step(&mut self, dev: &Device, graph: &mut Graph, lr: f32) -> Result<()> {
        let hp = SgdStep { lr, momentum: self.momentum, weight_decay: self.weight_decay, nesterov: self.nesterov };
        let buffers = &mut self.buffers;
        let mut i = 0;
        graph.visit_params_mut(|_, p| {
            if buffers.len() <= i {
                buffers.push(None);
            }
            if let Some(g) = &p.grad {
                if buffers[i].is_none() {
                    buffers[i] = Some(dev.zeros(p.value.dims())?);
                }
                let buf = buffers[i].as_mut().expect("just created");
                dev.sgd_step(&mut p.value, g, buf, hp)?;
            }
            i += 1;
            Ok(())
        })
    }
}

/// Learning rate as a function of training progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` at each milestone epoch.
    Step {
        milestones: Vec<usize>,
        gamma: f32,
    },
    /// Cosine annealing from the base rate to `min_lr` over the whole run, per iteration.
    Cosine {
        min_lr: f32,
    },
}

impl LrSchedule {
    /// Parses `constant`, `cosine`, `step` (milestones at 50% and 75% of the run, gamma 0.1) or
    /// `step:E1,E2[,...][@GAMMA]`.
    pub fn parse(s: &str, epochs: usize) -> Result<LrSchedule> {
        let bad = || {
            Error::Invalid(format!("unknown schedule '{s}' (expected constant, cosine, step or step:E1,E2[@GAMMA])"))
        };
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine { min_lr: 0.0 }),
            "step" => Ok(LrSchedule::Step { milestones: vec![epochs / 2, epochs * 3 / 4], gamma: 0.1 }),
            _ => {
                let rest = s.strip_prefix("step:").ok_or_else(bad)?;
                let (list, gamma) = match rest.split_once('@') {
                    Some((l, g)) => (l, g.parse::<f32>().map_err(|_| bad())?),
                    None => (rest, 0.1),
                };
                let milestones = list
                    .split(',')
                    .map(|e| e.trim().parse::<usize>().map_err(|_| bad()))
                    .collect::<Result<Vec<_>>>()?;
                let schedule = LrSchedule::Step { milestones, gamma };
                schedule.validate().map_err(|e| Error::Invalid(format!("--schedule '{s}': {e}")))?;
                Ok(schedule)
            }
        }
    }

    /// Rates must stay positive and finite: a step factor must be a positive finite number and a
    /// cosine floor non-negative.
    pub fn validate(&self) -> Result<()> {
        match self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { gamma, .. } => crate::limits::check_positive("step factor (@GAMMA)", *gamma as f64),
            LrSchedule::Cosine { min_lr } => crate::limits::check_non_negative("cosine min_lr", *min_lr as f64),
        }
    }

    /// Learning rate at `progress` epochs into a run of `epochs` (fractional within an epoch),
    /// after `warmup` epochs of linear warm-up from `base/10`.
    pub fn lr(&self, base: f32, progress: f64, epochs: usize, warmup: f64) -> f32 {
        let scheduled = match self {
            LrSchedule::Constant => base,
            LrSchedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| progress >= m as f64).count();
                base * gamma.powi(passed as i32)
            }
            LrSchedule::Cosine { min_lr } => {
                let t = (progress / epochs.max(1) as f64).clamp(0.0, 1.0);
                min_lr + (base - min_lr) * (0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        };
        if warmup > 0.0 && progress < warmup {
            let f = progress / warmup;
            scheduled * (0.1 + 0.9 * f as f32)
        } else {
            scheduled
        }
    }
}
