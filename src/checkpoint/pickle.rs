//! A pickle interpreter for the subset of Python's pickle format that `torch.save` writes
//! (protocols 0-5). It never runs code: a short whitelist of constructors (dicts, OrderedDict,
//! sets, torch's tensor and parameter rebuilders, `_codecs.encode`) is interpreted, and any other
//! class or function call becomes an opaque [`Object`] holding the class name, the arguments and the
//! state. Storage references (`persistent_id`s) become storage descriptions, resolved later by the
//! container format. Memo, stack, object count and nesting depth are bounded, every length is checked
//! against the bytes that remain, and arithmetic is checked, so hostile input yields an error.
//!
//! Memory: strings and bytes are shared (`Arc`) between every reference to them, in the machine and
//! in the resulting [`Value`] tree, so a pickle that memoises one large string and references it many
//! times costs the string once. What cannot be shared (containers referenced twice become two
//! subtrees; arguments copied into objects) is charged to the read's [`Meter`] before it is built,
//! as are the pickle's own bytes, so amplification ends in a budget error.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::mem::size_of;
use std::sync::Arc;

use super::budget::Meter;
use super::error::ErrorKind;
use super::value::{check_view, DType, Object, TensorData, TensorMeta, Value};

/// Most values on the pickle stack at once.
const MAX_STACK: usize = 1 << 22;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 22;
/// Most containers and objects one pickle may create.
const MAX_HEAP: usize = 1 << 24;
/// Deepest nesting of containers in the result.
pub(crate) const MAX_DEPTH: usize = 256;
/// Longest text line (protocol 0 opcodes, GLOBAL names).
const MAX_LINE: usize = 1 << 16;
/// Longest storage key: torch writes decimal numbers; a longer key is not a torch.save file, and
/// every tensor of the storage carries a copy.
const MAX_STORAGE_KEY: usize = 1 << 10;
/// What a memo or dict-index entry costs beside its value (hash table slot and key).
const INDEX_ENTRY: u64 = 48;

/// The element type of a storage referenced by the pickle.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StorageKind {
    /// A typed storage (`torch.FloatStorage`, ...).
    Typed(DType),
    /// `torch.UntypedStorage`: bytes; the tensor's dtype comes from `_rebuild_tensor_v3`.
    Untyped,
    /// A storage class this reader does not know.
    Unknown(String),
}

impl StorageKind {
    pub(crate) fn elem_size(&self) -> Option<u64> {
        match self {
            StorageKind::Typed(d) => Some(d.size() as u64),
            StorageKind::Untyped => Some(1),
            StorageKind::Unknown(_) => None,
        }
    }

    /// The element type's name, or the class of a storage this reader does not know.
    pub(crate) fn name(&self) -> String {
        match self {
            StorageKind::Typed(d) => d.name().to_owned(),
            StorageKind::Untyped => "uint8".to_owned(),
            StorageKind::Unknown(n) => n.clone(),
        }
    }
}

/// A storage the pickle refers to.
#[derive(Debug, Clone)]
pub(crate) struct StorageRef {
    pub key: String,
    pub kind: StorageKind,
    /// Number of elements of the storage's own type.
    pub numel: u64,
}

impl StorageRef {
    /// Size in bytes, when the element type is known.
    pub(crate) fn nbytes(&self) -> Option<u64> {
        self.kind.elem_size()?.checked_mul(self.numel)
    }
}

/// What unpickling produced.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub root: Value,
    /// Every storage referenced, in order of first reference.
    pub storages: Vec<StorageRef>,
}

/// A value on the machine's stack: scalars inline, containers by reference into the heap so that
/// memo references share (and see later mutations of) one object, as in Python.
#[derive(Debug, Clone)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Big(Arc<str>),
    Float(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    Ref(usize),
}

/// Hashable dict keys, so that SETITEM replaces an existing key as Python does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HKey {
    None,
    Int(i64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
}

/// Hashes at most 128 bytes of a key (its ends and its length): a pickle may set one
/// megabyte-long memoised key thousands of times, and equality of shared keys is a pointer check.
fn hash_ends<H: Hasher>(bytes: &[u8], state: &mut H) {
    const ENDS: usize = 64;
    bytes.len().hash(state);
    if bytes.len() <= 2 * ENDS {
        bytes.hash(state);
    } else {
        bytes[..ENDS].hash(state);
        bytes[bytes.len() - ENDS..].hash(state);
    }
}

impl Hash for HKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            HKey::None => {}
            HKey::Int(i) => i.hash(state),
            HKey::Str(s) => hash_ends(s.as_bytes(), state),
            HKey::Bytes(b) => hash_ends(b, state),
        }
    }
}

fn hkey(v: &V) -> Option<HKey> {
    Some(match v {
        V::None => HKey::None,
        // True == 1 and False == 0 as dict keys in Python.
        V::Bool(b) => HKey::Int(i64::from(*b)),
        V::Int(i) => HKey::Int(*i),
        V::Str(s) => HKey::Str(s.clone()),
        V::Bytes(b) => HKey::Bytes(b.clone()),
        _ => return None,
    })
}

#[derive(Debug, Default)]
struct Dict {
    items: Vec<(V, V)>,
    index: HashMap<HKey, usize>,
}

impl Dict {
    fn insert(&mut self, k: V, v: V) {
        match hkey(&k) {
            Some(h) => match self.index.get(&h) {
                Some(&i) => {
                    if let Some(slot) = self.items.get_mut(i) {
                        slot.1 = v;
                    }
                }
                None => {
                    self.index.insert(h, self.items.len());
                    self.items.push((k, v));
                }
            },
            None => self.items.push((k, v)),
        }
    }
}

#[derive(Debug)]
enum Obj {
    List(Vec<V>),
    Tuple(Vec<V>),
    Set(Vec<V>),
    Dict(Dict),
    Global(Arc<str>, Arc<str>),
    Object {
        class: String,
        args: Vec<V>,
        state: Option<V>,
        items: Vec<V>,
        dict_items: Vec<(V, V)>,
    },
    /// Index into `storages`, plus an element offset for legacy storage views.
    Storage(usize, u64),
    Tensor(TensorMeta),
}

