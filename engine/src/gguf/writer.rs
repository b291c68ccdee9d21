//! The GGUF writer.
//!
//! A [`GgufWriter`] collects metadata and tensors, refuses anything the reader would reject, and
//! writes version 3 files with tensor data aligned to `general.alignment` (32 by default).
//! [`GgufWriter::write_atomic`] writes to a temporary file in the target directory, syncs it,
//! re-opens it with our own reader to check it, and only then renames it over the target: a crash,
//! Ctrl-C or a full disk leaves either the old file or none at the target path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ggml_kernels::GgmlType;

use super::error::GgufError;
use super::reader::{
    check_alignment, GgufFile, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_KEY_LEN, MAX_STRING_LEN,
    MAX_TENSOR_NAME_LEN,
};
use super::value::{encode_str, MetaArray, MetaValue, ValueType};

/// Where a tensor's bytes come from when the file is written.
pub enum TensorData<'a> {
    /// Bytes in memory, borrowed (from another file's map) or owned.
    Bytes(Cow<'a, [u8]>),
    /// Produced on demand, for data too large to hold at once (quantizing a large model). The
    /// closure must write exactly the tensor's byte size.
    Stream(Box<dyn FnMut(&mut dyn Write) -> io::Result<()> + 'a>),
}

struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    ne: Vec<u64>,
    nbytes: u64,
    data: TensorData<'a>,
}

/// Called after each tensor is written with (tensors written, total tensors, bytes written).
pub type Progress<'p> = &'p mut dyn FnMut(usize, usize, u64);

/// A GGUF file being assembled.
#[derive(Default)]
pub struct GgufWriter<'a> {
    kvs: Vec<(String, MetaValue)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<PendingTensor<'a>>,
    tensor_index: HashMap<String, usize>,
    /// Inputs that must never be overwritten (the files the tensors are borrowed from).
    inputs: Vec<PathBuf>,
}

