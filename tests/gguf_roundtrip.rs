//! GGUF round trips: what the writer writes, the reader reads back unchanged, to the bit.
//!
//! - The default model, re-written through `GgufWriter::from_file`, has the same metadata (types,
//!   bits, key order) and tensors (order, name, type, dims, bytes), and is byte-identical to the
//!   original (the writer lays files out as llama.cpp does).
//! - A synthetic file with every value type and one tensor of every GGML type does too, with the
//!   default alignment and with `general.alignment = 64`.
//! - `--no-mmap` reads the same as the memory map.
//! - The writer refuses whatever the reader would reject, with a message that names the problem.
//! - `write_atomic` never leaves a half-written file or a temporary file behind, and never
//!   replaces its own input.

#[path = "gguf_synth.rs"]
mod gguf_synth;

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use engine::gguf::{
    GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, OpenOptions, TensorData, MAX_ARRAY_DEPTH, MAX_KEY_LEN,
    MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
use ggml_kernels::GgmlType;
use gguf_synth::{assert_same_content, Synth, SynthOptions};

const NO_MMAP: OpenOptions = OpenOptions { no_mmap: true };

fn write(w: &mut GgufWriter<'_>, path: &Path) -> u64 {
    let n = w.write_atomic(path, None).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    assert_eq!(std::fs::metadata(path).map(|m| m.len()).ok(), Some(n), "write_atomic returns the file size");
    n
}

/// The names in `dir`, sorted.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_no_partial_files(dir: &Path) {
    let partial: Vec<String> = dir_entries(dir).into_iter().filter(|n| n.ends_with(".partial")).collect();
    assert!(partial.is_empty(), "temporary files left behind in {}: {partial:?}", dir.display());
}

#[test]
fn default_model_round_trips_byte_for_byte() {
    let Some(model) = engine_tests::default_model() else { return };
    let original = GgufFile::open(&model).expect("open the default model");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("roundtrip.gguf");
    let written = write(&mut GgufWriter::from_file(&original).expect("from_file"), &out);
    let copy = GgufFile::open(&out).expect("re-open the written model");

    assert_same_content(&original, &copy);
    assert_eq!(copy.data_offset(), original.data_offset(), "data section starts at the same offset");
    // Byte-identical: llama.cpp (gguf.cpp) pads the header and every tensor, the last one too,
    // to the alignment, and so does our writer.
    assert_eq!(written, original.file_len(), "same file size");
    let (a, b) = (original.bytes(), copy.bytes());
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!(
            "written model differs from the original first at byte {i} (data section at {})",
            original.data_offset()
        );
    }
    assert_no_partial_files(dir.path());
}

fn synthetic_round_trip(alignment: Option<u32>) {
    let synth = Synth::new(SynthOptions { alignment, nested_arrays: true, ..SynthOptions::default() });
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("synthetic.gguf");
    write(&mut synth.writer(), &first);
    let file = GgufFile::open(&first).expect("open the synthetic file");
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), alignment.unwrap_or(32) as u64);
    assert_eq!(file.data_offset() % file.alignment(), 0);
    synth.assert_matches(&file);

    // Through from_file and back: same content, and the same bytes.
    let second = dir.path().join("again.gguf");
    write(&mut GgufWriter::from_file(&file).expect("from_file"), &second);
    let again = GgufFile::open(&second).expect("re-open");
    synth.assert_matches(&again);
    assert_same_content(&file, &again);
    assert!(file.bytes() == again.bytes(), "re-writing a file we wrote changes its bytes");

    // Every tensor sits at a multiple of the alignment, the file ends padded to it (as llama.cpp
    // writes), and the padding is zeros.
    let align = file.alignment();
    assert_eq!(file.file_len() % align, 0, "file length {} is not padded to {align}", file.file_len());
    let mut end = 0u64;
    let mut tensors: Vec<_> = file.tensors().iter().collect();
    tensors.sort_by_key(|t| t.offset);
    for t in tensors {
        assert_eq!(
            t.offset,
            end.div_ceil(align) * align,
            "tensor {:?} is not packed at the next aligned offset",
            t.name
        );
        let gap = &file.bytes()[(file.data_offset() + end) as usize..(file.data_offset() + t.offset) as usize];
        assert!(gap.iter().all(|&b| b == 0), "padding before {:?} is not zeros", t.name);
        end = t.offset + t.nbytes;
    }
    assert_no_partial_files(dir.path());
}

#[test]
fn synthetic_file_round_trips_with_default_alignment() {
    synthetic_round_trip(None);
}

