//! A safe reader for the small part of Python's pickle format that a PyTorch state dict uses.
//!
//! Nothing is imported or executed. Globals are matched against a fixed allowlist, and the few
//! callables a state dict needs (`collections.OrderedDict` and torch's tensor rebuild functions)
//! are interpreted here; any other global is refused by name. Every step is bounds-checked and the
//! machine does no recursion, so no input can make it panic, and what it holds grows only with
//! what it reads.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{Context, Result, bail, ensure};

use super::pth::TorchDType;

/// A pickled value. Tuples, lists and dicts live in the `Pickle`'s heap and are referred to by
/// index: that gives Python's sharing semantics (a dict memoised empty and filled later is seen
/// filled through every reference), and dropping deeply nested input recurses nowhere.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64, as its little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    /// A float; its value is never needed (accuracies, learning rates are skipped).
    Float,
    Str(Rc<str>),
    /// Bytes; their value is never needed either.
    Bytes,
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    Tuple(usize),
    List(usize),
    Dict(usize),
}

impl Value {
    /// What the value is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
        }
    }

    /// The kind with its article, for messages: "an int", "a dict", "None".
    pub(crate) fn a_kind(&self) -> String {
        match self {
            Value::None => "None".to_string(),
            Value::Int(_) | Value::BigInt(_) => "an int".to_string(),
            other => format!("a {}", other.kind()),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The globals a state dict may reference: everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    /// `torch._utils._rebuild_tensor(storage, offset, size, stride)`, in files from torch < 0.4.
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state(tensor, requires_grad, hooks, state)`.
    RebuildParameterWithState,
    /// A storage class such as `torch.FloatStorage`, named in a persistent id.
    StorageType(TorchDType),
}

impl Global {
    /// The Python name, for error messages.
    fn name(self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensor => "torch._utils._rebuild_tensor".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state".into(),
            Global::StorageType(dtype) => format!("the {dtype:?} storage type"),
        }
    }
}

fn resolve_global(module: &str, name: &str) -> Result<Global> {
    let global = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        // A raw storage saved on its own: torch reads it as bytes.
        ("torch" | "torch.storage", "UntypedStorage") => Some(Global::StorageType(TorchDType::U8)),
        // Old files may name the CUDA classes; the data is the same.
        ("torch" | "torch.cuda", _) => TorchDType::from_storage_name(name).map(Global::StorageType),
        _ => None,
    };
    global.with_context(|| {
        format!(
            "unsupported pickle global {} (only plain state dicts can be read)",
            quoted(&format!("{module}.{name}"))
        )
    })
}

/// A storage named by a persistent id `('storage', type, key, location, numel[, view])`.
#[derive(Debug)]
pub(crate) struct StorageRef {
    /// The storage's record: `data/<key>` in a zip archive, a key of the storage list in a legacy file.
    pub key: String,
    pub dtype: TorchDType,
    /// Elements in the whole storage record.
    pub numel: u64,
    /// The elements tensors index into: the whole storage, or a legacy storage view's part of it.
    pub start: u64,
    pub len: u64,
}

/// A tensor as `_rebuild_tensor*` describes it; the data stays in its storage.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    /// In elements, from the start of the storage (view).
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
    /// torch's lazy negation bit, saved as metadata `{'neg': True}`.
    pub negated: bool,
}

/// Where tuples, lists and dicts live; their `Value`s are indices into it.
#[derive(Default)]
struct Heap {
    seqs: Vec<Vec<Value>>,
    dicts: Vec<Vec<(Value, Value)>>,
}

impl Heap {
    fn seq(&self, value: &Value) -> Option<&[Value]> {
        match value {
            Value::Tuple(id) | Value::List(id) => self.seqs.get(*id).map(Vec::as_slice),
            _ => None,
        }
    }

    fn dict(&self, value: &Value) -> Option<&[(Value, Value)]> {
        match value {
            Value::Dict(id) => self.dicts.get(*id).map(Vec::as_slice),
            _ => None,
        }
    }
}

/// The result of unpickling: the root value and the heap its containers live in.
pub(crate) struct Pickle {
    pub root: Value,
    heap: Heap,
    storages: Vec<Rc<StorageRef>>,
}

impl Pickle {
    /// The items of a tuple or list.
    pub(crate) fn seq(&self, value: &Value) -> Option<&[Value]> {
        self.heap.seq(value)
    }

    /// The entries of a dict, in insertion order.
    pub(crate) fn dict(&self, value: &Value) -> Option<&[(Value, Value)]> {
        self.heap.dict(value)
    }

    /// Every storage a persistent id named, in pickle order (a storage may appear several times).
    pub(crate) fn storages(&self) -> &[Rc<StorageRef>] {
        &self.storages
    }
}

/// Unpickles the pickle that starts at `input[start..]`, returning it and the offset just past its
/// STOP opcode (legacy checkpoints are several pickles in a row). `source` names the pickle in errors,
/// which also give the byte offset within `input`.
pub(crate) fn unpickle(input: &[u8], start: usize, source: &str) -> Result<(Pickle, usize)> {
    let mut machine = Machine { input, pos: start, ..Machine::default() };
    loop {
        let at = machine.pos;
        let opcode = machine.byte().ok().with_context(|| format!("{source}: truncated pickle (no STOP opcode)"))?;
        if opcode == op::STOP {
            let root = machine.pop().with_context(|| format!("{source} byte {at}: STOP with an empty stack"))?;
            let pickle = Pickle { root, heap: machine.heap, storages: machine.storages };
            return Ok((pickle, machine.pos));
        }
        machine.step(opcode).with_context(|| format!("{source} byte {at}"))?;
    }
}

#[derive(Default)]
struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each open MARK. Like Python's unpickler, nothing below the innermost mark
    /// can be popped until that mark is closed.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Heap,
    storages: Vec<Rc<StorageRef>>,
}

/// The opcodes this reader implements: those of protocol 2 (torch's default) and the legacy format,
/// plus the few that protocols 3 to 5 add for the same values.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const LIST: u8 = b'l';
    pub const DICT: u8 = b'd';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
}

impl<'a> Machine<'a> {
    fn step(&mut self, opcode: u8) -> Result<()> {
        use op::*;
        match opcode {
            PROTO => {
                let version = self.byte()?;
                ensure!(version <= 5, "unsupported pickle protocol {version}");
            }
            // Only says how much to prefetch.
            FRAME => _ = self.take(8)?,
            MARK => self.marks.push(self.stack.len()),
            EMPTY_DICT => self.push_dict(Vec::new()),
            EMPTY_LIST => self.push_seq(Vec::new(), Value::List),
            EMPTY_TUPLE => self.push_seq(Vec::new(), Value::Tuple),
            TUPLE => {
                let items = self.pop_mark()?;
                self.push_seq(items, Value::Tuple);
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let items = self.pop_n(usize::from(opcode - TUPLE1 + 1))?;
                self.push_seq(items, Value::Tuple);
            }
            LIST => {
                let items = self.pop_mark()?;
                self.push_seq(items, Value::List);
            }
            DICT => {
                let items = self.pop_mark()?;
                self.push_dict(pairs(items)?);
            }
            APPEND => {
                let item = self.pop()?;
                self.list_on_top()?.push(item);
            }
            APPENDS => {
                let items = self.pop_mark()?;
                self.list_on_top()?.extend(items);
            }
            SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.dict_on_top()?.push((key, value));
            }
            SETITEMS => {
                let items = pairs(self.pop_mark()?)?;
                self.dict_on_top()?.extend(items);
            }
            BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            BININT1 => {
                let v = self.byte()?;
                self.stack.push(Value::Int(v.into()));
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            LONG1 => {
                let len = self.byte()?;
                let bytes = self.take(len.into())?;
                self.stack.push(long(bytes));
            }
            BINFLOAT => {
                self.take(8)?;
                self.stack.push(Value::Float);
            }
            NONE => self.stack.push(Value::None),
            NEWTRUE => self.stack.push(Value::Bool(true)),
            NEWFALSE => self.stack.push(Value::Bool(false)),
            // Python 2's byte strings (legacy files) are decoded as UTF-8, as torch.load does.
            SHORT_BINUNICODE | SHORT_BINSTRING => {
                let len = self.byte()?;
                self.push_str(len.into())?;
            }
            BINUNICODE => {
                let len = u32::from_le_bytes(self.array()?);
                self.push_str(len.into())?;
            }
            BINUNICODE8 => {
                let len = u64::from_le_bytes(self.array()?);
                self.push_str(len)?;
            }
            BINSTRING => {
                let len = i32::from_le_bytes(self.array()?);
                self.push_str(u64::try_from(len).ok().context("negative BINSTRING length")?)?;
            }
            SHORT_BINBYTES => {
                let len = self.byte()?;
                self.push_bytes(len.into())?;
            }
            BINBYTES => {
                let len = u32::from_le_bytes(self.array()?);
                self.push_bytes(len.into())?;
            }
            BINBYTES8 => {
                let len = u64::from_le_bytes(self.array()?);
                self.push_bytes(len)?;
            }
            GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(resolve_global(module, name)?));
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                    bail!("STACK_GLOBAL of {} and {}, not two strings", module.a_kind(), name.a_kind());
                };
                self.stack.push(Value::Global(resolve_global(module, name)?));
            }
            REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.call(&callable, &args)?;
                self.stack.push(result);
            }
            NEWOBJ => {
                // cls.__new__(cls, *args); OrderedDict.__new__ ignores its arguments.
                let args = self.pop()?;
                let class = self.pop()?;
                ensure!(matches!(args, Value::Tuple(_)), "NEWOBJ arguments are {}, not a tuple", args.a_kind());
                match class {
                    Value::Global(Global::OrderedDict) => self.push_dict(Vec::new()),
                    other => bail!("NEWOBJ of {}, not a class this reader knows", other.a_kind()),
                }
            }
            BUILD => {
                // Sets attributes, such as the `_metadata` torch attaches to a state dict. A dict's
                // entries are all a state dict needs, so the state is dropped.
                let state = self.pop()?;
                let target = self.top()?;
                ensure!(matches!(target, Value::Dict(_)), "BUILD of {} with {}", target.a_kind(), state.a_kind());
            }
            BINPERSID => {
                // How torch refers to the storages of tensors.
                let pid = self.pop()?;
                let storage = Rc::new(self.persistent_storage(&pid)?);
                self.storages.push(Rc::clone(&storage));
                self.stack.push(Value::Storage(storage));
            }
            BINPUT => {
                let key = self.byte()?;
                self.memoize(key.into())?;
            }
            LONG_BINPUT => {
                let key = u32::from_le_bytes(self.array()?);
                self.memoize(key)?;
            }
            MEMOIZE => {
                // The next free index, as Python counts it.
                let key = u32::try_from(self.memo.len()).ok().context("memo is full")?;
                self.memoize(key)?;
            }
            BINGET => {
                let key = self.byte()?;
                self.memo_get(key.into())?;
            }
            LONG_BINGET => {
                let key = u32::from_le_bytes(self.array()?);
                self.memo_get(key)?;
            }
            _ => match unsupported_opcode_name(opcode) {
                Some(name) => bail!("unsupported pickle opcode {name} (0x{opcode:02x})"),
                None => bail!("unknown pickle opcode 0x{opcode:02x}"),
            },
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N as u64)?;
        let (arrays, _) = bytes.as_chunks::<N>();
        arrays.first().copied().context("truncated pickle")
    }

    /// The next `len` bytes, checked against the input before anything is allocated.
    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let input = self.input;
        let rest = input.get(self.pos..).unwrap_or_default();
        let bytes = usize::try_from(len).ok().and_then(|len| rest.get(..len)).context("truncated pickle")?;
        self.pos += bytes.len();
        Ok(bytes)
    }

    /// A newline-terminated UTF-8 line, as GLOBAL's operands are written.
    fn line(&mut self) -> Result<&'a str> {
        let input = self.input;
        let rest = input.get(self.pos..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == b'\n').context("truncated pickle: GLOBAL without newline")?;
        let line = rest.get(..end).unwrap_or_default();
        self.pos += end + 1;
        std::str::from_utf8(line).context("GLOBAL name is not UTF-8")
    }

    fn push_str(&mut self, len: u64) -> Result<()> {
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).context("pickled string is not UTF-8")?;
        self.stack.push(Value::Str(s.into()));
        Ok(())
    }

    fn push_bytes(&mut self, len: u64) -> Result<()> {
        self.take(len)?;
        self.stack.push(Value::Bytes);
        Ok(())
    }

    fn push_seq(&mut self, items: Vec<Value>, kind: fn(usize) -> Value) {
        self.heap.seqs.push(items);
        self.stack.push(kind(self.heap.seqs.len() - 1));
    }

    fn push_dict(&mut self, entries: Vec<(Value, Value)>) {
        let dict = self.new_dict(entries);
        self.stack.push(dict);
    }

    fn new_dict(&mut self, entries: Vec<(Value, Value)>) -> Value {
        self.heap.dicts.push(entries);
        Value::Dict(self.heap.dicts.len() - 1)
    }

    /// The lowest stack index the current mark frame may touch.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        ensure!(self.stack.len() > self.floor(), "pickle stack underflow");
        self.stack.pop().context("pickle stack underflow")
    }

    fn top(&self) -> Result<&Value> {
        ensure!(self.stack.len() > self.floor(), "pickle stack underflow");
        self.stack.last().context("pickle stack underflow")
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>> {
        let at = self.stack.len().checked_sub(n).filter(|&at| at >= self.floor()).context("pickle stack underflow")?;
        Ok(self.stack.split_off(at))
    }

    /// Closes the innermost mark, returning the items pushed since it.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().context("no MARK to close")?;
        // pop() never goes below the innermost mark, so the stack still reaches it.
        ensure!(mark <= self.stack.len(), "pickle stack underflow");
        Ok(self.stack.split_off(mark))
    }

    fn list_on_top(&mut self) -> Result<&mut Vec<Value>> {
        match *self.top()? {
            Value::List(id) => self.heap.seqs.get_mut(id).context("dangling list"),
            ref other => bail!("APPEND to {}, not a list", other.a_kind()),
        }
    }

    fn dict_on_top(&mut self) -> Result<&mut Vec<(Value, Value)>> {
        match *self.top()? {
            Value::Dict(id) => self.heap.dicts.get_mut(id).context("dangling dict"),
            ref other => bail!("SETITEM on {}, not a dict", other.a_kind()),
        }
    }

    fn memoize(&mut self, key: u32) -> Result<()> {
        let value = self.top()?.clone();
        self.memo.insert(key, value);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let value = self.memo.get(&key).with_context(|| format!("memo entry {key} is missing"))?.clone();
        self.stack.push(value);
        Ok(())
    }

    /// REDUCE, for the only callables allowed: nothing runs, the result is built here.
    fn call(&mut self, callable: &Value, args: &Value) -> Result<Value> {
        let Value::Global(global) = *callable else { bail!("REDUCE calls {}, not a global", callable.a_kind()) };
        ensure!(matches!(args, Value::Tuple(_)), "REDUCE arguments are {}, not a tuple", args.a_kind());
        let args = self.heap.seq(args).unwrap_or_default();
        match (global, args) {
            (Global::OrderedDict, []) => Ok(self.new_dict(Vec::new())),
            (Global::RebuildTensor, [storage, offset, size, stride]) => {
                self.tensor(storage, offset, size, stride, None)
            }
            (Global::RebuildTensorV2, [storage, offset, size, stride, _requires_grad, _hooks, metadata @ ..])
                if metadata.len() <= 1 =>
            {
                self.tensor(storage, offset, size, stride, metadata.first())
            }
            (Global::RebuildParameter, [tensor @ Value::Tensor(_), _, _])
            | (Global::RebuildParameterWithState, [tensor @ Value::Tensor(_), _, _, _]) => Ok(tensor.clone()),
            (global, args) => bail!("unexpected call of {} with {} arguments", global.name(), args.len()),
        }
    }

    fn tensor(
        &self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        metadata: Option<&Value>,
    ) -> Result<Value> {
        let Value::Storage(storage) = storage else { bail!("tensor storage is {}", storage.a_kind()) };
        let offset = usize_of(offset).context("tensor storage offset")?;
        let shape = self.usizes(size).context("tensor size")?;
        let stride = self.usizes(stride).context("tensor stride")?;
        ensure!(shape.len() == stride.len(), "tensor has {} sizes but {} strides", shape.len(), stride.len());
        let negated = metadata.is_some_and(|m| self.flag(m, "neg"));
        let storage = Rc::clone(storage);
        Ok(Value::Tensor(Rc::new(TensorRef { storage, offset, shape, stride, negated })))
    }

    fn usizes(&self, value: &Value) -> Result<Vec<usize>> {
        let items = self.heap.seq(value).with_context(|| format!("{}, not a tuple", value.a_kind()))?;
        items.iter().map(usize_of).collect()
    }

    /// Whether `dict[name]` is True.
    fn flag(&self, dict: &Value, name: &str) -> bool {
        let entries = self.heap.dict(dict).unwrap_or_default();
        entries.iter().any(|(k, v)| k.as_str() == Some(name) && matches!(v, Value::Bool(true)))
    }

    /// Resolves `('storage', storage_type, key, location, numel)`; legacy files add a sixth item,
    /// None or a storage view `(view_key, offset, size)`.
    fn persistent_storage(&self, pid: &Value) -> Result<StorageRef> {
        let items = self.heap.seq(pid).with_context(|| format!("persistent id is {}, not a tuple", pid.a_kind()))?;
        let (dtype, key, numel, view) = match items {
            [Value::Str(tag), Value::Global(Global::StorageType(dtype)), key, _location, numel, view @ ..]
                if &**tag == "storage" && view.len() <= 1 =>
            {
                (*dtype, key, numel, view.first().unwrap_or(&Value::None))
            }
            [Value::Str(tag), ..] if &**tag == "module" => {
                bail!("the file holds a pickled nn.Module, not a state dict (save model.state_dict() instead)")
            }
            _ => bail!("unsupported persistent id (expected ('storage', storage type, key, location, numel))"),
        };
        let key = key.as_str().with_context(|| format!("storage key is {}, not a str", key.a_kind()))?.to_owned();
        let numel = u64_of(numel).context("storage size")?;
        let (start, len) = match view {
            Value::None => (0, numel),
            view => match self.heap.seq(view) {
                Some([_view_key, start, len]) => (u64_of(start)?, u64_of(len)?),
                _ => bail!("storage view is {}, not (key, offset, size)", view.a_kind()),
            },
        };
        ensure!(
            start.checked_add(len).is_some_and(|end| end <= numel),
            "storage view {start}..+{len} exceeds storage {} of {numel} elements",
            quoted(&key)
        );
        Ok(StorageRef { key, dtype, numel, start, len })
    }
}

/// Pairs up SETITEMS / DICT items: key, value, key, value, ...
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    ensure!(items.len().is_multiple_of(2), "odd number of dict items");
    let mut items = items.into_iter();
    Ok(std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect())
}

/// LONG1's little-endian two's complement bytes, as an i64 where it fits.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut le = if negative { [0xff; 8] } else { [0; 8] };
    le.iter_mut().zip(bytes).for_each(|(dst, src)| *dst = *src);
    Value::Int(i64::from_le_bytes(le))
}

fn u64_of(value: &Value) -> Result<u64> {
    match *value {
        Value::Int(v) => u64::try_from(v).ok().with_context(|| format!("negative value {v}")),
        Value::BigInt(_) => bail!("an integer too large for 64 bits"),
        ref other => bail!("{}, not an int", other.a_kind()),
    }
}

fn usize_of(value: &Value) -> Result<usize> {
    let v = u64_of(value)?;
    usize::try_from(v).ok().with_context(|| format!("value {v} too large"))
}

/// A string from the file, quoted and escaped so that an error message stays one line.
pub(crate) fn quoted(s: &str) -> String {
    format!("'{}'", s.escape_debug())
}

/// Names of the standard opcodes this reader leaves out: state dicts never use them.
fn unsupported_opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'L' => "LONG",
        b'P' => "PERSID",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'g' => "GET",
        b'i' => "INST",
        b'o' => "OBJ",
        b'p' => "PUT",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<(Pickle, usize)> {
        unpickle(bytes, 0, "test")
    }

    fn error(bytes: &[u8]) -> String {
        format!("{:#}", run(bytes).err().expect("an error"))
    }

    #[test]
    fn a_memoised_dict_filled_later_is_seen_filled_everywhere() {
        // ( {} PUT0 [] GET0 APPEND GET0 'k' 1 SETITEM TUPLE: the list holds the dict that is then
        // filled, as in Python.
        let bytes = b"(}q\x00]h\x00ah\x00X\x01\x00\x00\x00kK\x01st.";
        let (pickle, end) = run(bytes).unwrap();
        assert_eq!(end, bytes.len());
        let Some([_, list, _]) = pickle.seq(&pickle.root) else { panic!("not a 3-tuple") };
        let Some([dict]) = pickle.seq(list) else { panic!("not a 1-list") };
        assert_eq!(pickle.dict(dict).unwrap().len(), 1);
    }

    #[test]
    fn long1_sign_extends_and_keeps_wide_values() {
        let (p, _) = run(b"\x8a\x02\x00\xff.").unwrap();
        assert!(matches!(p.root, Value::Int(-256)));
        let (p, _) = run(b"\x8a\x00.").unwrap();
        assert!(matches!(p.root, Value::Int(0)));
        let (p, _) = run(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.").unwrap();
        assert!(matches!(p.root, Value::BigInt(ref b) if b.len() == 9));
    }

    #[test]
    fn errors_name_the_opcode_and_offset() {
        assert_eq!(error(b"\x80\x02\xff"), "test byte 2: unknown pickle opcode 0xff");
        assert_eq!(error(b"\x80\x02i"), "test byte 2: unsupported pickle opcode INST (0x69)");
        assert_eq!(error(b"\x80\x02X\xff\x00\x00\x00ab"), "test byte 2: truncated pickle");
        assert_eq!(error(b"N"), "test: truncated pickle (no STOP opcode)");
        assert_eq!(
            error(b"cos\nsystem\n."),
            "test byte 0: unsupported pickle global 'os.system' (only plain state dicts can be read)"
        );
        assert_eq!(
            error(b"\x8c\x08builtins\x8c\x04eval\x93."),
            "test byte 16: unsupported pickle global 'builtins.eval' (only plain state dicts can be read)"
        );
    }

    #[test]
    fn marks_fence_off_the_stack_below() {
        assert_eq!(error(b"NNa."), "test byte 2: APPEND to None, not a list");
        // The list is below the mark: as in Python, APPEND cannot reach it.
        assert_eq!(error(b"](Na."), "test byte 3: pickle stack underflow");
        assert_eq!(error(b"N(a."), "test byte 2: pickle stack underflow");
        assert_eq!(error(b"t."), "test byte 0: no MARK to close");
    }

    #[test]
    fn deep_nesting_neither_recurses_nor_overflows() {
        let mut bytes = vec![b'N'];
        bytes.extend(std::iter::repeat_n(0x85, 1_000_000)); // TUPLE1, a million times
        bytes.push(b'.');
        let (pickle, _) = run(&bytes).unwrap();
        assert!(matches!(pickle.root, Value::Tuple(_)));
    }
}
