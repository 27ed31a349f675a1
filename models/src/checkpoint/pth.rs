//! PyTorch `.pth` files without PyTorch: a small pickle VM plus the two
//! container layouts torch writes.
//!
//! * **zip** (torch >= 1.6 default): `<dir>/data.pkl` holds the object pickle,
//!   each storage lives in `<dir>/data/<key>` as raw little-endian bytes.
//! * **legacy** (pre-1.6, `_use_new_zipfile_serialization=False`): five
//!   consecutive pickles (magic number, protocol version, sys info, the
//!   object, the sorted list of storage keys) followed, for each key in that
//!   order, by a little-endian u64 element count and the raw data.
//!
//! In both, a tensor is `torch._utils._rebuild_tensor_v2(storage, offset,
//! size, stride, requires_grad, hooks)` and a storage is a persistent id
//! `('storage', torch.FloatStorage, key, location, numel)`. The location
//! (`cuda:0`, `cpu`) is ignored: everything is read onto the CPU.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use candle_core::{DType, Device, Tensor};

/// A pickle value, as far as torch checkpoints need.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in an i64 (e.g. the legacy magic number), little-endian two's complement.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered (OrderedDict and dict alike).
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    /// A reduce/newobj call we do not interpret.
    Call {
        callable: Box<Value>,
        args: Box<Value>,
    },
    /// A storage reference from a persistent id; `offset` (elements) is
    /// non-zero for a legacy storage view into a larger root storage.
    Storage {
        dtype: StorageType,
        key: String,
        numel: usize,
        offset: usize,
    },
    /// A tensor view of a storage.
    Tensor(TensorRef),
    /// Pickle MARK on the stack.
    Mark,
}

/// Element types of torch storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    U8,
    Bool,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" | "float32" => StorageType::F32,
            "HalfStorage" | "float16" => StorageType::F16,
            "BFloat16Storage" | "bfloat16" => StorageType::BF16,
            "DoubleStorage" | "float64" => StorageType::F64,
            "LongStorage" | "int64" => StorageType::I64,
            "IntStorage" | "int32" => StorageType::I32,
            "ShortStorage" | "int16" => StorageType::I16,
            "ByteStorage" | "uint8" => StorageType::U8,
            "BoolStorage" | "bool" => StorageType::Bool,
            _ => return None,
        })
    }

    pub(crate) fn element_size(self) -> usize {
        match self {
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::U8 | StorageType::Bool => 1,
        }
    }

    fn dtype(self) -> DType {
        match self {
            StorageType::F32 => DType::F32,
            StorageType::F16 => DType::F16,
            StorageType::BF16 => DType::BF16,
            StorageType::F64 => DType::F64,
            StorageType::I64 => DType::I64,
            StorageType::I32 => DType::I32,
            StorageType::I16 => DType::I16,
            StorageType::U8 | StorageType::Bool => DType::U8,
        }
    }
}

/// A tensor as described by `_rebuild_tensor_v2`: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub dtype: StorageType,
    pub key: String,
    pub storage_numel: usize,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Deepest container nesting accepted. Torch state dicts nest about 6 levels;
/// the cap keeps a hostile file from overflowing the stack (the values are
/// traversed and dropped recursively).
const MAX_NESTING: usize = 100;

/// Nesting depth of `v`, counting at most `cap + 1` levels.
fn nesting(v: &Value, cap: usize) -> usize {
    if cap == 0 {
        return 1;
    }
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Tuple(items) | Value::List(items) => Box::new(items.iter()),
        Value::Dict(d) => Box::new(d.iter().flat_map(|(k, v)| [k, v])),
        Value::Call { callable, args } => Box::new([callable.as_ref(), args.as_ref()].into_iter()),
        _ => return 0,
    };
    1 + children.map(|c| nesting(c, cap - 1)).max().unwrap_or(0)
}

/// A pickle-level failure; the caller adds the file name.
pub(crate) type PickleResult<T> = std::result::Result<T, String>;

