//! The objects a checkpoint holds, as plain data: Python scalars and containers, tensors described by
//! their storage, size, stride and offset (their bytes are read only on request), and objects of
//! classes this reader does not interpret, kept as class name plus pickled arguments and state.

use std::fmt::Write as _;
use std::sync::Arc;

/// Element types of the tensors this reader builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.float32` (`FloatStorage`): the usual weight type of LlamaGen checkpoints.
    F32,
    /// `torch.float64` (`DoubleStorage`).
    F64,
    /// `torch.float16` (`HalfStorage`), as in half-precision exports.
    F16,
    /// `torch.bfloat16` (`BFloat16Storage`), as in mixed-precision training checkpoints.
    BF16,
    /// `torch.int64` (`LongStorage`), e.g. step counters and index buffers.
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`).
    U8,
    /// `torch.bool` (`BoolStorage`), e.g. attention masks saved as buffers.
    Bool,
    /// `torch.complex64` (`ComplexFloatStorage`): two float32 per element.
    C64,
    /// `torch.complex128` (`ComplexDoubleStorage`): two float64 per element.
    C128,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::C64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::C128 => 16,
        }
    }

    /// The size of the unit whose bytes are reversed when the file is big-endian (complex numbers
    /// are two floats).
    pub(crate) fn swap_unit(self) -> usize {
        match self {
            DType::C64 | DType::C128 => self.size() / 2,
            _ => self.size(),
        }
    }

    /// The libtorch element kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            DType::F32 => tch::Kind::Float,
            DType::F64 => tch::Kind::Double,
            DType::F16 => tch::Kind::Half,
            DType::BF16 => tch::Kind::BFloat16,
            DType::I64 => tch::Kind::Int64,
            DType::I32 => tch::Kind::Int,
            DType::I16 => tch::Kind::Int16,
            DType::I8 => tch::Kind::Int8,
            DType::U8 => tch::Kind::Uint8,
            DType::Bool => tch::Kind::Bool,
            DType::C64 => tch::Kind::ComplexFloat,
            DType::C128 => tch::Kind::ComplexDouble,
        }
    }

    /// The element type of a libtorch kind, when this reader knows it.
    pub fn from_kind(kind: tch::Kind) -> Option<DType> {
        Some(match kind {
            tch::Kind::Float => DType::F32,
            tch::Kind::Double => DType::F64,
            tch::Kind::Half => DType::F16,
            tch::Kind::BFloat16 => DType::BF16,
            tch::Kind::Int64 => DType::I64,
            tch::Kind::Int => DType::I32,
            tch::Kind::Int16 => DType::I16,
            tch::Kind::Int8 => DType::I8,
            tch::Kind::Uint8 => DType::U8,
            tch::Kind::Bool => DType::Bool,
            tch::Kind::ComplexFloat => DType::C64,
            tch::Kind::ComplexDouble => DType::C128,
            _ => return None,
        })
    }

    /// PyTorch's name (`torch.float32` without the module).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
            DType::C64 => "complex64",
            DType::C128 => "complex128",
        }
    }

    /// The dtype of a typed storage class (`FloatStorage`, ...).
    pub(crate) fn from_storage_class(class: &str) -> Option<DType> {
        Some(match class {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            "ComplexFloatStorage" => DType::C64,
            "ComplexDoubleStorage" => DType::C128,
            _ => return None,
        })
    }

    /// The dtype named by a pickled `torch.<name>` dtype object.
    pub(crate) fn from_torch_name(name: &str) -> Option<DType> {
        Some(match name {
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            "complex64" | "cfloat" => DType::C64,
            "complex128" | "cdouble" => DType::C128,
            _ => return None,
        })
    }
}

/// Where a tensor's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// A storage: a torch zip entry `data/<key>`, a legacy-format storage record, or a
    /// safetensors tensor's byte range (keyed by the tensor's name).
    Storage {
        /// The storage key.
        key: String,
        /// The storage's size in bytes; `None` when its element type is unknown or the size
        /// overflows.
        nbytes: Option<u64>,
    },
}

/// A tensor as the checkpoint describes it, without its data.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    /// Element type, when this reader supports it.
    pub dtype: Option<DType>,
    /// The dtype's name as the file gives it (`float32`, or e.g. `uint16` when unsupported).
    pub dtype_name: String,
    /// Size of each dimension.
    pub shape: Vec<i64>,
    /// Stride of each dimension, in elements.
    pub stride: Vec<i64>,
    /// Offset of the first element into the storage, in elements.
    pub offset: i64,
    /// Where the bytes are.
    pub data: TensorData,
}

impl TensorMeta {
    /// Number of elements, or `None` when the shape is negative or the product overflows.
    pub fn numel(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
    }
}

/// A shape or stride as Python prints a list: `[2, 3]`.
pub(crate) fn shape_text(dims: &[i64]) -> String {
    let parts: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Checks that a view (`shape`, `stride`, `offset`, in elements) stays inside a storage of `elems`
/// elements; shapes, strides and offsets must be non-negative.
pub(crate) fn check_view(
    shape: &[i64],
    stride: &[i64],
    offset: i64,
    elems: u64,
) -> Result<(), String> {
    let Some((_, end)) = view_span(shape, stride, offset)? else {
        return Ok(());
    };
    if end > elems {
        return Err(format!(
            "size {}, stride {}, offset {offset} reach element {} of a storage with {elems} \
             elements",
            shape_text(shape),
            shape_text(stride),
            end - 1
        ));
    }
    Ok(())
}

/// The storage elements a view covers, `first..end` (end exclusive), or `None` for a view with no
/// elements; an error for negative or mismatched sizes and strides, or an overflow.
pub(crate) fn view_span(
    shape: &[i64],
    stride: &[i64],
    offset: i64,
) -> Result<Option<(u64, u64)>, String> {
    if shape.len() != stride.len() {
        return Err(format!(
            "size {} and stride {} have different lengths",
            shape_text(shape),
            shape_text(stride)
        ));
    }
    let first = u64::try_from(offset).map_err(|_| format!("negative storage offset {offset}"))?;
    if shape.iter().chain(stride).any(|&x| x < 0) {
        return Err(format!(
            "negative size or stride: {} / {}",
            shape_text(shape),
            shape_text(stride)
        ));
    }
    if shape.contains(&0) {
        return Ok(None);
    }
    let mut last = first;
    for (&d, &s) in shape.iter().zip(stride) {
        last = ((d - 1) as u64)
            .checked_mul(s as u64)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| {
                format!(
                    "size {} with stride {} overflows",
                    shape_text(shape),
                    shape_text(stride)
                )
            })?;
    }
    let end = last
        .checked_add(1)
        .ok_or_else(|| format!("size {} overflows", shape_text(shape)))?;
    Ok(Some((first, end)))
}

/// An object of a class this reader does not interpret: the class, the arguments it was built from,
/// and the state `BUILD` gave it (`__dict__` for ordinary classes such as `argparse.Namespace`).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `module.name` of the class or callable.
    pub class: String,
    /// Constructor arguments.
    pub args: Vec<Value>,
    /// State set by `BUILD`.
    pub state: Option<Value>,
    /// Items appended to the object (list-like classes).
    pub items: Vec<Value>,
    /// Items set on the object (dict-like classes).
    pub dict_items: Vec<(Value, Value)>,
}

/// A value from a checkpoint's pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// A Python `bool`.
    Bool(bool),
    /// A Python `int` that fits in i64 (step counts, `args` fields such as `image_size`).
    Int(i64),
    /// An integer too large for i64, in decimal (or as a byte count when beyond 128 bits).
    BigInt(String),
    /// A Python `float`.
    Float(f64),
    /// A Python `str`, e.g. a state-dict key or an `args` string field. Shared: a string the
    /// pickle references many times is held once.
    Str(Arc<str>),
    /// Python `bytes` or `bytearray` (or a Python 2 `str` that is not UTF-8), e.g. the raw value
    /// of a numpy scalar. Shared like [`Value::Str`].
    Bytes(Arc<[u8]>),
    /// A Python `list`.
    List(Vec<Value>),
    /// A Python `tuple`.
    Tuple(Vec<Value>),
    /// A Python `set` or `frozenset`, in pickle order.
    Set(Vec<Value>),
    /// A dict (or `collections.OrderedDict`), in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A tensor: shape, stride, dtype and where its bytes are, without the bytes.
    Tensor(TensorMeta),
    /// A bare storage (a storage pickled on its own, not inside a tensor).
    Storage {
        /// The storage key (the zip entry `data/<key>`, or the legacy storage record).
        key: String,
        /// The element type's name, as for [`TensorMeta::dtype_name`].
        dtype_name: String,
    },
    /// A reference to a class or function, `module.name`.
    Global(String),
    /// An instance of a class this reader does not interpret (e.g. `argparse.Namespace` for
    /// LlamaGen's `args`), kept as class name, arguments and state.
    Object(Box<Object>),
    /// A reference back to a container that is still being built (a cyclic structure).
    Recursive,
}

impl Value {
    /// The string, for `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, for `Int`, `Bool` and numpy integer scalars.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Object(o) => match numpy_scalar(o)? {
                Value::Int(i) => Some(i),
                _ => None,
            },
            _ => None,
        }
    }

    /// The number, for `Float`, `Int`, `Bool` and numpy scalars.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Object(o) => match numpy_scalar(o)? {
                Value::Int(i) => Some(i as f64),
                Value::Float(x) => Some(x),
                Value::Bool(b) => Some(f64::from(u8::from(b))),
                _ => None,
            },
            _ => None,
        }
    }

    /// The tensor description, for `Tensor`.
    pub fn as_tensor(&self) -> Option<&TensorMeta> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The items of a dict, or of the `__dict__` state of an opaque object such as
    /// `argparse.Namespace`.
    pub fn entries(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(items) => Some(items),
            Value::Object(o) => match &o.state {
                Some(Value::Dict(items)) => Some(items),
                // `(state, slotstate)` form of BUILD.
                Some(Value::Tuple(parts)) => match parts.first() {
                    Some(Value::Dict(items)) => Some(items),
                    _ => None,
                },
                _ if !o.dict_items.is_empty() => Some(&o.dict_items),
                _ => None,
            },
            _ => None,
        }
    }

    /// Looks up a string key of a dict, or an attribute of an opaque object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// True when this value is a tensor or a container holding one.
    pub fn contains_tensor(&self) -> bool {
        match self {
            Value::Tensor(_) => true,
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => {
                v.iter().any(Value::contains_tensor)
            }
            Value::Dict(items) => items.iter().any(|(_, v)| v.contains_tensor()),
            _ => false,
        }
    }

    /// A short Python-like rendering (`'tiny'`, `1024`, `(0.9, 0.95)`, `Namespace(lr=0.0001)`),
    /// cut to about `max_len` characters.
    pub fn render(&self, max_len: usize) -> String {
        let mut out = String::new();
        render_into(self, &mut out, max_len);
        shorten(&mut out, max_len);
        out
    }
}

