//! The kernel files, their compilation with NVRTC for the GPU at hand, and the on-disk cache of
//! the compiled images.
//!
//! Each `.cu` file under `cuda/kernels/` is embedded with `include_str!` and compiled with
//! `common.cuh` in front of it (a `#line` directive keeps NVRTC's line numbers those of the file).
//! The target is the device's own architecture (`--gpu-architecture=sm_XX`, a CUBIN the driver
//! loads as is) when NVRTC supports it, else PTX for the newest architecture below it, which the
//! driver compiles when it loads it.
//!
//! Compiled images are cached in `$ENGINE_CUDA_CACHE`, else `$XDG_CACHE_HOME/engine/cuda`, else
//! `~/.cache/engine/cuda`, under a name that carries a 64-bit FNV-1a hash of the source, the
//! target, the NVRTC version and the options, so any change to one of them compiles afresh. A file
//! is written to a temporary name in the same directory, synced and renamed, so a reader never
//! sees half a file; a cache that cannot be written only costs the next start a compilation. Within
//! a process, images are also kept in memory, so several backends compile each file once.

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cudarc::nvrtc::{result, sys};

use crate::error::{nvrtc, CudaError};

/// One kernel file: its name, its source, the kernels it defines.
pub(crate) struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

/// Helpers prepended to every file.
const COMMON: &str = include_str!("../kernels/common.cuh");

/// Every kernel file, one per op family.
pub(crate) const FILES: &[KernelFile] = &[
    KernelFile { name: "norm.cu", source: include_str!("../kernels/norm.cu"), functions: &["rms_norm_f32", "add_rms_norm_q8_1"] },
    KernelFile { name: "rope.cu", source: include_str!("../kernels/rope.cu"), functions: &["rope_f32", "rope_kv_write_f16"] },
    KernelFile { name: "act.cu", source: include_str!("../kernels/act.cu"), functions: &["gelu_tanh_mul_f32", "silu_mul_f32", "gated_act_q8_1"] },
    KernelFile { name: "quantize.cu", source: include_str!("../kernels/quantize.cu"), functions: &["quantize_q8_0", "quantize_q8_1"] },
    KernelFile {
        name: "matvec.cu",
        source: include_str!("../kernels/matvec.cu"),
        functions: &[
            "matvec_q8_0",
            "matvec_q4_0",
            "matvec_q5_0",
            "matvec_q4_k",
            "matvec_q6_k",
            "matvec2_q8_0_w1",
            "matvec2_q8_0_w2",
            "matvec2_q8_0_w4",
            "matvec2_q4_0_w1",
            "matvec2_q4_0_w2",
            "matvec2_q4_0_w4",
            "matvec2_q5_0_w1",
            "matvec2_q5_0_w2",
            "matvec2_q5_0_w4",
            "matvec2_q4_k_w1",
            "matvec2_q4_k_w2",
            "matvec2_q4_k_w4",
            "matvec2_q6_k_w1",
            "matvec2_q6_k_w2",
            "matvec2_q6_k_w4",
            "matvec_multi",
            "matvec_gate_up_q8_1",
        ],
    },
    KernelFile {
        name: "attention.cu",
        source: include_str!("../kernels/attention.cu"),
        functions: &[
            "attn_decode_g1",
            "attn_decode_g2",
            "attn_decode_g4",
            "attn_decode_g8",
            "attn_decode_g1_any",
            "attn_decode_g2_any",
            "attn_decode_g4_any",
            "attn_decode_g8_any",
            "attn_decode_g1_short",
            "attn_decode_g2_short",
            "attn_decode_g4_short",
            "attn_decode_g8_short",
            "attn_decode_merge",
            "attn_prefill",
        ],
    },
    KernelFile {
        name: "dequant.cu",
        source: include_str!("../kernels/dequant.cu"),
        functions: &[
            "get_rows_f32",
            "get_rows_f16",
            "get_rows_q8_0",
            "get_rows_q4_0",
            "get_rows_q5_0",
            "get_rows_q4_k",
            "get_rows_q6_k",
            "dequant_f16_f32",
            "dequant_f16_f16",
            "dequant_f16_q8_0",
            "dequant_f16_q4_0",
            "dequant_f16_q5_0",
            "dequant_f16_q4_k",
            "dequant_f16_q6_k",
            "f32_to_f16",
        ],
    },
    KernelFile { name: "elementwise.cu", source: include_str!("../kernels/elementwise.cu"), functions: &["add_f32", "add_bias_f32"] },
    KernelFile { name: "kv.cu", source: include_str!("../kernels/kv.cu"), functions: &["kv_write_f16"] },
];

