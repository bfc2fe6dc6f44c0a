//! Run-time compilation of the embedded kernel sources with NVRTC.
//!
//! Every `kernels/*.cu` file is embedded by `build.rs` and compiled here, once per process and
//! GPU architecture, straight to a CUBIN for the device's compute capability
//! (`--gpu-architecture=sm_XY`). Loading a CUBIN bypasses the driver's PTX JIT, so an NVRTC newer
//! than the driver is no problem (PTX from a newer NVRTC would be refused by an older driver).
//! When the NVRTC found is too old to know the device's architecture, the sources are compiled
//! to PTX for the newest virtual architecture it knows and the driver JIT-compiles that.
//!
//! Options: `-std=c++17 --gpu-architecture=sm_XY -lineinfo` and nothing else: no fast-math, so
//! the exact kernels keep IEEE division, square root and denormals.
//!
//! Caches:
//! - in memory, per (file, architecture, image kind), for the life of the process;
//! - on disk, in `$LFGCL_CACHE_DIR`, else `$XDG_CACHE_HOME/lfgcl/kernels`, else
//!   `~/.cache/lfgcl/kernels`; the file name holds the SHA-256 of the source, the headers, the
//!   options and the NVRTC version, so a changed kernel or another NVRTC never hits a stale entry.
//!   Entries are written atomically (temporary file + rename). A cache that cannot be read or
//!   written costs a recompile and one warning line on stderr, never an error. Setting
//!   `LFGCL_CACHE_DIR` to an empty string disables the disk cache.
//!
//! Finding NVRTC: cudarc opens `libnvrtc` by name (the toolkit's library on the loader path).
//! When that fails, [`nvrtc_available`] first preloads, by full path, `$LFGCL_NVRTC` (a libnvrtc
//! file, or a directory holding one) or the library of a pip `nvidia-cuda-nvrtc*` wheel found in
//! the usual Python site-packages directories (virtualenv, conda, `~/.local`, pyenv, `/usr/local`,
//! `/usr`, `$PYTHONPATH`). Once a library with that soname is loaded, the loader satisfies
//! cudarc's by-name open with it.

use crate::error::{Error, Result};
use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Every embedded kernel file as `(file name, source)`, sorted by name.
pub fn kernel_files() -> &'static [(&'static str, &'static str)] {
    KERNEL_SOURCES
}

/// The shared headers (`kernels/*.cuh`) every kernel file may include, as `(file name, source)`.
pub fn kernel_headers() -> &'static [(&'static str, &'static str)] {
    KERNEL_HEADERS
}

/// Every kernel entry point of the embedded files, as `(file, entry point)`, read by `build.rs`
/// from the `extern "C" __global__` declarations of `kernels/*.cu` (the names are declared
/// there only). `Launch::new` checks its arguments against this list in debug builds, the unit
/// tests check every name the launchers' tile tables use, and the compile test checks that each
/// entry point exists in the file's CUBIN.
pub const KERNEL_ENTRY_POINTS: &[(&str, &str)] = KERNEL_ENTRIES;

/// What NVRTC produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// Machine code for exactly the requested `sm_XY`.
    Cubin,
    /// PTX for a virtual architecture, JIT-compiled by the driver at load time.
    Ptx,
}

/// The result of one NVRTC compilation, with NVRTC's log (warnings included).
#[derive(Clone, Debug)]
pub struct Compiled {
    pub image: Vec<u8>,
    pub kind: ImageKind,
    pub log: String,
    pub options: Vec<String>,
}

