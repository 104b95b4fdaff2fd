//! Reader for the legacy (pre-zip) torch serialisation format.
//!
//! `torch.save` before PyTorch 1.6, or with `_use_new_zipfile_serialization=False`, writes a
//! plain sequence:
//!
//! 1. a pickled magic number (`0x1950a86a20f9469cfc6c`),
//! 2. a pickled protocol version (1001),
//! 3. pickled system information (a dict; `little_endian` must be true),
//! 4. the pickled object itself — here a state dict, whose tensors are
//!    `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose
//!    storages are persistent ids `('storage', <StorageClass>, key, location, numel, None)`,
//! 5. a pickled list of the storage keys,
//! 6. each storage in that order: an 8-byte little-endian element count, then its raw
//!    little-endian data.
//!
//! Tensors may be strided views of their storage (the EfficientNet-Lite0 file keeps its
//! converted TensorFlow layouts this way); they are gathered into contiguous tensors.
//! The pickle machine is `candle_core::pickle::Stack`.

use super::WeightError;
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

/// The pickled magic number that opens a legacy file (protocol 2, `LONG1` with 10 bytes).
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The protocol version the format carries.
const PROTOCOL_VERSION: i64 = 1001;

/// A storage's element type and its size in the file.
#[derive(Debug, Clone, Copy)]
struct StorageType {
    dtype: DType,
    /// Bytes per element on disk.
    disk_size: usize,
    /// 32-bit ints are widened to i64 (candle has no i32 tensors).
    widen_i32: bool,
}

fn storage_type(class: &str) -> Option<StorageType> {
    let (dtype, disk_size, widen_i32) = match class {
        "FloatStorage" => (DType::F32, 4, false),
        "DoubleStorage" => (DType::F64, 8, false),
        "HalfStorage" => (DType::F16, 2, false),
        "BFloat16Storage" => (DType::BF16, 2, false),
        "LongStorage" => (DType::I64, 8, false),
        "IntStorage" => (DType::I64, 4, true),
        "ByteStorage" | "BoolStorage" => (DType::U8, 1, false),
        _ => return None,
    };
    Some(StorageType {
        dtype,
        disk_size,
        widen_i32,
    })
}

