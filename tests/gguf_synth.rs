//! The synthetic GGUF file that `gguf_roundtrip.rs` and `gguf_oracles.rs` both write (included by
//! each with `#[path]`; not a test target of its own), and the content comparisons they share.
//!
//! The file holds every metadata value type at its extremes (NaN payloads, -0.0, subnormals,
//! `u64::MAX`), empty and unicode strings, arrays of every element type (empty ones too), arrays
//! of arrays down to the deepest nesting the reader accepts, and one tensor of every GGML type in
//! the type table, filled with deterministic random bytes.

#![allow(dead_code)]

use std::borrow::Cow;

use engine::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue, TensorData, MAX_ARRAY_DEPTH, MAX_TENSOR_NAME_LEN};
use ggml_kernels::types::ALL_TYPES;
use ggml_kernels::GgmlType;

/// What to put in the synthetic file.
#[derive(Clone, Copy, Debug, Default)]
pub struct SynthOptions {
    /// `general.alignment`, when set.
    pub alignment: Option<u32>,
    /// Include arrays of arrays. gguf-rs refuses them ("Unsupport item value type: Array"), so
    /// its oracle test leaves them out.
    pub nested_arrays: bool,
    /// Only the tensor types gguf-rs 0.1 knows (ids up to MXFP4, 39): it panics on newer ids
    /// (NVFP4, Q1_0) instead of returning an error.
    pub gguf_rs_types_only: bool,
}

pub struct SynthTensor {
    pub name: String,
    pub ty: GgmlType,
    pub ne: Vec<u64>,
    pub data: Vec<u8>,
}

/// The intended content of a synthetic file.
pub struct Synth {
    pub kvs: Vec<(String, MetaValue)>,
    pub tensors: Vec<SynthTensor>,
}

/// splitmix64: deterministic bytes without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// A quiet NaN with a payload, so a reader or writer that canonicalises NaNs shows up.
pub const NAN_F32_BITS: u32 = 0x7FC0_1234;
pub const NAN_F64_BITS: u64 = 0xFFF8_0000_DEAD_BEEF;

fn nested(depth: usize) -> MetaArray {
    if depth == 1 {
        MetaArray::U16(vec![depth as u16, 7])
    } else {
        MetaArray::Array(vec![nested(depth - 1), MetaArray::Array(vec![])])
    }
}