/// Python's name for an opcode byte, for error messages.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "not a pickle opcode",
    }
}

struct Machine<'r, R: Read> {
    reader: &'r mut R,
    /// Bytes of the pickle consumed so far.
    pos: u64,
    /// Bytes that may be read in all (the pickle entry's size, or what remains of the file).
    limit: u64,
    part: &'r str,
    /// Offset of the opcode being run, for errors.
    op_pos: u64,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u32, V>,
    heap: Vec<Obj>,
    storages: Vec<StorageRef>,
    storage_index: HashMap<String, usize>,
    /// Charged for every byte read and every value built.
    meter: &'r mut Meter,
}

type R<T> = Result<T, ErrorKind>;

/// Reads one pickle (up to and including its STOP opcode) from `reader`, which may yield at most
/// `limit` bytes; `part` names the pickle in errors. The bytes read and the values built are
/// charged to `meter`.
pub(crate) fn unpickle<Rd: Read>(
    reader: &mut Rd,
    limit: u64,
    part: &str,
    meter: &mut Meter,
) -> R<Unpickled> {
    let mut m = Machine {
        reader,
        pos: 0,
        limit,
        part,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Vec::new(),
        storages: Vec::new(),
        storage_index: HashMap::new(),
        meter,
    };
    let top = m.run()?;
    let Machine {
        heap,
        storages,
        meter,
        ..
    } = m;
    let mut tree = Tree {
        heap: &heap,
        storages: &storages,
        part,
        meter,
        visiting: vec![false; heap.len()],
    };
    let root = tree.value(&top, 0)?;
    Ok(Unpickled { root, storages })
}

/// Reads one pickle and returns only the value; for the legacy format's small header pickles.
pub(crate) fn unpickle_value<Rd: Read>(
    reader: &mut Rd,
    limit: u64,
    part: &str,
    meter: &mut Meter,
) -> R<(Value, u64)> {
    let mut counting = Counting {
        inner: reader,
        n: 0,
    };
    let out = unpickle(&mut counting, limit, part, meter)?;
    Ok((out.root, counting.n))
}

/// Counts the bytes read through it.
pub(crate) struct Counting<'a, Rd: Read> {
    pub inner: &'a mut Rd,
    pub n: u64,
}

impl<Rd: Read> Read for Counting<'_, Rd> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

fn i128_to_value(x: i128) -> V {
    match i64::try_from(x) {
        Ok(i) => V::Int(i),
        Err(_) => V::Big(Arc::from(x.to_string())),
    }
}

/// Decodes a little-endian two's complement integer (LONG1/LONG4 payload).
fn decode_long(bytes: &[u8]) -> V {
    if bytes.is_empty() {
        return V::Int(0);
    }
    if bytes.len() > 16 {
        return V::Big(Arc::from(format!("<{}-byte integer>", bytes.len())));
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 16] } else { [0u8; 16] };
    buf[..bytes.len()].copy_from_slice(bytes);
    i128_to_value(i128::from_le_bytes(buf))
}

