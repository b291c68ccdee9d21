//! Fuzz target for the GGUF reader: any byte string either fails to open with an error or opens
//! into a file whose every accessor works and keeps the reader's invariants.
//!
//! Run from the repository root (see docs/RELIABILITY.md for the seed corpus):
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run gguf_reader fuzz/corpus/gguf_reader -- -max_total_time=600
//! ```

#![no_main]

use engine::gguf::{GgufFile, Value, ValueType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data) else { return };
    exercise(&file);
});

const ALL_TYPES: [ValueType; 13] = [
    ValueType::U8,
    ValueType::I8,
    ValueType::U16,
    ValueType::I16,
    ValueType::U32,
    ValueType::I32,
    ValueType::F32,
    ValueType::Bool,
    ValueType::String,
    ValueType::Array,
    ValueType::U64,
    ValueType::I64,
    ValueType::F64,
];

fn exercise(file: &GgufFile) {
    assert!(file.version() == 2 || file.version() == 3);
    assert!(file.alignment().is_power_of_two());
    assert_eq!(file.data_offset() % file.alignment(), 0);
    assert_eq!(file.keys().count(), file.kv_count());

    for (key, value) in file.metadata() {
        assert!(!key.is_empty());
        // Lookup by key finds the same entry.
        let again = file.get(key).expect("a listed key is found");
        assert_eq!(again.value_type(), value.value_type());
        walk(&value, 0);
        let _ = value.render(Some(8));
        let _ = value.render(None);
        let _ = value.type_label();
        let owned = value.to_owned_value();
        assert!(owned.same_bits(&again.to_owned_value()));

        // Every typed accessor: the exact type succeeds, every other is an error naming the key.
        check_get_as::<u8>(file, key, &value);
        check_get_as::<i8>(file, key, &value);
        check_get_as::<u16>(file, key, &value);
        check_get_as::<i16>(file, key, &value);
        check_get_as::<u32>(file, key, &value);
        check_get_as::<i32>(file, key, &value);
        check_get_as::<f32>(file, key, &value);
        check_get_as::<bool>(file, key, &value);
        check_get_as::<u64>(file, key, &value);
        check_get_as::<i64>(file, key, &value);
        check_get_as::<f64>(file, key, &value);
        check_get_as::<String>(file, key, &value);
        assert_eq!(file.get_str(key).is_ok(), matches!(value, Value::String(_)));
        for elem in ALL_TYPES {
            let r = file.get_array(key, elem);
            let expected = matches!(value, Value::Array(a) if a.elem_type() == elem);
            assert_eq!(r.is_ok(), expected);
        }
    }
    assert!(file.require::<u32>("fuzz.absent.key").is_err());

    let mut total: u64 = 0;
    for t in file.tensors() {
        assert!(!t.name.is_empty());
        assert!((1..=4).contains(&t.n_dims));
        assert_eq!(t.nbytes, t.ty.tensor_nbytes(t.dims()).expect("size was checked at open"));
        let data = file.tensor_data(t);
        assert_eq!(data.len() as u64, t.nbytes);
        total += data.iter().map(|&b| b as u64).sum::<u64>();
        assert!(std::ptr::eq(file.tensor(&t.name).expect("listed tensor is found"), t));
        let _ = t.n_elements();
    }
    std::hint::black_box(total);
    if !file.tensors().is_empty() {
        assert!(file.data_offset() <= file.file_len());
    }
}

fn check_get_as<T: engine::gguf::value::FromValue>(file: &GgufFile, key: &str, value: &Value<'_>) {
    match file.get_as::<T>(key) {
        Ok(v) => assert!(v.is_some() && value.value_type() == T::TYPE),
        Err(e) => {
            assert!(value.value_type() != T::TYPE);
            // Messages quote keys with Rust's escaping (control characters and all).
            assert!(e.to_string().contains(&format!("{key:?}")));
        }
    }
}

/// Visits every element of every array, checking that iteration yields exactly `len` elements.
fn walk(value: &Value<'_>, depth: usize) {
    assert!(depth <= engine::gguf::MAX_ARRAY_DEPTH);
    let Value::Array(a) = value else { return };
    let mut n = 0;
    for item in a.iter() {
        assert_eq!(item.value_type(), a.elem_type());
        walk(&item, depth + 1);
        n += 1;
    }
    assert_eq!(n, a.len());
    for i in 0..a.len().min(64) {
        assert_eq!(a.get(i).is_some(), a.elem_type().fixed_size().is_some());
    }
    assert!(a.get(a.len()).is_none());
    assert!(a.get(usize::MAX).is_none());
    if let Some(strings) = a.strings() {
        assert_eq!(strings.count(), a.len());
    }
    let _ = a.raw_bytes();
    match a.elem_type() {
        ValueType::U8 => assert_eq!(a.to_vec::<u8>().map(|v| v.len()), Some(a.len())),
        ValueType::I32 => assert_eq!(a.to_vec::<i32>().map(|v| v.len()), Some(a.len())),
        ValueType::F32 => assert_eq!(a.to_vec::<f32>().map(|v| v.len()), Some(a.len())),
        ValueType::String => assert_eq!(a.to_vec::<String>().map(|v| v.len()), Some(a.len())),
        ValueType::Bool => assert_eq!(a.to_vec::<bool>().map(|v| v.len()), Some(a.len())),
        _ => {}
    }
    assert_eq!(a.to_owned_array().len(), a.len());
}
