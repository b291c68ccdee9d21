//! GGUF metadata values: the borrowed view the reader hands out ([`Value`], [`Array`]) and the
//! owned form the writer takes ([`MetaValue`], [`MetaArray`]). Both keep the exact GGUF type.

use std::fmt;

/// A GGUF metadata value type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Encoded size of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The smallest number of bytes one encoded value can take (a length prefix for strings,
    /// type and count for arrays). Used to bound counts read from a file by the bytes left.
    pub fn min_encoded_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value borrowed from an open file.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(Array<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short description of the type, with the element type for arrays (`array[f32]`).
    pub fn type_label(&self) -> String {
        match self {
            Value::Array(a) => format!("array[{}]", a.elem_type_label()),
            v => v.value_type().name().to_string(),
        }
    }

    /// Copies the value into its owned form.
    pub fn to_owned_value(&self) -> MetaValue {
        match *self {
            Value::U8(v) => MetaValue::U8(v),
            Value::I8(v) => MetaValue::I8(v),
            Value::U16(v) => MetaValue::U16(v),
            Value::I16(v) => MetaValue::I16(v),
            Value::U32(v) => MetaValue::U32(v),
            Value::I32(v) => MetaValue::I32(v),
            Value::F32(v) => MetaValue::F32(v),
            Value::Bool(v) => MetaValue::Bool(v),
            Value::String(s) => MetaValue::String(s.to_string()),
            Value::Array(a) => MetaValue::Array(a.to_owned_array()),
            Value::U64(v) => MetaValue::U64(v),
            Value::I64(v) => MetaValue::I64(v),
            Value::F64(v) => MetaValue::F64(v),
        }
    }

    /// Writes the value for people: scalars in full, strings quoted and escaped, arrays
    /// summarised to their first `max_items` elements (all of them when `None`).
    pub fn render(&self, max_items: Option<usize>) -> String {
        let mut out = String::new();
        self.render_into(&mut out, max_items);
        out
    }

    fn render_into(&self, out: &mut String, max_items: Option<usize>) {
        use std::fmt::Write;
        let _ = match self {
            Value::U8(v) => write!(out, "{v}"),
            Value::I8(v) => write!(out, "{v}"),
            Value::U16(v) => write!(out, "{v}"),
            Value::I16(v) => write!(out, "{v}"),
            Value::U32(v) => write!(out, "{v}"),
            Value::I32(v) => write!(out, "{v}"),
            Value::F32(v) => write!(out, "{v:?}"),
            Value::Bool(v) => write!(out, "{v}"),
            Value::String(s) => write!(out, "{s:?}"),
            Value::U64(v) => write!(out, "{v}"),
            Value::I64(v) => write!(out, "{v}"),
            Value::F64(v) => write!(out, "{v:?}"),
            Value::Array(a) => {
                out.push('[');
                let shown = max_items.unwrap_or(usize::MAX).min(a.len());
                for (i, item) in a.iter().take(shown).enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.render_into(out, max_items);
                }
                if shown < a.len() {
                    let _ = write!(out, "{}... {} more", if shown > 0 { ", " } else { "" }, a.len() - shown);
                }
                out.push(']');
                Ok(())
            }
        };
    }
}

/// An array value borrowed from an open file: its element type, its length and the raw
/// little-endian bytes of its elements. The reader validated every element when it opened the
/// file (UTF-8 strings, 0/1 bools, nested arrays), so iteration cannot meet a malformed element.
#[derive(Clone, Copy, Debug)]
pub struct Array<'a> {
    pub(crate) elem: ValueType,
    pub(crate) len: usize,
    pub(crate) bytes: &'a [u8],
}