/// Makes sure libnvrtc can be opened (preloading it from `$LFGCL_NVRTC` or a pip wheel when the
/// loader cannot find it by name); errors with the places that were searched.
pub fn nvrtc_available() -> Result<()> {
    static PRELOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PRELOADED
        .get_or_init(|| {
            // SAFETY: only attempts to dlopen candidate library names; nothing is called.
            if unsafe { sys::is_culib_present() } {
                return Ok(());
            }
            let candidates = nvrtc_candidates();
            for path in &candidates {
                // SAFETY: loading libnvrtc runs its initialisers, which have no preconditions.
                if let Ok(lib) = unsafe { libloading::Library::new(path) } {
                    // Keep it loaded for the life of the process: cudarc's by-name open of the
                    // same soname then resolves to this copy.
                    std::mem::forget(lib);
                    // SAFETY: as above.
                    if unsafe { sys::is_culib_present() } {
                        return Ok(());
                    }
                }
            }
            let tried = if candidates.is_empty() {
                "no $LFGCL_NVRTC and no pip nvidia-cuda-nvrtc wheel in the usual site-packages \
                 directories (virtualenv, conda, ~/.local, pyenv, /usr/local, /usr, $PYTHONPATH)"
                    .to_string()
            } else {
                let files: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                format!("could not load {}", files.join(", "))
            };
            Err(format!(
                "NVRTC (libnvrtc) not found: not on the library path; {tried}. Install the CUDA \
                 toolkit or `pip install nvidia-cuda-nvrtc-cu12`, or point LFGCL_NVRTC at libnvrtc.so"
            ))
        })
        .clone()
        .map_err(Error::Cuda)
}

/// `$LFGCL_NVRTC` first, then libnvrtc of pip wheels under the known site-packages roots.
fn nvrtc_candidates() -> Vec<PathBuf> {
    const NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os("LFGCL_NVRTC") {
        let p = PathBuf::from(v);
        if p.is_dir() {
            out.extend(NAMES.iter().map(|n| p.join(n)));
        } else {
            out.push(p);
        }
    }
    for root in site_packages_roots() {
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
            let dir = root.join(sub);
            for n in NAMES {
                let f = dir.join(n);
                if f.is_file() {
                    out.push(f);
                }
            }
        }
    }
    out
}

/// Python site-packages directories that commonly hold pip's `nvidia/*` wheels.
fn site_packages_roots() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var) {
            prefixes.push(PathBuf::from(v));
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(h) = &home {
        prefixes.push(h.join(".local"));
        if let Ok(rd) = std::fs::read_dir(h.join(".pyenv/versions")) {
            let mut versions: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            versions.sort();
            versions.reverse();
            prefixes.extend(versions);
        }
    }
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    let mut roots = Vec::new();
    if let Some(pp) = std::env::var_os("PYTHONPATH") {
        roots.extend(std::env::split_paths(&pp));
    }
    for prefix in prefixes {
        let lib = prefix.join("lib");
        let Ok(rd) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
            .collect();
        pys.sort();
        pys.reverse();
        for py in pys {
            roots.push(py.join("site-packages"));
            roots.push(py.join("dist-packages"));
        }
    }
    roots.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    roots
}

fn nvrtc_err(what: &str, r: sys::nvrtcResult) -> Error {
    Error::Cuda(format!("NVRTC {what} failed: {r:?}"))
}

/// The NVRTC version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded; both out-pointers are valid.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(nvrtc_err("nvrtcVersion", r));
    }
    Ok((major, minor))
}

/// The real architectures this NVRTC can generate CUBINs for, e.g. `[75, 80, 86, 89, 90, ...]`.
pub fn supported_archs() -> Result<Vec<u32>> {
    nvrtc_available()?;
    let mut n = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(nvrtc_err("nvrtcGetNumSupportedArchs", r));
    }
    let mut v = vec![0i32; n.max(0) as usize];
    // SAFETY: `v` holds exactly the number of entries NVRTC reported.
    let r = unsafe { sys::nvrtcGetSupportedArchs(v.as_mut_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(nvrtc_err("nvrtcGetSupportedArchs", r));
    }
    Ok(v.into_iter().filter(|&a| a > 0).map(|a| a as u32).collect())
}

fn source_of(file_name: &str) -> Result<&'static str> {
    KERNEL_SOURCES.iter().find(|(n, _)| *n == file_name).map(|(_, s)| *s).ok_or_else(|| {
        let known: Vec<&str> = KERNEL_SOURCES.iter().map(|(n, _)| *n).collect();
        Error::Invalid(format!("no embedded kernel file '{file_name}' (known: {})", known.join(", ")))
    })
}