/// Options besides the target, for every file.
const OPTIONS: &[&str] = &["--std=c++17"];

/// Tuning overrides for the kernels' compile-time constants, from `ENGINE_CUDA_DEFINES`: a
/// whitespace-separated list of `NAME=VALUE` (or `NAME`), each passed to NVRTC as `-DNAME=VALUE`
/// and part of the cache key. Only the constants a kernel file guards with `#ifndef` can be
/// overridden (the tuning knobs, documented where each is defined); it is for measuring
/// alternatives on a GPU without rebuilding, not for normal use. A malformed entry is an error.
pub fn tuning_defines() -> Result<Vec<String>, CudaError> {
    let Ok(v) = std::env::var("ENGINE_CUDA_DEFINES") else { return Ok(Vec::new()) };
    parse_defines(&v)
}

/// The value of `NAME=VALUE` in `ENGINE_CUDA_DEFINES`, when it is there and an integer: the
/// host-side tuning constants (decode attention's split targets) read their overrides here, so
/// one variable tunes kernels and launches alike.
pub(crate) fn tuning_value(name: &str) -> Option<i64> {
    let prefix = format!("-D{name}=");
    tuning_defines().ok()?.iter().find_map(|d| d.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
}

fn parse_defines(v: &str) -> Result<Vec<String>, CudaError> {
    v.split_whitespace()
        .map(|item| {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            let value_ok = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
            if !name_ok || !value_ok {
                return Err(CudaError::Invalid(format!(
                    "ENGINE_CUDA_DEFINES: {item:?} is not NAME=VALUE (NAME in A-Z, 0-9, _; VALUE a number or identifier)"
                )));
            }
            Ok(if value.is_empty() { format!("-D{name}") } else { format!("-D{name}={value}") })
        })
        .collect()
}

/// What NVRTC produces for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Machine code for `sm_XX` (XX = 10 * major + minor).
    Cubin(u32),
    /// PTX for `compute_XX`, compiled by the driver at load time.
    Ptx(u32),
}

impl Target {
    fn flag(self) -> String {
        match self {
            Target::Cubin(a) => format!("--gpu-architecture=sm_{a}"),
            Target::Ptx(a) => format!("--gpu-architecture=compute_{a}"),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Target::Cubin(_) => "cubin",
            Target::Ptx(_) => "ptx",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Cubin(a) => write!(f, "sm_{a}"),
            Target::Ptx(a) => write!(f, "compute_{a} (PTX)"),
        }
    }
}

/// Where a module image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOrigin {
    /// Compiled by NVRTC in this call.
    Compiled,
    /// Read from the on-disk cache.
    DiskCache,
    /// Already compiled or read earlier in this process.
    Memory,
}

/// A compiled kernel file.
#[derive(Clone, Debug)]
pub struct ModuleImage {
    pub file: &'static str,
    pub target: Target,
    /// CUBIN bytes, or PTX text with its terminating NUL.
    pub image: Arc<Vec<u8>>,
    pub origin: ImageOrigin,
    /// Time spent compiling or reading, in milliseconds.
    pub millis: f64,
    /// The cache file (written or read), when there is a cache directory.
    pub cache_path: Option<PathBuf>,
}