/// Run the pickle VM over `data` from `*pos` up to and including STOP.
/// `*pos` is left just after the STOP opcode.
pub(crate) fn unpickle(data: &[u8], pos: &mut usize) -> PickleResult<Value> {
    let mut vm = Vm {
        data,
        pos: *pos,
        stack: Vec::new(),
        memo: HashMap::new(),
        live_slot: HashMap::new(),
        live_ids: BTreeMap::new(),
    };
    let value = vm.run()?;
    *pos = vm.pos;
    Ok(value)
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    /// Python's memo holds references, ours copies. A memoised object still on
    /// the stack may yet be filled (SETITEMS, APPENDS after BINPUT), so while it
    /// is there a memo read copies the stack slot, and popping the slot stores
    /// its final value in the memo. Memo index -> stack slot, and slot -> indices.
    live_slot: HashMap<u32, usize>,
    live_ids: BTreeMap<usize, Vec<u32>>,
}

impl<'a> Vm<'a> {
    fn take(&mut self, n: usize) -> PickleResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated pickle: need {n} bytes at offset {} but the data ends at {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> PickleResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PickleResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PickleResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> PickleResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated pickle: unterminated line at offset {}", self.pos))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> PickleResult<Value> {
        let at = self.pos;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| format!("invalid utf-8 string at offset {at}"))
    }

    /// Refuse a value about to be placed inside a container when it is already
    /// nested too deeply.
    fn check_nesting(&self, v: &Value, at: usize) -> PickleResult<()> {
        if nesting(v, MAX_NESTING) >= MAX_NESTING {
            return Err(format!(
                "pickle nests containers more than {MAX_NESTING} levels deep at offset {at}"
            ));
        }
        Ok(())
    }

    fn check_all(&self, items: &[Value], at: usize) -> PickleResult<()> {
        items.iter().try_for_each(|v| self.check_nesting(v, at))
    }

    fn pop(&mut self) -> PickleResult<Value> {
        let v = self
            .stack
            .pop()
            .ok_or_else(|| format!("pickle stack underflow at offset {}", self.pos))?;
        self.retire(self.stack.len(), std::slice::from_ref(&v));
        Ok(v)
    }

    /// Slots `from..` were popped with `values`: their memo entries become final.
    fn retire(&mut self, from: usize, values: &[Value]) {
        if self.live_ids.range(from..).next().is_none() {
            return;
        }
        for (slot, ids) in self.live_ids.split_off(&from) {
            for id in ids {
                self.live_slot.remove(&id);
                if let Some(v) = values.get(slot - from) {
                    self.memo.insert(id, v.clone());
                }
            }
        }
    }

    fn top(&mut self) -> PickleResult<&mut Value> {
        let pos = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| format!("pickle stack underflow at offset {pos}"))
    }

    /// Pop everything above the topmost MARK (and the MARK).
    fn pop_mark(&mut self) -> PickleResult<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| format!("pickle MARK missing at offset {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.retire(at + 1, &items);
        self.pop()?; // the MARK
        Ok(items)
    }

    fn memo_get(&self, idx: u32) -> PickleResult<Value> {
        if let Some(v) = self.live_slot.get(&idx).and_then(|&s| self.stack.get(s)) {
            return Ok(v.clone());
        }
        self.memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("pickle memo entry {idx} missing at offset {}", self.pos))
    }

    fn memo_put(&mut self, idx: u32) -> PickleResult<()> {
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        let slot = self.stack.len() - 1;
        if let Some(old) = self.live_slot.insert(idx, slot) {
            if let Some(ids) = self.live_ids.get_mut(&old) {
                ids.retain(|&i| i != idx);
            }
        }
        self.live_ids.entry(slot).or_default().push(idx);
        Ok(())
    }

    fn run(&mut self) -> PickleResult<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unsupported pickle protocol {p} at offset {at}"));
                    }
                }
                0x95 => {
                    // FRAME: an 8-byte length, the frame content follows inline.
                    self.take(8)?;
                }
                b'.' => return self.pop(), // STOP
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    // LONG1
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(long_from_le(b));
                }
                0x8b => {
                    // LONG4
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(long_from_le(b));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    // SHORT_BINUNICODE
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    // SHORT_BINSTRING / SHORT_BINBYTES
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(bytes_or_str(op, b));
                }
                b'T' | b'B' => {
                    // BINSTRING / BINBYTES
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(bytes_or_str(op, b));
                }
                b'c' => {
                    // GLOBAL
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.stack.push(Value::Global { module, name })
                        }
                        _ => return Err(format!("STACK_GLOBAL without strings at offset {at}")),
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    // MEMOIZE
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.check_all(&items, at)?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85 => {
                    let a = self.pop()?;
                    self.check_nesting(&a, at)?;
                    self.stack.push(Value::Tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.check_nesting(&a, at)?;
                    self.check_nesting(&b, at)?;
                    self.stack.push(Value::Tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    let items = vec![a, b, c];
                    self.check_all(&items, at)?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.check_all(&items, at)?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.check_all(&items, at)?;
                    let dict = pairs(items, at)?;
                    self.stack.push(Value::Dict(dict));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.check_nesting(&v, at)?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(format!("APPEND to a non-list at offset {at}")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.check_all(&items, at)?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(format!("APPENDS to a non-list at offset {at}")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.check_nesting(&k, at)?;
                    self.check_nesting(&v, at)?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(format!("SETITEM on a non-dict at offset {at}")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.check_all(&items, at)?;
                    let new = pairs(items, at)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(new),
                        _ => return Err(format!("SETITEMS on a non-dict at offset {at}")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.check_nesting(&args, at)?;
                    let v = reduce(callable, args).map_err(|e| format!("{e} at offset {at}"))?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.check_nesting(&args, at)?;
                    let v = reduce(cls, args).map_err(|e| format!("{e} at offset {at}"))?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: set state on an object. Dicts (OrderedDict._metadata)
                    // and opaque objects keep what they have.
                    let _state = self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid).map_err(|e| format!("{e} at offset {at}"))?;
                    self.stack.push(v);
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at offset {at}"
                    ))
                }
            }
        }
    }
}