fn check_array(key: &str, a: &MetaArray) -> Result<(), GgufError> {
    if a.depth() > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep { key: key.to_string(), limit: MAX_ARRAY_DEPTH });
    }
    match a {
        MetaArray::String(v) => {
            for s in v {
                check_string_len(key, s)?;
            }
        }
        MetaArray::Array(v) => {
            for inner in v {
                check_array(key, inner)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_string_len(key: &str, s: &str) -> Result<(), GgufError> {
    if s.len() as u64 > MAX_STRING_LEN {
        return Err(GgufError::TooLong {
            what: format!("string value of key {key:?}"),
            len: s.len() as u64,
            limit: MAX_STRING_LEN,
        });
    }
    Ok(())
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer holding every key/value pair and tensor of `file`, in the same order, with the
    /// tensor data borrowed from its map. Writing it unchanged reproduces the file's content.
    pub fn from_file(file: &'a GgufFile) -> Result<Self, GgufError> {
        let mut w = GgufWriter::new();
        for (key, value) in file.metadata() {
            w.set(key, value.to_owned_value())?;
        }
        for t in file.tensors() {
            w.add_tensor(&t.name, t.ty, t.dims(), TensorData::Bytes(Cow::Borrowed(file.tensor_data(t))))?;
        }
        w.inputs.push(file.path().to_path_buf());
        Ok(w)
    }

    /// Sets `key` to `value`: replaces the value in place when the key exists, else appends.
    pub fn set(&mut self, key: &str, value: MetaValue) -> Result<(), GgufError> {
        if key.is_empty() {
            return Err(GgufError::Write("metadata key is empty".into()));
        }
        if key.len() as u64 > MAX_KEY_LEN {
            return Err(GgufError::TooLong { what: format!("metadata key {key:?}"), len: key.len() as u64, limit: MAX_KEY_LEN });
        }
        match &value {
            MetaValue::String(s) => check_string_len(key, s)?,
            MetaValue::Array(a) => check_array(key, a)?,
            _ => {}
        }
        if key == "general.alignment" {
            match value {
                MetaValue::U32(v) => check_alignment(v as u64)?,
                ref v => return Err(GgufError::key_type(key, ValueType::U32, v.value_type())),
            }
        }
        match self.kv_index.get(key) {
            Some(&i) => self.kvs[i].1 = value,
            None => {
                self.kv_index.insert(key.to_string(), self.kvs.len());
                self.kvs.push((key.to_string(), value));
            }
        }
        Ok(())
    }

    /// Removes `key`; returns its value if it was set.
    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        let i = self.kv_index.remove(key)?;
        let (_, v) = self.kvs.remove(i);
        for idx in self.kv_index.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        Some(v)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.kv_index.get(key).map(|&i| &self.kvs[i].1)
    }

    /// Adds a tensor. `ne` is in ggml order (row length first).
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, ne: &[u64], data: TensorData<'a>) -> Result<(), GgufError> {
        let index = self.tensors.len() as u64;
        if name.is_empty() {
            return Err(GgufError::TensorName { index, reason: "is empty".into() });
        }
        if name.len() as u64 > MAX_TENSOR_NAME_LEN {
            return Err(GgufError::TensorName {
                index,
                reason: format!("{name:?} is {} bytes long (limit {MAX_TENSOR_NAME_LEN})", name.len()),
            });
        }
        if self.tensor_index.contains_key(name) {
            return Err(GgufError::DuplicateTensor(name.to_string()));
        }
        if ne.is_empty() || ne.len() > MAX_DIMS as usize {
            return Err(GgufError::TensorDims { name: name.to_string(), n_dims: ne.len() as u32 });
        }
        let nbytes = ty.tensor_nbytes(ne).map_err(|source| GgufError::TensorSize {
            name: name.to_string(),
            ty: ty.name().to_string(),
            shape: ne.to_vec(),
            source,
        })?;
        if let TensorData::Bytes(b) = &data {
            if b.len() as u64 != nbytes {
                return Err(GgufError::Write(format!(
                    "tensor {name:?} ({ty}, shape {ne:?}) needs {nbytes} bytes, {} given",
                    b.len()
                )));
            }
        }
        self.tensor_index.insert(name.to_string(), self.tensors.len());
        self.tensors.push(PendingTensor { name: name.to_string(), ty, ne: ne.to_vec(), nbytes, data });
        Ok(())
    }

    /// Declares a file the written output must never replace (an input the data comes from).
    pub fn protect_input(&mut self, path: impl Into<PathBuf>) {
        self.inputs.push(path.into());
    }

    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    fn alignment(&self) -> u64 {
        match self.get("general.alignment") {
            Some(MetaValue::U32(v)) => *v as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// The header, metadata and tensor table, padded to the alignment; and each tensor's offset.
    fn encode_header(&self) -> (Vec<u8>, Vec<u64>) {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            encode_str(key, &mut out);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            value.encode(&mut out);
        }
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_str(&t.name, &mut out);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for &n in &t.ne {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.nbytes).div_ceil(align) * align;
        }
        let padded = (out.len() as u64).div_ceil(align) * align;
        out.resize(padded as usize, 0);
        (out, offsets)
    }

    /// Writes the file to `out`; returns the bytes written.
    /// A stop request ([`crate::interrupt`]) ends it at its next write with
    /// [`GgufError::Write`] ("stopped").
    pub fn write_to(&mut self, out: &mut dyn Write, progress: Option<Progress<'_>>) -> Result<u64, GgufError> {
        let io = |e: io::Error| GgufError::Write(e.to_string());
        let out: &mut dyn Write = &mut Stoppable { inner: out };
        let align = self.alignment();
        let (header, offsets) = self.encode_header();
        out.write_all(&header).map_err(io)?;
        let mut written = header.len() as u64;
        let total = self.tensors.len();
        let mut progress = progress;
        let zeros = vec![0u8; align as usize];
        for (i, t) in self.tensors.iter_mut().enumerate() {
            debug_assert_eq!(written, header.len() as u64 + offsets[i]);
            match &mut t.data {
                // (In pieces, so a stop request is seen within one.)
                TensorData::Bytes(b) => {
                    for piece in b.chunks(WRITE_PIECE) {
                        out.write_all(piece).map_err(io)?;
                    }
                }
                TensorData::Stream(f) => {
                    let mut counter = CountingWriter { inner: &mut *out, count: 0 };
                    f(&mut counter).map_err(io)?;
                    if counter.count != t.nbytes {
                        return Err(GgufError::Write(format!(
                            "tensor {:?}: its data source wrote {} bytes, {} expected",
                            t.name, counter.count, t.nbytes
                        )));
                    }
                }
            }
            written += t.nbytes;
            // Every tensor, the last one too, is padded to the alignment, as llama.cpp writes.
            let pad = written.div_ceil(align) * align - written;
            out.write_all(&zeros[..pad as usize]).map_err(io)?;
            written += pad;
            if let Some(p) = progress.as_mut() {
                p(i + 1, total, written);
            }
        }
        Ok(written)
    }

    /// Writes the file atomically at `path` and validates it with the reader; returns its size.
    pub fn write_atomic(&mut self, path: &Path, progress: Option<Progress<'_>>) -> Result<u64, GgufError> {
        let io = |e: io::Error| GgufError::Io { path: path.to_path_buf(), source: e };
        if path.is_dir() {
            return Err(GgufError::IsDirectory { path: path.to_path_buf() });
        }
        for input in &self.inputs {
            if same_file(path, input) {
                return Err(GgufError::OutputIsInput { path: path.to_path_buf(), input: input.clone() });
            }
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out.gguf".into());
        let prefix = format!(".{file_name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".partial");
        // The file becomes the output: give it the mode File::create would (0666 less the umask),
        // not the 0600 of a private temporary file.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = builder.tempfile_in(&dir).map_err(io)?;
        let stopped = |e: GgufError| if crate::interrupt::requested() { GgufError::Stopped { path: path.to_path_buf() } } else { e };
        let written = {
            let mut buffered = BufWriter::with_capacity(1 << 20, tmp.as_file());
            let n = self.write_to(&mut buffered, progress).map_err(stopped)?;
            buffered.flush().map_err(io)?;
            n
        };
        // (A stop requested after the last write still leaves the target as it was.)
        if crate::interrupt::requested() {
            return Err(GgufError::Stopped { path: path.to_path_buf() });
        }
        tmp.as_file().sync_all().map_err(io)?;
        self.validate_written(tmp.path(), path)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(written)
    }

    /// Re-opens a written file with our reader and checks it says what we meant to write.
    fn validate_written(&self, tmp: &Path, target: &Path) -> Result<(), GgufError> {
        let fail = |reason: String| GgufError::Validation { path: target.to_path_buf(), reason };
        let file = GgufFile::open(tmp).map_err(|e| fail(e.to_string()))?;
        if file.kv_count() != self.kvs.len() || file.tensors().len() != self.tensors.len() {
            return Err(fail(format!(
                "{} keys and {} tensors read back, {} and {} written",
                file.kv_count(),
                file.tensors().len(),
                self.kvs.len(),
                self.tensors.len()
            )));
        }
        for (t, w) in file.tensors().iter().zip(&self.tensors) {
            if t.name != w.name || t.ty != w.ty || t.dims() != w.ne.as_slice() {
                return Err(fail(format!("tensor {:?} read back as {:?} {} {:?}", w.name, t.name, t.ty, t.dims())));
            }
        }
        Ok(())
    }
}

/// Bytes of a borrowed tensor written at a time.
const WRITE_PIECE: usize = 8 << 20;

/// A writer that fails every write once a stop is requested ([`crate::interrupt`]).
struct Stoppable<'w> {
    inner: &'w mut dyn Write,
}

impl Write for Stoppable<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if crate::interrupt::requested() {
            // (Not ErrorKind::Interrupted, which write_all retries.)
            return Err(io::Error::other("stopped"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CountingWriter<'w> {
    inner: &'w mut dyn Write,
    count: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// True when `a` and `b` name the same file (through links too). A path that does not exist is
/// not the same as anything.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}