#[test]
fn synthetic_file_round_trips_with_alignment_64() {
    synthetic_round_trip(Some(64));
}

#[test]
fn synthetic_file_round_trips_with_alignment_1_and_1_mib() {
    // The smallest and the largest alignments the reader accepts.
    synthetic_round_trip(Some(1));
    synthetic_round_trip(Some(1 << 20));
}

#[test]
fn empty_file_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.gguf");
    let n = write(&mut GgufWriter::new(), &path);
    assert_eq!(n, 32, "24-byte header padded to 32");
    let file = GgufFile::open(&path).expect("open");
    assert_eq!((file.kv_count(), file.tensors().len()), (0, 0));
    let file = GgufFile::open_with(&path, NO_MMAP).expect("open without mmap");
    assert_eq!((file.kv_count(), file.tensors().len()), (0, 0));
}

#[test]
fn stream_tensor_data_round_trips() {
    let synth = Synth::new(SynthOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let (bytes_path, stream_path) = (dir.path().join("bytes.gguf"), dir.path().join("stream.gguf"));
    write(&mut synth.writer(), &bytes_path);
    let mut w = GgufWriter::new();
    for (k, v) in &synth.kvs {
        w.set(k, v.clone()).expect("set");
    }
    for t in &synth.tensors {
        // Written in uneven pieces, as a quantizer would.
        let data = &t.data;
        let source = move |out: &mut dyn Write| -> io::Result<()> {
            for piece in data.chunks(7) {
                out.write_all(piece)?;
            }
            Ok(())
        };
        w.add_tensor(&t.name, t.ty, &t.ne, TensorData::Stream(Box::new(source))).expect("add_tensor");
    }
    let mut progress_calls = Vec::new();
    let mut progress = |done: usize, total: usize, _bytes: u64| progress_calls.push((done, total));
    w.write_atomic(&stream_path, Some(&mut progress)).expect("write");
    let n = synth.tensors.len();
    assert_eq!(progress_calls, (1..=n).map(|i| (i, n)).collect::<Vec<_>>());
    let (a, b) = (std::fs::read(&bytes_path).expect("read"), std::fs::read(&stream_path).expect("read"));
    assert!(a == b, "streamed tensors give a different file");
}

/// Opens `path` both ways and checks they agree, and that tensor data keeps its alignment in
/// memory without mmap too.
fn check_no_mmap_matches_mmap(path: &Path) {
    let mapped = GgufFile::open(path).expect("open with mmap");
    let heap = GgufFile::open_with(path, NO_MMAP).expect("open without mmap");
    assert!(mapped.is_mmapped());
    assert!(!heap.is_mmapped());
    assert_eq!(mapped.file_len(), heap.file_len());
    assert_eq!(mapped.data_offset(), heap.data_offset());
    assert!(mapped.bytes() == heap.bytes(), "file images differ");
    assert_same_content(&mapped, &heap);
    for t in heap.tensors() {
        let addr = heap.tensor_data(t).as_ptr() as usize;
        assert_eq!(
            addr % heap.alignment().min(64) as usize,
            0,
            "tensor {:?} misaligned in memory without mmap",
            t.name
        );
    }
    // A file written from either reads the same.
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("from_mmap.gguf"), dir.path().join("from_heap.gguf"));
    write(&mut GgufWriter::from_file(&mapped).expect("from_file"), &a);
    write(&mut GgufWriter::from_file(&heap).expect("from_file"), &b);
    assert!(std::fs::read(&a).expect("read") == std::fs::read(&b).expect("read"), "written files differ");
}