fn bytes_or_str(op: u8, b: Vec<u8>) -> Value {
    // BINSTRING/SHORT_BINSTRING are Python 2 `str`; torch writes ASCII there.
    if op == b'U' || op == b'T' {
        match String::from_utf8(b) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        }
    } else {
        Value::Bytes(b)
    }
}

fn long_from_le(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let negative = b[b.len() - 1] & 0x80 != 0;
        let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b.to_vec())
    }
}

fn pairs(items: Vec<Value>, at: usize) -> PickleResult<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(format!("odd number of dict items at offset {at}"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn as_usize(v: &Value, what: &str) -> PickleResult<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!("{what} is not a non-negative integer: {other:?}")),
    }
}

fn usize_tuple(v: &Value, what: &str) -> PickleResult<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            items.iter().map(|i| as_usize(i, what)).collect()
        }
        other => Err(format!("{what} is not a tuple: {other:?}")),
    }
}

fn persistent_load(pid: Value) -> PickleResult<Value> {
    let items = match pid {
        Value::Tuple(items) => items,
        other => return Err(format!("unsupported persistent id {other:?}")),
    };
    match items.first() {
        Some(Value::Str(tag)) if tag == "storage" => {}
        _ => return Err(format!("unsupported persistent id {items:?}")),
    }
    if items.len() < 5 {
        return Err(format!(
            "storage persistent id has {} fields, expected 5",
            items.len()
        ));
    }
    let dtype = match &items[1] {
        Value::Global { name, .. } => StorageType::from_name(name)
            .ok_or_else(|| format!("unsupported storage type {name}"))?,
        other => return Err(format!("storage type is not a class: {other:?}")),
    };
    let key = match &items[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is not a string: {other:?}")),
    };
    // items[3] is the location (`cuda:0`, `cpu`): ignored on purpose.
    let numel = as_usize(&items[4], "storage size")?;
    // Legacy files add view metadata `(view_key, offset, view_size)` when the
    // storage is a view of the root storage `key`.
    let offset = match items.get(5) {
        Some(Value::Tuple(view)) if view.len() == 3 => as_usize(&view[1], "storage view offset")?,
        Some(Value::None) | None => 0,
        Some(other) => return Err(format!("unsupported storage view metadata {other:?}")),
    };
    Ok(Value::Storage {
        dtype,
        key,
        numel,
        offset,
    })
}

