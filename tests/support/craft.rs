//! GGUF images built by hand, byte by byte, so that a test can corrupt exactly one thing.
//!
//! [`Craft`] lays out a file the way the format does: magic, version, tensor count, key/value
//! count, the key/value pairs, the tensor infos, padding to the alignment, the data section.
//! Every piece can be given raw (a key that is not UTF-8, a type id that does not exist, a count
//! that lies about what follows), and the two counts in the header can be overridden. The value
//! encoders ([`string`], [`array`], ...) return the bytes of one value without its type id.
//!
//! Nothing here goes through the engine's writer: the writer refuses to emit bad files, and the
//! reader must be checked against an encoding written independently of it.

use engine::gguf::ValueType;
use ggml_kernels::GgmlType;

/// A GGUF image under construction.
#[derive(Clone, Debug)]
pub struct Craft {
    pub magic: [u8; 4],
    pub version: u32,
    /// Replaces the tensor count in the header; `None` writes the number of tensor infos added.
    pub tensor_count: Option<u64>,
    /// Replaces the key/value count in the header; `None` writes the number of pairs added.
    pub kv_count: Option<u64>,
    /// Alignment used to pad the end of the tensor infos before the data section (the file's own
    /// `general.alignment`, if any, is just another key/value pair: set both to agree). A file
    /// with neither tensor infos nor data ends right after its key/value pairs, unpadded, so
    /// that metadata cases know exactly how many bytes are left.
    pub pad_to: u64,
    kvs: Vec<u8>,
    n_kvs: u64,
    infos: Vec<u8>,
    n_infos: u64,
    data: Vec<u8>,
}

impl Default for Craft {
    fn default() -> Self {
        Craft::new()
    }
}

impl Craft {
    /// Bytes in the header: magic, version, tensor count, key/value count.
    pub const HEADER_LEN: usize = 24;

    /// An empty version 3 file: magic, version, two zero counts.
    pub fn new() -> Craft {
        Craft {
            magic: *b"GGUF",
            version: 3,
            tensor_count: None,
            kv_count: None,
            pad_to: 32,
            kvs: Vec::new(),
            n_kvs: 0,
            infos: Vec::new(),
            n_infos: 0,
            data: Vec::new(),
        }
    }

    pub fn version(mut self, version: u32) -> Craft {
        self.version = version;
        self
    }

    pub fn magic(mut self, magic: [u8; 4]) -> Craft {
        self.magic = magic;
        self
    }

    /// Writes `count` as the tensor count, whatever follows.
    pub fn tensor_count(mut self, count: u64) -> Craft {
        self.tensor_count = Some(count);
        self
    }

    /// Writes `count` as the key/value count, whatever follows.
    pub fn kv_count(mut self, count: u64) -> Craft {
        self.kv_count = Some(count);
        self
    }