impl Synth {
    pub fn new(opts: SynthOptions) -> Synth {
        let mut kvs: Vec<(String, MetaValue)> = Vec::new();
        let mut kv = |k: &str, v: MetaValue| kvs.push((k.to_string(), v));
        use MetaValue as V;

        kv("general.architecture", V::String("synthetic".into()));
        if let Some(a) = opts.alignment {
            kv("general.alignment", V::U32(a));
        }
        // Scalars at their extremes.
        kv("s.u8.max", V::U8(u8::MAX));
        kv("s.u8.zero", V::U8(0));
        kv("s.i8.min", V::I8(i8::MIN));
        kv("s.i8.max", V::I8(i8::MAX));
        kv("s.u16.max", V::U16(u16::MAX));
        kv("s.i16.min", V::I16(i16::MIN));
        kv("s.u32.max", V::U32(u32::MAX));
        kv("s.i32.min", V::I32(i32::MIN));
        kv("s.i32.minus_one", V::I32(-1));
        kv("s.u64.max", V::U64(u64::MAX));
        kv("s.i64.min", V::I64(i64::MIN));
        kv("s.i64.max", V::I64(i64::MAX));
        kv("s.f32.one_point_five", V::F32(1.5));
        kv("s.f32.tenth", V::F32(0.1));
        kv("s.f32.neg_zero", V::F32(-0.0));
        kv("s.f32.nan_payload", V::F32(f32::from_bits(NAN_F32_BITS)));
        kv("s.f32.inf", V::F32(f32::INFINITY));
        kv("s.f32.neg_inf", V::F32(f32::NEG_INFINITY));
        kv("s.f32.min_subnormal", V::F32(f32::from_bits(1)));
        kv("s.f32.max", V::F32(f32::MAX));
        kv("s.f32.rms_eps", V::F32(1e-6));
        kv("s.f64.tenth", V::F64(0.1));
        kv("s.f64.neg_zero", V::F64(-0.0));
        kv("s.f64.nan_payload", V::F64(f64::from_bits(NAN_F64_BITS)));
        kv("s.f64.min_subnormal", V::F64(f64::from_bits(1)));
        kv("s.f64.max", V::F64(f64::MAX));
        kv("s.f64.pi", V::F64(std::f64::consts::PI));
        kv("s.bool.true", V::Bool(true));
        kv("s.bool.false", V::Bool(false));
        // Strings.
        kv("s.str.empty", V::String(String::new()));
        kv("s.str.ascii", V::String("hello, world".into()));
        kv("s.str.unicode", V::String("héllo wörld — 日本語 · Ελληνικά · 🦀🦙 \u{200d} \u{10FFFF}".into()));
        kv("s.str.controls", V::String("tab\tnewline\nquote\"backslash\\nul\0end\u{7f}".into()));
        kv("s.str.long", V::String("0123456789abcdef".repeat(6_000)));
        kv("s.ключ.キー.🔑", V::String("a unicode key".into()));
        kv("s.key with spaces and = signs", V::U8(1));
        // Arrays of every element type, then empty ones.
        use MetaArray as A;
        kv("a.u8", V::Array(A::U8(vec![0, 1, 127, 128, 255])));
        kv("a.i8", V::Array(A::I8(vec![i8::MIN, -1, 0, 1, i8::MAX])));
        kv("a.u16", V::Array(A::U16(vec![0, 1, u16::MAX])));
        kv("a.i16", V::Array(A::I16(vec![i16::MIN, -1, 0, i16::MAX])));
        kv("a.u32", V::Array(A::U32(vec![0, 1, 262_144, u32::MAX])));
        kv("a.i32", V::Array(A::I32((-300..300).chain([i32::MIN, i32::MAX]).collect())));
        kv(
            "a.f32",
            V::Array(A::F32(vec![
                0.0,
                -0.0,
                0.1,
                -1000.0,
                f32::MAX,
                f32::MIN_POSITIVE,
                f32::from_bits(1),
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::from_bits(NAN_F32_BITS),
                f32::from_bits(0xFFC0_0000),
            ])),
        );
        kv("a.bool", V::Array(A::Bool(vec![true, false, false, true])));
        kv(
            "a.string",
            V::Array(A::String(vec![
                String::new(),
                "<bos>".into(),
                "▁the".into(),
                "日本".into(),
                "\n".into(),
                "🦀".into(),
                "\0".into(),
            ])),
        );
        kv("a.u64", V::Array(A::U64(vec![0, u32::MAX as u64 + 1, u64::MAX])));
        kv("a.i64", V::Array(A::I64(vec![i64::MIN, -1, 0, i64::MAX])));
        kv(
            "a.f64",
            V::Array(A::F64(vec![
                0.1,
                -0.0,
                f64::MAX,
                f64::from_bits(1),
                f64::from_bits(NAN_F64_BITS),
                f64::NEG_INFINITY,
            ])),
        );
        kv("a.empty.u8", V::Array(A::U8(vec![])));
        kv("a.empty.i8", V::Array(A::I8(vec![])));
        kv("a.empty.u16", V::Array(A::U16(vec![])));
        kv("a.empty.i16", V::Array(A::I16(vec![])));
        kv("a.empty.u32", V::Array(A::U32(vec![])));
        kv("a.empty.i32", V::Array(A::I32(vec![])));
        kv("a.empty.f32", V::Array(A::F32(vec![])));
        kv("a.empty.bool", V::Array(A::Bool(vec![])));
        kv("a.empty.string", V::Array(A::String(vec![])));
        kv("a.empty.u64", V::Array(A::U64(vec![])));
        kv("a.empty.i64", V::Array(A::I64(vec![])));
        kv("a.empty.f64", V::Array(A::F64(vec![])));
        // A vocabulary-sized string array, like tokenizer.ggml.tokens.
        kv("a.vocab", V::Array(A::String((0..5000).map(|i| format!("tok{i}·{}", "x".repeat(i % 17))).collect())));
        if opts.nested_arrays {
            kv("n.u32_pairs", V::Array(A::Array(vec![A::U32(vec![1, 2]), A::U32(vec![3, 4]), A::U32(vec![])])));
            kv(
                "n.strings",
                V::Array(A::Array(vec![A::String(vec!["a".into(), "".into()]), A::String(vec!["ü".into()])])),
            );
            // Elements of one array of arrays may differ in element type: GGUF allows it.
            kv(
                "n.mixed",
                V::Array(A::Array(vec![
                    A::F32(vec![f32::from_bits(NAN_F32_BITS)]),
                    A::Bool(vec![true]),
                    A::String(vec!["s".into()]),
                    A::Array(vec![]),
                ])),
            );
            kv("n.empty_outer", V::Array(A::Array(vec![])));
            kv("n.only_empties", V::Array(A::Array(vec![A::I64(vec![]), A::Array(vec![])])));
            kv("n.deepest", V::Array(nested(MAX_ARRAY_DEPTH)));
        }
        kv("z.last", V::String("the last key".into()));

        // One tensor of every GGML type, with 1 to 4 dimensions and odd sizes so that the padding
        // between tensors varies.
        let mut rng = Rng::new(0x5EED_0F_6609);
        let mut tensors = Vec::new();
        let types = ALL_TYPES.iter().filter(|t| !opts.gguf_rs_types_only || t.ty.id() <= GgmlType::MXFP4.id());
        for (i, t) in types.enumerate() {
            let bs = t.block_size as u64;
            let shape: Vec<u64> = match i % 4 {
                0 => vec![bs * 3],
                1 => vec![bs, 5],
                2 => vec![bs * 2, 3, 2],
                _ => vec![bs, 1, 3, 2],
            };
            let nbytes = t.ty.tensor_nbytes(&shape).expect("synthetic shapes are valid");
            tensors.push(SynthTensor {
                name: format!("blk.{i}.{}.weight", t.name.to_ascii_lowercase()),
                ty: t.ty,
                ne: shape,
                data: rng.bytes(nbytes as usize),
            });
        }
        // Names at the edges: unicode, and exactly the longest the reader accepts.
        tensors.push(SynthTensor {
            name: "tensör.ü.日本".into(), ty: GgmlType::F32, ne: vec![3], data: rng.bytes(12)
        });
        let longest = "n".repeat(MAX_TENSOR_NAME_LEN as usize);
        tensors.push(SynthTensor { name: longest, ty: GgmlType::Q8_0, ne: vec![32, 1, 1, 1], data: rng.bytes(34) });
        // A bigger tensor, so the data section is not only a few bytes per tensor.
        tensors.push(SynthTensor {
            name: "big.q4_k".into(),
            ty: GgmlType::Q4_K,
            ne: vec![1024, 96],
            data: rng.bytes(4 * 144 * 96),
        });
        Synth { kvs, tensors }
    }