#[test]
fn no_mmap_reads_the_same_as_mmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    for alignment in [None, Some(64)] {
        let synth = Synth::new(SynthOptions { alignment, nested_arrays: true, ..SynthOptions::default() });
        let path = dir.path().join(format!("synthetic-{alignment:?}.gguf"));
        write(&mut synth.writer(), &path);
        check_no_mmap_matches_mmap(&path);
        synth.assert_matches(&GgufFile::open_with(&path, NO_MMAP).expect("open without mmap"));
    }
    if let Some(model) = engine_tests::default_model() {
        check_no_mmap_matches_mmap(&model);
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals: the writer must refuse what the reader rejects, and say what is wrong.

#[track_caller]
fn assert_refused(result: Result<(), GgufError>, needles: &[&str]) {
    let err = match result {
        Ok(()) => panic!("accepted; expected an error mentioning {needles:?}"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(err.contains(n), "error {err:?} does not mention {n:?}");
    }
}

fn f32_tensor(n: usize) -> TensorData<'static> {
    TensorData::Bytes(Cow::Owned(vec![0u8; n * 4]))
}

#[test]
fn writer_refuses_bad_metadata() {
    let mut w = GgufWriter::new();
    assert_refused(w.set("", MetaValue::U32(1)), &["metadata key is empty"]);

    let too_long = "k".repeat(MAX_KEY_LEN as usize + 1);
    assert_refused(w.set(&too_long, MetaValue::U32(1)), &["metadata key", "65536", "limit of 65535"]);
    let longest = "k".repeat(MAX_KEY_LEN as usize);
    w.set(&longest, MetaValue::U32(1)).expect("a key of exactly the limit is accepted");

    let big = "x".repeat(MAX_STRING_LEN as usize + 1);
    assert_refused(w.set("big", MetaValue::String(big.clone())), &["string value of key \"big\"", "exceeds the limit"]);
    assert_refused(
        w.set("big.arr", MetaValue::Array(MetaArray::String(vec!["ok".into(), big]))),
        &["string value of key \"big.arr\"", "exceeds the limit"],
    );
    let nested_big = MetaArray::Array(vec![MetaArray::String(vec!["y".repeat(MAX_STRING_LEN as usize + 1)])]);
    assert_refused(w.set("big.nested", MetaValue::Array(nested_big)), &["big.nested", "exceeds the limit"]);

    fn deep(depth: usize) -> MetaArray {
        if depth == 1 {
            MetaArray::U8(vec![1])
        } else {
            MetaArray::Array(vec![deep(depth - 1)])
        }
    }
    assert_refused(
        w.set("deep", MetaValue::Array(deep(MAX_ARRAY_DEPTH + 1))),
        &["deep", "nested deeper than 8 levels"],
    );
    w.set("deep", MetaValue::Array(deep(MAX_ARRAY_DEPTH))).expect("the deepest nesting the reader accepts");

    assert_refused(w.set("general.alignment", MetaValue::U64(32)), &["general.alignment", "expected u32, got u64"]);
    assert_refused(w.set("general.alignment", MetaValue::I32(32)), &["expected u32, got i32"]);
    assert_refused(w.set("general.alignment", MetaValue::String("32".into())), &["expected u32, got string"]);
    assert_refused(w.set("general.alignment", MetaValue::U32(48)), &["48 is invalid", "power of two"]);
    assert_refused(w.set("general.alignment", MetaValue::U32(0)), &["0 is invalid", "must not be 0"]);
    assert_refused(w.set("general.alignment", MetaValue::U32(1 << 21)), &["2097152 is invalid", "larger than 1 MiB"]);

    // Nothing refused was stored; what was accepted reads back.
    for key in ["", "big", "big.arr", "big.nested", "general.alignment", too_long.as_str()] {
        assert!(w.get(key).is_none(), "refused key {key:?} was stored");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edges.gguf");
    write(&mut w, &path);
    let file = GgufFile::open(&path).expect("open");
    assert_eq!(file.keys().collect::<Vec<_>>(), vec![longest.as_str(), "deep"]);
    assert!(file.get("deep").expect("deep").to_owned_value().same_bits(&MetaValue::Array(deep(MAX_ARRAY_DEPTH))));
}

#[test]
fn writer_refuses_bad_tensors() {
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[4], f32_tensor(4)).expect("a valid tensor");

    assert_refused(w.add_tensor("", GgmlType::F32, &[4], f32_tensor(4)), &["tensor #1", "name is empty"]);
    let long = "t".repeat(MAX_TENSOR_NAME_LEN as usize + 1);
    assert_refused(w.add_tensor(&long, GgmlType::F32, &[4], f32_tensor(4)), &["tensor #1", "64 bytes long (limit 63)"]);
    assert_refused(w.add_tensor("a", GgmlType::F32, &[4], f32_tensor(4)), &["duplicate tensor name \"a\""]);
    assert_refused(
        w.add_tensor("b", GgmlType::F32, &[4], TensorData::Bytes(Cow::Owned(vec![0; 15]))),
        &["tensor \"b\"", "needs 16 bytes, 15 given"],
    );
    assert_refused(
        w.add_tensor("b", GgmlType::Q4_K, &[256, 2], TensorData::Bytes(Cow::Owned(vec![0; 289]))),
        &["tensor \"b\"", "needs 288 bytes, 289 given"],
    );
    assert_refused(
        w.add_tensor("b", GgmlType::F32, &[], f32_tensor(1)),
        &["tensor \"b\"", "0 dimensions (must be 1 to 4)"],
    );
    assert_refused(
        w.add_tensor("b", GgmlType::F32, &[1, 1, 1, 1, 1], f32_tensor(1)),
        &["5 dimensions (must be 1 to 4)"],
    );
    assert_refused(
        w.add_tensor("b", GgmlType::Q4_K, &[100, 2], TensorData::Bytes(Cow::Owned(vec![]))),
        &["tensor \"b\" (Q4_K, shape [100, 2])", "row length 100 is not a multiple of the block size 256"],
    );
    assert_refused(
        w.add_tensor("b", GgmlType::Q8_0, &[16], TensorData::Bytes(Cow::Owned(vec![]))),
        &["row length 16 is not a multiple of the block size 32"],
    );
    assert_refused(w.add_tensor("b", GgmlType::F32, &[4, 0], f32_tensor(0)), &["tensor \"b\"", "dimension 1 is 0"]);
    assert_refused(
        w.add_tensor("b", GgmlType::F32, &[1 << 40, 1 << 40], TensorData::Bytes(Cow::Owned(vec![]))),
        &["tensor \"b\"", "overflows"],
    );
    assert_eq!(w.tensor_count(), 1, "refused tensors were stored");

    // The edges that are allowed: a 63-byte name and four dimensions.
    let longest = "t".repeat(MAX_TENSOR_NAME_LEN as usize);
    w.add_tensor(&longest, GgmlType::F32, &[1, 2, 1, 2], f32_tensor(4)).expect("a 63-byte name and 4 dims");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edges.gguf");
    write(&mut w, &path);
    let file = GgufFile::open(&path).expect("open");
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["a", longest.as_str()]);
    assert_eq!(file.tensors()[1].dims(), &[1, 2, 1, 2]);
}

