//! Independent readers agree with ours on the files we write and on the default model.
//!
//! - Oracle A, the `gguf-rs` crate: tensor names, types, dims, offsets, the data section offset
//!   and every metadata value it exposes (as JSON values). It cannot read arrays of arrays, so it
//!   gets the synthetic file without them; it sizes some types wrongly, which is checked as such.
//! - Oracle B, the PyPI `gguf` package (gguf-py, maintained with llama.cpp): the script
//!   `scripts/gguf_py_dump.py` prints a canonical JSON dump of what `gguf.GGUFReader` read (every
//!   field with its type and all its values, floats as bit patterns; every tensor with its type,
//!   shape, size, offset and the sha256 of its bytes), and the same dump is computed here from our
//!   reader. The GGML type table is checked against `gguf.constants.GGML_QUANT_SIZES` too.
//!
//! Without python3 or the `gguf` module the gguf-py tests skip with a message, except under CI
//! (`CI` set), where they fail.

#[path = "gguf_synth.rs"]
mod gguf_synth;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use engine::gguf::{GgufFile, GgufWriter, Value, ValueType};
use ggml_kernels::types::ALL_TYPES;
use ggml_kernels::GgmlType;
use gguf_synth::{Synth, SynthOptions};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

/// Writes the synthetic file into `dir` and opens it.
fn write_synthetic(dir: &Path, opts: SynthOptions) -> (PathBuf, GgufFile) {
    let synth = Synth::new(opts);
    let path = dir.join(format!("synthetic-{:?}-{}.gguf", opts.alignment, opts.nested_arrays));
    synth.writer().write_atomic(&path, None).expect("write the synthetic file");
    let file = GgufFile::open(&path).expect("open the synthetic file");
    synth.assert_matches(&file);
    (path, file)
}

/// Writes the default model again through our writer into `dir` and opens the copy.
fn write_default_model(model: &Path, dir: &Path) -> (PathBuf, GgufFile) {
    let original = GgufFile::open(model).expect("open the default model");
    let path = dir.join("roundtrip.gguf");
    GgufWriter::from_file(&original).expect("from_file").write_atomic(&path, None).expect("write");
    let file = GgufFile::open(&path).expect("open the written model");
    (path, file)
}

// ---------------------------------------------------------------------------------------------
// Oracle A: gguf-rs.

/// Types whose byte size gguf-rs 0.1 gets wrong: it guesses the block size from the type id
/// (1 below 2, 32 below 10, else 256), which is wrong for IQ4_NL and MXFP4 (32) and for the
/// plain types I8..F64 and BF16 (1); and it sizes Q8_1 blocks as 40 bytes (two f32s), where ggml's
/// `block_q8_1` has been two f16s and 32 quants, 36 bytes, for a long time.
const GGUF_RS_SIZE_BUGS: &[GgmlType] = &[
    GgmlType::Q8_1,
    GgmlType::IQ4_NL,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::F64,
    GgmlType::BF16,
    GgmlType::MXFP4,
];

/// gguf-rs's reading of `path`; its (anyhow) errors as strings.
fn gguf_rs_decode(path: &Path) -> Result<gguf_rs::GGUFModel, String> {
    let path = path.to_str().ok_or_else(|| "non-UTF-8 temporary path".to_string())?;
    // u64::MAX: read tokenizer arrays in full (the default truncates them to 3 elements).
    let mut container = gguf_rs::get_gguf_container_array_size(path, u64::MAX).map_err(|e| e.to_string())?;
    container.decode().map_err(|e| e.to_string())
}