fn reduce(callable: Value, args: Value) -> PickleResult<Value> {
    let (module, name) = match &callable {
        Value::Global { module, name } => (module.as_str(), name.as_str()),
        _ => {
            return Ok(Value::Call {
                callable: Box::new(callable),
                args: Box::new(args),
            })
        }
    };
    let items = match &args {
        Value::Tuple(items) => items.as_slice(),
        _ => &[],
    };
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if items.len() < 4 {
                return Err(format!("{name} called with {} arguments", items.len()));
            }
            let (dtype, key, storage_numel, view_offset) = match &items[0] {
                Value::Storage {
                    dtype,
                    key,
                    numel,
                    offset,
                } => (*dtype, key.clone(), *numel, *offset),
                other => return Err(format!("{name} on a non-storage {other:?}")),
            };
            let offset = view_offset + as_usize(&items[1], "storage offset")?;
            let size = usize_tuple(&items[2], "tensor size")?;
            let stride = usize_tuple(&items[3], "tensor stride")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "tensor size {size:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(TensorRef {
                dtype,
                key,
                storage_numel,
                offset,
                size,
                stride,
            }))
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => items
            .first()
            .cloned()
            .ok_or_else(|| format!("{name} called without arguments")),
        ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
            Ok(Value::Dict(Vec::new()))
        }
        _ => Ok(Value::Call {
            callable: Box::new(callable),
            args: Box::new(args),
        }),
    }
}

/// Copy the (possibly strided, offset) view out of a storage's raw bytes into
/// a contiguous CPU tensor.
pub(crate) fn materialise(t: &TensorRef, storage: &[u8]) -> PickleResult<Tensor> {
    let es = t.dtype.element_size();
    let numel: usize = t.size.iter().product();
    if storage.len() < t.storage_numel * es {
        return Err(format!(
            "storage {} holds {} bytes, expected {} elements of {es} bytes",
            t.key,
            storage.len(),
            t.storage_numel
        ));
    }
    // Highest element index the view touches must lie inside the storage.
    let last = t.offset
        + t.size
            .iter()
            .zip(&t.stride)
            .map(|(&n, &s)| n.saturating_sub(1) * s)
            .sum::<usize>();
    if numel > 0 && last >= t.storage_numel {
        return Err(format!(
            "tensor view (offset {}, size {:?}, stride {:?}) reaches past storage {} of {} elements",
            t.offset, t.size, t.stride, t.key, t.storage_numel
        ));
    }
    let contiguous_stride: Vec<usize> = {
        let mut s = vec![1usize; t.size.len()];
        for i in (0..t.size.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * t.size[i + 1];
        }
        s
    };
    let bytes: Vec<u8> = if numel == 0 {
        Vec::new()
    } else if t.stride == contiguous_stride || numel == 1 {
        storage[t.offset * es..(t.offset + numel) * es].to_vec()
    } else {
        let mut out = Vec::with_capacity(numel * es);
        let mut idx = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    };
    let tensor = Tensor::from_raw_buffer(&bytes, t.dtype.dtype(), &t.size, &Device::Cpu)
        .map_err(|e| format!("cannot build tensor from storage {}: {e}", t.key))?;
    Ok(tensor)
}

/// Everything a `.pth` file holds: the top-level object and its tensors
/// materialised by storage key.
pub(crate) struct PthContents {
    pub root: Value,
    pub storages: HashMap<String, Vec<u8>>,
}