/// True if the NVRTC library can be loaded.
pub(crate) fn is_available() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32), CudaError> {
    if !is_available() {
        return Err(crate::Unavailable::NoNvrtc.into());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(nvrtc("nvrtcVersion"))?;
    Ok((major, minor))
}

/// The `sm_XX` numbers NVRTC can compile for.
fn supported_archs() -> Result<Vec<i32>, CudaError> {
    let mut n = 0;
    // SAFETY: an out-pointer to a live integer.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }.result().map_err(nvrtc("nvrtcGetNumSupportedArchs"))?;
    let mut archs = vec![0i32; n.max(0) as usize];
    // SAFETY: `archs` holds the `n` integers NVRTC writes.
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }.result().map_err(nvrtc("nvrtcGetSupportedArchs"))?;
    Ok(archs)
}

/// The target for a device of compute capability `major.minor`.
pub fn target_for(major: u32, minor: u32) -> Result<Target, CudaError> {
    let arch = (10 * major + minor) as i32;
    let archs = supported_archs()?;
    if archs.contains(&arch) {
        return Ok(Target::Cubin(arch as u32));
    }
    match archs.iter().copied().filter(|&a| a < arch).max() {
        Some(a) => Ok(Target::Ptx(a as u32)),
        None => {
            let (ma, mi) = version()?;
            Err(CudaError::UnsupportedArch { major, minor, nvrtc: format!("{ma}.{mi}") })
        }
    }
}

/// The full source NVRTC compiles for `file`.
fn full_source(file: &KernelFile) -> String {
    format!("{COMMON}\n#line 1 \"{}\"\n{}", file.name, file.source)
}

/// 64-bit FNV-1a over several byte strings, each followed by a zero byte.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The cache directory, if one can be named.
pub fn cache_dir() -> Option<PathBuf> {
    let from_env = |k: &str| std::env::var_os(k).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(p) = from_env("ENGINE_CUDA_CACHE") {
        return Some(p);
    }
    if let Some(p) = from_env("XDG_CACHE_HOME") {
        return Some(p.join("engine").join("cuda"));
    }
    from_env("HOME").map(|h| h.join(".cache").join("engine").join("cuda"))
}

/// Images compiled or read in this process, by cache key.
fn memory() -> &'static Mutex<HashMap<u64, Arc<Vec<u8>>>> {
    static MEMORY: OnceLock<Mutex<HashMap<u64, Arc<Vec<u8>>>>> = OnceLock::new();
    MEMORY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether `bytes` look like a whole image of `target` (a damaged cache file is recompiled).
fn plausible(target: Target, bytes: &[u8]) -> bool {
    match target {
        Target::Cubin(_) => bytes.len() > 64 && bytes.starts_with(b"\x7fELF"),
        Target::Ptx(_) => bytes.len() > 16 && bytes.last() == Some(&0) && bytes.windows(8).any(|w| w == b".version"),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("cache path has no directory"))?;
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Frees an NVRTC program when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once, here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles one file for `target`.
fn compile(file: &KernelFile, target: Target, defines: &[String]) -> Result<Vec<u8>, CudaError> {
    let source = full_source(file);
    let csrc = CString::new(source).map_err(|_| CudaError::Invalid(format!("{} contains a NUL byte", file.name)))?;
    let cname = CString::new(file.name).map_err(|_| CudaError::Invalid("kernel file name contains a NUL byte".into()))?;
    let prog = Program(result::create_program(&csrc, Some(&cname)).map_err(nvrtc("nvrtcCreateProgram"))?);
    let mut options = vec![target.flag()];
    options.extend(OPTIONS.iter().map(|s| s.to_string()));
    options.extend(defines.iter().cloned());
    // SAFETY: `prog` is a live program; the options are NUL-free ASCII.
    if let Err(e) = unsafe { result::compile_program(prog.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog.0) }.map(|l| c_chars_to_string(&l)).unwrap_or_default();
        return Err(CudaError::Compile { file: file.name, target: target.to_string(), name: format!("{:?}", e.0), log });
    }
    match target {
        Target::Cubin(_) => {
            let mut size = 0usize;
            // SAFETY: a live, compiled program and an out-pointer.
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result().map_err(nvrtc("nvrtcGetCUBINSize"))?;
            let mut cubin = vec![0u8; size];
            // SAFETY: `cubin` holds the `size` bytes NVRTC writes.
            unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast::<c_char>()) }.result().map_err(nvrtc("nvrtcGetCUBIN"))?;
            Ok(cubin)
        }
        Target::Ptx(_) => {
            // SAFETY: a live, compiled program.
            let ptx = unsafe { result::get_ptx(prog.0) }.map_err(nvrtc("nvrtcGetPTX"))?;
            Ok(ptx.iter().map(|&c| c as u8).collect())
        }
    }
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The image of `file` for `target`: from memory, the disk cache, or NVRTC (then cached).
pub(crate) fn image(file: &'static KernelFile, target: Target, nvrtc_version: (i32, i32)) -> Result<ModuleImage, CudaError> {
    image_with(file, target, nvrtc_version, cache_dir().as_deref(), true)
}

