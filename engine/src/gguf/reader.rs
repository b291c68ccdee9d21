//! The GGUF reader: zero copy over a memory map.
//!
//! Opening a file walks the header, the metadata and the tensor table once, checking every count,
//! length, type id and offset against the bytes that are actually there before using it; it does
//! not touch tensor data. Afterwards metadata values and tensor data are handed out as views that
//! borrow the map.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ggml_kernels::GgmlType;

use super::error::GgufError;
use super::value::{decode_fixed, Array, FromValue, Value, ValueType};

/// `GGUF` as the first four bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest accepted `general.alignment`.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Longest metadata key (the GGUF specification's limit).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest tensor name: ggml keeps names in 64 bytes with a terminating NUL.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Longest string value (chat templates are kilobytes; this leaves room and stops absurd lengths).
pub const MAX_STRING_LEN: u64 = 64 << 20;
/// Deepest nesting of arrays inside arrays.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// ggml's limit on tensor dimensions.
pub const MAX_DIMS: u32 = 4;

/// How to open a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Read the whole file into memory instead of mapping it, for file systems that cannot map.
    pub no_mmap: bool,
}

/// The bytes of an open file: a read-only map, or a heap copy aligned like a map.
enum Buffer {
    Mmap(memmap2::Mmap),
    Heap { chunks: Vec<Chunk>, len: usize },
}

/// 64-byte aligned storage, so tensor data read without mmap keeps the alignment it has in the file.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

impl Buffer {
    fn bytes(&self) -> &[u8] {
        match self {
            Buffer::Mmap(m) => m,
            Buffer::Heap { chunks, len } => {
                // SAFETY: `chunks` owns `chunks.len() * 64 >= len` initialised bytes, Chunk is
                // plain bytes with no padding, and the slice borrows `self`.
                unsafe { std::slice::from_raw_parts(chunks.as_ptr().cast::<u8>(), *len) }
            }
        }
    }

    fn from_vec_copy(data: &[u8]) -> Buffer {
        let mut chunks = vec![Chunk([0; 64]); data.len().div_ceil(64)];
        for (chunk, src) in chunks.iter_mut().zip(data.chunks(64)) {
            chunk.0[..src.len()].copy_from_slice(src);
        }
        Buffer::Heap { chunks, len: data.len() }
    }
}

/// One metadata entry: its key and where its encoded value sits in the buffer.
#[derive(Clone, Debug)]
struct KvEntry {
    key: String,
    ty: ValueType,
    /// The encoded value: the fixed-size bytes, the string's bytes after its length, or for an
    /// array the elements after its element type and count.
    start: usize,
    end: usize,
    /// For arrays: element type and count.
    array: Option<(ValueType, usize)>,
}

/// A tensor as the tensor table describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// Dimensions in ggml order (`ne[0]` is the row length); entries past `n_dims` are 1.
    pub ne: [u64; 4],
    pub n_dims: usize,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of data, from [`GgmlType::tensor_nbytes`].
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn dims(&self) -> &[u64] {
        &self.ne[..self.n_dims]
    }

    pub fn n_elements(&self) -> u64 {
        self.dims().iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    buf: Buffer,
    version: u32,
    kvs: Vec<KvEntry>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("kv_count", &self.kvs.len())
            .field("tensor_count", &self.tensors.len())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GgufError + '_ {
    move |source| GgufError::Io { path: path.to_path_buf(), source }
}

fn check_regular_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), GgufError> {
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(GgufError::IsDirectory { path: path.to_path_buf() });
    }
    if !ft.is_file() {
        #[cfg(unix)]
        let kind = {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        #[cfg(not(unix))]
        let kind = "not a regular file";
        return Err(GgufError::NotRegularFile { path: path.to_path_buf(), kind });
    }
    Ok(())
}