/// Whether gguf-rs's JSON value `theirs` says what our value says. Integers must be equal;
/// finite floats must parse back to the same bits (gguf-rs stores them as JSON numbers, so NaN
/// and infinities become null); strings and bools equal; arrays element by element.
fn same_as_json(ours: Value<'_>, theirs: &Json) -> bool {
    fn float_bits<F: std::str::FromStr>(theirs: &Json) -> Option<F> {
        match theirs {
            Json::Number(n) => n.to_string().parse::<F>().ok(),
            _ => None,
        }
    }
    match ours {
        Value::U8(v) => theirs.as_u64() == Some(v as u64),
        Value::U16(v) => theirs.as_u64() == Some(v as u64),
        Value::U32(v) => theirs.as_u64() == Some(v as u64),
        Value::U64(v) => theirs.as_u64() == Some(v),
        Value::I8(v) => theirs.as_i64() == Some(v as i64),
        Value::I16(v) => theirs.as_i64() == Some(v as i64),
        Value::I32(v) => theirs.as_i64() == Some(v as i64),
        Value::I64(v) => theirs.as_i64() == Some(v),
        Value::F32(v) if v.is_finite() => float_bits::<f32>(theirs).map(f32::to_bits) == Some(v.to_bits()),
        Value::F64(v) if v.is_finite() => float_bits::<f64>(theirs).map(f64::to_bits) == Some(v.to_bits()),
        Value::F32(_) | Value::F64(_) => theirs.is_null(),
        Value::Bool(v) => theirs.as_bool() == Some(v),
        Value::String(s) => theirs.as_str() == Some(s),
        Value::Array(a) => match theirs.as_array() {
            Some(items) => items.len() == a.len() && a.iter().zip(items).all(|(o, t)| same_as_json(o, t)),
            None => false,
        },
    }
}

/// Asserts that gguf-rs reads `path` as our reader reads it (`ours`, opened from the same path).
fn assert_gguf_rs_agrees(path: &Path, ours: &GgufFile) {
    let theirs = gguf_rs_decode(path).unwrap_or_else(|e| panic!("gguf-rs cannot read {}: {e}", path.display()));
    assert_eq!(theirs.get_version(), format!("v{}", ours.version()));
    assert_eq!(theirs.num_kv(), ours.kv_count() as u64, "key count");
    assert_eq!(theirs.num_tensor(), ours.tensors().len() as u64, "tensor count");
    assert_eq!(theirs.alignment(), ours.alignment(), "alignment");
    assert_eq!(theirs.data_offset(), ours.data_offset(), "data section offset");

    // Metadata: gguf-rs keeps a BTreeMap, so compare the key sets, then every value.
    let their_keys: BTreeSet<&str> = theirs.metadata().keys().map(String::as_str).collect();
    let our_keys: BTreeSet<&str> = ours.keys().collect();
    assert_eq!(their_keys, our_keys, "metadata keys");
    for (key, value) in ours.metadata() {
        let t = &theirs.metadata()[key];
        assert!(same_as_json(value, t), "key {key:?}: we read {}, gguf-rs read {}", value.render(Some(8)), short(t));
    }

    // Tensors, in file order.
    let mut wrong_sizes = BTreeSet::new();
    for (o, t) in ours.tensors().iter().zip(theirs.tensors()) {
        assert_eq!(t.name, o.name, "tensor order");
        assert_eq!(t.kind, o.ty.id(), "tensor {:?} type", o.name);
        assert_eq!(t.n_dimensions as usize, o.n_dims, "tensor {:?} n_dims", o.name);
        assert_eq!(t.shape.as_slice(), o.dims(), "tensor {:?} dims", o.name);
        assert_eq!(t.offset, o.offset, "tensor {:?} offset", o.name);
        if t.size != o.nbytes {
            wrong_sizes.insert(o.ty);
        }
    }
    let unexpected: Vec<_> = wrong_sizes.iter().filter(|ty| !GGUF_RS_SIZE_BUGS.contains(ty)).collect();
    assert!(unexpected.is_empty(), "gguf-rs and we disagree on the byte size of {unexpected:?}");
}

fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}...", &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

#[test]
fn gguf_rs_reads_our_synthetic_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for alignment in [None, Some(64)] {
        let (path, file) = write_synthetic(dir.path(), SynthOptions { alignment, nested_arrays: false, gguf_rs_types_only: true });
        assert_gguf_rs_agrees(&path, &file);
    }
}

