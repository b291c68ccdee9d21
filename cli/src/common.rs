//! Options and loading shared by the subcommands that run a model.

use std::path::PathBuf;

use anyhow::Context;
use engine::gguf::{GgufFile, OpenOptions};
use engine::lighttransfer::{HybridMode, HybridOptions, HybridSpec};
use engine::model::kv_cache::KvType;
use engine::model::SessionParams;
use engine::sampling::SamplerParams;
use engine::tokenizer::Tokenizer;

/// For the commands that write a model: Ctrl-C asks the write to stop
/// ([`engine::interrupt`]), so its temporary file is removed and the output path keeps what it
/// held, instead of the process ending with the temporary file left in the output's directory.
/// A second Ctrl-C ends the process at once (exit status 130).
pub fn stop_writes_on_ctrl_c() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if engine::interrupt::requested() {
            std::process::exit(130);
        }
        engine::interrupt::request();
    })
    .context("installing the Ctrl-C handler")
}

/// Which model, and how to run it.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// GGUF model file; without it, the default model (Gemma 3 270M) from the cache.
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Context size in tokens (0: the model's training context). Default: 4096; for
    /// perplexity, the chunk size, 512.
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Most prompt tokens evaluated per forward pass.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// CPU threads (default: all available).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// KV cache element type.
    #[arg(long = "kv-type", default_value = "f16", value_parser = ["f16", "f32"])]
    pub kv_type: String,
    /// Read the model into memory instead of mapping it.
    #[arg(long)]
    pub no_mmap: bool,
    /// How the CPU computes: `fast` (our kernels), or `llamacpp`: llama.cpp's x86 CPU numerics,
    /// bit for bit, so that greedy output equals llama.cpp's token for token (Gemma 3 with the
    /// default model's weight types; slower; the CPU only).
    #[arg(long, default_value = "fast", value_parser = ["fast", "llamacpp"])]
    pub numerics: String,
}

impl ModelArgs {
    /// Applies `--numerics` to a loaded model.
    pub fn apply_numerics(&self, model: &mut engine::model::Model<'_>) -> anyhow::Result<()> {
        if self.numerics == "llamacpp" {
            model.use_llamacpp_numerics().map_err(|e| anyhow::anyhow!("--numerics llamacpp: {e}"))?;
        }
        Ok(())
    }
}

/// Where the model runs (`run`, `bench`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Device: cpu, or cuda (every layer on GPU 0). Default: cuda when -ngl covers every
    /// layer, else cpu.
    #[arg(long = "device", value_parser = ["cpu", "cuda"])]
    pub device: Option<String>,
    /// Layers on the GPU, as llama.cpp's -ngl (also spelled -ngl here): 0 runs on the CPU, the
    /// layer count or more (99) on the GPU; partial offload is not supported.
    #[arg(long = "n-gpu-layers", visible_alias = "ngl")]
    pub n_gpu_layers: Option<usize>,
}

impl DeviceArgs {
    /// Whether to run on the GPU, for a model of `n_layer` layers.
    pub fn cuda(&self, n_layer: usize) -> anyhow::Result<bool> {
        match (self.device.as_deref(), self.n_gpu_layers) {
            (Some("cpu"), Some(n)) if n > 0 => anyhow::bail!("--device cpu with -ngl {n}: choose one"),
            (Some("cpu"), _) => Ok(false),
            (_, Some(n)) if n > 0 && n < n_layer => anyhow::bail!(
                "-ngl {n}: partial offload is not supported; the model has {n_layer} layers: use -ngl {n_layer} (or 99) to run every layer on the GPU, or -ngl 0 for the CPU"
            ),
            (Some("cuda"), Some(0)) => anyhow::bail!("--device cuda with -ngl 0: choose one"),
            (Some("cuda"), _) => Ok(true),
            (_, Some(n)) => Ok(n > 0),
            (_, None) => Ok(false),
        }
    }
}

/// The single-dash `-ngl N` of llama.cpp, rewritten to `--n-gpu-layers N` before parsing (a
/// short option has one letter).
pub fn rewrite_ngl(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.map(|a| match a.to_str() {
        Some("-ngl") => "--n-gpu-layers".into(),
        Some(s) if s.starts_with("-ngl=") => format!("--n-gpu-layers={}", &s[5..]).into(),
        _ => a,
    })
    .collect()
}

/// Hybrid (LightTransfer) settings.
#[derive(clap::Args, Clone, Debug)]
pub struct HybridArgs {
    /// LightTransfer-Test: make this fraction of the candidate layers lazy (streaming) on the
    /// first prompt, choosing the highest lazy ratios; 0 turns the file's flags off too.
    #[arg(long = "lazy")]
    pub lazy: Option<f32>,
    /// SimLayerKV variant: candidate layers whose lazy ratio reaches this become lazy.
    #[arg(long = "lazy-threshold")]
    pub lazy_threshold: Option<f32>,
    /// Make exactly these layers lazy (comma-separated indices), overriding the file.
    #[arg(long = "lazy-layers", value_delimiter = ',')]
    pub lazy_layers: Option<Vec<usize>>,
    /// Sink positions a lazy layer keeps (default: the file's, else 4).
    #[arg(long = "sink")]
    pub sink: Option<u32>,
    /// Recent positions a lazy layer keeps (default: the file's, else 1020).
    #[arg(long = "window")]
    pub window: Option<u32>,
    /// Queries at the end of the prompt whose attention gives the lazy ratio.
    #[arg(long = "w-last", default_value_t = 16)]
    pub w_last: usize,
    /// Ignore the lighttransfer.* flags stored in the model file.
    #[arg(long = "no-hybrid")]
    pub no_hybrid: bool,
}