    /// A writer with this content, borrowing the tensor data.
    pub fn writer(&self) -> GgufWriter<'_> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.kvs {
            w.set(k, v.clone()).expect("synthetic metadata is valid");
        }
        for t in &self.tensors {
            w.add_tensor(&t.name, t.ty, &t.ne, TensorData::Bytes(Cow::Borrowed(&t.data)))
                .expect("synthetic tensors are valid");
        }
        w
    }

    /// Asserts that `file` holds exactly this content, in this order, with the same value types
    /// and bits.
    pub fn assert_matches(&self, file: &GgufFile) {
        let keys: Vec<&str> = file.keys().collect();
        let want: Vec<&str> = self.kvs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, want, "key order");
        for ((key, got), (_, want)) in file.metadata().zip(&self.kvs) {
            let got = got.to_owned_value();
            assert!(got.same_bits(want), "key {key:?}: read {got:?}, wrote {want:?}");
        }
        assert_eq!(file.tensors().len(), self.tensors.len(), "tensor count");
        for (got, want) in file.tensors().iter().zip(&self.tensors) {
            assert_eq!(got.name, want.name, "tensor order");
            assert_eq!(got.ty, want.ty, "tensor {:?} type", want.name);
            assert_eq!(got.dims(), want.ne.as_slice(), "tensor {:?} dims", want.name);
            assert_eq!(got.offset % file.alignment(), 0, "tensor {:?} offset", want.name);
            assert!(file.tensor_data(got) == want.data.as_slice(), "tensor {:?} bytes differ", want.name);
        }
    }
}

/// Asserts that two files hold the same metadata (keys in the same order, values of the same
/// type and bits) and the same tensors (same order, name, type, dims, offset and bytes).
pub fn assert_same_content(a: &GgufFile, b: &GgufFile) {
    assert_eq!(a.version(), b.version(), "version");
    assert_eq!(a.alignment(), b.alignment(), "alignment");
    let (ka, kb): (Vec<&str>, Vec<&str>) = (a.keys().collect(), b.keys().collect());
    assert_eq!(ka, kb, "keys and their order");
    for ((key, va), (_, vb)) in a.metadata().zip(b.metadata()) {
        let (oa, ob) = (va.to_owned_value(), vb.to_owned_value());
        assert_eq!(va.type_label(), vb.type_label(), "key {key:?} type");
        assert!(oa.same_bits(&ob), "key {key:?}: {} vs {}", va.render(Some(8)), vb.render(Some(8)));
    }
    assert_eq!(a.tensors().len(), b.tensors().len(), "tensor count");
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(ta, tb, "tensor info (name, type, dims, offset, size) and order");
        assert!(a.tensor_data(ta) == b.tensor_data(tb), "tensor {:?}: bytes differ", ta.name);
    }
}