#[test]
fn gguf_rs_size_bugs_are_what_we_think() {
    // The synthetic file has every type: gguf-rs must get exactly the listed ones wrong (if a
    // new gguf-rs fixes some, shorten the list).
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, file) = write_synthetic(dir.path(), SynthOptions { gguf_rs_types_only: true, ..SynthOptions::default() });
    let theirs = gguf_rs_decode(&path).expect("gguf-rs reads the synthetic file");
    let wrong: BTreeSet<GgmlType> =
        file.tensors().iter().zip(theirs.tensors()).filter(|(o, t)| o.nbytes != t.size).map(|(o, _)| o.ty).collect();
    assert_eq!(wrong, GGUF_RS_SIZE_BUGS.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn gguf_rs_refuses_arrays_of_arrays() {
    // Why its synthetic file has none: a limitation of gguf-rs, not of the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = write_synthetic(dir.path(), SynthOptions { alignment: None, nested_arrays: true, gguf_rs_types_only: true });
    let err = gguf_rs_decode(&path).err().expect("gguf-rs 0.1 cannot read arrays of arrays");
    assert!(err.contains("Unsupport item value type"), "{err}");
}

#[test]
fn gguf_rs_agrees_with_us_on_the_default_model() {
    let Some(model) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&model).expect("open the default model");
    assert_gguf_rs_agrees(&model, &file);
}

#[test]
fn gguf_rs_reads_our_round_tripped_default_model() {
    let Some(model) = engine_tests::default_model() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, file) = write_default_model(&model, dir.path());
    assert_gguf_rs_agrees(&path, &file);
}

// ---------------------------------------------------------------------------------------------
// Oracle B: gguf-py.

const DUMP_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gguf_py_dump.py");

fn gguf_py_available() -> bool {
    engine_tests::python_gguf_available()
}

/// Runs the dump script; returns its JSON.
fn py_dump(arg: &str) -> Json {
    let out = Command::new("python3").arg(DUMP_SCRIPT).arg(arg).output().expect("run python3");
    assert!(
        out.status.success(),
        "gguf_py_dump.py {arg} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gguf_py_dump.py prints JSON")
}

/// gguf-py's name for a value type (`GGUFValueType`).
fn py_type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::U8 => "UINT8",
        ValueType::I8 => "INT8",
        ValueType::U16 => "UINT16",
        ValueType::I16 => "INT16",
        ValueType::U32 => "UINT32",
        ValueType::I32 => "INT32",
        ValueType::F32 => "FLOAT32",
        ValueType::Bool => "BOOL",
        ValueType::String => "STRING",
        ValueType::Array => "ARRAY",
        ValueType::U64 => "UINT64",
        ValueType::I64 => "INT64",
        ValueType::F64 => "FLOAT64",
    }
}

/// A value as the dump script writes it.
fn dump_value(v: Value<'_>) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(format!("0x{:08x}", x.to_bits())),
        Value::F64(x) => json!(format!("0x{:016x}", x.to_bits())),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => json!({
            "elem": py_type_name(a.elem_type()),
            "items": a.iter().map(dump_value).collect::<Vec<_>>(),
        }),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The dump of `file` as our reader reads it, in the script's format.
fn our_dump(file: &GgufFile) -> Json {
    let fields: Vec<Json> = file
        .metadata()
        .map(|(key, v)| json!({ "key": key, "type": py_type_name(v.value_type()), "value": dump_value(v) }))
        .collect();
    let tensors: Vec<Json> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ty.name(),
                "shape": t.dims(),
                "n_bytes": t.nbytes,
                "offset": t.offset,
                "sha256": sha256_hex(file.tensor_data(t)),
            })
        })
        .collect();
    json!({
        "version": file.version(),
        "alignment": file.alignment(),
        "data_offset": file.data_offset(),
        "fields": fields,
        "tensors": tensors,
    })
}

/// gguf-py sizes Q8_1 blocks as 40 bytes (`GGML_QUANT_SIZES[Q8_1] = (32, 4 + 4 + 32)`, from when
/// ggml's block_q8_1 held two f32s); ggml's block_q8_1 is two f16s and 32 quants, 36 bytes
/// (`static_assert(sizeof(block_q8_1) == 2*sizeof(ggml_half) + QK8_1)` in ggml-common.h). So for
/// Q8_1 tensors gguf-py's n_bytes (and the bytes it hashes) differ from ggml's and ours.
const GGUF_PY_Q8_1_TYPE_SIZE: u64 = 40;