#[test]
fn stream_of_the_wrong_length_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (wrote, needle) in [(15usize, "wrote 15 bytes, 16 expected"), (17, "wrote 17 bytes, 16 expected")] {
        let mut w = GgufWriter::new();
        let source = move |out: &mut dyn Write| out.write_all(&vec![1u8; wrote]);
        w.add_tensor("s", GgmlType::F32, &[4], TensorData::Stream(Box::new(source))).expect("add_tensor");
        let path = dir.path().join("short.gguf");
        assert_refused(w.write_atomic(&path, None).map(|_| ()), &["tensor \"s\"", needle]);
        assert!(!path.exists(), "a failed write left {}", path.display());
    }
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Atomicity.

/// A small valid GGUF image to stand for the file already at the target path.
fn old_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("model.gguf");
    let mut w = GgufWriter::new();
    w.set("general.name", MetaValue::String("the old file".into())).expect("set");
    w.add_tensor("old", GgmlType::F32, &[8], f32_tensor(8)).expect("add");
    write(&mut w, &path);
    let bytes = std::fs::read(&path).expect("read");
    (path, bytes)
}

/// A writer whose one streamed tensor fails after writing some of its bytes, by an I/O error or
/// by writing too few or too many.
fn failing_writer<'a>(failure: &'static str) -> GgufWriter<'a> {
    let mut w = GgufWriter::new();
    w.set("general.name", MetaValue::String("the new file".into())).expect("set");
    w.add_tensor("first", GgmlType::F32, &[1024], f32_tensor(1024)).expect("add");
    let source = move |out: &mut dyn Write| -> io::Result<()> {
        out.write_all(&[7u8; 1000])?;
        match failure {
            "io" => Err(io::Error::other("disk on fire")),
            "short" => Ok(()),
            _ => out.write_all(&[7u8; 3000]),
        }
    };
    w.add_tensor("second", GgmlType::F32, &[512], TensorData::Stream(Box::new(source))).expect("add");
    w
}

#[test]
fn failed_write_leaves_the_old_file_intact() {
    for (failure, needle) in [
        ("io", "disk on fire"),
        ("short", "wrote 1000 bytes, 2048 expected"),
        ("long", "wrote 4000 bytes, 2048 expected"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, before) = old_file(dir.path());
        let result = failing_writer(failure).write_atomic(&path, None);
        assert_refused(result.map(|_| ()), &[needle]);
        assert!(std::fs::read(&path).expect("the old file is still there") == before, "{failure}: old file changed");
        assert_eq!(dir_entries(dir.path()), vec!["model.gguf".to_string()], "{failure}: leftovers");
    }
}