/// A tensor's place in its storage, as the pickle describes it.
#[derive(Debug)]
struct TensorRef {
    name: String,
    storage_key: String,
    storage_class: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn format_err(path: &Path, message: impl Into<String>) -> WeightError {
    WeightError::Format {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Reads every tensor of a legacy-format `.pth` file.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_bytes(path, &bytes)
}

/// Reads every tensor of a legacy-format `.pth` already in memory (`path` names it in errors).
pub fn read_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>, WeightError> {
    if !bytes.starts_with(&MAGIC_PICKLE) {
        return Err(format_err(
            path,
            "legacy .pth: the magic number is missing (not a torch pickle file)",
        ));
    }
    let mut cur = Cursor::new(bytes);
    cur.set_position(MAGIC_PICKLE.len() as u64);

    let protocol = unpickle(path, &mut cur, "protocol version")?;
    match protocol.int_or_long() {
        Ok(PROTOCOL_VERSION) => {}
        Ok(v) => {
            return Err(format_err(
                path,
                format!("legacy .pth: protocol version {v}, expected 1001"),
            ))
        }
        Err(o) => {
            return Err(format_err(
                path,
                format!("legacy .pth: bad protocol version {o:?}"),
            ))
        }
    }
    let sys_info = unpickle(path, &mut cur, "system info")?;
    check_sys_info(path, sys_info)?;

    let root = unpickle(path, &mut cur, "state dict")?;
    let refs = tensor_refs(path, root)?;

    let keys = match unpickle(path, &mut cur, "storage keys")? {
        Object::List(keys) | Object::Tuple(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| format_err(path, format!("storage key {o:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(format_err(
                path,
                format!("storage keys: expected a list, got {other:?}"),
            ))
        }
    };

    let classes: HashMap<&str, &str> = refs
        .iter()
        .map(|r| (r.storage_key.as_str(), r.storage_class.as_str()))
        .collect();
    let mut storages: HashMap<String, (StorageType, &[u8])> = HashMap::new();
    let mut pos = cur.position() as usize;
    for key in &keys {
        let class = classes.get(key.as_str()).copied().unwrap_or("FloatStorage");
        let st = storage_type(class)
            .ok_or_else(|| format_err(path, format!("storage {key}: unsupported type {class}")))?;
        let count_bytes = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| format_err(path, format!("storage {key}: file ends before its size")))?;
        let mut count = [0u8; 8];
        count.copy_from_slice(count_bytes);
        let count = u64::from_le_bytes(count) as usize;
        pos += 8;
        let len = count
            .checked_mul(st.disk_size)
            .ok_or_else(|| format_err(path, format!("storage {key}: size {count} overflows")))?;
        let data = bytes.get(pos..pos + len).ok_or_else(|| {
            format_err(
                path,
                format!("storage {key}: file ends inside its {count} elements"),
            )
        })?;
        pos += len;
        storages.insert(key.clone(), (st, data));
    }

    refs.into_iter()
        .map(|r| {
            let (st, data) = storages.get(&r.storage_key).ok_or_else(|| {
                format_err(
                    path,
                    format!(
                        "tensor `{}`: storage {} is not in the file",
                        r.name, r.storage_key
                    ),
                )
            })?;
            let t = gather(path, &r, *st, data)?;
            Ok((r.name, t))
        })
        .collect()
}

fn unpickle(path: &Path, cur: &mut Cursor<&[u8]>, what: &str) -> Result<Object, WeightError> {
    let mut stack = Stack::empty();
    stack
        .read_loop(cur)
        .and_then(|_| stack.finalize())
        .map_err(|e| format_err(path, format!("legacy .pth: unpickling the {what}: {e}")))
}

fn check_sys_info(path: &Path, info: Object) -> Result<(), WeightError> {
    if let Object::Dict(items) = info {
        for (k, v) in items {
            if k == Object::Unicode("little_endian".into()) && v == Object::Bool(false) {
                return Err(format_err(
                    path,
                    "legacy .pth: big-endian files are not supported",
                ));
            }
        }
    }
    Ok(())
}

/// The state dict's tensors, in file order. A dict holding a `state_dict` entry is unwrapped;
/// entries that are not tensors (such as `_metadata`) are skipped.
fn tensor_refs(path: &Path, root: Object) -> Result<Vec<TensorRef>, WeightError> {
    let Object::Dict(mut items) = root else {
        return Err(format_err(
            path,
            "legacy .pth: the pickled object is not a dict",
        ));
    };
    let inner = items.iter().position(|(k, v)| {
        matches!(k, Object::Unicode(s) if s == "state_dict") && matches!(v, Object::Dict(_))
    });
    if let Some(i) = inner {
        if let (_, Object::Dict(d)) = items.swap_remove(i) {
            items = d;
        }
    }
    let mut refs = Vec::new();
    for (k, v) in items {
        let Object::Unicode(name) = k else { continue };
        match tensor_ref(&name, v) {
            Ok(Some(r)) => refs.push(r),
            Ok(None) => tracing::debug!(entry = %name, "legacy .pth: skipping a non-tensor entry"),
            Err(msg) => return Err(format_err(path, format!("tensor `{name}`: {msg}"))),
        }
    }
    Ok(refs)
}

fn class_of(obj: &Object) -> Option<(&str, &str)> {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => Some((module_name.as_str(), class_name.as_str())),
        _ => None,
    }
}