impl HybridArgs {
    /// The mode for this model: the file's flags unless the command line says otherwise.
    pub fn mode(&self, file: &GgufFile, model: &engine::model::Model<'_>) -> anyhow::Result<HybridMode> {
        let spec = HybridSpec::from_gguf(file, model.cfg.n_layer)?;
        let opts = HybridOptions {
            lazy_fraction: self.lazy,
            threshold: self.lazy_threshold,
            sink: self.sink,
            window: self.window,
            w_last: self.w_last,
            ignore_file: self.no_hybrid,
            lazy_layers: self.lazy_layers.clone(),
        };
        Ok(opts.resolve(spec.as_ref(), &model.native_layer_kinds())?)
    }
}

/// One line about the hybrid layers of a session, for summaries.
pub fn describe_hybrid(mode: &HybridMode, probe: Option<&engine::lighttransfer::LazyProbe>) -> Option<String> {
    match (mode, probe) {
        (HybridMode::Static { lazy, .. }, _) => Some(format!("static, lazy layers {lazy:?}")),
        (HybridMode::Test { .. }, Some(p)) => {
            let ratios: Vec<String> = p.ratios.iter().enumerate().filter_map(|(i, r)| r.map(|r| format!("{i}:{r:.3}"))).collect();
            let mut lazy = p.made_lazy.clone();
            lazy.sort_unstable();
            Some(format!(
                "LightTransfer-Test on the prompt, lazy layers {lazy:?} (identification {:.1} ms); ratios {}",
                p.elapsed.as_secs_f64() * 1e3,
                ratios.join(" ")
            ))
        }
        _ => None,
    }
}

/// Sampling settings (llama.cpp's names and defaults).
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k (0: off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1: off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0: off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed (default: a new one each run, printed in the summary).
    #[arg(short = 's', long = "seed")]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// Checked sampler settings; the seed drawn when none was given.
    pub fn params(&self) -> anyhow::Result<SamplerParams> {
        let seed = self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            t.as_nanos() as u64 ^ std::process::id() as u64
        });
        let p = SamplerParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed,
        };
        p.validate()?;
        Ok(p)
    }
}

/// Sets the number of worker threads for the kernels (once per process).
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<usize> {
    let n = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    // A second call in one process (tests) keeps the first pool: not an error.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    Ok(rayon::current_num_threads())
}

/// Opens the model file named by `-m` (or the default model).
pub fn open_model(args: &ModelArgs) -> anyhow::Result<GgufFile> {
    let path = crate::resolve_model(args.model.clone())?;
    GgufFile::open_with(&path, OpenOptions { no_mmap: args.no_mmap }).with_context(|| format!("loading {}", path.display()))
}

pub fn tokenizer(file: &GgufFile) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_gguf(file).context("building the tokenizer")
}

impl ModelArgs {
    /// Session settings for a model trained with `n_ctx_train` positions; `default_ctx` when
    /// `-c` is not given.
    pub fn session_params(&self, n_ctx_train: usize, default_ctx: usize) -> SessionParams {
        let n_ctx = match self.ctx_size.unwrap_or(default_ctx) {
            0 => n_ctx_train,
            n => n,
        };
        SessionParams {
            n_ctx,
            n_batch: self.batch_size as usize,
            kv_type: if self.kv_type == "f32" { KvType::F32 } else { KvType::F16 },
            layer_kinds: None,
        }
    }
}

/// Bytes as KiB/MiB/GiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod device_tests {
    use super::{rewrite_ngl, DeviceArgs};

    fn dev(device: Option<&str>, ngl: Option<usize>) -> DeviceArgs {
        DeviceArgs { device: device.map(String::from), n_gpu_layers: ngl }
    }

    #[test]
    fn device_choice_follows_ngl_and_device() {
        assert!(!dev(None, None).cuda(32).unwrap());
        assert!(!dev(None, Some(0)).cuda(32).unwrap());
        assert!(dev(None, Some(99)).cuda(32).unwrap());
        assert!(dev(None, Some(32)).cuda(32).unwrap());
        assert!(dev(Some("cuda"), None).cuda(32).unwrap());
        assert!(!dev(Some("cpu"), None).cuda(32).unwrap());
        let partial = dev(None, Some(8)).cuda(32).unwrap_err().to_string();
        assert!(partial.contains("partial offload") && partial.contains("-ngl 32"), "{partial}");
        assert!(dev(Some("cpu"), Some(99)).cuda(32).is_err());
        assert!(dev(Some("cuda"), Some(0)).cuda(32).is_err());
    }

    #[test]
    fn single_dash_ngl_is_rewritten() {
        let args = ["engine", "bench", "-ngl", "99", "-n", "128", "-ngl=5"].map(std::ffi::OsString::from);
        let out: Vec<String> = rewrite_ngl(args.into_iter()).into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(out, ["engine", "bench", "--n-gpu-layers", "99", "-n", "128", "--n-gpu-layers=5"]);
    }
}
