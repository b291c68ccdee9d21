//! The weights of a Hugging Face checkpoint: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, memory-mapped and read in place.
//!
//! The `safetensors` crate parses and validates each header (offsets inside the file, sizes that
//! match dtype and shape); tensors are then byte ranges of the maps, decoded to f32 a block of
//! rows at a time by [`decode_rows`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

use super::ConvertError;

/// One tensor of the checkpoint.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: Dtype,
    /// PyTorch order (rows first).
    pub shape: Vec<usize>,
    shard: usize,
    /// Byte range in the shard's map.
    start: usize,
    end: usize,
}

impl SourceTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The mapped shards and the tensors they hold.
pub struct Checkpoint {
    pub files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    /// By name, in name order.
    pub tensors: BTreeMap<String, SourceTensor>,
}

/// Bytes per element of the dtypes we decode; `None` for the others.
pub fn element_size(d: Dtype) -> Option<usize> {
    match d {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        Dtype::F64 => Some(8),
        _ => None,
    }
}

impl Checkpoint {
    /// Opens the weights of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint, ConvertError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (files, weight_map) = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| ConvertError::Io { path: index.clone(), source })?;
            let doc: Value =
                serde_json::from_str(&text).map_err(|e| ConvertError::Json { path: index.clone(), reason: e.to_string() })?;
            let Some(Value::Object(map)) = doc.get("weight_map") else {
                return Err(ConvertError::Json { path: index, reason: "no \"weight_map\" object".into() });
            };
            let mut weight_map = HashMap::new();
            let mut files: Vec<String> = Vec::new();
            for (name, file) in map {
                let Value::String(file) = file else {
                    return Err(ConvertError::Json { path: index.clone(), reason: format!("weight_map[{name:?}] is not a file name") });
                };
                // Shard names are plain file names in the same directory.
                if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
                    return Err(ConvertError::Json { path: index.clone(), reason: format!("shard name {file:?} is not a plain file name") });
                }
                if !files.contains(file) {
                    files.push(file.clone());
                }
                weight_map.insert(name.clone(), file.clone());
            }
            files.sort();
            (files.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(), Some(weight_map))
        } else if single.is_file() {
            (vec![single], None)
        } else {
            let has_bin = dir.join("pytorch_model.bin").is_file() || dir.join("pytorch_model.bin.index.json").is_file();
            return Err(ConvertError::NoWeights { dir: dir.to_path_buf(), pytorch_bin: has_bin });
        };

        let mut maps = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (shard, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|source| ConvertError::Io { path: path.clone(), source })?;
            // SAFETY: the map is read-only; as with every memory-mapped input, a file truncated
            // by another process while we read it is outside what we can defend against.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| ConvertError::Io { path: path.clone(), source })?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| ConvertError::Safetensors { path: path.clone(), reason: e.to_string() })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let t = SourceTensor {
                    name: name.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    shard,
                    start: base + s,
                    end: base + e,
                };
                if let Some(prev) = tensors.insert(name.clone(), t) {
                    return Err(ConvertError::Safetensors {
                        path: path.clone(),
                        reason: format!("tensor {name:?} also appears in {}", files[prev.shard].display()),
                    });
                }
            }
            maps.push(map);
        }
        if let Some(weight_map) = weight_map {
            let mut missing: Vec<&String> = weight_map.keys().filter(|n| !tensors.contains_key(*n)).collect();
            missing.sort();
            let mut extra: Vec<&String> = tensors.keys().filter(|n| !weight_map.contains_key(*n)).collect();
            extra.sort();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(ConvertError::IndexMismatch {
                    missing: missing.into_iter().take(8).cloned().collect(),
                    extra: extra.into_iter().take(8).cloned().collect(),
                });
            }
        }
        Ok(Checkpoint { files, maps, tensors })
    }

    pub fn get(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.get(name)
    }

    /// The raw bytes of `t`.
    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        &self.maps[t.shard][t.start..t.end]
    }

    /// Total bytes of all shards.
    pub fn total_bytes(&self) -> u64 {
        self.maps.iter().map(|m| m.len() as u64).sum()
    }
}

/// Decodes the elements `first..first + out.len()` of `t` (row-major) into `out`.
///
/// The caller has checked that `t`'s dtype is one [`element_size`] knows.
pub fn decode_rows(ck: &Checkpoint, t: &SourceTensor, first: usize, out: &mut [f32]) {
    let Some(size) = element_size(t.dtype) else {
        debug_assert!(false, "decode_rows on an unchecked dtype");
        return;
    };
    let bytes = &ck.bytes(t)[first * size..(first + out.len()) * size];
    match t.dtype {
        Dtype::F32 => {
            for (y, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => ggml_kernels::quants::float16::f16_bytes_to_f32(bytes, out),
        Dtype::BF16 => ggml_kernels::quants::float16::bf16_bytes_to_f32(bytes, out),
        Dtype::F64 => {
            for (y, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                *y = f64::from_le_bytes(a) as f32;
            }
        }
        _ => {}
    }
}