/// [`image`] with a given cache directory, and with or without the in-process memory.
fn image_with(
    file: &'static KernelFile,
    target: Target,
    nvrtc_version: (i32, i32),
    dir: Option<&Path>,
    use_memory: bool,
) -> Result<ModuleImage, CudaError> {
    let t0 = Instant::now();
    let source = full_source(file);
    let version = format!("{}.{}", nvrtc_version.0, nvrtc_version.1);
    let flag = target.flag();
    let defines = tuning_defines()?;
    let key = fnv1a(&[source.as_bytes(), flag.as_bytes(), version.as_bytes(), OPTIONS.join(" ").as_bytes(), defines.join(" ").as_bytes()]);
    let stem = file.name.trim_end_matches(".cu");
    let tname = match target {
        Target::Cubin(a) => format!("sm_{a}"),
        Target::Ptx(a) => format!("compute_{a}"),
    };
    let cache_path = dir.map(|d| d.join(format!("{stem}-{tname}-nvrtc{version}-{key:016x}.{}", target.extension())));
    let done = |image: Arc<Vec<u8>>, origin: ImageOrigin| ModuleImage {
        file: file.name,
        target,
        image,
        origin,
        millis: t0.elapsed().as_secs_f64() * 1e3,
        cache_path: cache_path.clone(),
    };

    if use_memory {
        if let Some(img) = memory().lock().map_err(|_| CudaError::Invalid("kernel cache lock poisoned".into()))?.get(&key) {
            return Ok(done(img.clone(), ImageOrigin::Memory));
        }
    }
    if let Some(path) = &cache_path {
        if let Ok(bytes) = std::fs::read(path) {
            if plausible(target, &bytes) {
                let img = Arc::new(bytes);
                if use_memory {
                    remember(key, &img);
                }
                return Ok(done(img, ImageOrigin::DiskCache));
            }
        }
    }
    let img = Arc::new(compile(file, target, &defines)?);
    if let Some(path) = &cache_path {
        // A cache that cannot be written costs the next start a compilation, nothing more.
        let _ = write_atomic(path, &img);
    }
    if use_memory {
        remember(key, &img);
    }
    Ok(done(img, ImageOrigin::Compiled))
}

fn remember(key: u64, img: &Arc<Vec<u8>>) {
    if let Ok(mut m) = memory().lock() {
        m.insert(key, img.clone());
    }
}

