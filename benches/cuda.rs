//! Criterion benchmarks of the CUDA kernels: the same cases as `lfgcl::bench::kernels`
//! (every distinct ResNet-56 conv at batch 128 in each precision, batch norm, element-wise,
//! SGD, and the search gathers and feature MSE at K = 16 candidates, 256 images).
//!
//! Wall-clock per iteration = queue the op + synchronise the stream, so it includes launch
//! overhead; `lfgcl::bench::kernels::bench_kernels` gives the event-timed device numbers
//! with L2 flushing and peak fractions. Without a CUDA device this prints
//! `skipped: no CUDA device (...)` and exits successfully.
//!
//! Filter cases with criterion's usual positional argument, e.g.
//! `cargo bench --bench cuda -- conv_fwd_tf32`.

use criterion::Criterion;
use lfgcl::backend::cuda::CudaBackend;
use lfgcl::backend::prelude::*;
use lfgcl::bench::kernels::{cases, BenchOptions};
use std::time::Duration;

fn main() {
    let be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            println!("skipped: no CUDA device ({e})");
            return;
        }
    };
    println!("{}", be.describe());
    if let Err(e) = be.load_all_kernels() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let opts = BenchOptions::default();
    let all = match cases(&be, &opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: building the benchmark cases: {e}");
            std::process::exit(1);
        }
    };
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for mut case in all {
        let mut failed: Option<String> = None;
        c.bench_function(&case.key, |b| {
            b.iter(|| {
                if failed.is_none() {
                    if let Err(e) = (case.run)().and_then(|_| be.synchronize()) {
                        failed = Some(e.to_string());
                    }
                }
            })
        });
        if let Some(e) = failed {
            eprintln!("error: {}: {e}", case.key);
            std::process::exit(1);
        }
    }
    c.final_summary();
}
