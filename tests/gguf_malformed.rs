//! Bad input for the GGUF reader: one named test per class of malformed file (see
//! `shared/RELIABILITY.md`), each built by hand with `engine_tests::craft` so that it corrupts
//! exactly one thing.
//!
//! Every case checks three things: `GgufFile::from_bytes` returns an error (no panic), the
//! error's message names the problem (the key, the field, the offending value, the limit), and
//! no single allocation made while parsing is larger than the file itself plus a small constant
//! (a count or length read from the file never sizes an allocation before it is checked).
//!
//! The same cases are written to disk and opened through `GgufFile::open` (mapped and not), run
//! through `engine inspect`, and written to the fuzzer's seed corpus by the ignored test
//! `write_fuzz_corpus`:
//!
//! ```text
//! cargo test -p engine-tests --test gguf_malformed -- --ignored write_fuzz_corpus
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use engine::gguf::{
    GgufFile, OpenOptions, Value, ValueType, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_KEY_LEN, MAX_STRING_LEN,
    MAX_TENSOR_NAME_LEN,
};
use engine_tests::bin::engine_bin;
use engine_tests::craft::{self, array, nested_array, string, string_array, string_claiming, Craft};
use ggml_kernels::GgmlType;

// ---------------------------------------------------------------------------------------------
// Measuring allocations

