//! The machine a figure was measured on, recorded next to it: the CPU's model name and the
//! vector instructions lfgcl's kernels use there (AVX-512 and AVX2 machines run different
//! builds of the same kernels, and onnxruntime and PyTorch change kernels with them too).

use serde::Serialize;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `/proc/cpuinfo`'s first "model name" (or the architecture where there is none).
    pub cpu: String,
    pub logical_cores: usize,
    /// The widest vector instructions the CPU has of those lfgcl's kernels are built for (and
    /// the narrower set they ran on, when `LFGCL_CPU_ISA` limits them).
    pub isa: String,
    /// Whether subnormal floats are flushed to zero (`backend::cpu::denormals`; the command's
    /// default): with them kept, a step whose values drift there runs many times slower.
    pub denormals_flushed: bool,
}

impl Machine {
    pub fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| model_name(&s))
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let logical_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { cpu, logical_cores, isa: isa(), denormals_flushed: crate::backend::cpu::denormals::flushing() }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {} logical cores, {}", self.cpu, self.logical_cores, self.isa)?;
        if !self.denormals_flushed {
            write!(f, ", IEEE subnormals")?;
        }
        Ok(())
    }
}

/// The first "model name" line of a `/proc/cpuinfo` text.
fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The CPU's widest vector unit of those the kernels are built for, and the limit when
/// `LFGCL_CPU_ISA` narrows what they run on (an AVX-512 machine measuring the AVX2 path).
fn isa() -> String {
    use crate::backend::cpu::isa::{self, Isa, ISA_ENV};
    let (cpu, run) = (Isa::detected(), isa::isa());
    let unit = match cpu {
        Isa::Avx512 => "AVX-512F",
        Isa::Avx2 => "AVX2+FMA (no AVX-512)",
        Isa::Portable if cfg!(target_arch = "x86_64") => "SSE2 (no AVX2)",
        Isa::Portable => std::env::consts::ARCH,
    };
    if run < cpu {
        format!("{unit}, kernels limited to {} (--cpu-isa or {ISA_ENV})", run.name())
    } else {
        unit.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_name_and_names_the_vector_unit() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n\
                    processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(model_name(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(model_name("processor\t: 0\n"), None);
        assert_eq!(model_name("model name\t:   \n"), None);
        let m = Machine::this();
        assert!(!m.cpu.is_empty() && m.logical_cores >= 1 && !m.isa.is_empty(), "{m:?}");
        assert!(m.to_string().contains(&m.isa), "{m}");
    }
}