/// Read a legacy (pre-1.6) checkpoint from its uncompressed bytes.
pub(crate) fn read_legacy(data: &[u8]) -> PickleResult<PthContents> {
    let mut pos = 0usize;
    let magic = unpickle(data, &mut pos).map_err(|e| format!("magic number: {e}"))?;
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    if magic != Value::BigInt(MAGIC.to_vec()) {
        return Err(format!(
            "not a legacy torch file: magic number is {magic:?}"
        ));
    }
    let protocol = unpickle(data, &mut pos).map_err(|e| format!("protocol version: {e}"))?;
    if protocol != Value::Int(1001) {
        return Err(format!("unsupported legacy protocol version {protocol:?}"));
    }
    let _sys_info = unpickle(data, &mut pos).map_err(|e| format!("sys info: {e}"))?;
    let root = unpickle(data, &mut pos).map_err(|e| format!("object pickle: {e}"))?;
    let keys = unpickle(data, &mut pos).map_err(|e| format!("storage key list: {e}"))?;
    let keys = match keys {
        Value::List(k) => k,
        other => return Err(format!("storage key list is not a list: {other:?}")),
    };
    // Element sizes come from the tensors that reference each storage.
    let mut sizes: HashMap<String, usize> = HashMap::new();
    collect_storage_types(&root, &mut sizes);
    let mut storages = HashMap::new();
    for key in keys {
        let key = match key {
            Value::Str(s) => s,
            other => return Err(format!("storage key is not a string: {other:?}")),
        };
        let es = *sizes
            .get(&key)
            .ok_or_else(|| format!("storage {key} is listed but no tensor uses it"))?;
        if data.len() < pos + 8 {
            return Err(format!(
                "truncated file: storage {key} header at offset {pos} past the end ({} bytes)",
                data.len()
            ));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&data[pos..pos + 8]);
        let numel = u64::from_le_bytes(n) as usize;
        pos += 8;
        let len = numel
            .checked_mul(es)
            .filter(|&l| pos + l <= data.len())
            .ok_or_else(|| {
                format!(
                    "truncated file: storage {key} needs {numel} elements of {es} bytes at offset {pos}, the file has {} bytes",
                    data.len()
                )
            })?;
        storages.insert(key, data[pos..pos + len].to_vec());
        pos += len;
    }
    Ok(PthContents { root, storages })
}

fn collect_storage_types(v: &Value, out: &mut HashMap<String, usize>) {
    match v {
        Value::Tensor(t) => {
            out.insert(t.key.clone(), t.dtype.element_size());
        }
        Value::Tuple(items) | Value::List(items) => {
            items.iter().for_each(|i| collect_storage_types(i, out))
        }
        Value::Dict(d) => d.iter().for_each(|(k, v)| {
            collect_storage_types(k, out);
            collect_storage_types(v, out)
        }),
        Value::Call { callable, args } => {
            collect_storage_types(callable, out);
            collect_storage_types(args, out)
        }
        _ => {}
    }
}

/// Read a zip-format checkpoint.
pub(crate) fn read_zip(data: &[u8]) -> PickleResult<PthContents> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pkl_name = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).map(str::to_owned))
        .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or("zip archive has no data.pkl: not a torch checkpoint")?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        if s.trim() == "big" {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let pkl = read_entry(&mut archive, &pkl_name)?;
    let mut pos = 0;
    let root = unpickle(&pkl, &mut pos).map_err(|e| format!("{pkl_name}: {e}"))?;
    let mut sizes = HashMap::new();
    collect_storage_types(&root, &mut sizes);
    let mut keys: Vec<&String> = sizes.keys().collect();
    keys.sort();
    let mut storages = HashMap::new();
    for key in keys {
        let name = format!("{prefix}data/{key}");
        storages.insert(key.clone(), read_entry(&mut archive, &name)?);
    }
    Ok(PthContents { root, storages })
}