fn tensor_ref(name: &str, value: Object) -> Result<Option<TensorRef>, String> {
    let Object::Reduce { callable, args } = value else {
        return Ok(None);
    };
    let (callable, args) = match class_of(&callable) {
        Some(("torch._utils", "_rebuild_parameter")) => {
            let mut a = args.tuple().map_err(|o| format!("parameter args {o:?}"))?;
            if a.is_empty() {
                return Err("empty parameter args".into());
            }
            match a.swap_remove(0) {
                Object::Reduce { callable, args } => (callable, args),
                _ => return Ok(None),
            }
        }
        _ => (callable, args),
    };
    if class_of(&callable) != Some(("torch._utils", "_rebuild_tensor_v2")) {
        return Ok(None);
    }
    let mut a = args.tuple().map_err(|o| format!("rebuild args {o:?}"))?;
    if a.len() < 4 {
        return Err(format!("_rebuild_tensor_v2 with {} arguments", a.len()));
    }
    a.truncate(4);
    let stride = usizes(a.pop(), "stride")?;
    let shape = usizes(a.pop(), "size")?;
    let offset = a
        .pop()
        .and_then(|o| o.int_or_long().ok())
        .filter(|&v| v >= 0)
        .ok_or("bad storage offset")? as usize;
    let storage = a
        .pop()
        .and_then(|o| o.persistent_load().ok())
        .and_then(|o| o.tuple().ok())
        .ok_or("storage is not a persistent id tuple")?;
    if storage.len() < 5 || storage[0] != Object::Unicode("storage".into()) {
        return Err(format!("unexpected storage id {storage:?}"));
    }
    if storage.len() > 5 && storage[5] != Object::None {
        return Err("storage views are not supported".into());
    }
    let (_, storage_class) = class_of(&storage[1]).ok_or("storage class missing")?;
    let Object::Unicode(storage_key) = &storage[2] else {
        return Err("storage key is not a string".into());
    };
    if shape.len() != stride.len() {
        return Err(format!(
            "size {shape:?} and stride {stride:?} differ in rank"
        ));
    }
    Ok(Some(TensorRef {
        name: name.to_owned(),
        storage_key: storage_key.clone(),
        storage_class: storage_class.to_owned(),
        offset,
        shape,
        stride,
    }))
}

fn usizes(obj: Option<Object>, what: &str) -> Result<Vec<usize>, String> {
    match obj {
        Some(Object::Tuple(items)) => items
            .into_iter()
            .map(|o| match o.int_or_long() {
                Ok(v) if v >= 0 => Ok(v as usize),
                other => Err(format!("bad {what} entry {other:?}")),
            })
            .collect(),
        other => Err(format!("bad {what} {other:?}")),
    }
}

/// Copies a strided view of a storage into a contiguous CPU tensor.
fn gather(path: &Path, r: &TensorRef, st: StorageType, data: &[u8]) -> Result<Tensor, WeightError> {
    let numel: usize = r.shape.iter().product();
    let storage_len = data.len() / st.disk_size;
    if numel > 0 {
        let last = r.offset
            + r.shape
                .iter()
                .zip(&r.stride)
                .map(|(&n, &s)| (n - 1) * s)
                .sum::<usize>();
        if last >= storage_len {
            return Err(format_err(
                path,
                format!(
                    "tensor `{}`: offset {} size {:?} stride {:?} reaches past its storage of {} elements",
                    r.name, r.offset, r.shape, r.stride, storage_len
                ),
            ));
        }
    }
    let es = st.disk_size;
    let mut out = Vec::with_capacity(numel * es);
    let rank = r.shape.len();
    let mut index = vec![0usize; rank];
    for _ in 0..numel {
        let src = r.offset
            + index
                .iter()
                .zip(&r.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&data[src * es..(src + 1) * es]);
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < r.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    if st.widen_i32 {
        out = out
            .chunks_exact(4)
            .flat_map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
    }
    Tensor::from_raw_buffer(&out, st.dtype, &r.shape, &Device::Cpu).map_err(|source| {
        WeightError::Tensor {
            path: path.to_owned(),
            name: r.name.clone(),
            source: Box::new(source),
        }
    })
}