/// The system allocator, noting the largest single request made by the current thread.
struct LargestAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`; `note` neither allocates nor panics.
unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: LargestAlloc = LargestAlloc;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_alloc_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}

// ---------------------------------------------------------------------------------------------
// Checking one bad file

/// Parsing may copy the file and keep small tables; anything beyond this is an allocation sized
/// by something other than the file.
fn alloc_limit(file_len: usize) -> usize {
    2 * file_len + (64 << 10)
}

/// The file must be rejected with a message containing every one of `needles`.
fn expect_rejected(image: &[u8], needles: &[&str]) -> String {
    let (result, largest) = largest_alloc_during(|| GgufFile::from_bytes(image));
    let msg = match result {
        Ok(f) => panic!("accepted a bad file ({} bytes): {f:?}", image.len()),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(msg.contains(needle), "error message {msg:?} does not contain {needle:?}");
    }
    assert!(!msg.contains('\n'), "error message is not one line: {msg:?}");
    assert!(
        largest <= alloc_limit(image.len()),
        "parsing a {}-byte file made a {largest}-byte allocation (error: {msg})",
        image.len()
    );
    msg
}

// ---------------------------------------------------------------------------------------------
// Building blocks

const F32: u32 = GgmlType::F32 as u32;

/// A valid file with one F32 tensor of 4 elements: the base most tensor cases corrupt.
fn one_tensor() -> Craft {
    Craft::new().tensor("t", &[4], GgmlType::F32, 0).data(&craft::f32s(&[1.0, 2.0, 3.0, 4.0]))
}

/// A file with a single key/value pair "k" of type `ty`.
fn one_kv(ty: ValueType, value: &[u8]) -> Vec<u8> {
    Craft::new().kv("k", ty, value).build()
}

/// One more than the largest ggml type id the type table knows (new types are added at the end).
fn next_type_id() -> u32 {
    (0..4096).filter(|&id| GgmlType::from_id(id).is_some()).max().unwrap_or(0) + 1
}

/// A file with one tensor info given raw and `data_len` bytes of data.
fn tensor_file(name: &[u8], n_dims: u32, dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Craft::new().tensor_raw(name, n_dims, dims, type_id, offset).data(&vec![0; data_len]).build()
}

/// The first `n` bytes of `image`.
fn prefix(image: Vec<u8>, n: usize) -> Vec<u8> {
    image[..n].to_vec()
}

/// A header written big-endian throughout, as a byte-swapped converter would write it.
fn big_endian_header() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_be_bytes());
    v.extend_from_slice(&1u64.to_be_bytes());
    v.extend_from_slice(&2u64.to_be_bytes());
    v.resize(256, 0);
    v
}

/// A key/value section whose only key claims `len` bytes and has `have` bytes of it.
fn long_key(len: u64, have: usize) -> Vec<u8> {
    // Eight more bytes: room for the smallest pair, so the count check passes and the key
    // itself is what fails.
    Craft::new().kv_bytes(&string_claiming(len, &vec![b'a'; have])).kv_bytes(&[0; 8]).kv_count(1).build()
}

// ---------------------------------------------------------------------------------------------
// The classes of bad input

/// One test per class: the file image and the pieces its error message must contain. The same
/// list feeds the on-disk, CLI and corpus tests through `bad_cases()`.
macro_rules! bad_files {
    ($( $(#[$meta:meta])* $name:ident: $image:expr => [$($needle:expr),+ $(,)?]; )*) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                expect_rejected(&$image, &[$(AsRef::<str>::as_ref(&$needle)),+]);
            }
        )*

        /// Every case above: its name, its image and what its message must contain.
        fn bad_cases() -> Vec<(&'static str, Vec<u8>, Vec<String>)> {
            vec![$( (stringify!($name), $image, vec![$(String::from(AsRef::<str>::as_ref(&$needle))),+]) ),*]
        }
    };
}

bad_files! {
    // Header.
    /// Zero bytes.
    empty_file: Vec::new() => ["truncated file", "magic", "needs 4 bytes, only 0 left"];
    /// Cut inside each header field in turn.
    truncated_in_magic: b"GG".to_vec() => ["truncated file", "magic", "only 2 left"];
    truncated_in_version: prefix(Craft::new().build(), 6) => ["truncated file", "version at offset 4", "needs 4 bytes, only 2 left"];
    truncated_in_tensor_count: prefix(Craft::new().build(), 12) => ["truncated file", "tensor count at offset 8", "needs 8 bytes, only 4 left"];
    truncated_in_kv_count: prefix(Craft::new().build(), 23) => ["truncated file", "metadata key/value count at offset 16", "needs 8 bytes, only 7 left"];
    /// A GGML/GGJT-era file, and binary junk (shown escaped).
    bad_magic: Craft::new().magic(*b"ggjt").build() => ["not a GGUF file: magic is \"ggjt\", expected \"GGUF\""];
    bad_magic_binary: Craft::new().magic(*b"\x7fELF").build() => ["not a GGUF file: magic is \"\\x7fELF\", expected \"GGUF\""];
    /// A big-endian file: the version field reads 0x03000000.
    byte_swapped_header: big_endian_header() => ["big-endian", "0x03000000", "only little-endian"];
    version_0: Craft::new().version(0).build() => ["unsupported GGUF version 0", "versions 2 and 3"];
    version_1: Craft::new().version(1).build() => ["unsupported GGUF version 1", "versions 2 and 3"];
    version_4: Craft::new().version(4).build() => ["unsupported GGUF version 4", "versions 2 and 3"];
    version_huge: Craft::new().version(0xFFFF_FFFF).build() => ["unsupported GGUF version 4294967295"];
    /// Counts that the rest of the file could not possibly hold.
    kv_count_beyond_bytes_left: Craft::new().kv_count(1 << 40).build()
        => ["metadata key/value count is 1099511627776", "the 0 bytes left can hold at most 0"];
    kv_count_max: Craft::new().kv_u32("a", 1).kv_count(u64::MAX).build()
        => ["metadata key/value count is 18446744073709551615", "at most 1"];
    tensor_count_beyond_bytes_left: one_tensor().tensor_count(u64::MAX).build()
        => ["tensor count is 18446744073709551615", "can hold at most 1"];

    // Metadata keys.
    /// A key that claims more bytes than are left.
    key_length_beyond_bytes_left: long_key(1000, 3) => ["truncated file", "metadata key #0", "needs 1000 bytes"];
    /// A key longer than the specification's limit (the bytes are really there).
    key_longer_than_max_key_len: Craft::new().kv_raw(&vec![b'a'; MAX_KEY_LEN as usize + 1], ValueType::U8 as u32, &[0]).build()
        => ["metadata key #0", &format!("length {}", MAX_KEY_LEN + 1), &format!("limit of {MAX_KEY_LEN} bytes")];
    /// A key whose length is near u64::MAX: rejected on the limit, never added to an offset.
    key_length_u64_max: long_key(u64::MAX, 0) => ["metadata key #0", "length 18446744073709551615", "limit of 65535"];
    empty_key: Craft::new().kv_u32("a", 1).kv_raw(b"", ValueType::U32 as u32, &[0; 4]).build() => ["metadata key #1", "is empty"];
    duplicate_key: Craft::new().kv_u32("llama.block_count", 1).kv_u32("llama.block_count", 2).build()
        => ["duplicate metadata key \"llama.block_count\""];
    key_invalid_utf8: Craft::new().kv_raw(b"general.\xff\xfe", ValueType::U32 as u32, &[0; 4]).build()
        => ["metadata key #0", "not valid UTF-8"];

    // Metadata values.
    string_length_beyond_bytes_left: one_kv(ValueType::String, &string_claiming(1000, b"abc"))
        => ["truncated file", "string value of key \"k\"", "needs 1000 bytes, only 3 left"];
    string_length_beyond_max_string_len: one_kv(ValueType::String, &string_claiming(MAX_STRING_LEN + 1, b"abc"))
        => ["string value of key \"k\"", &format!("length {}", MAX_STRING_LEN + 1), &format!("limit of {MAX_STRING_LEN} bytes")];
    string_value_invalid_utf8: one_kv(ValueType::String, &string(b"caf\xc3(")) => ["string value of key \"k\"", "not valid UTF-8"];
    string_array_invalid_utf8: Craft::new().kv("tokenizer.ggml.tokens", ValueType::Array, &string_array(&[b"ok", b"\xe2\x96", b"x"])).build()
        => ["of key \"tokenizer.ggml.tokens\"", "not valid UTF-8"];
    unknown_value_type: Craft::new().kv_raw(b"k", 13, &[0; 8]).build() => ["key \"k\"", "unknown value type id 13"];
    unknown_value_type_max: Craft::new().kv_raw(b"k", u32::MAX, &[0; 8]).build() => ["key \"k\"", "unknown value type id 4294967295"];
    unknown_array_element_type: one_kv(ValueType::Array, &array(99, 1, &[0; 8])) => ["key \"k\"", "unknown value type id 99"];
    bool_value_2: one_kv(ValueType::Bool, &[2]) => ["key \"k\"", "bool value 2", "neither 0 nor 1"];
    bool_array_containing_2: one_kv(ValueType::Array, &array(ValueType::Bool as u32, 4, &[0, 1, 1, 2]))
        => ["key \"k\"", "bool value 2", "neither 0 nor 1"];
    /// A fixed-size value cut off by the end of the file.
    value_truncated: one_kv(ValueType::U64, &[1, 2, 3]) => ["truncated file", "value of key \"k\"", "needs 8 bytes, only 3 left"];
    /// Huge element counts in a tiny file: rejected before anything is sized by them.
    array_count_beyond_bytes_left: one_kv(ValueType::Array, &array(ValueType::U64 as u32, 1 << 61, &[0; 16]))
        => ["element count of array key \"k\"", "is 2305843009213693952", "the 16 bytes left can hold at most 2"];
    string_array_count_beyond_bytes_left: one_kv(ValueType::Array, &array(ValueType::String as u32, u64::MAX, &[0; 16]))
        => ["element count of array key \"k\"", "is 18446744073709551615", "at most 2"];
    array_of_arrays_count_beyond_bytes_left: one_kv(ValueType::Array, &array(ValueType::Array as u32, 1 << 40, &nested_array(2)))
        => ["element count of array key \"k\"", "is 1099511627776"];
    /// A count that fits the bytes left at the minimum element size, but the elements are longer.
    string_array_elements_beyond_bytes_left: one_kv(ValueType::Array, &array(ValueType::String as u32, 3, &string(b"0123456789abcdef")))
        => ["truncated file", "of key \"k\"", "needs 8 bytes, only 0 left"];
    /// The same inside an array of arrays, the inner run ending exactly at the end of the file.
    nested_string_array_elements_beyond_bytes_left: one_kv(
        ValueType::Array,
        &array(ValueType::Array as u32, 1, &array(ValueType::String as u32, 3, &string(b"0123456789abcdef"))),
    ) => ["truncated file", "of key \"k\"", "needs 8 bytes, only 0 left"];
    nested_arrays_beyond_max_depth: one_kv(ValueType::Array, &nested_array(MAX_ARRAY_DEPTH + 1))
        => ["key \"k\"", &format!("nested deeper than {MAX_ARRAY_DEPTH} levels")];

    // general.alignment.
    alignment_as_i32: Craft::new().kv_i32("general.alignment", 32).build() => ["\"general.alignment\"", "expected u32, got i32"];
    alignment_as_string: Craft::new().kv_str("general.alignment", "32").build() => ["\"general.alignment\"", "expected u32, got string"];
    alignment_zero: Craft::new().kv_u32("general.alignment", 0).build() => ["\"general.alignment\"", "0 is invalid", "must not be 0"];
    alignment_not_power_of_two: Craft::new().kv_u32("general.alignment", 48).build() => ["\"general.alignment\"", "48 is invalid", "power of two"];
    alignment_absurdly_large: Craft::new().kv_u32("general.alignment", 1 << 31).build()
        => ["\"general.alignment\"", "2147483648 is invalid", "larger than 1 MiB"];

    // Tensor infos.
    tensor_name_empty: tensor_file(b"", 1, &[4], F32, 0, 16) => ["tensor #0", "name is empty"];
    tensor_name_too_long: tensor_file(&[b'w'; MAX_TENSOR_NAME_LEN as usize + 1], 1, &[4], F32, 0, 16)
        => ["tensor #0", &format!("is {} bytes long", MAX_TENSOR_NAME_LEN + 1), &format!("limit {MAX_TENSOR_NAME_LEN}")];
    tensor_name_invalid_utf8: tensor_file(b"blk.\xc0.weight", 1, &[4], F32, 0, 16) => ["name of tensor #0", "not valid UTF-8"];
    duplicate_tensor_name: Craft::new()
        .tensor("blk.0.attn_q.weight", &[4], GgmlType::F32, 0)
        .tensor("blk.0.attn_q.weight", &[4], GgmlType::F32, 32)
        .data(&[0; 48])
        .build() => ["duplicate tensor name \"blk.0.attn_q.weight\""];
    n_dims_0: tensor_file(b"t", 0, &[], F32, 0, 32) => ["tensor \"t\"", "0 dimensions", "must be 1 to 4"];
    n_dims_5: tensor_file(b"t", 5, &[1, 1, 1, 1, 1], F32, 0, 32) => ["tensor \"t\"", "5 dimensions", "must be 1 to 4"];
    n_dims_u32_max: tensor_file(b"t", u32::MAX, &[1], F32, 0, 32) => ["tensor \"t\"", "4294967295 dimensions"];
    zero_dimension: tensor_file(b"t", 2, &[4, 0], F32, 0, 32) => ["tensor \"t\"", "shape [4, 0]", "dimension 1 is 0"];
    dimension_product_overflow: tensor_file(b"t", 2, &[1 << 32, 1 << 32], F32, 0, 32)
        => ["tensor \"t\"", "shape [4294967296, 4294967296]", "overflows"];
    /// The element count fits in 63 bits but the byte count (4 bytes each) does not.
    byte_size_overflow: tensor_file(b"t", 1, &[1 << 62], F32, 0, 32) => ["tensor \"t\"", "F32", "overflows"];
    /// The id just past the newest type the table knows.
    unknown_tensor_type: tensor_file(b"t", 1, &[4], next_type_id(), 0, 32)
        => ["tensor \"t\"", &format!("unknown ggml type id {}", next_type_id())];
    /// Q4_2 (id 4) was removed from ggml; it must not be taken for a current type.
    removed_tensor_type_4: tensor_file(b"t", 1, &[4], 4, 0, 32) => ["tensor \"t\"", "unknown ggml type id 4"];
    unknown_tensor_type_max: tensor_file(b"t", 1, &[4], u32::MAX, 0, 32) => ["unknown ggml type id 4294967295"];
    row_not_block_multiple: tensor_file(b"t", 2, &[100, 2], GgmlType::Q4_K as u32, 0, 288)
        => ["tensor \"t\"", "Q4_K", "row length 100 is not a multiple of the block size 256"];
    /// A tensor table cut inside a dimension (the count check alone cannot see it).
    truncated_in_tensor_infos: {
        // Cut after 1.5 of the 4 dimensions, leaving more than the smallest tensor info (33 bytes).
        let full = Craft::new().tensor("blk.0.ffn_down.weight", &[1, 1, 1, 1], GgmlType::F32, 0).build();
        prefix(full, Craft::HEADER_LEN + 8 + 21 + 4 + 12)
    } => ["truncated file", "dimensions of tensor \"blk.0.ffn_down.weight\"", "needs 8 bytes, only 4 left"];

    // Tensor data.
    tensor_offset_misaligned: tensor_file(b"t", 1, &[4], F32, 4, 32) => ["tensor \"t\"", "data offset 4", "alignment 32"];
    tensor_offset_misaligned_custom_alignment: Craft::new()
        .kv_u32("general.alignment", 64)
        .tensor("t", &[4], GgmlType::F32, 32)
        .data(&[0; 128])
        .build() => ["tensor \"t\"", "data offset 32", "alignment 64"];
    /// header 24 + info 33 = 57, padded to a data section at 64; 8 bytes of the 16 are there.
    tensor_data_past_end: tensor_file(b"t", 1, &[4], F32, 0, 8) => ["tensor \"t\" needs 16 bytes at offset 64, file has 72"];
    tensor_data_offset_past_end: tensor_file(b"t", 1, &[4], F32, 1 << 20, 16)
        => [&format!("tensor \"t\" needs 16 bytes at offset {}, file has 80", 64 + (1u64 << 20))];
    /// An offset near u64::MAX: the end cannot be computed, and must not wrap around.
    tensor_offset_overflows: tensor_file(b"t", 1, &[4], F32, u64::MAX - 31, 16) => ["tensor \"t\" needs 16 bytes at offset", "file has 80"];
    overlapping_tensors: Craft::new()
        .tensor("a", &[16], GgmlType::F32, 0)
        .tensor("b", &[8], GgmlType::F32, 32)
        .data(&[0; 64])
        .build() => ["tensor \"b\" (bytes 32..64) overlaps tensor \"a\" (bytes 0..64)"];
    same_offset_tensors: Craft::new()
        .tensor("a", &[8], GgmlType::F32, 0)
        .tensor("b", &[8], GgmlType::F32, 0)
        .data(&[0; 32])
        .build() => ["overlaps", "bytes 0..32"];
}

/// Every strict prefix of a valid file with tensors is rejected, and none panics.
#[test]
fn every_prefix_of_a_valid_file_is_rejected() {
    let image = craft::rich_valid();
    GgufFile::from_bytes(&image).expect("the full file is valid");
    for n in 0..image.len() {
        let (result, largest) = largest_alloc_during(|| GgufFile::from_bytes(&image[..n]));
        let e = result.err().unwrap_or_else(|| panic!("a {n}-byte prefix was accepted"));
        let msg = e.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("can hold at most") || msg.contains("file has"),
            "prefix {n}: {msg}"
        );
        assert!(largest <= alloc_limit(n), "prefix {n}: {largest}-byte allocation");
    }
}

/// Every single-byte change to the header and metadata of a valid file either parses or gives
/// an error; none panics (a cheap, deterministic cousin of the fuzzer).
#[test]
fn every_single_byte_change_is_handled() {
    let image = craft::rich_valid();
    let data_offset = GgufFile::from_bytes(&image).expect("valid").data_offset() as usize;
    for pos in 0..data_offset {
        for v in [0x00, 0x01, 0x02, 0x0d, 0x7f, 0x80, 0xff, image[pos] ^ 0x40] {
            let mut bad = image.clone();
            bad[pos] = v;
            let (result, largest) = largest_alloc_during(|| GgufFile::from_bytes(&bad));
            if let Ok(f) = result {
                exercise(&f);
            }
            assert!(largest <= alloc_limit(bad.len()), "byte {pos} = {v:#x}: {largest}-byte allocation");
        }
    }
}

/// Reads everything an open file offers, as the fuzz target does.
fn exercise(f: &GgufFile) {
    for (key, v) in f.metadata() {
        let _ = v.render(Some(4));
        let _ = v.render(None);
        let _ = v.type_label();
        let _ = v.to_owned_value();
        let _ = f.get_as::<u32>(key);
        let _ = f.get_str(key);
        if let Value::Array(a) = v {
            // The reader validated every element: iteration yields exactly `len` of them.
            assert_eq!(a.iter().count(), a.len(), "key {key:?}");
            assert!(a.get(a.len()).is_none());
            if let Some(s) = a.strings() {
                assert_eq!(s.count(), a.len(), "key {key:?}");
            }
        }
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.nbytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Positive controls: the crafting helper writes files the reader accepts.

#[test]
fn valid_empty_file_v3() {
    let f = GgufFile::from_bytes(&Craft::new().build()).expect("valid");
    assert_eq!((f.version(), f.kv_count(), f.tensors().len(), f.alignment()), (3, 0, 0, 32));
}

#[test]
fn valid_empty_file_v2() {
    let f = GgufFile::from_bytes(&Craft::new().version(2).build()).expect("valid");
    assert_eq!(f.version(), 2);
}

#[test]
fn valid_one_tensor() {
    for version in [2, 3] {
        let f = GgufFile::from_bytes(&one_tensor().version(version).build()).expect("valid");
        let t = f.tensor("t").expect("tensor t");
        assert_eq!((t.ty, t.dims(), t.nbytes, f.data_offset()), (GgmlType::F32, &[4u64][..], 16, 64));
        assert_eq!(f.tensor_data(t), &craft::f32s(&[1.0, 2.0, 3.0, 4.0])[..]);
    }
}

#[test]
fn valid_rich_file() {
    let f = GgufFile::from_bytes(&craft::rich_valid()).expect("valid");
    assert_eq!(f.kv_count(), 18);
    assert_eq!(f.get_str("general.name").unwrap(), Some("crafted \u{e9}\u{1f600}"));
    assert_eq!(f.require::<u64>("test.u64").unwrap(), u64::MAX);
    assert_eq!(f.require::<i8>("test.i8").unwrap(), -1);
    assert!(f.require::<bool>("test.bool").unwrap());
    let tokens = f.get_array("tokenizer.ggml.tokens", ValueType::String).unwrap().unwrap();
    assert_eq!(tokens.strings().unwrap().collect::<Vec<_>>(), ["<s>", "</s>", "\u{2581}the"]);
    let scores = f.get_array("tokenizer.ggml.scores", ValueType::F32).unwrap().unwrap();
    assert_eq!(scores.to_vec::<f32>().unwrap(), [0.0, -1.5, 2.25]);
    assert_eq!(f.get("test.nested").unwrap().type_label(), "array[array[array[u8]]]");
    assert_eq!(f.tensors().len(), 3);
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ty, q.nbytes, q.offset), (GgmlType::Q8_0, 68, 96));
    exercise(&f);
}

#[test]
fn valid_nested_arrays_at_max_depth() {
    let f = GgufFile::from_bytes(&one_kv(ValueType::Array, &nested_array(MAX_ARRAY_DEPTH))).expect("valid");
    let mut v = f.get("k").unwrap();
    let mut depth = 0;
    while let Value::Array(a) = v {
        depth += 1;
        match a.iter().next() {
            Some(inner) => v = inner,
            None => break,
        }
    }
    assert_eq!(depth, MAX_ARRAY_DEPTH);
}

#[test]
fn valid_alignment_at_limits() {
    for alignment in [1, 8, MAX_ALIGNMENT as u32] {
        let mut c = Craft::new().kv_u32("general.alignment", alignment).tensor("t", &[4], GgmlType::F32, 0).data(&[0; 16]);
        c.pad_to = alignment as u64;
        let f = GgufFile::from_bytes(&c.build()).unwrap_or_else(|e| panic!("alignment {alignment}: {e}"));
        assert_eq!(f.alignment(), alignment as u64);
        assert_eq!(f.data_offset() % alignment as u64, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Typed accessors

fn accessor_file() -> GgufFile {
    let image = Craft::new()
        .kv_f32("llama.rope.freq_base", 10000.0)
        .kv_u32("llama.block_count", 2)
        .kv("tokenizer.ggml.scores", ValueType::Array, &array(ValueType::F32 as u32, 1, &craft::f32s(&[0.5])))
        .build();
    GgufFile::from_bytes(&image).expect("valid")
}

#[test]
fn require_wrong_type_names_key_and_types() {
    let e = accessor_file().require::<u32>("llama.rope.freq_base").unwrap_err();
    assert_eq!(e.to_string(), "key \"llama.rope.freq_base\": expected u32, got f32");
}

#[test]
fn get_as_wrong_type_is_an_error_not_none() {
    let e = accessor_file().get_as::<i32>("llama.block_count").unwrap_err();
    assert_eq!(e.to_string(), "key \"llama.block_count\": expected i32, got u32");
    assert!(accessor_file().get_as::<u32>("absent").unwrap().is_none());
}

#[test]
fn require_missing_key_names_it() {
    let e = accessor_file().require::<u32>("llama.context_length").unwrap_err();
    assert_eq!(e.to_string(), "required key \"llama.context_length\" is missing");
}

#[test]
fn get_array_wrong_element_type() {
    let f = accessor_file();
    let e = f.get_array("tokenizer.ggml.scores", ValueType::U8).unwrap_err();
    assert_eq!(e.to_string(), "key \"tokenizer.ggml.scores\": expected array[u8], got array[f32]");
    let e = f.get_array("llama.block_count", ValueType::U32).unwrap_err();
    assert_eq!(e.to_string(), "key \"llama.block_count\": expected array[u32], got u32");
}

/// Indices near `usize::MAX` are simply past the end, for every element size.
#[test]
fn array_get_huge_index_is_none() {
    let image = Craft::new()
        .kv("u8s", ValueType::Array, &array(ValueType::U8 as u32, 2, &[1, 2]))
        .kv("u64s", ValueType::Array, &array(ValueType::U64 as u32, 1, &7u64.to_le_bytes()))
        .build();
    let f = GgufFile::from_bytes(&image).expect("valid");
    for key in ["u8s", "u64s"] {
        let Some(Value::Array(a)) = f.get(key) else { panic!("{key} is an array") };
        assert!(a.get(0).is_some());
        for i in [a.len(), usize::MAX, usize::MAX - 1, usize::MAX / 8, usize::MAX / 8 + 1, usize::MAX / 2] {
            assert!(a.get(i).is_none(), "{key}[{i}]");
        }
    }
}

#[test]
fn get_str_wrong_type() {
    let e = accessor_file().get_str("llama.block_count").unwrap_err();
    assert_eq!(e.to_string(), "key \"llama.block_count\": expected string, got u32");
}

// ---------------------------------------------------------------------------------------------
// Paths that are not GGUF files

#[test]
fn open_directory() {
    let dir = tempfile::tempdir().unwrap();
    let msg = GgufFile::open(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("is a directory") && msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn open_nonexistent_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.gguf");
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("missing.gguf") && msg.contains("No such file"), "{msg}");
}

#[cfg(unix)]
#[test]
fn open_character_device() {
    let msg = GgufFile::open("/dev/null").unwrap_err().to_string();
    assert!(msg.contains("/dev/null") && msg.contains("character device"), "{msg}");
}

/// Makes a FIFO at `path` with the system's `mkfifo`.
#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opening a FIFO for reading blocks until a writer comes: the reader must look first.
#[cfg(unix)]
#[test]
fn open_fifo_returns_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    mkfifo(&path);
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(GgufFile::open(&p).map(|_| ()).map_err(|e| e.to_string()));
    });
    let result = rx.recv_timeout(Duration::from_secs(10));
    if result.is_err() {
        // Unblock the reader so that the thread can end, then fail.
        let _ = std::fs::OpenOptions::new().write(true).open(&path);
        panic!("GgufFile::open on a FIFO blocked");
    }
    let msg = result.unwrap().unwrap_err();
    assert!(msg.contains("FIFO") && msg.contains("not a regular file"), "{msg}");
}

#[test]
fn open_tiny_file_mapped_and_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, b"GGUF\x03").unwrap();
    for no_mmap in [false, true] {
        let msg = GgufFile::open_with(&path, OpenOptions { no_mmap }).unwrap_err().to_string();
        assert!(msg.contains("truncated file") && msg.contains("version"), "{msg}");
    }
}

/// Each bad file gives the same error through `open` (mapped and read) as through `from_bytes`.
#[test]
fn bad_files_on_disk_fail_like_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, image, _) in bad_cases() {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, &image).unwrap();
        let expected = GgufFile::from_bytes(&image).unwrap_err().to_string();
        for no_mmap in [false, true] {
            let got = GgufFile::open_with(&path, OpenOptions { no_mmap }).unwrap_err().to_string();
            assert_eq!(got, expected, "{name}, no_mmap {no_mmap}");
        }
    }
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, craft::rich_valid()).unwrap();
    for no_mmap in [false, true] {
        let f = GgufFile::open_with(&good, OpenOptions { no_mmap }).unwrap();
        assert_eq!(f.is_mmapped(), !no_mmap);
        exercise(&f);
    }
}

// ---------------------------------------------------------------------------------------------
// The command line

/// Runs `engine ARGS`, killing it if it has not finished within 60 seconds.
fn run_engine(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(engine_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn engine");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("engine {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// `engine inspect` on bad files: a non-zero exit, nothing on stdout, and exactly one line on
/// stderr that starts with `error:`, names the problem and is not a panic.
#[test]
fn cli_inspect_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let chosen = [
        "empty_file",
        "bad_magic",
        "bad_magic_binary",
        "version_1",
        "byte_swapped_header",
        "array_count_beyond_bytes_left",
        "alignment_as_i32",
        "tensor_name_too_long",
        "row_not_block_multiple",
        "tensor_data_past_end",
        "overlapping_tensors",
    ];
    for (name, image, needles) in bad_cases().into_iter().filter(|(n, _, _)| chosen.contains(n)) {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, image).unwrap();
        cases.push((path, needles));
    }
    assert_eq!(cases.len(), chosen.len());
    cases.push((dir.path().to_path_buf(), vec!["is a directory".into()]));
    cases.push((dir.path().join("missing.gguf"), vec!["missing.gguf".into(), "No such file".into()]));
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo.gguf");
        mkfifo(&fifo);
        cases.push((fifo, vec!["FIFO".into()]));
    }

    for (path, needles) in &cases {
        for extra in [None, Some("--no-mmap"), Some("--json")] {
            let mut args: Vec<&std::ffi::OsStr> = vec!["inspect".as_ref(), path.as_os_str()];
            args.extend(extra.map(std::ffi::OsStr::new));
            let out = run_engine(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("engine {args:?}");
            assert!(!out.status.success(), "{what} succeeded");
            assert_eq!(out.status.code(), Some(1), "{what}: exit status {:?}, stderr {stderr}", out.status);
            assert!(out.stdout.is_empty(), "{what} wrote to stdout: {}", String::from_utf8_lossy(&out.stdout));
            assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{what}: stderr is not one line: {stderr:?}");
            assert!(lines[0].starts_with("error: "), "{what}: {stderr:?}");
            for needle in needles {
                assert!(lines[0].contains(needle.as_str()), "{what}: {stderr:?} does not contain {needle:?}");
            }
        }
    }
}

/// The positive control for the CLI test: the crafted valid file inspects cleanly.
#[test]
fn cli_inspect_accepts_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rich.gguf");
    std::fs::write(&path, craft::rich_valid()).unwrap();
    for extra in ["--full", "--json"] {
        let out = run_engine(&["inspect".as_ref(), path.as_os_str(), extra.as_ref()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("blk.0.attn_q.weight"));
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzer's seed corpus

/// Writes every crafted file, good and bad, to `fuzz/corpus/gguf_reader/` (gitignored).
#[test]
#[ignore = "writes the fuzz seed corpus; run on demand"]
fn write_fuzz_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/gguf_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("valid_empty_v3".into(), Craft::new().build()),
        ("valid_empty_v2".into(), Craft::new().version(2).build()),
        ("valid_one_tensor".into(), one_tensor().build()),
        ("valid_rich".into(), craft::rich_valid()),
        ("valid_nested_max_depth".into(), one_kv(ValueType::Array, &nested_array(MAX_ARRAY_DEPTH))),
    ];
    // The 64 KiB key is the one large case; the fuzzer's default max_len would cut it anyway.
    files.extend(bad_cases().into_iter().filter(|(_, img, _)| img.len() <= 4096).map(|(n, img, _)| (n.to_string(), img)));
    for (name, image) in &files {
        std::fs::write(dir.join(format!("{name}.gguf")), image).unwrap();
    }
    eprintln!("wrote {} files to {}", files.len(), dir.display());
}