#[test]
fn panicking_data_source_leaves_the_old_file_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, before) = old_file(dir.path());
    let mut w = GgufWriter::new();
    let source = |out: &mut dyn Write| -> io::Result<()> {
        out.write_all(&[1u8; 8])?;
        panic!("the quantizer crashed");
    };
    w.add_tensor("t", GgmlType::F32, &[4], TensorData::Stream(Box::new(source))).expect("add");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.write_atomic(&path, None)));
    assert!(result.is_err(), "the panic propagates");
    assert!(std::fs::read(&path).expect("read") == before, "old file changed");
    assert_eq!(dir_entries(dir.path()), vec!["model.gguf".to_string()], "leftovers");
}

#[test]
fn successful_write_replaces_the_old_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, before) = old_file(dir.path());
    let synth = Synth::new(SynthOptions::default());
    write(&mut synth.writer(), &path);
    assert!(std::fs::read(&path).expect("read") != before);
    synth.assert_matches(&GgufFile::open(&path).expect("open"));
    assert_eq!(dir_entries(dir.path()), vec!["model.gguf".to_string()]);
}

#[cfg(unix)]
#[test]
fn output_equal_to_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, before) = old_file(dir.path());
    let file = GgufFile::open(&path).expect("open");

    let link = dir.path().join("link.gguf");
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    let hard = dir.path().join("hard.gguf");
    std::fs::hard_link(&path, &hard).expect("hard link");
    let dotted = dir.path().join(".").join("model.gguf");
    for target in [&path, &link, &hard, &dotted] {
        let mut w = GgufWriter::from_file(&file).expect("from_file");
        match w.write_atomic(target, None) {
            Err(GgufError::OutputIsInput { path: p, input }) => {
                assert_eq!(&p, target);
                assert_eq!(input, path);
            }
            other => panic!("writing over the input through {}: {other:?}", target.display()),
        }
        let msg = GgufError::OutputIsInput { path: target.clone(), input: path.clone() }.to_string();
        assert!(msg.contains("it is the input file") && msg.contains("choose another output path"), "{msg}");
    }
    // An input declared with protect_input is guarded the same way.
    let synth = Synth::new(SynthOptions::default());
    let mut w = synth.writer();
    w.protect_input(&path);
    assert!(matches!(w.write_atomic(&link, None), Err(GgufError::OutputIsInput { .. })));

    assert!(std::fs::read(&path).expect("read") == before, "input changed");
    assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link was replaced");
    assert_eq!(
        dir_entries(dir.path()),
        vec!["hard.gguf".to_string(), "link.gguf".to_string(), "model.gguf".to_string()],
        "leftovers"
    );
}

#[cfg(unix)]
#[test]
fn written_file_gets_the_permissions_of_a_plain_create() {
    // A model written by `engine` should be as readable as one written by any other tool: the
    // mode File::create gives (0666 less the umask), not the 0600 of a private temporary file.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = dir.path().join("probe");
    std::fs::File::create(&probe).expect("create");
    let usual = std::fs::metadata(&probe).expect("stat").permissions().mode() & 0o777;
    let path = dir.path().join("written.gguf");
    write(&mut Synth::new(SynthOptions::default()).writer(), &path);
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, usual, "written with mode {mode:o}, File::create gives {usual:o}");
}

#[test]
fn edited_metadata_keeps_its_order() {
    let synth = Synth::new(SynthOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synthetic.gguf");
    write(&mut synth.writer(), &path);
    let file = GgufFile::open(&path).expect("open");
    let mut w = GgufWriter::from_file(&file).expect("from_file");
    // Replace in place (with another type), remove one, append one.
    w.set("s.u8.max", MetaValue::String("now a string".into())).expect("set");
    assert!(w.remove("s.i8.min").is_some_and(|v| v.same_bits(&MetaValue::I8(i8::MIN))));
    assert!(w.remove("s.i8.min").is_none());
    w.set("zz.appended", MetaValue::F64(2.5)).expect("set");
    let out = dir.path().join("edited.gguf");
    write(&mut w, &out);
    let edited = GgufFile::open(&out).expect("open");
    let mut want: Vec<(String, MetaValue)> = synth.kvs.clone();
    want.retain(|(k, _)| k != "s.i8.min");
    for (k, v) in want.iter_mut() {
        if k == "s.u8.max" {
            *v = MetaValue::String("now a string".into());
        }
    }
    want.push(("zz.appended".into(), MetaValue::F64(2.5)));
    let got: Vec<(String, MetaValue)> = edited.metadata().map(|(k, v)| (k.to_string(), v.to_owned_value())).collect();
    assert_eq!(got.len(), want.len());
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(gk, wk, "key order");
        assert!(gv.same_bits(wv), "key {gk:?}: {gv:?} vs {wv:?}");
    }
    assert!(edited.tensors() == file.tensors(), "tensors changed");
}