/// Cuts `text` to at most `max_len` bytes (at a character boundary) followed by `...` when it is
/// longer.
pub(crate) fn shorten(text: &mut String, max_len: usize) {
    if text.len() > max_len {
        let mut cut = max_len;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
}

/// Decodes a pickled numpy scalar (`numpy.core.multiarray.scalar(dtype, bytes)`) of a common
/// type into an `Int`, `Float` or `Bool`.
fn numpy_scalar(o: &Object) -> Option<Value> {
    if !o.class.starts_with("numpy") || !o.class.ends_with("multiarray.scalar") {
        return None;
    }
    let (Some(Value::Object(dtype)), Some(Value::Bytes(bytes))) = (o.args.first(), o.args.get(1))
    else {
        return None;
    };
    let code = dtype.args.first()?.as_str()?;
    let big_endian = matches!(
        &dtype.state,
        Some(Value::Tuple(parts)) if parts.get(1).and_then(Value::as_str) == Some(">")
    );
    let mut b = bytes.to_vec();
    if big_endian {
        b.reverse();
    }
    let arr = |n: usize| -> Option<[u8; 8]> {
        if b.len() != n || n > 8 {
            return None;
        }
        let mut out = [0u8; 8];
        out[..n].copy_from_slice(&b);
        Some(out)
    };
    let sign_extend = |n: usize| -> Option<i64> {
        let raw = u64::from_le_bytes(arr(n)?);
        let shift = 64 - 8 * n as u32;
        Some(((raw << shift) as i64) >> shift)
    };
    Some(match code {
        "f8" => Value::Float(f64::from_le_bytes(arr(8)?)),
        "f4" => Value::Float(f64::from(f32::from_le_bytes(arr(4)?[..4].try_into().ok()?))),
        "i8" => Value::Int(sign_extend(8)?),
        "i4" => Value::Int(sign_extend(4)?),
        "i2" => Value::Int(sign_extend(2)?),
        "i1" => Value::Int(sign_extend(1)?),
        "u4" | "u2" | "u1" => Value::Int(u64::from_le_bytes(arr(b.len())?) as i64),
        "u8" => Value::Int(i64::try_from(u64::from_le_bytes(arr(8)?)).ok()?),
        "b1" => Value::Bool(*b.first()? != 0),
        _ => return None,
    })
}

/// Writes each of `items` with `render_item`, separated by `, `; once `out` is past `max_len`, `...`
/// stands for the rest.
fn render_items<T>(
    items: impl IntoIterator<Item = T>,
    out: &mut String,
    max_len: usize,
    mut render_item: impl FnMut(T, &mut String),
) {
    for (i, item) in items.into_iter().enumerate() {
        if out.len() > max_len {
            out.push_str("...");
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        render_item(item, out);
    }
}

fn render_seq(items: &[Value], open: &str, close: &str, out: &mut String, max_len: usize) {
    out.push_str(open);
    render_items(items, out, max_len, |v, out| render_into(v, out, max_len));
    if open == "(" && items.len() == 1 {
        out.push(',');
    }
    out.push_str(close);
}

fn render_into(v: &Value, out: &mut String, max_len: usize) {
    if out.len() > max_len {
        return;
    }
    match v {
        Value::None => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::BigInt(s) => out.push_str(s),
        Value::Float(x) => {
            let _ = write!(out, "{x:?}");
        }
        Value::Str(s) => {
            // Only what can be shown: a key may be megabytes long.
            out.push('\'');
            for c in s.chars().take(max_len.saturating_sub(out.len()) + 1) {
                out.extend(c.escape_debug());
            }
            out.push('\'');
        }
        Value::Bytes(b) => {
            out.push_str("b'");
            for &c in b.iter().take(max_len) {
                let _ = write!(out, "{}", std::ascii::escape_default(c));
            }
            out.push('\'');
        }
        Value::List(items) => render_seq(items, "[", "]", out, max_len),
        Value::Tuple(items) => render_seq(items, "(", ")", out, max_len),
        Value::Set(items) => render_seq(items, "{", "}", out, max_len),
        Value::Dict(items) => {
            out.push('{');
            render_items(items, out, max_len, |(k, v), out| {
                render_into(k, out, max_len);
                out.push_str(": ");
                render_into(v, out, max_len);
            });
            out.push('}');
        }
        Value::Tensor(t) => {
            let _ = write!(out, "tensor({} {})", t.dtype_name, shape_text(&t.shape));
        }
        Value::Storage { key, dtype_name } => {
            let _ = write!(out, "storage({dtype_name}, key {key})");
        }
        Value::Global(name) => out.push_str(name),
        Value::Object(o) => {
            if let Some(scalar) = numpy_scalar(o) {
                return render_into(&scalar, out, max_len);
            }
            let short = o.class.rsplit('.').next().unwrap_or(&o.class);
            out.push_str(short);
            out.push('(');
            match v.entries() {
                Some(fields) => render_items(fields, out, max_len, |(k, val), out| {
                    match k {
                        Value::Str(s) => out.push_str(s),
                        other => render_into(other, out, max_len),
                    }
                    out.push('=');
                    render_into(val, out, max_len);
                }),
                None => {
                    for (i, a) in o.args.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        render_into(a, out, max_len);
                    }
                }
            }
            out.push(')');
        }
        Value::Recursive => out.push_str("<recursive>"),
    }
}