fn options_for(arch: (u32, u32), kind: ImageKind) -> Vec<String> {
    let target = match kind {
        ImageKind::Cubin => format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        ImageKind::Ptx => format!("--gpu-architecture=compute_{}{}", arch.0, arch.1),
    };
    vec!["-std=c++17".to_string(), target, "-lineinfo".to_string()]
}

/// Destroys an NVRTC program on every exit path.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from nvrtcCreateProgram and is destroyed exactly once; a
        // failure here cannot be reported and leaks at most the program.
        let _ = unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: valid program handle and out-pointer.
    if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; size];
    // SAFETY: the buffer has the size NVRTC asked for, terminator included.
    if unsafe { sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) } != sys::nvrtcResult::NVRTC_SUCCESS {
        return String::new();
    }
    CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().trim().to_string()).unwrap_or_default()
}

/// Compiles one embedded kernel file with NVRTC, never reading a cache (the compile test uses
/// it to check the log for warnings). The fresh image is also stored in the in-memory cache, so
/// a later [`compile_for_arch`] or kernel load in this process reuses it.
pub fn compile_uncached(file_name: &str, arch: (u32, u32), kind: ImageKind) -> Result<Compiled> {
    let compiled = nvrtc_compile(file_name, arch, kind)?;
    let slot = {
        let mut map = memory_cache().lock().map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
        map.entry((file_name.to_string(), arch, kind)).or_default().clone()
    };
    let mut guard = slot.lock().map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
    if guard.is_none() {
        *guard = Some(Arc::new(compiled.image.clone()));
    }
    Ok(compiled)
}

fn nvrtc_compile(file_name: &str, arch: (u32, u32), kind: ImageKind) -> Result<Compiled> {
    nvrtc_available()?;
    let source = source_of(file_name)?;
    let options = options_for(arch, kind);
    let c_src =
        CString::new(source).map_err(|_| Error::Invalid(format!("kernel file {file_name} contains a NUL byte")))?;
    let c_name = CString::new(file_name).map_err(|_| Error::Invalid(format!("bad kernel file name {file_name:?}")))?;
    let mut hdr_src = Vec::with_capacity(KERNEL_HEADERS.len());
    let mut hdr_name = Vec::with_capacity(KERNEL_HEADERS.len());
    for (n, s) in KERNEL_HEADERS {
        hdr_src.push(CString::new(*s).map_err(|_| Error::Invalid(format!("kernel header {n} contains a NUL byte")))?);
        hdr_name.push(CString::new(*n).map_err(|_| Error::Invalid(format!("bad kernel header name {n:?}")))?);
    }
    let hdr_src_ptrs: Vec<*const c_char> = hdr_src.iter().map(|c| c.as_ptr()).collect();
    let hdr_name_ptrs: Vec<*const c_char> = hdr_name.iter().map(|c| c.as_ptr()).collect();
    let c_opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| Error::Invalid(format!("bad NVRTC option {o:?}"))))
        .collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();

    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live NUL-terminated string owned above; the header
    // arrays have the length passed.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            c_src.as_ptr(),
            c_name.as_ptr(),
            hdr_src_ptrs.len() as i32,
            hdr_src_ptrs.as_ptr(),
            hdr_name_ptrs.as_ptr(),
        )
    };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Cuda(format!("NVRTC could not create a program for {file_name}: {r:?}")));
    }
    let prog = Program(raw);
    // SAFETY: valid program; the option array has the length passed.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let log = program_log(prog.0);
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        let version = nvrtc_version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|_| "?".into());
        return Err(Error::Cuda(format!(
            "NVRTC {version} failed to compile {file_name} ({r:?}) with options {}:\n{log}",
            options.join(" ")
        )));
    }
    let image = match kind {
        ImageKind::Cubin => {
            let mut size = 0usize;
            // SAFETY: valid program and out-pointer.
            let r = unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(nvrtc_err(&format!("nvrtcGetCUBINSize ({file_name})"), r));
            }
            let mut buf = vec![0u8; size];
            // SAFETY: the buffer has the size NVRTC reported.
            let r = unsafe { sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(nvrtc_err(&format!("nvrtcGetCUBIN ({file_name})"), r));
            }
            buf
        }
        ImageKind::Ptx => {
            let mut size = 0usize;
            // SAFETY: valid program and out-pointer.
            let r = unsafe { sys::nvrtcGetPTXSize(prog.0, &mut size) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(nvrtc_err(&format!("nvrtcGetPTXSize ({file_name})"), r));
            }
            let mut buf = vec![0u8; size];
            // SAFETY: the buffer has the size NVRTC reported (terminating NUL included).
            let r = unsafe { sys::nvrtcGetPTX(prog.0, buf.as_mut_ptr() as *mut c_char) };
            if r != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(nvrtc_err(&format!("nvrtcGetPTX ({file_name})"), r));
            }
            buf
        }
    };
    if image.is_empty() {
        return Err(Error::Cuda(format!("NVRTC produced an empty image for {file_name}")));
    }
    Ok(Compiled { image, kind, log, options })
}