    /// A key/value pair with a raw key, a raw type id and the value's encoded bytes.
    pub fn kv_raw(mut self, key: &[u8], type_id: u32, value: &[u8]) -> Craft {
        self.kvs.extend_from_slice(&string(key));
        self.kvs.extend_from_slice(&type_id.to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kvs += 1;
        self
    }

    pub fn kv(self, key: &str, ty: ValueType, value: &[u8]) -> Craft {
        self.kv_raw(key.as_bytes(), ty as u32, value)
    }

    pub fn kv_u32(self, key: &str, v: u32) -> Craft {
        self.kv(key, ValueType::U32, &v.to_le_bytes())
    }

    pub fn kv_i32(self, key: &str, v: i32) -> Craft {
        self.kv(key, ValueType::I32, &v.to_le_bytes())
    }

    pub fn kv_f32(self, key: &str, v: f32) -> Craft {
        self.kv(key, ValueType::F32, &v.to_le_bytes())
    }

    pub fn kv_str(self, key: &str, s: &str) -> Craft {
        self.kv(key, ValueType::String, &string(s.as_bytes()))
    }

    /// Appends bytes to the key/value section as they are (a pair cut short, trailing junk).
    pub fn kv_bytes(mut self, bytes: &[u8]) -> Craft {
        self.kvs.extend_from_slice(bytes);
        self
    }

    /// A tensor info with a raw name, an explicit `n_dims` (which need not match `dims.len()`),
    /// and a raw ggml type id.
    pub fn tensor_raw(mut self, name: &[u8], n_dims: u32, dims: &[u64], type_id: u32, offset: u64) -> Craft {
        self.infos.extend_from_slice(&string(name));
        self.infos.extend_from_slice(&n_dims.to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&type_id.to_le_bytes());
        self.infos.extend_from_slice(&offset.to_le_bytes());
        self.n_infos += 1;
        self
    }

    pub fn tensor(self, name: &str, dims: &[u64], ty: GgmlType, offset: u64) -> Craft {
        self.tensor_raw(name.as_bytes(), dims.len() as u32, dims, ty as u32, offset)
    }

    /// The data section (placed after padding to `pad_to`).
    pub fn data(mut self, data: &[u8]) -> Craft {
        self.data = data.to_vec();
        self
    }

    /// The whole file image.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.tensor_count.unwrap_or(self.n_infos).to_le_bytes());
        out.extend_from_slice(&self.kv_count.unwrap_or(self.n_kvs).to_le_bytes());
        out.extend_from_slice(&self.kvs);
        out.extend_from_slice(&self.infos);
        if self.pad_to > 0 && (self.n_infos > 0 || !self.data.is_empty()) {
            let padded = (out.len() as u64).div_ceil(self.pad_to) * self.pad_to;
            out.resize(padded as usize, 0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// A GGUF string: u64 length, then the bytes (not checked: they may be anything).
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A string whose length prefix says `len` while only `bytes` follow.
pub fn string_claiming(len: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// An array value: element type id, element count, then the encoded elements as given.
pub fn array(elem_type_id: u32, count: u64, body: &[u8]) -> Vec<u8> {
    let mut out = elem_type_id.to_le_bytes().to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// An array of strings.
pub fn string_array(items: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = items.iter().flat_map(|s| string(s)).collect();
    array(ValueType::String as u32, items.len() as u64, &body)
}

/// An array of arrays nested `depth` deep (depth 1: an empty array of u8).
pub fn nested_array(depth: usize) -> Vec<u8> {
    let mut v = array(ValueType::U8 as u32, 0, &[]);
    for _ in 1..depth {
        v = array(ValueType::Array as u32, 1, &v);
    }
    v
}

/// Little-endian f32s.
pub fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A small valid file exercising every value type, a string array, a nested array and three
/// tensors of different types, with data. The seed the fuzzer starts from.
pub fn rich_valid() -> Vec<u8> {
    let scores: Vec<u8> = f32s(&[0.0, -1.5, 2.25]);
    let mut q8 = vec![0u8; 34 * 2];
    q8[0] = 0x00;
    q8[1] = 0x3c; // f16 1.0 as the first block's scale
    Craft::new()
        .kv_str("general.architecture", "llama")
        .kv_str("general.name", "crafted \u{e9}\u{1f600}")
        .kv_u32("general.alignment", 32)
        .kv("test.u8", ValueType::U8, &[7])
        .kv("test.i8", ValueType::I8, &[0xff])
        .kv("test.u16", ValueType::U16, &513u16.to_le_bytes())
        .kv("test.i16", ValueType::I16, &(-2i16).to_le_bytes())
        .kv_i32("test.i32", -3)
        .kv_f32("test.f32", 0.5)
        .kv("test.bool", ValueType::Bool, &[1])
        .kv("test.u64", ValueType::U64, &u64::MAX.to_le_bytes())
        .kv("test.i64", ValueType::I64, &i64::MIN.to_le_bytes())
        .kv("test.f64", ValueType::F64, &f64::NAN.to_le_bytes())
        .kv("tokenizer.ggml.tokens", ValueType::Array, &string_array(&[b"<s>", b"</s>", b"\xe2\x96\x81the"]))
        .kv("tokenizer.ggml.scores", ValueType::Array, &array(ValueType::F32 as u32, 3, &scores))
        .kv("test.bools", ValueType::Array, &array(ValueType::Bool as u32, 3, &[0, 1, 0]))
        .kv("test.nested", ValueType::Array, &nested_array(3))
        .kv("test.empty", ValueType::Array, &array(ValueType::I64 as u32, 0, &[]))
        .tensor("token_embd.weight", &[4, 3], GgmlType::F32, 0)
        .tensor("output_norm.weight", &[4], GgmlType::F16, 64)
        .tensor("blk.0.attn_q.weight", &[32, 2], GgmlType::Q8_0, 96)
        .data(&{
            let mut d = f32s(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
            d.resize(64, 0);
            d.extend_from_slice(&[0x00, 0x3c, 0x00, 0x40, 0x00, 0xc0, 0x00, 0x00]);
            d.resize(96, 0);
            d.extend_from_slice(&q8);
            d
        })
        .build()
}