/// Compiles (or finds in the caches) every kernel file for a device of compute capability
/// `major.minor`, files in parallel. Needs NVRTC but no GPU, so it also checks the kernels on
/// machines without one.
pub fn build_all(major: u32, minor: u32) -> Result<Vec<ModuleImage>, CudaError> {
    crate::error::guarded("NVRTC", || {
        let version = version()?;
        let target = target_for(major, minor)?;
        std::thread::scope(|s| {
            let handles: Vec<_> = FILES.iter().map(|f| s.spawn(move || image(f, target, version))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(CudaError::Panic { op: "NVRTC", msg: "compile thread panicked".into() })))
                .collect()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_change_with_every_input() {
        let a = fnv1a(&[b"src", b"sm_90", b"13.0"]);
        assert_ne!(a, fnv1a(&[b"src", b"sm_89", b"13.0"]));
        assert_ne!(a, fnv1a(&[b"src", b"sm_90", b"12.8"]));
        assert_ne!(a, fnv1a(&[b"src2", b"sm_90", b"13.0"]));
        // Part boundaries count: ("ab", "c") is not ("a", "bc").
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn tuning_defines_are_names_and_plain_values_only() {
        assert_eq!(parse_defines("").unwrap(), Vec::<String>::new());
        assert_eq!(parse_defines(" MV2_MIN_BLOCKS=2  FOO\tX_1=-3 ").unwrap(), ["-DMV2_MIN_BLOCKS=2", "-DFOO", "-DX_1=-3"]);
        for bad in ["mv=2", "1A=2", "A=\"x\"", "A=(1)", "A=1;B", "--gpu-architecture=sm_80", "A=2 -I/tmp"] {
            let e = parse_defines(bad).unwrap_err().to_string();
            assert!(e.contains("ENGINE_CUDA_DEFINES"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_file_is_listed_once_and_names_its_kernels() {
        for f in FILES {
            for func in f.functions {
                // Defined directly (`void name(`), or by `MATVEC2_ALL(type, ...)` as matvec2_<type>_w1/2/4.
                let mut patterns = vec![format!(" {func}("), format!("\n{func}(")];
                if let Some(ty) = func.strip_prefix("matvec2_").and_then(|r| r.rsplit_once("_w")).map(|(t, _)| t) {
                    patterns.push(format!("MATVEC2_ALL({ty}, "));
                }
                // Defined by `DEQUANT_KERNELS(type, ...)` as get_rows_<type> and dequant_f16_<type>.
                if let Some(ty) = func.strip_prefix("get_rows_").or_else(|| func.strip_prefix("dequant_f16_")) {
                    patterns.push(format!("DEQUANT_KERNELS({ty}, "));
                }
                // Defined by `ATTN_DECODE_KERNEL(G)` as attn_decode_g<G>, _any and _short.
                if let Some(g) = func.strip_prefix("attn_decode_g").map(|g| g.trim_end_matches("_any").trim_end_matches("_short")) {
                    patterns.push(format!("ATTN_DECODE_KERNEL({g})"));
                }
                let defined = patterns.iter().any(|p| f.source.contains(p));
                assert!(defined && f.source.contains("__global__"), "{} lacks {func}", f.name);
            }
        }
        let mut names: Vec<_> = FILES.iter().map(|f| f.name).collect();
        names.dedup();
        assert_eq!(names.len(), FILES.len());
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = std::env::temp_dir().join(format!("engine-cuda-cache-test-{}", std::process::id()));
        let path = dir.join("x.cubin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plausibility_rejects_truncated_images() {
        let mut cubin = b"\x7fELF".to_vec();
        cubin.resize(100, 1);
        assert!(plausible(Target::Cubin(90), &cubin));
        assert!(!plausible(Target::Cubin(90), &cubin[..10]));
        assert!(plausible(Target::Ptx(90), b"//\n.version 9.0\n.target sm_90\0"));
        assert!(!plausible(Target::Ptx(90), b"//\n.version 9.0\n.target sm_90"));
    }

    /// Compiles every file for Hopper (sm_90) when NVRTC can be loaded (no GPU needed), through a
    /// fresh cache directory: the first build compiles, the second reads the same bytes back.
    #[test]
    fn every_file_compiles_and_is_cached_when_nvrtc_is_present() {
        if !is_available() {
            println!("skipped: NVRTC not found ({})", crate::Unavailable::NoNvrtc);
            return;
        }
        let version = version().unwrap();
        let target = target_for(9, 0).unwrap();
        let dir = std::env::temp_dir().join(format!("engine-cuda-nvrtc-test-{}", std::process::id()));
        for f in FILES {
            let first = image_with(f, target, version, Some(&dir), false).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(first.origin, ImageOrigin::Compiled);
            assert!(plausible(target, &first.image), "{}", f.name);
            let second = image_with(f, target, version, Some(&dir), false).unwrap();
            assert_eq!(second.origin, ImageOrigin::DiskCache);
            assert_eq!(first.image, second.image);
            println!("{} -> {target}: {} bytes, compiled in {:.0} ms", f.name, first.image.len(), first.millis);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
