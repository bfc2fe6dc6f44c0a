//! Subnormal floats flushed to zero on x86 CPUs (the SSE control register's FTZ and DAZ bits).
//!
//! Why: an x86 core takes a microcode assist for every multiply or add that reads or produces a
//! subnormal, about a hundred cycles. When a net's gradients or activations drift into that range
//! the whole step slows down: a ResNet-50 training step at batch 1 (224x224, random weights, 2
//! threads, a Xeon VM) took 8.4 s once in every dozen steps instead of 0.3 s, 97% of it in the
//! `gemm` crate's microkernel, and not once with them flushed. Deep learning loses nothing there
//! (the values are below 1.2e-38); TensorFlow flushes them in its thread pools too.
//!
//! The `lfgcl` command sets the bits on its main thread before it starts any other, and every
//! thread inherits them (on Linux a new thread starts with its creator's SSE control register;
//! `tests/isa_builds.rs` checks it for plain and rayon threads), so every thread computes alike
//! and the bits still do not depend on the thread count. A library user who wants the same calls `flush_to_zero` on the main
//! thread first. `LFGCL_KEEP_DENORMALS=1` keeps IEEE subnormals in the command.

/// Set to `1` to keep IEEE subnormals in the `lfgcl` command.
pub const KEEP_ENV: &str = "LFGCL_KEEP_DENORMALS";

/// MXCSR's flush-to-zero (results) and denormals-are-zero (inputs) bits.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stores the SSE control register (present on every x86_64 CPU) into `csr`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
    csr
}

/// Flushes subnormal inputs and results to zero on this thread and on the threads it starts
/// afterwards. Returns whether this CPU can (x86_64; elsewhere nothing changes).
pub fn flush_to_zero() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let csr = mxcsr() | FTZ_DAZ;
        // SAFETY: loads a valid control word (the current one with two mode bits set).
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags)) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this thread flushes subnormals to zero.
pub fn flushing() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        mxcsr() & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The command's choice: flush unless `LFGCL_KEEP_DENORMALS=1`.
pub fn flush_unless_kept() -> bool {
    if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
        return false;
    }
    flush_to_zero()
}