fn read_entry(
    archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
) -> PickleResult<Vec<u8>> {
    let mut f = archive
        .by_name(name)
        .map_err(|e| format!("zip entry {name}: {e}"))?;
    let mut buf = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut buf)
        .map_err(|e| format!("zip entry {name}: {e}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> PickleResult<Value> {
        let mut pos = 0;
        unpickle(bytes, &mut pos)
    }

    #[test]
    fn scalars_and_strings() {
        // PROTO 2, MARK, BININT1 7, BININT2 300, BININT -2, LONG1 (2 bytes) 1000,
        // NONE, NEWTRUE, NEWFALSE, SHORT_BINSTRING "ab", BINUNICODE "é", TUPLE, STOP
        let mut p = vec![0x80, 2, b'(', b'K', 7, b'M', 0x2c, 0x01, b'J'];
        p.extend_from_slice(&(-2i32).to_le_bytes());
        p.extend_from_slice(&[0x8a, 2, 0xe8, 0x03, b'N', 0x88, 0x89, b'U', 2, b'a', b'b']);
        p.extend_from_slice(&[b'X', 2, 0, 0, 0, 0xc3, 0xa9, b't', b'.']);
        assert_eq!(
            run(&p).unwrap(),
            Value::Tuple(vec![
                Value::Int(7),
                Value::Int(300),
                Value::Int(-2),
                Value::Int(1000),
                Value::None,
                Value::Bool(true),
                Value::Bool(false),
                Value::Str("ab".into()),
                Value::Str("é".into()),
            ])
        );
    }

    #[test]
    fn binfloat_is_big_endian() {
        let mut p = vec![0x80, 2, b'G'];
        p.extend_from_slice(&0.61f64.to_be_bytes());
        p.push(b'.');
        assert_eq!(run(&p).unwrap(), Value::Float(0.61));
    }

    #[test]
    fn negative_long1_sign_extends() {
        assert_eq!(run(&[0x8a, 1, 0xff, b'.']).unwrap(), Value::Int(-1));
    }

    #[test]
    fn dict_list_memo_and_tuples() {
        // {'a': [1, 2], 'b': (1,), 'c': (1, 2), 'd': (1, 2, 3)} with a memoised key reused.
        let p = [
            0x80, 2, b'}', b'q', 0, b'(', b'U', 1, b'a', b'q', 1, b']', b'(', b'K', 1, b'K', 2,
            b'e', b'U', 1, b'b', b'K', 1, 0x85, b'U', 1, b'c', b'K', 1, b'K', 2, 0x86, b'U', 1,
            b'd', b'K', 1, b'K', 2, b'K', 3, 0x87, b'h', 1, b')', b'u', b'.',
        ];
        let v = run(&p).unwrap();
        let Value::Dict(d) = v else {
            panic!("not a dict: {v:?}")
        };
        assert_eq!(d.len(), 5);
        assert_eq!(d[0].1, Value::List(vec![Value::Int(1), Value::Int(2)]));
        assert_eq!(d[1].1, Value::Tuple(vec![Value::Int(1)]));
        assert_eq!(
            d[3].1,
            Value::Tuple(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
        );
        assert_eq!(d[4], (Value::Str("a".into()), Value::Tuple(vec![])));
    }

    #[test]
    fn ordered_dict_reduce_then_setitems_and_build() {
        // collections.OrderedDict() ; SETITEMS {'k': 1} ; BUILD with a state dict.
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"collections\nOrderedDict\n");
        p.extend_from_slice(&[
            b')', b'R', b'(', b'U', 1, b'k', b'K', 1, b'u', b'}', b'b', b'.',
        ]);
        assert_eq!(
            run(&p).unwrap(),
            Value::Dict(vec![(Value::Str("k".into()), Value::Int(1))])
        );
    }

    #[test]
    fn rebuild_tensor_from_persistent_storage() {
        // _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cuda:0', 6) , 1, (2, 2), (1, 2), False, OrderedDict())
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"torch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(&[b'(', b'(', b'X', 7, 0, 0, 0]);
        p.extend_from_slice(b"storage");
        p.push(b'c');
        p.extend_from_slice(b"torch\nFloatStorage\n");
        p.extend_from_slice(&[b'X', 1, 0, 0, 0, b'0', b'X', 6, 0, 0, 0]);
        p.extend_from_slice(b"cuda:0");
        p.extend_from_slice(&[
            b'K', 6, b't', b'Q', b'K', 1, b'K', 2, b'K', 2, 0x86, b'K', 1,
        ]);
        p.extend_from_slice(&[b'K', 2, 0x86, 0x89, b'N', b't', b'R', b'.']);
        let Value::Tensor(t) = run(&p).unwrap() else {
            panic!("not a tensor")
        };
        assert_eq!(t.size, vec![2, 2]);
        assert_eq!(t.stride, vec![1, 2]);
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let x = materialise(&t, &data).unwrap();
        // offset 1, column-major 2x2 view: [[1, 3], [2, 4]]
        assert_eq!(
            x.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 3.0], vec![2.0, 4.0]]
        );
    }

    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }

    /// `{'epoch': 3, 'state_dict': OrderedDict(name -> tensor)}` as torch
    /// pickles it; each entry: (name, storage class, key, numel, size, stride).
    /// (name, storage class, storage key, numel, size, stride)
    type Entry = (
        &'static str,
        &'static str,
        &'static str,
        usize,
        &'static [usize],
        &'static [usize],
    );

    fn state_dict_pickle(entries: &[Entry]) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        unicode(&mut p, "epoch");
        p.extend_from_slice(&[b'K', 3]);
        unicode(&mut p, "state_dict");
        p.extend_from_slice(b"ccollections\nOrderedDict\nq\x01)Rq\x02(");
        for (name, class, key, numel, size, stride) in entries {
            unicode(&mut p, name);
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            unicode(&mut p, "storage");
            p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
            unicode(&mut p, key);
            unicode(&mut p, "cuda:0");
            p.extend_from_slice(b"J");
            p.extend_from_slice(&(*numel as i32).to_le_bytes());
            p.extend_from_slice(b"tQK\x00(");
            for d in *size {
                p.extend_from_slice(&[b'K', *d as u8]);
            }
            p.extend_from_slice(b"t(");
            for d in *stride {
                p.extend_from_slice(&[b'K', *d as u8]);
            }
            p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
        }
        // SETITEMS into the OrderedDict, BUILD its _metadata, SETITEMS the outer dict.
        p.extend_from_slice(b"u}bu.");
        p
    }

    fn storages() -> Vec<(&'static str, Vec<u8>)> {
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0.5f32, -2.0]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let i64s: Vec<u8> = 43750i64.to_le_bytes().to_vec();
        vec![("10", f32s), ("20", f16s), ("30", i64s)]
    }

    fn entries() -> Vec<Entry> {
        vec![
            ("w", "FloatStorage", "10", 4, &[2, 2], &[1, 2]),
            ("h", "HalfStorage", "20", 2, &[2], &[1]),
            ("n", "LongStorage", "30", 1, &[], &[]),
        ]
    }

    fn check_contents(c: &PthContents) {
        let Value::Dict(root) = &c.root else {
            panic!("root is not a dict")
        };
        assert_eq!(root[0], (Value::Str("epoch".into()), Value::Int(3)));
        let Value::Dict(sd) = &root[1].1 else {
            panic!("no state dict")
        };
        let get = |i: usize| {
            let Value::Tensor(t) = &sd[i].1 else {
                panic!("entry {i} is not a tensor")
            };
            materialise(t, &c.storages[&t.key]).unwrap()
        };
        // Transposed (column-major) view made contiguous.
        assert_eq!(
            get(0).to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 3.0], vec![2.0, 4.0]]
        );
        let h = get(1);
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(
            h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
            vec![0.5, -2.0]
        );
        let n = get(2);
        assert_eq!((n.dtype(), n.dims().len()), (DType::I64, 0));
        assert_eq!(n.to_scalar::<i64>().unwrap(), 43750);
    }

    #[test]
    fn legacy_layout_with_f32_f16_i64_storages() {
        let mut data = vec![0x80, 2, 0x8a, 10];
        data.extend_from_slice(&[
            0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
        ]);
        data.extend_from_slice(&[0x80, 2, b'M', 0xe9, 0x03, b'.', 0x80, 2, b'}', b'.']);
        data.extend(state_dict_pickle(&entries()));
        let mut keys = vec![0x80, 2, b']', b'('];
        for (k, _) in storages() {
            unicode(&mut keys, k);
        }
        keys.extend_from_slice(b"e.");
        data.extend(keys);
        for (_, bytes) in storages() {
            let es = if bytes.len() == 4 {
                2
            } else if bytes.len() == 16 {
                4
            } else {
                8
            };
            data.extend_from_slice(&((bytes.len() / es) as u64).to_le_bytes());
            data.extend(bytes);
        }
        check_contents(&read_legacy(&data).unwrap());
        let e = read_legacy(&data[..data.len() - 3]).err().unwrap();
        assert!(
            e.starts_with("truncated file: storage 30 needs 1 elements of 8 bytes"),
            "{e}"
        );
    }

    #[test]
    fn zip_layout_with_f32_f16_i64_storages() {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            w.start_file("archive/data.pkl", opts).unwrap();
            w.write_all(&state_dict_pickle(&entries())).unwrap();
            w.start_file("archive/byteorder", opts).unwrap();
            w.write_all(b"little").unwrap();
            for (k, bytes) in storages() {
                w.start_file(format!("archive/data/{k}"), opts).unwrap();
                w.write_all(&bytes).unwrap();
            }
            w.finish().unwrap();
        }
        check_contents(&read_zip(buf.get_ref()).unwrap());
    }

    #[test]
    fn legacy_storage_view_offsets_into_the_root_storage() {
        // _rebuild_tensor_v2(('storage', FloatStorage, 'root', 'cpu', 6, ('view', 2, 3)), 1, (2,), (1,), ...)
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"torch._utils\n_rebuild_tensor_v2\n((");
        unicode(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        unicode(&mut p, "root");
        unicode(&mut p, "cpu");
        p.extend_from_slice(&[b'K', 6, b'(']);
        unicode(&mut p, "view");
        p.extend_from_slice(&[
            b'K', 2, b'K', 3, b't', b't', b'Q', b'K', 1, b'K', 2, 0x85, b'K', 1, 0x85,
        ]);
        p.extend_from_slice(&[0x89, b'N', b't', b'R', b'.']);
        let Value::Tensor(t) = run(&p).unwrap() else {
            panic!("not a tensor")
        };
        assert_eq!(t.offset, 3);
        let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        assert_eq!(
            materialise(&t, &data).unwrap().to_vec1::<f32>().unwrap(),
            vec![3.0, 4.0]
        );
    }

    #[test]
    fn view_past_the_storage_is_an_error() {
        let t = TensorRef {
            dtype: StorageType::F32,
            key: "0".into(),
            storage_numel: 4,
            offset: 2,
            size: vec![2, 2],
            stride: vec![2, 1],
        };
        let e = materialise(&t, &[0u8; 16]).unwrap_err();
        assert!(e.contains("reaches past storage 0 of 4 elements"), "{e}");
    }

    #[test]
    fn memo_refers_to_the_filled_container() {
        // d = {}; memo[0] = d; d['k'] = 1; then (d, d): both copies are filled,
        // whether read while d is on the stack or after it was popped.
        let p = [
            0x80, 2, b'}', b'q', 0, b'U', 1, b'k', b'K', 1, b's', b'h', 0, 0x86, b'h', 0, 0x86,
            b'.',
        ];
        let filled = Value::Dict(vec![(Value::Str("k".into()), Value::Int(1))]);
        let inner = Value::Tuple(vec![filled.clone(), filled.clone()]);
        assert_eq!(run(&p).unwrap(), Value::Tuple(vec![inner, filled]));
    }

    #[test]
    fn deep_nesting_is_refused() {
        // [[[[...]]]] 10,000 levels deep: EMPTY_LIST then (EMPTY_LIST, APPEND)*
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 10_000));
        p.extend(std::iter::repeat_n(b'a', 9_999));
        p.push(b'.');
        let e = run(&p).unwrap_err();
        assert!(e.contains("more than 100 levels deep"), "{e}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = run(&[0x80, 2, 0xff]).unwrap_err();
        assert!(
            e.contains("unsupported pickle opcode 0xff at offset 2"),
            "{e}"
        );
        let e = run(&[0x80, 2, b'X', 10, 0, 0, 0, b'a']).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = run(&[0x80, 2, b'h', 3]).unwrap_err();
        assert!(e.contains("memo entry 3"), "{e}");
        let e = run(&[]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