impl GgufFile {
    /// Opens and validates a file through a memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        Self::open_with(path, OpenOptions::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: OpenOptions) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        // Look before opening: opening a FIFO for reading would block until a writer comes.
        check_regular_file(path, &std::fs::metadata(path).map_err(io_err(path))?)?;
        let mut file = File::open(path).map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        check_regular_file(path, &meta)?;
        let len = meta.len();
        // Too short for a header: report it as such rather than asking to map nothing.
        let buf = if opts.no_mmap || len < 24 {
            let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut data).map_err(io_err(path))?;
            Buffer::from_vec_copy(&data)
        } else {
            // SAFETY: the map is read-only and lives as long as this GgufFile. As with every
            // mmap-based reader, a file truncated or rewritten by another process while mapped
            // is outside what the program can defend against.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
            Buffer::Mmap(map)
        };
        Self::parse(path.to_path_buf(), buf)
    }

    /// Parses a file image held in memory (tests, fuzzing, files fetched by other means).
    pub fn from_bytes(data: &[u8]) -> Result<GgufFile, GgufError> {
        Self::parse(PathBuf::from("<memory>"), Buffer::from_vec_copy(data))
    }

    fn parse(path: PathBuf, buf: Buffer) -> Result<GgufFile, GgufError> {
        let parsed = Parser::new(buf.bytes()).parse()?;
        Ok(GgufFile {
            path,
            buf,
            version: parsed.version,
            kv_index: parsed.kvs.iter().enumerate().map(|(i, kv)| (kv.key.clone(), i)).collect(),
            kvs: parsed.kvs,
            tensor_index: parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the bytes are a memory map (false after `--no-mmap`).
    pub fn is_mmapped(&self) -> bool {
        matches!(self.buf, Buffer::Mmap(_))
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn file_len(&self) -> u64 {
        self.buf.bytes().len() as u64
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Bytes from the start of the data section to the end of the file.
    pub fn data_section_len(&self) -> u64 {
        self.file_len().saturating_sub(self.data_offset)
    }

    pub fn kv_count(&self) -> usize {
        self.kvs.len()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> + '_ {
        self.kvs.iter().map(move |kv| (kv.key.as_str(), self.decode(kv)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.kvs.iter().map(|kv| kv.key.as_str())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.kv_index.get(key).map(|&i| self.decode(&self.kvs[i]))
    }

    fn decode(&self, kv: &KvEntry) -> Value<'_> {
        let bytes = &self.buf.bytes()[kv.start..kv.end];
        match (kv.ty, kv.array) {
            (ValueType::Array, Some((elem, len))) => Value::Array(Array { elem, len, bytes }),
            // Validated as UTF-8 when the file was opened.
            (ValueType::String, _) => Value::String(std::str::from_utf8(bytes).unwrap_or_default()),
            // Validated (bools 0/1, exact sizes) when the file was opened.
            (ty, _) => decode_fixed(ty, bytes).unwrap_or(Value::U8(0)),
        }
    }

    /// The value of `key` as exactly type `T`: "key K: expected u32, got f32" otherwise.
    pub fn get_as<T: FromValue>(&self, key: &str) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let got = v.value_type();
                T::from_value(v).map(Some).ok_or_else(|| GgufError::key_type(key, T::TYPE, got))
            }
        }
    }

    /// Like [`GgufFile::get_as`], for a key that must be present.
    pub fn require<T: FromValue>(&self, key: &str) -> Result<T, GgufError> {
        self.get_as(key)?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(GgufError::key_type(key, ValueType::String, v.value_type())),
        }
    }

    /// An array value whose elements are exactly `elem`.
    pub fn get_array(&self, key: &str, elem: ValueType) -> Result<Option<Array<'_>>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.elem_type() == elem => Ok(Some(a)),
            Some(v) => Err(GgufError::KeyType {
                key: key.to_string(),
                expected: format!("array[{elem}]"),
                got: v.type_label(),
            }),
        }
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, borrowed from the map. Bounds were checked at open.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        self.buf.bytes().get(start..start + t.nbytes as usize).unwrap_or(&[])
    }

    /// Tells the kernel that the whole pages inside `bytes` (a part of this file's image) will
    /// not be read for a while, so a map drops them from this process's memory; they are read
    /// back from the file if they are touched again. Does nothing without a map (`--no-mmap`)
    /// or for bytes outside the image.
    pub fn release_pages(&self, bytes: &[u8]) {
        let Buffer::Mmap(map) = &self.buf else { return };
        let (base, start) = (map.as_ptr() as usize, bytes.as_ptr() as usize);
        if start < base || start + bytes.len() > base + map.len() {
            return;
        }
        // 4 KiB pages (x86-64); where pages are larger the misaligned call fails, a missed hint.
        const PAGE: usize = 4096;
        let first = (start - base).div_ceil(PAGE) * PAGE;
        let end = (start - base + bytes.len()) / PAGE * PAGE;
        if end > first {
            // SAFETY: the map is read-only, so dropping its pages loses nothing:
            // a later read faults them in again from the file. Errors are only a missed hint.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first) };
        }
    }

    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        self.buf.bytes()
    }
}

