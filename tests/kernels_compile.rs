//! Compiles every embedded kernel file for sm_80 and sm_90 with NVRTC, through
//! `compile_for_arch` (the cached path the engine loads its kernels from) and through
//! `compile_uncached` (to read NVRTC's log: any warning fails the test). Also checks that every
//! kernel entry point the Rust side launches exists in its file's CUBIN.
//!
//! Needs no GPU, only libnvrtc (the CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12` with
//! its `nvidia/cuda_nvrtc/lib` on LD_LIBRARY_PATH or found by the preloader). Without NVRTC it
//! prints `skipped: NVRTC not found` and passes, unless `LFGCL_REQUIRE_NVRTC=1` (set by CI),
//! in which case it fails.

use lfgcl::backend::cuda::compile::{
    compile_for_arch, compile_uncached, kernel_files, nvrtc_available, nvrtc_version, supported_archs, ImageKind,
    KERNEL_ENTRY_POINTS,
};

const ARCHS: [(u32, u32); 2] = [(8, 0), (9, 0)];

fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc_available() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("LFGCL_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("{test}: LFGCL_REQUIRE_NVRTC=1 but {e}");
            }
            println!("skipped: NVRTC not found ({e}) [{test}]");
            false
        }
    }
}

fn is_elf(b: &[u8]) -> bool {
    b.len() > 4 && b[..4] == [0x7f, b'E', b'L', b'F']
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_warnings() {
    if !nvrtc_or_skip("every_kernel_compiles_for_sm80_and_sm90_without_warnings") {
        return;
    }
    let (maj, min) = nvrtc_version().expect("NVRTC version");
    println!("NVRTC {maj}.{min}");
    let files = kernel_files();
    assert!(files.len() >= 10, "expected every kernels/*.cu to be embedded, got {}", files.len());
    // Compile the files on a few threads: conv_tc.cu alone takes a while.
    let jobs: Vec<(&str, (u32, u32))> = files.iter().flat_map(|(n, _)| ARCHS.iter().map(move |&a| (*n, a))).collect();
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(name, arch)) = jobs.get(i) else {
                    break;
                };
                let tag = format!("{name} sm_{}{}", arch.0, arch.1);
                let fail = |m: String| failures.lock().map(|mut f| f.push(m)).unwrap_or(());
                match compile_uncached(name, arch, ImageKind::Cubin) {
                    Ok(c) => {
                        if c.log.to_lowercase().contains("warning") {
                            fail(format!("{tag}: NVRTC warnings:\n{}", c.log));
                        }
                        if !is_elf(&c.image) {
                            fail(format!("{tag}: NVRTC did not return a CUBIN"));
                        }
                        for (file, entry) in KERNEL_ENTRY_POINTS.iter().filter(|(f, _)| *f == name) {
                            if !contains(&c.image, entry.as_bytes()) {
                                fail(format!("{tag}: entry point {entry} of {file} is not in the CUBIN"));
                            }
                        }
                    }
                    Err(e) => fail(format!("{tag}: {e}")),
                }
                // The engine's path: memory cache, disk cache, NVRTC.
                match compile_for_arch(name, arch) {
                    Ok(img) if is_elf(&img) => {}
                    Ok(_) => fail(format!("{tag}: compile_for_arch did not return a CUBIN")),
                    Err(e) => fail(format!("{tag}: compile_for_arch: {e}")),
                }
                println!("compiled {tag}");
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    assert!(failures.is_empty(), "{} kernel compile problems:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn every_launched_kernel_names_an_embedded_file() {
    let files: Vec<&str> = kernel_files().iter().map(|(n, _)| *n).collect();
    for (file, entry) in KERNEL_ENTRY_POINTS {
        assert!(files.contains(file), "{entry}: file {file} is not embedded");
        let src = kernel_files().iter().find(|(n, _)| n == file).map(|(_, s)| *s).unwrap_or("");
        assert!(src.contains(entry), "{entry} does not appear in {file}");
    }
}

#[test]
fn nvrtc_knows_the_target_architectures() {
    if !nvrtc_or_skip("nvrtc_knows_the_target_architectures") {
        return;
    }
    let archs = supported_archs().expect("supported architectures");
    for a in [80, 90] {
        assert!(archs.contains(&a), "NVRTC cannot target sm_{a}: {archs:?}");
    }
}

#[test]
fn ptx_fallback_compiles() {
    if !nvrtc_or_skip("ptx_fallback_compiles") {
        return;
    }
    // The path used when NVRTC is older than the GPU: PTX for a virtual architecture.
    let c = compile_uncached("elementwise.cu", (8, 0), ImageKind::Ptx).expect("PTX for compute_80");
    assert!(String::from_utf8_lossy(&c.image).contains(".target sm_80"));
}
