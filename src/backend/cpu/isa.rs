//! Which instruction set the hand-vectorised CPU kernels run on: one choice for all of them
//! (Winograd transforms and products, the direct and depthwise convolutions, the batch-norm
//! reductions, the 1x1 eval kernel), the widest this CPU has unless a limit says otherwise.
//!
//! The limit exists so that a machine with AVX-512 can measure what users without it get:
//! `LFGCL_CPU_ISA=avx2` (or `portable`, plain arrays as on a CPU without AVX2) for any command,
//! benchmark or test, or `set_isa_limit` from code. Every build of a kernel gives the same bits
//! (the same IEEE operations per lane, in the same order), so the limit changes speed only. The
//! `gemm` crate behind 1x1 convolutions, im2col and linears dispatches on its own and ignores it.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets of the kernels' builds, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain `[f32; N]` arrays: any CPU.
    Portable,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F (on top of AVX2 + FMA), 16 lanes.
    Avx512,
}

/// The environment variable that limits the instruction set (`avx512`, `avx2`, `portable`).
pub const ISA_ENV: &str = "LFGCL_CPU_ISA";

impl Isa {
    /// The widest this CPU has, whatever the limit.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// `avx512`, `avx2` or `portable` (any case).
    pub fn parse(s: &str) -> Result<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "portable" => Ok(Isa::Portable),
            _ => Err(Error::Invalid(format!("instruction set {s:?}: expected avx512, avx2 or portable"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512F",
            Isa::Avx2 => "AVX2+FMA",
            Isa::Portable => "portable",
        }
    }
}

/// The instruction set the kernels run on (the CPU's, narrowed by the limit), `Isa as u8`, or
/// `UNSET` until the environment has been read: one load per question in the kernels' hot paths.
static LIMIT: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

fn from_u8(v: u8) -> Isa {
    match v {
        0 => Isa::Portable,
        1 => Isa::Avx2,
        _ => Isa::Avx512,
    }
}

/// The limit `LFGCL_CPU_ISA` asks for (none when unset), or an error naming a bad value. The CLI
/// calls this at start-up, so that a typo is refused there instead of ignored.
pub fn limit_from_env() -> Result<Option<Isa>> {
    match std::env::var(ISA_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            Isa::parse(&v).map(Some).map_err(|e| Error::Invalid(format!("{ISA_ENV}: {e}")))
        }
        _ => Ok(None),
    }
}

/// The instruction set every hand-vectorised kernel runs on from now on: the narrower of the
/// CPU's and `limit`. Process-wide (tests that compare builds keep to their own test binary).
pub fn set_isa_limit(limit: Isa) {
    LIMIT.store(limit.min(Isa::detected()) as u8, Ordering::Relaxed);
}

/// The instruction set the kernels run on: the widest the CPU has, narrowed by the limit (from
/// `set_isa_limit`, else from `LFGCL_CPU_ISA`; a bad value there is ignored here and refused by
/// the CLI).
pub fn isa() -> Isa {
    let mut v = LIMIT.load(Ordering::Relaxed);
    if v == UNSET {
        let limit = limit_from_env().ok().flatten().unwrap_or(Isa::Avx512).min(Isa::detected());
        // A concurrent `set_isa_limit` wins over the environment.
        v = match LIMIT.compare_exchange(UNSET, limit as u8, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => limit as u8,
            Err(set) => set,
        };
    }
    from_u8(v)
}

/// Whether the AVX2 + FMA builds run (the CPU has them and the limit allows them).
pub(crate) fn has_avx2() -> bool {
    isa() >= Isa::Avx2
}

/// Whether the AVX-512 builds run.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn has_avx512() -> bool {
    isa() == Isa::Avx512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_values_are_refused() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            let word = match isa {
                Isa::Portable => "portable",
                Isa::Avx2 => "AVX2",
                Isa::Avx512 => "avx512",
            };
            assert_eq!(Isa::parse(word).unwrap(), isa);
        }
        let err = Isa::parse("sse9").unwrap_err().to_string();
        assert!(err.contains("sse9") && err.contains("avx2"), "{err}");
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    }
}