struct Parsed {
    version: u32,
    kvs: Vec<KvEntry>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// A bounds-checked cursor over the file image.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated { what: what(), offset: self.pos as u64, need: n, have: self.left() });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-prefixed string no longer than `limit`; returns where its bytes sit.
    fn string(&mut self, what: &dyn Fn() -> String, limit: u64) -> Result<(usize, usize), GgufError> {
        let len = self.u64(|| format!("length of {}", what()))?;
        if len > limit {
            return Err(GgufError::TooLong { what: what(), len, limit });
        }
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        if simdutf8::basic::from_utf8(bytes).is_err() {
            return Err(GgufError::InvalidUtf8 { what: what(), offset });
        }
        Ok((offset as usize, offset as usize + len as usize))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in what is left.
    fn check_count(&self, what: impl FnOnce() -> String, count: u64, min_size: usize) -> Result<(), GgufError> {
        let max = self.left() / min_size as u64;
        if count > max {
            return Err(GgufError::CountTooLarge { what: what(), count, max, have: self.left() });
        }
        Ok(())
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType, GgufError> {
        let id = self.u32(|| format!("value type of key {key:?}"))?;
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType { key: key.to_string(), id })
    }

    /// Validates one value of type `ty`, advancing past it.
    fn skip_value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<(), GgufError> {
        match ty {
            ValueType::String => {
                self.string(&|| format!("string value of key {key:?}"), MAX_STRING_LEN)?;
            }
            ValueType::Array => {
                self.array(key, depth + 1)?;
            }
            ValueType::Bool => {
                let offset = self.pos as u64;
                let b = self.take(1, || format!("value of key {key:?}"))?[0];
                if b > 1 {
                    return Err(GgufError::InvalidBool { key: key.to_string(), value: b, offset });
                }
            }
            t => {
                let size = t.fixed_size().unwrap_or(1) as u64;
                self.take(size, || format!("value of key {key:?}"))?;
            }
        }
        Ok(())
    }

    /// Validates `count` strings in a row. This is the hot loop of opening a model (a vocabulary
    /// holds 262,144 tokens), so it first walks the lengths only, then checks UTF-8 once over the
    /// whole run: when every length is below 128, each 8-byte length prefix is ASCII, and since
    /// no multi-byte UTF-8 sequence can contain or cross an ASCII byte, the run is valid UTF-8
    /// exactly when every string in it is. Anything else (a longer string, invalid bytes) goes
    /// through the general per-string path, which also gives the precise error.
    fn skip_strings(&mut self, key: &str, count: u64) -> Result<(), GgufError> {
        let buf = self.buf;
        let start = self.pos;
        let mut pos = start;
        let mut all_short = true;
        for _ in 0..count {
            // Fewer than `count` strings fit: the per-string path below reports where it ends.
            let Some(b) = buf.get(pos..pos + 8) else {
                all_short = false;
                break;
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let len = u64::from_le_bytes(a);
            if len >= 128 || len as usize > buf.len() - pos - 8 {
                all_short = false;
                break;
            }
            pos += 8 + len as usize;
        }
        if all_short && simdutf8::basic::from_utf8(&buf[start..pos]).is_ok() {
            self.pos = pos;
            return Ok(());
        }
        for _ in 0..count {
            self.string(&|| format!("string element of key {key:?}"), MAX_STRING_LEN)?;
        }
        Ok(())
    }

    /// Validates an array header and its elements; returns (elem type, count, elements start).
    fn array(&mut self, key: &str, depth: usize) -> Result<(ValueType, usize, usize), GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep { key: key.to_string(), limit: MAX_ARRAY_DEPTH });
        }
        let elem = self.value_type(key)?;
        let count = self.u64(|| format!("element count of key {key:?}"))?;
        self.check_count(|| format!("element count of array key {key:?}"), count, elem.min_encoded_size())?;
        let start = self.pos;
        match elem {
            ValueType::Bool => {
                let bytes = self.take(count, || format!("elements of key {key:?}"))?;
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(GgufError::InvalidBool {
                        key: key.to_string(),
                        value: bytes[i],
                        offset: (start + i) as u64,
                    });
                }
            }
            t if t.fixed_size().is_some() => {
                // check_count guarantees count * size <= bytes left.
                let size = t.fixed_size().unwrap_or(1) as u64;
                self.take(count * size, || format!("elements of key {key:?}"))?;
            }
            ValueType::String => self.skip_strings(key, count)?,
            t => {
                for _ in 0..count {
                    self.skip_value(key, t, depth)?;
                }
            }
        }
        Ok((elem, count as usize, start))
    }

    fn parse(mut self) -> Result<Parsed, GgufError> {
        // Header.
        let magic = self.take(4, || "magic".into())?;
        if magic != GGUF_MAGIC {
            let found = magic.escape_ascii().to_string();
            return Err(GgufError::BadMagic { found });
        }
        let version = self.u32(|| "version".into())?;
        if version & 0xFFFF == 0 && version != 0 {
            return Err(GgufError::ByteSwapped { raw: version });
        }
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = self.u64(|| "tensor count".into())?;
        let n_kv = self.u64(|| "metadata key/value count".into())?;
        // Smallest encodings: a key/value pair is an 8-byte key length, a 1-byte key, a 4-byte type
        // and a 1-byte value; a tensor info is an 8-byte name length, a 1-byte name, 4-byte n_dims,
        // one 8-byte dimension, a 4-byte type and an 8-byte offset.
        self.check_count(|| "metadata key/value count".into(), n_kv, 14)?;
        let after_kv_min = self.left() - n_kv * 14;
        if n_tensors > after_kv_min / 33 {
            return Err(GgufError::CountTooLarge {
                what: "tensor count".into(),
                count: n_tensors,
                max: after_kv_min / 33,
                have: self.left(),
            });
        }

        // Metadata.
        let mut kvs: Vec<KvEntry> = Vec::with_capacity(n_kv.min(4096) as usize);
        let mut seen: HashMap<&'a str, ()> = HashMap::with_capacity(n_kv.min(4096) as usize);
        for index in 0..n_kv {
            let key_offset = self.pos as u64;
            let (ks, ke) = self.string(&|| format!("metadata key #{index}"), MAX_KEY_LEN)?;
            let key_bytes = &self.buf[ks..ke];
            let key = std::str::from_utf8(key_bytes).unwrap_or_default();
            if key.is_empty() {
                return Err(GgufError::EmptyKey { index, offset: key_offset });
            }
            if seen.insert(key, ()).is_some() {
                return Err(GgufError::DuplicateKey(key.to_string()));
            }
            let ty = self.value_type(key)?;
            let (start, array) = match ty {
                ValueType::Array => {
                    let (elem, count, start) = self.array(key, 1)?;
                    (start, Some((elem, count)))
                }
                ValueType::String => {
                    let (s, _) = self.string(&|| format!("string value of key {key:?}"), MAX_STRING_LEN)?;
                    (s, None)
                }
                t => {
                    let start = self.pos;
                    self.skip_value(key, t, 0)?;
                    (start, None)
                }
            };
            kvs.push(KvEntry { key: key.to_string(), ty, start, end: self.pos, array });
        }

        // Alignment.
        let alignment = match kvs.iter().find(|kv| kv.key == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(kv) if kv.ty != ValueType::U32 => {
                return Err(GgufError::key_type("general.alignment", ValueType::U32, kv.ty));
            }
            Some(kv) => {
                let b = &self.buf[kv.start..kv.end];
                let value = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
                check_alignment(value)?;
                value
            }
        };

        // Tensor table.
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut names: HashMap<&'a str, ()> = HashMap::with_capacity(n_tensors.min(4096) as usize);
        for index in 0..n_tensors {
            let name_len_peek = self.buf.get(self.pos..self.pos + 8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            });
            if name_len_peek == Some(0) {
                return Err(GgufError::TensorName { index, reason: "is empty".into() });
            }
            let (ns, ne_) = self
                .string(&|| format!("name of tensor #{index}"), MAX_TENSOR_NAME_LEN)
                .map_err(|e| match e {
                    GgufError::TooLong { len, limit, .. } => {
                        GgufError::TensorName { index, reason: format!("is {len} bytes long (limit {limit})") }
                    }
                    other => other,
                })?;
            let name = std::str::from_utf8(&self.buf[ns..ne_]).unwrap_or_default();
            if names.insert(name, ()).is_some() {
                return Err(GgufError::DuplicateTensor(name.to_string()));
            }
            let n_dims = self.u32(|| format!("n_dims of tensor {name:?}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::TensorDims { name: name.to_string(), n_dims });
            }
            let mut ne = [1u64; 4];
            for d in ne.iter_mut().take(n_dims as usize) {
                *d = self.u64(|| format!("dimensions of tensor {name:?}"))?;
            }
            let type_id = self.u32(|| format!("type of tensor {name:?}"))?;
            let ty = GgmlType::from_id(type_id)
                .ok_or_else(|| GgufError::TensorType { name: name.to_string(), id: type_id })?;
            let offset = self.u64(|| format!("data offset of tensor {name:?}"))?;
            let nbytes = ty.tensor_nbytes(&ne[..n_dims as usize]).map_err(|source| GgufError::TensorSize {
                name: name.to_string(),
                ty: ty.name().to_string(),
                shape: ne[..n_dims as usize].to_vec(),
                source,
            })?;
            tensors.push(TensorInfo { name: name.to_string(), ty, ne, n_dims: n_dims as usize, offset, nbytes });
        }

        // Data section.
        let file_len = self.buf.len() as u64;
        let data_offset = (self.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::TensorMisaligned { name: t.name.clone(), offset: t.offset, alignment });
            }
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.nbytes));
            if end.is_none_or(|e| e > file_len) {
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    need: t.nbytes,
                    offset: data_offset.saturating_add(t.offset),
                    file_len,
                });
            }
        }
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.nbytes > b.offset {
                return Err(GgufError::TensorOverlap {
                    name: b.name.clone(),
                    start: b.offset,
                    end: b.offset + b.nbytes,
                    other: a.name.clone(),
                    other_start: a.offset,
                    other_end: a.offset + a.nbytes,
                });
            }
        }
        Ok(Parsed { version, kvs, tensors, alignment, data_offset })
    }
}

/// Checks a `general.alignment` value: non-zero, a power of two, at most [`MAX_ALIGNMENT`].
pub(crate) fn check_alignment(value: u64) -> Result<(), GgufError> {
    if value == 0 {
        return Err(GgufError::BadAlignment { value, reason: "must not be 0" });
    }
    if !value.is_power_of_two() {
        return Err(GgufError::BadAlignment { value, reason: "must be a power of two" });
    }
    if value > MAX_ALIGNMENT {
        return Err(GgufError::BadAlignment { value, reason: "larger than 1 MiB" });
    }
    Ok(())
}
