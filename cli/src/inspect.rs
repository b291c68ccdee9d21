//! `engine inspect FILE`: header, metadata, tensor table and totals by type, as text or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use engine::gguf::{GgufFile, OpenOptions, Value};
use serde_json::{json, Value as Json};

use crate::common::human_bytes;

/// Array elements shown when arrays are summarised.
const SUMMARY_ITEMS: usize = 8;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file.
    file: PathBuf,
    /// Print arrays in full instead of their first elements.
    #[arg(long)]
    full: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Read the file into memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = GgufFile::open_with(&args.file, OpenOptions { no_mmap: args.no_mmap })?;
    let max_items = if args.full { None } else { Some(SUMMARY_ITEMS) };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        let doc = to_json(&file, max_items);
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &file, max_items)?;
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}

struct TypeTotal {
    count: usize,
    bytes: u64,
    elements: u64,
}

fn totals(file: &GgufFile) -> BTreeMap<&'static str, TypeTotal> {
    let mut m: BTreeMap<&'static str, TypeTotal> = BTreeMap::new();
    for t in file.tensors() {
        let e = m.entry(t.ty.name()).or_insert(TypeTotal { count: 0, bytes: 0, elements: 0 });
        e.count += 1;
        e.bytes += t.nbytes;
        e.elements += t.n_elements();
    }
    m
}


fn tensor_bytes(file: &GgufFile) -> u64 {
    file.tensors().iter().map(|t| t.nbytes).sum()
}

fn write_text(out: &mut impl Write, file: &GgufFile, max_items: Option<usize>) -> anyhow::Result<()> {
    writeln!(out, "file:        {}", file.path().display())?;
    writeln!(out, "size:        {} bytes ({})", file.file_len(), human_bytes(file.file_len()))?;
    writeln!(out, "gguf:        version {}, alignment {}, {} metadata keys, {} tensors",
        file.version(), file.alignment(), file.kv_count(), file.tensors().len())?;
    writeln!(out, "tensor data: offset {}, {} bytes ({} in tensors, {} padding)",
        file.data_offset(), file.data_section_len(), tensor_bytes(file),
        file.data_section_len().saturating_sub(tensor_bytes(file)))?;

    writeln!(out, "\nmetadata ({} keys):", file.kv_count())?;
    let key_w = file.keys().map(str::len).max().unwrap_or(0);
    let kvs: Vec<(&str, Value<'_>)> = file.metadata().collect();
    let type_w = kvs.iter().map(|(_, v)| type_label(v).len()).max().unwrap_or(0);
    for (key, value) in &kvs {
        writeln!(out, "  {key:<key_w$}  {:<type_w$}  {}", type_label(value), value.render(max_items))?;
    }

    writeln!(out, "\ntensors ({}):", file.tensors().len())?;
    let name_w = file.tensors().iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
    writeln!(out, "  {:>4}  {:<name_w$}  {:<7}  {:<20}  {:>12}  {:>12}", "#", "name", "type", "shape", "bytes", "offset")?;
    for (i, t) in file.tensors().iter().enumerate() {
        let shape = t.dims().iter().map(u64::to_string).collect::<Vec<_>>().join(" x ");
        writeln!(out, "  {i:>4}  {:<name_w$}  {:<7}  {shape:<20}  {:>12}  {:>12}", t.name, t.ty.name(), t.nbytes, t.offset)?;
    }

    writeln!(out, "\ntotals by type:")?;
    for (name, tot) in totals(file) {
        writeln!(out, "  {name:<7}  {:>4} tensors  {:>12} elements  {:>12} bytes  ({})",
            tot.count, tot.elements, tot.bytes, human_bytes(tot.bytes))?;
    }
    let n: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    writeln!(out, "  {:<7}  {:>4} tensors  {:>12} elements  {:>12} bytes  ({})",
        "total", file.tensors().len(), n, tensor_bytes(file), human_bytes(tensor_bytes(file)))?;
    Ok(())
}

fn type_label(v: &Value<'_>) -> String {
    match v {
        Value::Array(a) => format!("{} ({})", v.type_label(), a.len()),
        _ => v.type_label(),
    }
}

fn value_json(v: &Value<'_>, max_items: Option<usize>) -> Json {
    match *v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        // JSON has no NaN or infinity: those become strings.
        Value::F32(x) if x.is_finite() => json!(x),
        Value::F64(x) if x.is_finite() => json!(x),
        Value::F32(x) => json!(format!("{x}")),
        Value::F64(x) => json!(format!("{x}")),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::Array(a) => {
            let shown = max_items.unwrap_or(usize::MAX);
            Json::Array(a.iter().take(shown).map(|e| value_json(&e, max_items)).collect())
        }
    }
}

fn to_json(file: &GgufFile, max_items: Option<usize>) -> Json {
    let metadata: Vec<Json> = file
        .metadata()
        .map(|(key, v)| {
            let mut o = json!({ "key": key, "type": v.type_label(), "value": value_json(&v, max_items) });
            if let Value::Array(a) = v {
                o["len"] = json!(a.len());
                o["truncated"] = json!(max_items.is_some_and(|m| a.len() > m));
            }
            o
        })
        .collect();
    let tensors: Vec<Json> = file
        .tensors()
        .iter()
        .map(|t| json!({ "name": t.name, "type": t.ty.name(), "shape": t.dims(), "bytes": t.nbytes, "offset": t.offset }))
        .collect();
    let by_type: serde_json::Map<String, Json> = totals(file)
        .into_iter()
        .map(|(k, t)| (k.to_string(), json!({ "tensors": t.count, "elements": t.elements, "bytes": t.bytes })))
        .collect();
    json!({
        "path": file.path().display().to_string(),
        "file_size": file.file_len(),
        "version": file.version(),
        "alignment": file.alignment(),
        "data_offset": file.data_offset(),
        "data_size": file.data_section_len(),
        "tensor_bytes": tensor_bytes(file),
        "metadata": metadata,
        "tensors": tensors,
        "totals": by_type,
    })
}