/// Asserts the two dumps are equal, naming the first difference. Q8_1 tensors are compared on
/// everything but n_bytes and sha256, and their n_bytes must be gguf-py's known wrong one.
fn assert_same_dump(ours: &Json, theirs: &Json, what: &str) {
    for key in ["version", "alignment", "data_offset"] {
        assert_eq!(ours[key], theirs[key], "{what}: {key}");
    }
    let (of, tf) = (ours["fields"].as_array().expect("fields"), theirs["fields"].as_array().expect("gguf-py fields"));
    assert_eq!(of.len(), tf.len(), "{what}: field count");
    for (o, t) in of.iter().zip(tf) {
        assert!(o == t, "{what}: field {}:\n  ours:    {}\n  gguf-py: {}", o["key"], short(o), short(t));
    }
    let (ot, tt) =
        (ours["tensors"].as_array().expect("tensors"), theirs["tensors"].as_array().expect("gguf-py tensors"));
    assert_eq!(ot.len(), tt.len(), "{what}: tensor count");
    for (o, t) in ot.iter().zip(tt) {
        if o["type"] == "Q8_1" {
            let mut o = o.clone();
            let n_elements: u64 = o["shape"].as_array().expect("shape").iter().filter_map(Json::as_u64).product();
            o["n_bytes"] = json!(n_elements / 32 * GGUF_PY_Q8_1_TYPE_SIZE);
            o["sha256"] = t["sha256"].clone();
            assert!(&o == t, "{what}: Q8_1 tensor {}:\n  ours:    {o}\n  gguf-py: {t}", o["name"]);
        } else {
            assert!(o == t, "{what}: tensor {}:\n  ours:    {o}\n  gguf-py: {t}", o["name"]);
        }
    }
}

#[test]
fn gguf_py_reads_our_synthetic_file() {
    if !gguf_py_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for alignment in [None, Some(64)] {
        let (path, file) = write_synthetic(dir.path(), SynthOptions { alignment, nested_arrays: true, ..SynthOptions::default() });
        let theirs = py_dump(path.to_str().expect("UTF-8 path"));
        assert_same_dump(&our_dump(&file), &theirs, &format!("synthetic file, alignment {alignment:?}"));
    }
}

#[test]
fn gguf_py_reads_our_round_tripped_default_model() {
    let Some(model) = engine_tests::default_model() else { return };
    if !gguf_py_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, file) = write_default_model(&model, dir.path());
    let theirs = py_dump(path.to_str().expect("UTF-8 path"));
    assert_same_dump(&our_dump(&file), &theirs, "round-tripped default model");
}

#[test]
fn ggml_type_table_matches_gguf_py() {
    if !gguf_py_available() {
        return;
    }
    let table = py_dump("--type-table");
    let mut known_to_both = 0;
    let mut only_gguf_py = Vec::new();
    for row in table.as_array().expect("a list of types") {
        let name = row["name"].as_str().expect("name");
        let id = row["id"].as_u64().expect("id") as u32;
        let (block, size) =
            (row["block_size"].as_u64().expect("block_size"), row["type_size"].as_u64().expect("type_size"));
        let Some(ours) = ALL_TYPES.iter().find(|t| t.name == name) else {
            assert!(
                GgmlType::from_id(id).is_none(),
                "gguf-py's {name} has id {id}, which we call {:?}",
                GgmlType::from_id(id)
            );
            only_gguf_py.push(format!("{name} ({id})"));
            continue;
        };
        known_to_both += 1;
        assert_eq!(ours.ty.id(), id, "{name}: type id");
        assert_eq!(ours.block_size as u64, block, "{name}: block size");
        if ours.ty == GgmlType::Q8_1 && size == GGUF_PY_Q8_1_TYPE_SIZE {
            // gguf-py's stale entry; see GGUF_PY_Q8_1_TYPE_SIZE. ggml says 36.
            assert_eq!(ours.type_size, 36);
            continue;
        }
        assert_eq!(ours.type_size as u64, size, "{name}: bytes per block");
    }
    assert_eq!(known_to_both, ALL_TYPES.len(), "every type of ours is known to gguf-py");
    if !only_gguf_py.is_empty() {
        eprintln!("types gguf-py knows and we do not: {}", only_gguf_py.join(", "));
    }
}