type MemKey = (String, (u32, u32), ImageKind);
type Slot = Arc<Mutex<Option<Arc<Vec<u8>>>>>;

fn memory_cache() -> &'static Mutex<HashMap<MemKey, Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<MemKey, Slot>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn disk_cache_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("LFGCL_CACHE_DIR") {
        return if v.is_empty() { None } else { Some(PathBuf::from(v)) };
    }
    if let Some(v) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v).join("lfgcl").join("kernels"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("lfgcl").join("kernels"))
}

fn warn_cache(path: &Path, what: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!("lfgcl: warning: kernel cache {}: {what} (compiling without it)", path.display());
    }
}

fn cache_key(file_name: &str, source: &str, options: &[String], nvrtc: (i32, i32), kind: ImageKind) -> String {
    let mut h = Sha256::new();
    h.update(b"lfgcl-kernel-cache-v1\0");
    h.update(file_name.as_bytes());
    h.update(b"\0");
    h.update(source.as_bytes());
    for (n, s) in KERNEL_HEADERS {
        h.update(b"\0header\0");
        h.update(n.as_bytes());
        h.update(b"\0");
        h.update(s.as_bytes());
    }
    for o in options {
        h.update(b"\0opt\0");
        h.update(o.as_bytes());
    }
    h.update(format!("\0nvrtc {}.{} {kind:?}", nvrtc.0, nvrtc.1).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn plausible_image(bytes: &[u8], kind: ImageKind) -> bool {
    match kind {
        ImageKind::Cubin => bytes.len() > 4 && bytes[..4] == [0x7f, b'E', b'L', b'F'],
        ImageKind::Ptx => bytes.windows(8).any(|w| w == b".version"),
    }
}

/// Compiled image of `file_name` for `arch`, from the in-memory cache, the disk cache or NVRTC.
pub(crate) fn image(file_name: &str, arch: (u32, u32), kind: ImageKind) -> Result<Arc<Vec<u8>>> {
    let source = source_of(file_name)?;
    let slot = {
        let mut map = memory_cache().lock().map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
        map.entry((file_name.to_string(), arch, kind)).or_default().clone()
    };
    // One compilation per key at a time; other keys compile in parallel.
    let mut guard = slot.lock().map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
    if let Some(img) = guard.as_ref() {
        return Ok(img.clone());
    }
    let options = options_for(arch, kind);
    let nvrtc = nvrtc_version()?;
    let ext = if kind == ImageKind::Cubin { "cubin" } else { "ptx" };
    let stem = file_name.trim_end_matches(".cu");
    let disk = disk_cache_dir().map(|d| {
        let key = cache_key(file_name, source, &options, nvrtc, kind);
        d.join(format!("{stem}-sm{}{}-{}.{ext}", arch.0, arch.1, &key[..32]))
    });
    if let Some(path) = &disk {
        match std::fs::read(path) {
            Ok(bytes) if plausible_image(&bytes, kind) => {
                let img = Arc::new(bytes);
                *guard = Some(img.clone());
                return Ok(img);
            }
            Ok(_) => warn_cache(path, "unreadable entry, recompiling"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn_cache(path, &e.to_string()),
        }
    }
    let compiled = nvrtc_compile(file_name, arch, kind)?;
    if let Some(path) = &disk {
        if let Err(e) = crate::fsio::write_atomic(path, &compiled.image) {
            warn_cache(path, &e.to_string());
        }
    }
    let img = Arc::new(compiled.image);
    *guard = Some(img.clone());
    Ok(img)
}

/// CUBIN of one embedded kernel file for `arch` = (major, minor), e.g. `(9, 0)` for sm_90: the
/// same cached path the engine uses to load its kernels.
pub fn compile_for_arch(file_name: &str, arch: (u32, u32)) -> Result<Vec<u8>> {
    Ok(image(file_name, arch, ImageKind::Cubin)?.as_ref().clone())
}

/// How to build images for a device of compute capability `cc`: a CUBIN for `sm_XY` when this
/// NVRTC supports it, else PTX for the newest older architecture it supports (driver JIT).
pub(crate) fn target_for_device(cc: (u32, u32)) -> Result<((u32, u32), ImageKind)> {
    let want = cc.0 * 10 + cc.1;
    let archs = supported_archs()?;
    if archs.is_empty() || archs.contains(&want) {
        return Ok((cc, ImageKind::Cubin));
    }
    match archs.iter().copied().filter(|&a| a <= want).max() {
        Some(a) => Ok(((a / 10, a % 10), ImageKind::Ptx)),
        None => {
            let (maj, min) = nvrtc_version()?;
            Err(Error::Cuda(format!("NVRTC {maj}.{min} cannot generate code for sm_{want} (it supports {archs:?})")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_embedded() {
        let names: Vec<&str> = kernel_files().iter().map(|(n, _)| *n).collect();
        for expected in ["conv.cu", "conv_tc.cu", "batchnorm.cu", "elementwise.cu", "gather.cu", "reduce.cu"] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        assert!(kernel_headers().iter().any(|(n, _)| *n == "common.cuh"));
    }

    #[test]
    fn cache_key_depends_on_everything() {
        let o = options_for((9, 0), ImageKind::Cubin);
        let a = cache_key("a.cu", "x", &o, (12, 9), ImageKind::Cubin);
        assert_ne!(a, cache_key("b.cu", "x", &o, (12, 9), ImageKind::Cubin));
        assert_ne!(a, cache_key("a.cu", "y", &o, (12, 9), ImageKind::Cubin));
        assert_ne!(a, cache_key("a.cu", "x", &options_for((8, 0), ImageKind::Cubin), (12, 9), ImageKind::Cubin));
        assert_ne!(a, cache_key("a.cu", "x", &o, (13, 0), ImageKind::Cubin));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn build_rs_reads_every_kernel_declaration() {
        // Direct declarations and macro-made ones (conv tiles, SGEMM tiles) alike.
        for want in [("batchnorm.cu", "bn_fold"), ("conv.cu", "conv_fwd_f32_128x64"), ("conv.cu", "conv_splitk_reduce")]
        {
            assert!(KERNEL_ENTRY_POINTS.contains(&want), "{want:?} missing");
        }
        for want in [("conv_tc.cu", "conv_bwdd_bf16_32x32"), ("gemm.cu", "sgemm_tn_64x64"), ("gemm.cu", "col_sum")] {
            assert!(KERNEL_ENTRY_POINTS.contains(&want), "{want:?} missing");
        }
        for (file, _) in kernel_files() {
            assert!(KERNEL_ENTRY_POINTS.iter().any(|(f, _)| f == file), "no kernel read from {file}");
        }
        let mut names: Vec<_> = KERNEL_ENTRY_POINTS.iter().map(|(_, n)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KERNEL_ENTRY_POINTS.len(), "a kernel name is declared twice");
        // No macro definition or stray text is mistaken for a name.
        assert!(names.iter().all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')));
        assert!(!names.contains(&"NAME"));
    }

    #[test]
    fn unknown_file_is_an_error() {
        assert!(source_of("nope.cu").is_err());
    }
}