/// Undoes Python's `repr` quoting of a protocol-0 STRING argument (the common escapes).
fn unquote_string(raw: &[u8]) -> Option<Vec<u8>> {
    let inner = match raw {
        [q, inner @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => inner,
        _ => return None,
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *inner.get(i + 1)?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'x' => {
                let hex = std::str::from_utf8(inner.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// Decodes Python's raw-unicode-escape (protocol-0 UNICODE argument).
fn raw_unicode_escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == b'\\' && matches!(raw.get(i + 1), Some(b'u') | Some(b'U')) {
            let n = if raw.get(i + 1) == Some(&b'u') { 4 } else { 8 };
            let decoded = raw
                .get(i + 2..i + 2 + n)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32);
            if let Some(ch) = decoded {
                out.push(ch);
                i += 2 + n;
                continue;
            }
        }
        out.push(char::from(c));
        i += 1;
    }
    out
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

impl<Rd: Read> Machine<'_, Rd> {
    fn err(&self, detail: impl Into<String>) -> ErrorKind {
        ErrorKind::Pickle {
            part: self.part.to_owned(),
            offset: self.op_pos,
            detail: detail.into(),
        }
    }

    /// Charges `bytes` built while running the opcode at `op_pos`.
    fn charge(&mut self, bytes: u64) -> R<()> {
        let (part, offset) = (self.part, self.op_pos);
        self.meter.charge(bytes, || {
            format!("unpickling `{part}` (at offset {offset})")
        })
    }

    /// Charges `n` copied machine values.
    fn charge_values(&mut self, n: usize) -> R<()> {
        self.charge((n as u64).saturating_mul(size_of::<V>() as u64))
    }

    /// Fills `buf` from the pickle, after checking that its bytes remain and fit the budget.
    fn read_into(&mut self, buf: &mut [u8]) -> R<()> {
        let n = buf.len() as u64;
        let remaining = self.limit.saturating_sub(self.pos);
        if n > remaining {
            return Err(ErrorKind::Truncated(format!(
                "{} needs {n} bytes at offset {}, but only {remaining} remain",
                self.part, self.pos
            )));
        }
        self.charge(n)?;
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ErrorKind::Truncated(format!(
                    "{} ends inside the opcode at offset {}",
                    self.part, self.op_pos
                ))
            } else {
                ErrorKind::Io(std::io::Error::new(e.kind(), format!("{}: {e}", self.part)))
            }
        })?;
        self.pos += n;
        Ok(())
    }

    fn read_bytes(&mut self, n: u64) -> R<Vec<u8>> {
        let remaining = self.limit.saturating_sub(self.pos);
        if n > remaining {
            return Err(ErrorKind::Truncated(format!(
                "{} needs {n} bytes at offset {}, but only {remaining} remain",
                self.part, self.pos
            )));
        }
        let len = usize::try_from(n).map_err(|_| self.err("length does not fit in memory"))?;
        // Checked before the allocation; read_into charges the bytes as they are read.
        if n > self.meter.remaining() {
            return Err(self.meter.over(format!(
                "unpickling `{}` (a {n}-byte string at offset {})",
                self.part, self.op_pos
            )));
        }
        let mut buf = vec![0u8; len];
        self.read_into(&mut buf)?;
        Ok(buf)
    }

    fn read_array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut out = [0u8; N];
        self.read_into(&mut out)?;
        Ok(out)
    }

    fn read_u8(&mut self) -> R<u8> {
        Ok(self.read_array::<1>()?[0])
    }

    fn read_u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

    fn read_u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.read_array()?))
    }

    /// Reads up to a newline (not included).
    fn read_line(&mut self) -> R<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let c = self.read_u8()?;
            if c == b'\n' {
                return Ok(line);
            }
            if line.len() >= MAX_LINE {
                return Err(self.err("text line longer than 64 KiB"));
            }
            line.push(c);
        }
    }

    fn read_line_str(&mut self) -> R<String> {
        let line = self.read_line()?;
        String::from_utf8(line).map_err(|_| self.err("text line is not UTF-8"))
    }

    fn utf8(&self, bytes: Vec<u8>) -> R<V> {
        match String::from_utf8(bytes) {
            Ok(s) => Ok(V::Str(Arc::from(s))),
            Err(_) => Err(self.err("string is not valid UTF-8")),
        }
    }

    fn push(&mut self, v: V) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(ErrorKind::Limit(format!(
                "{}: pickle stack deeper than {MAX_STACK} values",
                self.part
            )));
        }
        // Every value that ends up in a container passed through the stack: charging pushes
        // charges containers grown by APPEND, SETITEM, DUP and memo references.
        self.charge_values(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn alloc(&mut self, obj: Obj) -> R<V> {
        if self.heap.len() >= MAX_HEAP {
            return Err(ErrorKind::Limit(format!(
                "{}: pickle creates more than {MAX_HEAP} objects",
                self.part
            )));
        }
        self.charge(size_of::<Obj>() as u64)?;
        self.heap.push(obj);
        Ok(V::Ref(self.heap.len() - 1))
    }

    /// A copy of the items of the tuple or list `v`, charged (the source may be referenced many
    /// times through the memo).
    fn copy_seq(&mut self, v: &V) -> R<Option<Vec<V>>> {
        let n = match self.seq(v) {
            Some(items) => items.len(),
            None => return Ok(None),
        };
        self.charge_values(n)?;
        Ok(self.seq(v).map(<[V]>::to_vec))
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> R<V> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> R<&V> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> R<Vec<V>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.err("MARK beyond the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    /// The memo index that PUT or GET opcode `op` carries: a decimal text line (`p`, `g`; `bad` is
    /// the error when it is not a number), one byte (`q`, `h`) or four little-endian ones (`r`,
    /// `j`).
    fn memo_index(&mut self, op: u8, bad: &str) -> R<u64> {
        match op {
            b'p' | b'g' => {
                let line = self.read_line_str()?;
                line.parse::<u64>().map_err(|_| self.err(bad))
            }
            b'q' | b'h' => Ok(u64::from(self.read_u8()?)),
            _ => Ok(u64::from(self.read_u32()?)),
        }
    }

    fn memo_put(&mut self, idx: u32) -> R<()> {
        let v = self.top()?.clone();
        if !self.memo.contains_key(&idx) {
            if self.memo.len() >= MAX_MEMO {
                return Err(ErrorKind::Limit(format!(
                    "{}: pickle memo larger than {MAX_MEMO} entries",
                    self.part
                )));
            }
            self.charge(INDEX_ENTRY + size_of::<V>() as u64)?;
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> R<()> {
        let v = u32::try_from(idx)
            .ok()
            .and_then(|i| self.memo.get(&i))
            .cloned()
            .ok_or_else(|| self.err(format!("memo entry {idx} was never stored")))?;
        self.push(v)
    }

    fn obj(&self, v: &V) -> Option<&Obj> {
        match v {
            V::Ref(i) => self.heap.get(*i),
            _ => None,
        }
    }

    fn seq(&self, v: &V) -> Option<&[V]> {
        match self.obj(v)? {
            Obj::Tuple(items) | Obj::List(items) => Some(items),
            _ => None,
        }
    }

    fn global_name(&self, v: &V) -> Option<(Arc<str>, Arc<str>)> {
        match self.obj(v)? {
            Obj::Global(m, n) => Some((m.clone(), n.clone())),
            _ => None,
        }
    }

    fn class_name(&self, v: &V) -> String {
        match self.obj(v) {
            Some(Obj::Global(m, n)) => format!("{m}.{n}"),
            Some(Obj::Object { class, .. }) => class.clone(),
            _ => "<unknown callable>".to_owned(),
        }
    }

    fn int_list(&mut self, v: &V, what: &str) -> R<Vec<i64>> {
        let n = self
            .seq(v)
            .ok_or_else(|| self.err(format!("tensor {what} is not a tuple")))?
            .len();
        self.charge((n as u64).saturating_mul(8))?;
        let items = self.seq(v).unwrap_or_default();
        items
            .iter()
            .map(|x| match x {
                V::Int(i) if *i >= 0 => Ok(*i),
                _ => Err(self.err(format!(
                    "tensor {what} holds a non-integer or negative entry"
                ))),
            })
            .collect()
    }

    fn run(&mut self) -> R<V> {
        loop {
            self.op_pos = self.pos;
            if self.pos >= self.limit {
                return Err(ErrorKind::Truncated(format!(
                    "{} ends at byte {} without a STOP opcode",
                    self.part, self.pos
                )));
            }
            let op = self.read_u8()?;
            match op {
                0x80 => {
                    let proto = self.read_u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto} is not supported")));
                    }
                }
                0x95 => {
                    // FRAME only announces how many bytes follow; nothing to do with it.
                    self.read_u64()?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(ErrorKind::Limit(format!(
                            "{}: too many nested MARKs",
                            self.part
                        )));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(V::None)?,
                0x88 => self.push(V::Bool(true))?,
                0x89 => self.push(V::Bool(false))?,
                b'J' => {
                    let x = i32::from_le_bytes(self.read_array()?);
                    self.push(V::Int(i64::from(x)))?;
                }
                b'K' => {
                    let x = self.read_u8()?;
                    self.push(V::Int(i64::from(x)))?;
                }
                b'M' => {
                    let x = u16::from_le_bytes(self.read_array()?);
                    self.push(V::Int(i64::from(x)))?;
                }
                0x8a => {
                    let n = self.read_u8()?;
                    let bytes = self.read_bytes(u64::from(n))?;
                    self.push(decode_long(&bytes))?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.read_array()?);
                    let n = u64::try_from(n).map_err(|_| self.err("LONG4 with negative length"))?;
                    let bytes = self.read_bytes(n)?;
                    self.push(decode_long(&bytes))?;
                }
                b'G' => {
                    let x = f64::from_be_bytes(self.read_array()?);
                    self.push(V::Float(x))?;
                }
                b'I' => {
                    let line = self.read_line_str()?;
                    let v = match line.as_str() {
                        "01" => V::Bool(true),
                        "00" => V::Bool(false),
                        s => match s.parse::<i64>() {
                            Ok(i) => V::Int(i),
                            Err(_) => match s.parse::<i128>() {
                                Ok(i) => i128_to_value(i),
                                Err(_) => return Err(self.err("INT argument is not a number")),
                            },
                        },
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.read_line_str()?;
                    let s = line.strip_suffix('L').unwrap_or(&line);
                    let v = match s.parse::<i128>() {
                        Ok(i) => i128_to_value(i),
                        Err(_)
                            if !s.is_empty()
                                && s.bytes().all(|c| c.is_ascii_digit() || c == b'-') =>
                        {
                            V::Big(Arc::from(s))
                        }
                        Err(_) => return Err(self.err("LONG argument is not a number")),
                    };
                    self.push(v)?;
                }
                b'F' => {
                    let line = self.read_line_str()?;
                    let x = line
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.err("FLOAT argument is not a number"))?;
                    self.push(V::Float(x))?;
                }
                b'S' => {
                    let line = self.read_line()?;
                    let bytes = unquote_string(&line)
                        .ok_or_else(|| self.err("STRING argument is not quoted"))?;
                    let v = match String::from_utf8(bytes) {
                        Ok(s) => V::Str(Arc::from(s)),
                        Err(e) => V::Bytes(Arc::from(e.into_bytes())),
                    };
                    self.push(v)?;
                }
                b'V' => {
                    let line = self.read_line()?;
                    self.push(V::Str(Arc::from(raw_unicode_escape(&line))))?;
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        u64::from(self.read_u32()?)
                    } else {
                        u64::from(self.read_u8()?)
                    };
                    let bytes = self.read_bytes(n)?;
                    // Python 2 `str`: text when it decodes, bytes otherwise.
                    let v = match String::from_utf8(bytes) {
                        Ok(s) => V::Str(Arc::from(s)),
                        Err(e) => V::Bytes(Arc::from(e.into_bytes())),
                    };
                    self.push(v)?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u64::from(self.read_u32()?),
                        0x8c => u64::from(self.read_u8()?),
                        _ => self.read_u64()?,
                    };
                    let bytes = self.read_bytes(n)?;
                    let v = self.utf8(bytes)?;
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u64::from(self.read_u32()?),
                        b'C' => u64::from(self.read_u8()?),
                        _ => self.read_u64()?,
                    };
                    let bytes = self.read_bytes(n)?;
                    self.push(V::Bytes(Arc::from(bytes)))?;
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Dict::default()))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                0x8f => {
                    let v = self.alloc(Obj::Set(Vec::new()))?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.alloc(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::List(items))?;
                    self.push(v)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Set(items))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("DICT with an odd number of items"));
                    }
                    let mut d = Dict::default();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(k, v);
                    }
                    let v = self.alloc(Obj::Dict(d))?;
                    self.push(v)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    match target {
                        V::Ref(i) => match self.heap.get_mut(i) {
                            Some(Obj::Set(s)) => s.extend(items),
                            _ => return Err(self.err("ADDITEMS to a non-set")),
                        },
                        _ => return Err(self.err("ADDITEMS to a non-set")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS with an odd number of items"));
                    }
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                b'p' | b'q' | b'r' => {
                    let idx = self.memo_index(op, "bad PUT index")?;
                    let idx = u32::try_from(idx).map_err(|_| self.err("bad PUT index"))?;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = u32::try_from(self.memo.len()).map_err(|_| self.err("memo full"))?;
                    self.memo_put(idx)?;
                }
                b'g' | b'h' | b'j' => {
                    let idx = self.memo_index(op, "bad GET index")?;
                    self.memo_get(idx)?;
                }
                b'c' => {
                    let module = self.read_line_str()?;
                    let name = self.read_line_str()?;
                    let v = self.alloc(Obj::Global(Arc::from(module), Arc::from(name)))?;
                    self.push(v)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (V::Str(module), V::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let v = self.alloc(Obj::Global(module, name))?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self
                        .copy_seq(&args)?
                        .ok_or_else(|| self.err("REDUCE arguments are not a tuple"))?;
                    let v = self.call(&callable, args, 0)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self
                        .copy_seq(&args)?
                        .ok_or_else(|| self.err("NEWOBJ arguments are not a tuple"))?;
                    let v = self.new_object(&cls, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let mut args = self
                        .copy_seq(&args)?
                        .ok_or_else(|| self.err("NEWOBJ_EX arguments are not a tuple"))?;
                    args.push(kwargs);
                    let v = self.new_object(&cls, args)?;
                    self.push(v)?;
                }
                b'i' => {
                    let module = self.read_line_str()?;
                    let name = self.read_line_str()?;
                    let args = self.pop_mark()?;
                    let v = self.alloc(Obj::Object {
                        class: format!("{module}.{name}"),
                        args,
                        state: None,
                        items: Vec::new(),
                        dict_items: Vec::new(),
                    })?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let v = self.new_object(&cls, items)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    self.build(&target, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                _ => {
                    return Err(ErrorKind::UnsupportedOpcode {
                        part: self.part.to_owned(),
                        offset: self.op_pos,
                        opcode: op,
                        name: opcode_name(op),
                    })
                }
            }
        }
    }

    fn append(&mut self, target: &V, items: Vec<V>) -> R<()> {
        let V::Ref(i) = target else {
            return Err(self.err("APPEND to a non-list"));
        };
        match self.heap.get_mut(*i) {
            Some(Obj::List(l)) => l.extend(items),
            Some(Obj::Set(s)) => s.extend(items),
            Some(Obj::Object { items: l, .. }) => l.extend(items),
            _ => return Err(self.err("APPEND to a non-list")),
        }
        Ok(())
    }

    fn set_items(&mut self, target: &V, items: Vec<V>) -> R<()> {
        let V::Ref(i) = target else {
            return Err(self.err("SETITEM on a non-dict"));
        };
        // The dict's index or the object's item list grows by one entry per pair.
        self.charge((items.len() as u64 / 2).saturating_mul(INDEX_ENTRY))?;
        match self.heap.get_mut(*i) {
            Some(Obj::Dict(d)) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                }
            }
            Some(Obj::Object { dict_items, .. }) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict_items.push((k, v));
                }
            }
            _ => return Err(self.err("SETITEM on a non-dict")),
        }
        Ok(())
    }

    fn build(&mut self, target: &V, state: V) -> R<()> {
        let V::Ref(i) = target else {
            return Err(self.err("BUILD on a value that is not an object"));
        };
        match self.heap.get_mut(*i) {
            Some(Obj::Object { state: s, .. }) => *s = Some(state),
            // Attributes set on dicts (OrderedDict's `_metadata`), tensors (subclass state) and
            // other containers do not matter for reading weights.
            Some(_) => {}
            None => return Err(self.err("BUILD on a dangling reference")),
        }
        Ok(())
    }

    fn opaque(&mut self, class: String, args: Vec<V>) -> R<V> {
        self.charge(class.len() as u64)?;
        self.alloc(Obj::Object {
            class,
            args,
            state: None,
            items: Vec::new(),
            dict_items: Vec::new(),
        })
    }

    /// `cls.__new__(cls, *args)`: containers for the builtin container classes, else an opaque
    /// object.
    fn new_object(&mut self, cls: &V, args: Vec<V>) -> R<V> {
        if let Some((module, name)) = self.global_name(cls) {
            match (&*module, &*name) {
                ("collections", "OrderedDict")
                | ("collections", "defaultdict")
                | ("builtins" | "__builtin__", "dict") => {
                    return self.alloc(Obj::Dict(Dict::default()));
                }
                ("builtins" | "__builtin__", "list") => return self.alloc(Obj::List(Vec::new())),
                ("builtins" | "__builtin__", "set") => return self.alloc(Obj::Set(Vec::new())),
                _ => {}
            }
        }
        let class = self.class_name(cls);
        self.opaque(class, args)
    }

    /// REDUCE: interprets the whitelisted callables; everything else becomes an opaque object.
    fn call(&mut self, callable: &V, args: Vec<V>, depth: usize) -> R<V> {
        let Some((module, name)) = self.global_name(callable) else {
            let class = self.class_name(callable);
            return self.opaque(class, args);
        };
        match (&*module, &*name) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let n = args.first().and_then(|a| self.seq(a)).map_or(0, <[V]>::len);
                self.charge((n as u64).saturating_mul(2 * size_of::<V>() as u64 + INDEX_ENTRY))?;
                let pairs: Vec<(V, V)> = args
                    .first()
                    .and_then(|a| self.seq(a))
                    .map(|ps| {
                        ps.iter()
                            .filter_map(|p| match self.seq(p) {
                                Some([k, v]) => Some((k.clone(), v.clone())),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut d = Dict::default();
                for (k, v) in pairs {
                    d.insert(k, v);
                }
                self.alloc(Obj::Dict(d))
            }
            ("collections", "defaultdict") => self.alloc(Obj::Dict(Dict::default())),
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                let items = match args.first() {
                    Some(a) => self.copy_seq(a)?,
                    None => None,
                };
                self.alloc(Obj::Set(items.unwrap_or_default()))
            }
            ("builtins" | "__builtin__", "list") => {
                let items = match args.first() {
                    Some(a) => self.copy_seq(a)?,
                    None => None,
                };
                self.alloc(Obj::List(items.unwrap_or_default()))
            }
            ("builtins" | "__builtin__", "tuple") | ("torch", "Size") => {
                let items = match args.first() {
                    Some(a) => self.copy_seq(a)?,
                    None => None,
                };
                self.alloc(Obj::Tuple(items.unwrap_or_default()))
            }
            ("_codecs", "encode") => match (args.first(), args.get(1).and_then(str_of)) {
                (Some(V::Str(s)), Some(enc)) if enc.len() <= 16 => {
                    self.charge(s.len() as u64)?;
                    let bytes = match enc.to_ascii_lowercase().as_str() {
                        "latin1" | "latin-1" | "iso-8859-1" => latin1(s),
                        "utf8" | "utf-8" => Some(s.as_bytes().to_vec()),
                        _ => None,
                    };
                    match bytes {
                        Some(b) => Ok(V::Bytes(Arc::from(b))),
                        None => self.opaque(format!("{module}.{name}"), args),
                    }
                }
                _ => self.opaque(format!("{module}.{name}"), args),
            },
            ("torch._utils", "_rebuild_tensor") => self.rebuild_tensor(&args, None, 4),
            // (storage, offset, size, stride, quantizer params, ...): described like any tensor,
            // its quantized storage class named as its dtype, so reading it is a clear error.
            ("torch._utils", "_rebuild_qtensor") => self.rebuild_tensor(&args, None, 4),
            ("torch._utils", "_rebuild_tensor_v2") => self.rebuild_tensor(&args, None, 4),
            ("torch._utils", "_rebuild_tensor_v3") => {
                let dtype = args
                    .get(6)
                    .ok_or_else(|| self.err("_rebuild_tensor_v3 without a dtype"))?;
                let dtype = match self.global_name(dtype) {
                    Some((m, n)) if &*m == "torch" && n.len() <= 64 => n.to_string(),
                    _ => return Err(self.err("_rebuild_tensor_v3 dtype is not a torch dtype")),
                };
                self.rebuild_tensor(&args, Some(dtype), 7)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match args.first() {
                    Some(t @ V::Ref(i)) if matches!(self.heap.get(*i), Some(Obj::Tensor(_))) => {
                        Ok(t.clone())
                    }
                    _ => Err(self.err("_rebuild_parameter of something that is not a tensor")),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2") if depth < 4 => {
                // (func, new_type, args, state): the tensor subclass does not matter here.
                let (Some(func), Some(inner)) = (args.first(), args.get(2)) else {
                    return Err(self.err("_rebuild_from_type_v2 with too few arguments"));
                };
                let inner = self
                    .copy_seq(inner)?
                    .ok_or_else(|| self.err("_rebuild_from_type_v2 arguments are not a tuple"))?;
                let func = func.clone();
                self.call(&func, inner, depth + 1)
            }
            ("copyreg" | "copy_reg", "_reconstructor") => {
                let class = args
                    .first()
                    .map(|c| self.class_name(c))
                    .unwrap_or_else(|| "<unknown class>".to_owned());
                self.opaque(class, args.into_iter().skip(1).collect())
            }
            _ => self.opaque(format!("{module}.{name}"), args),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` (and v3 with a dtype, and
    /// the original `_rebuild_tensor`); `min_args` guards the argument count.
    fn rebuild_tensor(&mut self, args: &[V], dtype_name: Option<String>, min_args: usize) -> R<V> {
        if args.len() < min_args {
            return Err(self.err("tensor rebuild with too few arguments"));
        }
        let (si, view_offset) = match self.obj(&args[0]) {
            Some(Obj::Storage(si, off)) => (*si, *off),
            _ => return Err(self.err("tensor rebuilt from something that is not a storage")),
        };
        let storage = self
            .storages
            .get(si)
            .cloned()
            .ok_or_else(|| self.err("dangling storage reference"))?;
        let offset = match args[1] {
            V::Int(o) if o >= 0 => o,
            _ => return Err(self.err("tensor storage offset is not a non-negative integer")),
        };
        let shape = self.int_list(&args[2], "size")?;
        let stride = self.int_list(&args[3], "stride")?;
        if shape.len() != stride.len() {
            return Err(self.err("tensor size and stride have different lengths"));
        }
        let offset = i64::try_from(view_offset)
            .ok()
            .and_then(|v| offset.checked_add(v))
            .ok_or_else(|| self.err("tensor offset overflows"))?;
        let (dtype, dtype_name) = match (&storage.kind, dtype_name) {
            // An unknown storage class is named where the dtype would be, whatever v3 says.
            (StorageKind::Unknown(class), _) => (None, class.clone()),
            (_, Some(n)) => (DType::from_torch_name(&n), n),
            (StorageKind::Typed(d), None) => (Some(*d), d.name().to_owned()),
            (StorageKind::Untyped, None) => (Some(DType::U8), "uint8".to_owned()),
        };
        let nbytes = storage.nbytes();
        if let (Some(d), Some(nbytes)) = (dtype, nbytes) {
            self.check_bounds(&shape, &stride, offset, nbytes / d.size() as u64)?;
        }
        self.charge((storage.key.len() + dtype_name.len()) as u64)?;
        let meta = TensorMeta {
            dtype,
            dtype_name,
            shape,
            stride,
            offset,
            data: TensorData::Storage {
                key: storage.key,
                nbytes,
            },
        };
        self.alloc(Obj::Tensor(meta))
    }

    fn check_bounds(&self, shape: &[i64], stride: &[i64], offset: i64, elems: u64) -> R<()> {
        check_view(shape, stride, offset, elems).map_err(|e| self.err(e))
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, pid: &V) -> R<V> {
        let items = self
            .copy_seq(pid)?
            .ok_or_else(|| self.err("persistent id is not a tuple"))?;
        if items.len() < 5 || items.first().and_then(str_of) != Some("storage") {
            return Err(self.err("persistent id is not a storage reference"));
        }
        let key = match &items[2] {
            V::Int(i) => i.to_string(),
            other => match str_of(other) {
                Some(k) if k.len() <= MAX_STORAGE_KEY => k.to_owned(),
                Some(k) => {
                    return Err(self.err(format!(
                        "storage key of {} bytes (torch writes short numbers)",
                        k.len()
                    )))
                }
                None => return Err(self.err("storage key is not a string")),
            },
        };
        let Some((module, class)) = self.global_name(&items[1]) else {
            return Err(self.err("storage type is not a class reference"));
        };
        let numel = match items[4] {
            V::Int(n) if n >= 0 => n as u64,
            _ => return Err(self.err("storage size is not a non-negative integer")),
        };
        let view_offset = match items.get(5).and_then(|v| self.seq(v)) {
            Some([_, V::Int(off), ..]) if *off >= 0 => *off as u64,
            _ => 0,
        };
        let si = match self.storage_index.get(&key) {
            Some(&si) => si,
            None => {
                let kind = if &*class == "UntypedStorage" {
                    StorageKind::Untyped
                } else {
                    match DType::from_storage_class(&class) {
                        Some(d) if module.starts_with("torch") => StorageKind::Typed(d),
                        _ => StorageKind::Unknown(format!("{module}.{class}")),
                    }
                };
                let cost = 2 * key.len() + module.len() + class.len() + size_of::<StorageRef>();
                self.charge(INDEX_ENTRY + cost as u64)?;
                self.storages.push(StorageRef {
                    key: key.clone(),
                    kind,
                    numel,
                });
                self.storage_index.insert(key, self.storages.len() - 1);
                self.storages.len() - 1
            }
        };
        self.alloc(Obj::Storage(si, view_offset))
    }
}

/// The string of a `str` (or UTF-8 `bytes`) value, borrowed.
fn str_of(v: &V) -> Option<&str> {
    match v {
        V::Str(s) => Some(s),
        V::Bytes(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// Builds the [`Value`] tree of a finished machine: strings stay shared, containers reached twice
/// are built twice (charged to the meter), and a container reached from inside itself becomes
/// [`Value::Recursive`].
struct Tree<'a> {
    heap: &'a [Obj],
    storages: &'a [StorageRef],
    part: &'a str,
    meter: &'a mut Meter,
    /// Containers on the path being built.
    visiting: Vec<bool>,
}

impl Tree<'_> {
    fn charge(&mut self, bytes: usize) -> R<()> {
        let part = self.part;
        self.meter.charge(bytes as u64, || {
            format!("building the objects of `{part}` (shared references are copied)")
        })
    }

    fn dangling(&self, what: &str) -> ErrorKind {
        ErrorKind::Pickle {
            part: self.part.to_owned(),
            offset: 0,
            detail: format!("dangling {what} reference"),
        }
    }

    fn seq(&mut self, xs: &[V], depth: usize) -> R<Vec<Value>> {
        xs.iter().map(|x| self.value(x, depth)).collect()
    }

    fn pairs(&mut self, xs: &[(V, V)], depth: usize) -> R<Vec<(Value, Value)>> {
        xs.iter()
            .map(|(k, v)| Ok((self.value(k, depth)?, self.value(v, depth)?)))
            .collect()
    }

    fn value(&mut self, v: &V, depth: usize) -> R<Value> {
        self.charge(size_of::<Value>())?;
        let i = match v {
            V::None => return Ok(Value::None),
            V::Bool(b) => return Ok(Value::Bool(*b)),
            V::Int(i) => return Ok(Value::Int(*i)),
            V::Big(s) => {
                self.charge(s.len())?;
                return Ok(Value::BigInt(s.to_string()));
            }
            V::Float(x) => return Ok(Value::Float(*x)),
            V::Str(s) => return Ok(Value::Str(s.clone())),
            V::Bytes(b) => return Ok(Value::Bytes(b.clone())),
            V::Ref(i) => *i,
        };
        if depth >= MAX_DEPTH {
            return Err(ErrorKind::Limit(format!(
                "{}: containers nested deeper than {MAX_DEPTH} levels",
                self.part
            )));
        }
        let heap = self.heap;
        let Some(obj) = heap.get(i) else {
            return Err(self.dangling("object"));
        };
        if self.visiting.get(i).copied().unwrap_or(false) {
            return Ok(Value::Recursive);
        }
        if let Some(flag) = self.visiting.get_mut(i) {
            *flag = true;
        }
        let out = match obj {
            Obj::List(xs) => Value::List(self.seq(xs, depth + 1)?),
            Obj::Tuple(xs) => Value::Tuple(self.seq(xs, depth + 1)?),
            Obj::Set(xs) => Value::Set(self.seq(xs, depth + 1)?),
            Obj::Dict(d) => Value::Dict(self.pairs(&d.items, depth + 1)?),
            Obj::Global(m, n) => {
                self.charge(m.len() + n.len() + 1)?;
                Value::Global(format!("{m}.{n}"))
            }
            Obj::Object {
                class,
                args,
                state,
                items,
                dict_items,
            } => {
                self.charge(size_of::<Object>() + class.len())?;
                let args = self.seq(args, depth + 1)?;
                let state = match state {
                    Some(s) => Some(self.value(s, depth + 1)?),
                    None => None,
                };
                let items = self.seq(items, depth + 1)?;
                let dict_items = self.pairs(dict_items, depth + 1)?;
                Value::Object(Box::new(Object {
                    class: class.clone(),
                    args,
                    state,
                    items,
                    dict_items,
                }))
            }
            Obj::Storage(si, _) => {
                let storages = self.storages;
                let Some(s) = storages.get(*si) else {
                    return Err(self.dangling("storage"));
                };
                let dtype_name = s.kind.name();
                self.charge(s.key.len() + dtype_name.len())?;
                Value::Storage {
                    key: s.key.clone(),
                    dtype_name,
                }
            }
            Obj::Tensor(t) => {
                self.charge(
                    16 * t.shape.len()
                        + t.dtype_name.len()
                        + match &t.data {
                            TensorData::Storage { key, .. } => key.len(),
                        },
                )?;
                Value::Tensor(t.clone())
            }
        };
        if let Some(flag) = self.visiting.get_mut(i) {
            *flag = false;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::checkpoint::ReadBudget;

    /// Unpickles under a 64 MiB budget.
    fn run(bytes: &[u8]) -> R<Value> {
        run_with(bytes, 64 << 20).map(|(v, _)| v)
    }

    /// Unpickles under `limit` bytes; returns the value and the bytes charged.
    fn run_with(bytes: &[u8], limit: u64) -> R<(Value, u64)> {
        let mut cur = std::io::Cursor::new(bytes);
        let mut meter = Meter::new(ReadBudget::Bytes(limit), 0, 0);
        let root = unpickle(&mut cur, bytes.len() as u64, "test.pkl", &mut meter)?.root;
        Ok((root, meter.used()))
    }

    #[test]
    fn scalars_and_containers() {
        // {'a': [1, -2, 3.5, None, True], 'b': (b'xy', 'é')} in protocol 4 with a FRAME and MEMOIZE.
        let mut p = vec![0x80, 4, 0x95];
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(b"}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG");
        p.extend_from_slice(&3.5f64.to_be_bytes());
        p.extend_from_slice(b"N\x88e\x8c\x01b\x94C\x02xy\x8c\x02\xc3\xa9\x86\x94u.");
        let v = run(&p).expect("parses");
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![
                        Value::Int(1),
                        Value::Int(-2),
                        Value::Float(3.5),
                        Value::None,
                        Value::Bool(true)
                    ])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![
                        Value::Bytes(b"xy".to_vec().into()),
                        Value::Str("é".into())
                    ])
                ),
            ])
        );
    }

    #[test]
    fn longs() {
        assert!(matches!(decode_long(&[]), V::Int(0)));
        assert!(matches!(decode_long(&[0xff]), V::Int(-1)));
        assert!(matches!(decode_long(&[0x00, 0x01]), V::Int(256)));
        let magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        match decode_long(&magic) {
            V::Big(s) => assert_eq!(&*s, "119547037146038801333356"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_classes_stay_opaque_and_nothing_runs() {
        // os.system('echo hi') via REDUCE becomes an opaque object.
        let v = run(b"\x80\x02cos\nsystem\nX\x07\x00\x00\x00echo hi\x85R.").expect("parses");
        match v {
            Value::Object(o) => {
                assert_eq!(o.class, "os.system");
                assert_eq!(o.args, vec![Value::Str("echo hi".into())]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn namespace_fields() {
        let v =
            run(b"\x80\x02cargparse\nNamespace\n)\x81}(X\x01\x00\x00\x00xK\x05ub.").expect("ok");
        assert_eq!(v.get("x"), Some(&Value::Int(5)));
        assert_eq!(v.render(100), "Namespace(x=5)");
    }

    #[test]
    fn errors_are_reported_not_panicked() {
        let unsupported = run(b"\x80\x02\x82\x01.").unwrap_err();
        assert!(
            matches!(
                unsupported,
                ErrorKind::UnsupportedOpcode {
                    opcode: 0x82,
                    offset: 2,
                    ..
                }
            ),
            "{unsupported}"
        );
        assert!(matches!(
            run(b"\x80\x02X\xff\xff\xff\x00"),
            Err(ErrorKind::Truncated(_))
        ));
        assert!(matches!(run(b"\x80\x02]"), Err(ErrorKind::Truncated(_))));
        assert!(matches!(
            run(b"\x80\x02h\x05."),
            Err(ErrorKind::Pickle { .. })
        ));
        assert!(matches!(run(b"(R."), Err(ErrorKind::Pickle { .. })));
        assert!(matches!(run(b"."), Err(ErrorKind::Pickle { .. })));
    }

    #[test]
    fn self_reference_becomes_recursive() {
        // l = []; l.append(l)
        let v = run(b"\x80\x02]q\x00h\x00a.").expect("parses");
        assert_eq!(v, Value::List(vec![Value::Recursive]));
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', 1000));
        p.extend(std::iter::repeat_n(b'a', 999));
        p.push(b'.');
        assert!(matches!(run(&p), Err(ErrorKind::Limit(_))));
    }

    /// `[s, s, ..., s]` with one memoised string `s` of `len` bytes referenced `refs` times.
    fn memo_string_list(len: usize, refs: usize) -> Vec<u8> {
        let mut p = vec![0x80, 4, b']', 0x94, b'(', 0x8d];
        p.extend_from_slice(&(len as u64).to_le_bytes());
        p.extend(std::iter::repeat_n(b'x', len));
        p.push(0x94);
        for _ in 0..refs {
            p.extend_from_slice(&[b'h', 1]);
        }
        p.extend_from_slice(b"e.");
        p
    }

    #[test]
    fn memoised_strings_are_shared_not_copied() {
        let (v, used) = run_with(&memo_string_list(1 << 20, 2000), 64 << 20).expect("parses");
        let Value::List(items) = v else {
            panic!("not a list")
        };
        assert_eq!(items.len(), 2001);
        let (Value::Str(first), Value::Str(last)) = (&items[0], &items[2000]) else {
            panic!("not strings")
        };
        assert_eq!(first.len(), 1 << 20);
        assert!(Arc::ptr_eq(first, last), "references share one string");
        // The string once, plus small per-reference costs: far from 2000 copies.
        assert!(used < (1 << 20) + (1 << 20), "charged {used}");
    }

    #[test]
    fn copies_of_shared_containers_are_charged() {
        // t = (0, 1, ..., 999) memoised; [t] * 5000 copies 5 million values into the tree.
        let mut p = vec![0x80, 4, b']', b'('];
        for i in 0..1000u16 {
            p.push(b'M');
            p.extend_from_slice(&i.to_le_bytes());
        }
        p.extend_from_slice(&[b't', 0x94, 0x30, b'(']);
        for _ in 0..5000 {
            p.extend_from_slice(&[b'h', 0]);
        }
        p.extend_from_slice(b"e.");
        let err = run_with(&p, 64 << 20).unwrap_err();
        assert!(matches!(err, ErrorKind::Budget { .. }), "{err}");
        assert!(err.to_string().contains("test.pkl"), "{err}");
        // The same with few references fits.
        let small: Vec<u8> = {
            let mut q = p[..p.len() - 2 - 2 * 5000].to_vec();
            q.extend_from_slice(&[b'h', 0, b'h', 0, b'e', b'.']);
            q
        };
        let (v, _) = run_with(&small, 64 << 20).expect("parses");
        assert!(matches!(v, Value::List(ref l) if l.len() == 2));
    }

    #[test]
    fn copied_call_arguments_are_charged() {
        // REDUCE of builtins.list(t) 20000 times with a 1000-item memoised tuple t.
        let mut p = vec![0x80, 2, b'('];
        p.extend(std::iter::repeat_n(b'N', 1000));
        p.extend_from_slice(b"tq\x00\x85q\x01cbuiltins\nlist\nq\x02](");
        for _ in 0..20000 {
            p.extend_from_slice(b"h\x02h\x01R");
        }
        p.extend_from_slice(b"e.");
        let err = run_with(&p, 32 << 20).unwrap_err();
        assert!(matches!(err, ErrorKind::Budget { .. }), "{err}");
    }

    #[test]
    fn exponential_sharing_is_bounded() {
        // x0 = []; x_{k+1} = [x_k, x_k]: 2^60 nodes when expanded.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for k in 0..60u8 {
            p.extend_from_slice(&[b'(', b'h', k, b'h', k, b'l', b'q', k + 1]);
        }
        p.push(b'.');
        assert!(matches!(run(&p), Err(ErrorKind::Budget { .. })));
    }
}