impl<'a> Array<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw encoded elements.
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn elem_type_label(&self) -> String {
        if self.elem == ValueType::Array {
            match self.iter().next() {
                Some(Value::Array(inner)) => format!("array[{}]", inner.elem_type_label()),
                _ => "array".to_string(),
            }
        } else {
            self.elem.name().to_string()
        }
    }

    /// Element `i` of an array of fixed-size elements, in O(1); `None` past the end or for
    /// arrays of strings and arrays (use [`Array::iter`]).
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        let size = self.elem.fixed_size()?;
        let start = i.checked_mul(size)?;
        let bytes = self.bytes.get(start..start.checked_add(size)?)?;
        decode_fixed(self.elem, bytes)
    }

    /// Every element in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter { elem: self.elem, remaining: self.len, bytes: self.bytes }
    }

    /// The elements of a string array, borrowed; `None` for other element types.
    ///
    /// This is how a tokenizer reads a 262,144-entry vocabulary, so it walks the length-prefixed
    /// strings directly instead of going through [`Value`].
    pub fn strings(&self) -> Option<StrIter<'a>> {
        (self.elem == ValueType::String).then_some(StrIter { remaining: self.len, bytes: self.bytes })
    }

    /// Copies the elements into a typed vector when the element type is exactly `T`'s.
    pub fn to_vec<T: FromValue>(&self) -> Option<Vec<T>> {
        if self.elem != T::TYPE {
            return None;
        }
        let mut out = Vec::with_capacity(self.len);
        for v in self.iter() {
            out.push(T::from_value(v)?);
        }
        Some(out)
    }

    pub fn to_owned_array(&self) -> MetaArray {
        fn collect<'a, T: FromValue>(a: &Array<'a>) -> Vec<T> {
            a.iter().filter_map(T::from_value).collect()
        }
        match self.elem {
            ValueType::U8 => MetaArray::U8(self.bytes.to_vec()),
            ValueType::I8 => MetaArray::I8(collect(self)),
            ValueType::U16 => MetaArray::U16(collect(self)),
            ValueType::I16 => MetaArray::I16(collect(self)),
            ValueType::U32 => MetaArray::U32(collect(self)),
            ValueType::I32 => MetaArray::I32(collect(self)),
            ValueType::F32 => MetaArray::F32(collect(self)),
            ValueType::Bool => MetaArray::Bool(collect(self)),
            ValueType::U64 => MetaArray::U64(collect(self)),
            ValueType::I64 => MetaArray::I64(collect(self)),
            ValueType::F64 => MetaArray::F64(collect(self)),
            ValueType::String => MetaArray::String(collect(self)),
            ValueType::Array => MetaArray::Array(
                self.iter()
                    .filter_map(|v| match v {
                        Value::Array(a) => Some(a.to_owned_array()),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}

/// Iterator over the strings of a string [`Array`].
pub struct StrIter<'a> {
    remaining: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for StrIter<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let len = usize::try_from(le_u64(self.bytes)?).ok()?;
        let s = self.bytes.get(8..8usize.checked_add(len)?)?;
        self.bytes = &self.bytes[8 + len..];
        // SAFETY: an Array is only built by the reader over an element run it validated as
        // UTF-8 when it opened the file, and the bytes it borrows are immutable.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// Iterator over the elements of an [`Array`].
pub struct ArrayIter<'a> {
    elem: ValueType,
    remaining: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (value, used) = decode_one(self.elem, self.bytes)?;
        self.bytes = &self.bytes[used..];
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Decodes one fixed-size value from exactly its encoded bytes.
pub(crate) fn decode_fixed(ty: ValueType, b: &[u8]) -> Option<Value<'_>> {
    Some(match ty {
        ValueType::U8 => Value::U8(*b.first()?),
        ValueType::I8 => Value::I8(*b.first()? as i8),
        ValueType::Bool => match *b.first()? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => return None,
        },
        ValueType::U16 => Value::U16(u16::from_le_bytes(b.get(..2)?.try_into().ok()?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(b.get(..2)?.try_into().ok()?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(b.get(..4)?.try_into().ok()?)),
        ValueType::U64 => Value::U64(le_u64(b)?),
        ValueType::I64 => Value::I64(le_u64(b)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(le_u64(b)?)),
        ValueType::String | ValueType::Array => return None,
    })
}

/// Decodes one already-validated value at the start of `b`; returns it and the bytes it used.
fn decode_one(ty: ValueType, b: &[u8]) -> Option<(Value<'_>, usize)> {
    match ty {
        ValueType::String => {
            let len = usize::try_from(le_u64(b)?).ok()?;
            let bytes = b.get(8..8usize.checked_add(len)?)?;
            Some((Value::String(std::str::from_utf8(bytes).ok()?), 8 + len))
        }
        ValueType::Array => {
            let elem = ValueType::from_id(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))?;
            let len = usize::try_from(le_u64(b.get(4..)?)?).ok()?;
            let body = encoded_len(elem, len, b.get(12..)?)?;
            Some((Value::Array(Array { elem, len, bytes: b.get(12..12 + body)? }), 12 + body))
        }
        t => {
            let size = t.fixed_size()?;
            Some((decode_fixed(t, b.get(..size)?)?, size))
        }
    }
}

/// Bytes taken by `len` already-validated elements of type `elem` at the start of `b`.
fn encoded_len(elem: ValueType, len: usize, b: &[u8]) -> Option<usize> {
    if let Some(size) = elem.fixed_size() {
        return len.checked_mul(size);
    }
    let mut pos = 0usize;
    for _ in 0..len {
        let (_, used) = decode_one(elem, b.get(pos..)?)?;
        pos += used;
    }
    Some(pos)
}

/// Conversion from a borrowed value to a Rust type of exactly the same GGUF type.
pub trait FromValue: Sized {
    const TYPE: ValueType;
    fn from_value(v: Value<'_>) -> Option<Self>;
}

macro_rules! from_value {
    ($t:ty, $variant:ident) => {
        impl FromValue for $t {
            const TYPE: ValueType = ValueType::$variant;
            fn from_value(v: Value<'_>) -> Option<Self> {
                match v {
                    Value::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
from_value!(u8, U8);
from_value!(i8, I8);
from_value!(u16, U16);
from_value!(i16, I16);
from_value!(u32, U32);
from_value!(i32, I32);
from_value!(f32, F32);
from_value!(bool, Bool);
from_value!(u64, U64);
from_value!(i64, I64);
from_value!(f64, F64);

impl FromValue for String {
    const TYPE: ValueType = ValueType::String;
    fn from_value(v: Value<'_>) -> Option<Self> {
        match v {
            Value::String(s) => Some(s.to_string()),
            _ => None,
        }
    }
}

/// An owned metadata value, as the writer takes it.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An owned array: one typed vector per element type; nested arrays hold arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Appends the GGUF encoding of the value (without its type id) to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.push(*v as u8),
            MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(*v as u8),
            MetaValue::String(s) => encode_str(s, out),
            MetaValue::Array(a) => a.encode(out),
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// Equality of type and bits (NaN equals NaN of the same bits), as a round trip must keep.
    pub fn same_bits(&self, other: &MetaValue) -> bool {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        self.encode(&mut a);
        other.encode(&mut b);
        self.value_type() == other.value_type() && a == b
    }
}

pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl MetaArray {
    pub fn elem_type(&self) -> ValueType {
        match self {
            MetaArray::U8(_) => ValueType::U8,
            MetaArray::I8(_) => ValueType::I8,
            MetaArray::U16(_) => ValueType::U16,
            MetaArray::I16(_) => ValueType::I16,
            MetaArray::U32(_) => ValueType::U32,
            MetaArray::I32(_) => ValueType::I32,
            MetaArray::F32(_) => ValueType::F32,
            MetaArray::Bool(_) => ValueType::Bool,
            MetaArray::String(_) => ValueType::String,
            MetaArray::Array(_) => ValueType::Array,
            MetaArray::U64(_) => ValueType::U64,
            MetaArray::I64(_) => ValueType::I64,
            MetaArray::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nesting depth: 1 for an array of scalars or strings.
    pub fn depth(&self) -> usize {
        match self {
            MetaArray::Array(v) => 1 + v.iter().map(MetaArray::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.elem_type() as u32).to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        macro_rules! le {
            ($v:expr) => {
                for x in $v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            };
        }
        match self {
            MetaArray::U8(v) => out.extend_from_slice(v),
            MetaArray::I8(v) => le!(v),
            MetaArray::U16(v) => le!(v),
            MetaArray::I16(v) => le!(v),
            MetaArray::U32(v) => le!(v),
            MetaArray::I32(v) => le!(v),
            MetaArray::F32(v) => le!(v),
            MetaArray::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            MetaArray::String(v) => v.iter().for_each(|s| encode_str(s, out)),
            MetaArray::Array(v) => v.iter().for_each(|a| a.encode(out)),
            MetaArray::U64(v) => le!(v),
            MetaArray::I64(v) => le!(v),
            MetaArray::F64(v) => le!(v),
        }
    }
}
