//! Image batches from an `.npz` with `arr_0` of u8 N x H x W x 3 — the sample format of the ADM
//! evaluator and LlamaGen — stored or deflate-compressed.
//!
//! The entry is streamed by a reader thread (decompressing if needed) that hands over whole images
//! through a small bounded channel, so memory stays at a few batches whatever the file size.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use ndarray::Array4;

use super::{image_batch, DataError, ImageSource};

/// Shape of an npy array and whether its elements are u8 in C order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// numpy's type string (`|u1` for the u8 images this crate reads, `<f4`, ...).
    pub descr: String,
    /// True for column-major data, which image sources refuse.
    pub fortran_order: bool,
    /// Size of each dimension (N, H, W, C for an `arr_0` of images).
    pub shape: Vec<usize>,
}

/// Reads the npy header from the start of an entry, leaving `reader` at the first data byte.
pub fn read_npy_header(reader: &mut impl Read) -> Result<NpyHeader, String> {
    let mut magic = [0u8; 8];
    reader
        .read_exact(&mut magic)
        .map_err(|e| format!("cannot read the npy header: {e}"))?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("entry is not an npy array (bad magic)".into());
    }
    let header_len = match magic[6] {
        1 => {
            let mut len = [0u8; 2];
            reader
                .read_exact(&mut len)
                .map_err(|e| format!("truncated npy header: {e}"))?;
            usize::from(u16::from_le_bytes(len))
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            reader
                .read_exact(&mut len)
                .map_err(|e| format!("truncated npy header: {e}"))?;
            usize::try_from(u32::from_le_bytes(len))
                .map_err(|_| "npy header too long".to_string())?
        }
        v => return Err(format!("unsupported npy format version {v}")),
    };
    if header_len > 1 << 20 {
        return Err(format!("npy header of {header_len} bytes is implausible"));
    }
    let mut text = vec![0u8; header_len];
    reader
        .read_exact(&mut text)
        .map_err(|e| format!("truncated npy header: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    parse_header_dict(&text)
}

/// Parses numpy's header dict (a Python literal) strictly: exactly the keys `descr`,
/// `fortran_order` and `shape`, each value of its own type, nothing but padding after the closing
/// brace. Looser parsing once read a `'descr'` found inside another value's string.
fn parse_header_dict(text: &str) -> Result<NpyHeader, String> {
    let mut literal = Literal {
        rest: text.trim_start(),
    };
    let shown = || text.trim_end().chars().take(200).collect::<String>();
    let bad = |what: &str| format!("malformed npy header ({what}): {}", shown());
    literal.expect('{').map_err(|_| bad("no opening brace"))?;
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    loop {
        if literal.eat('}') {
            break;
        }
        let key = literal
            .string()
            .ok_or_else(|| bad("a key is not a string"))?;
        literal
            .expect(':')
            .map_err(|_| bad("no colon after a key"))?;
        match key.as_str() {
            "descr" if descr.is_none() => {
                descr = Some(literal.string().ok_or_else(|| {
                    bad("`descr` is not a plain dtype string; structured dtypes are not supported")
                })?)
            }
            "fortran_order" if fortran_order.is_none() => {
                fortran_order = Some(
                    literal
                        .boolean()
                        .ok_or_else(|| bad("`fortran_order` is not True or False"))?,
                )
            }
            "shape" if shape.is_none() => {
                shape = Some(
                    literal
                        .int_tuple()
                        .ok_or_else(|| bad("`shape` is not a tuple of integers"))?,
                )
            }
            other => return Err(bad(&format!("unexpected or repeated key `{other}`"))),
        }
        if !literal.eat(',') {
            literal
                .expect('}')
                .map_err(|_| bad("no comma or closing brace after a value"))?;
            break;
        }
    }
    if !literal.rest.trim().is_empty() {
        return Err(bad("text after the closing brace"));
    }
    match (descr, fortran_order, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(NpyHeader {
            descr,
            fortran_order,
            shape,
        }),
        _ => Err(bad("it lacks one of 'descr', 'fortran_order', 'shape'")),
    }
}

/// A cursor over the Python literal of an npy header.
struct Literal<'a> {
    rest: &'a str,
}

impl Literal<'_> {
    fn eat(&mut self, c: char) -> bool {
        match self.rest.trim_start().strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ()> {
        self.eat(c).then_some(()).ok_or(())
    }

    /// A quoted string without escapes (numpy's keys and dtype strings never have any).
    fn string(&mut self) -> Option<String> {
        let text = self.rest.trim_start();
        let quote = text.chars().next().filter(|q| *q == '\'' || *q == '"')?;
        let body = &text[1..];
        let end = body.find(quote)?;
        if body[..end].contains('\\') {
            return None;
        }
        self.rest = &body[end + 1..];
        Some(body[..end].to_string())
    }

    fn boolean(&mut self) -> Option<bool> {
        let text = self.rest.trim_start();
        let (value, rest) = if let Some(rest) = text.strip_prefix("True") {
            (true, rest)
        } else {
            (false, text.strip_prefix("False")?)
        };
        self.rest = rest;
        Some(value)
    }

    /// `()`, `(5,)`, `(5, 32, 32, 3)`; Python 2's `5L` suffix is accepted.
    fn int_tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat('(') {
            return None;
        }
        let mut values = Vec::new();
        loop {
            if self.eat(')') {
                return Some(values);
            }
            let text = self.rest.trim_start();
            let digits = text
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len());
            values.push(text[..digits].parse().ok()?);
            self.rest = &text[digits..];
            self.rest = self.rest.strip_prefix('L').unwrap_or(self.rest);
            if !self.eat(',') {
                return self.eat(')').then_some(values);
            }
        }
    }
}

/// Reads the strings of a numpy unicode array (`<U{n}`: `n` UTF-32 code points per element,
/// NUL-padded; `|U0` for empty strings) from `reader`, positioned after `header`: one string per
/// element, in C order. The data is read as it arrives, never sized from the header alone.
pub fn read_npy_strings(reader: &mut impl Read, header: &NpyHeader) -> Result<Vec<String>, String> {
    let width = header
        .descr
        .strip_prefix("<U")
        .or_else(|| header.descr.strip_prefix("|U"))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| {
            format!(
                "dtype {} is not a numpy unicode string array (save the strings as \
                 np.array(strings, dtype=str))",
                header.descr
            )
        })?;
    if header.fortran_order && header.shape.len() > 1 {
        return Err("a string array in Fortran order; save it with np.ascontiguousarray".into());
    }
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("implausibly many strings")?;
    let bytes = count
        .checked_mul(width)
        .and_then(|n| n.checked_mul(4))
        .ok_or("implausibly many strings")?;
    let mut data = Vec::new();
    reader
        .take(bytes as u64)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read the strings: {e}"))?;
    if data.len() != bytes {
        return Err(format!(
            "the string array ends early: {} of {bytes} bytes",
            data.len()
        ));
    }
    let mut strings = Vec::with_capacity(count);
    for (i, element) in data.chunks_exact(4 * width.max(1)).take(count).enumerate() {
        let text: String = element
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .take_while(|&c| c != 0)
            .map(|c| {
                char::from_u32(c).ok_or_else(|| format!("string {i}: invalid character {c:#x}"))
            })
            .collect::<Result<_, _>>()?;
        strings.push(text);
    }
    // `|U0`: every element is the empty string.
    strings.resize(count, String::new());
    Ok(strings)
}

/// Checks that an `arr_0` header describes u8 NHWC RGB (or grayscale) images; returns (N, H, W, C).
pub fn validate_image_header(header: &NpyHeader) -> Result<(usize, usize, usize, usize), String> {
    if !matches!(header.descr.as_str(), "|u1" | "<u1" | ">u1" | "u1") {
        return Err(format!(
            "`arr_0` has dtype {}, expected uint8 images (0-255); convert float images with \
             np.clip(np.round(x * 255), 0, 255).astype(np.uint8)",
            header.descr
        ));
    }
    if header.fortran_order {
        return Err("`arr_0` is stored in Fortran order; save it with np.ascontiguousarray".into());
    }
    let [n, h, w, c] = header.shape[..] else {
        return Err(format!(
            "`arr_0` has shape {:?}, expected 4 dimensions N x H x W x 3",
            header.shape
        ));
    };
    if matches!(h, 1 | 3) && !matches!(c, 1 | 3) {
        return Err(format!(
            "`arr_0` has shape {:?}, which looks like N x C x H x W; expected N x H x W x 3 \
             (use arr.transpose(0, 2, 3, 1))",
            header.shape
        ));
    }
    if !matches!(c, 1 | 3) {
        return Err(format!(
            "`arr_0` has shape {:?}: expected 3 (RGB) or 1 (grayscale) channels last",
            header.shape
        ));
    }
    if h == 0 || w == 0 {
        return Err(format!(
            "`arr_0` has shape {:?}: empty images",
            header.shape
        ));
    }
    // A corrupt header must not turn into a giant allocation: the count and sizes are claims
    // until the data proves them, so only one image's worth is ever allocated, and that only
    // within the per-image budget.
    let image_bytes = h.checked_mul(w).and_then(|p| p.checked_mul(c));
    let Some(image_bytes) = image_bytes.filter(|b| b.checked_mul(n).is_some()) else {
        return Err(format!(
            "`arr_0` has shape {:?}: implausibly large images",
            header.shape
        ));
    };
    let limit = crate::budget::image_allowance();
    if image_bytes as u64 > limit {
        return Err(format!(
            "`arr_0` holds {w}x{h} images of {} each, over the per-image limit of {}; {}",
            crate::budget::human_bytes(image_bytes as u64),
            crate::budget::human_bytes(limit),
            crate::budget::how_to_raise()
        ));
    }
    Ok((n, h, w, c))
}

/// Images from an npz's `arr_0`, streamed in batches.
pub struct NpzImages {
    path: PathBuf,
    len: usize,
    height: usize,
    width: usize,
    delivered: usize,
    receiver: Receiver<Result<Vec<u8>, String>>,
}

fn open_archive(path: &Path) -> Result<zip::ZipArchive<BufReader<File>>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::invalid(path, format!("not a readable npz (zip) file: {e}")))
}

/// Every entry of the npz at `path` with its npy header (name without `.npy`), in archive order;
/// only the headers are read.
pub fn npz_entries(path: &Path) -> Result<Vec<(String, NpyHeader)>, DataError> {
    let mut archive = open_archive(path)?;
    (0..archive.len())
        .map(|i| {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| DataError::invalid(path, format!("cannot read entry {i}: {e}")))?;
            let name = entry.name().to_string();
            let header = read_npy_header(&mut entry)
                .map_err(|m| DataError::invalid(path, format!("`{name}`: {m}")))?;
            let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
            Ok((name, header))
        })
        .collect()
}

/// Opens `reader`'s `arr_0` entry and returns it with its validated header.
fn open_arr0(path: &Path) -> Result<(zip::ZipArchive<BufReader<File>>, NpyHeader, u64), DataError> {
    let mut archive = open_archive(path)?;
    let name = ["arr_0.npy", "arr_0"]
        .into_iter()
        .find(|n| archive.index_for_name(n).is_some())
        .ok_or_else(|| {
            let names: Vec<&str> = archive.file_names().collect();
            DataError::invalid(
                path,
                format!(
                    "has no `arr_0` entry (entries: {}); expected images as np.savez(path, images)",
                    names.join(", ")
                ),
            )
        })?;
    let (header, stored) = {
        let mut entry = archive
            .by_name(name)
            .map_err(|e| DataError::invalid(path, format!("cannot read `arr_0`: {e}")))?;
        let stored = entry.size();
        let header = read_npy_header(&mut entry)
            .map_err(|m| DataError::invalid(path, format!("`arr_0`: {m}")))?;
        (header, stored)
    };
    Ok((archive, header, stored))
}

impl NpzImages {
    /// Opens `path` and starts streaming its images; `batch_hint` bounds how many images are
    /// buffered ahead.
    pub fn open(path: &Path, batch_hint: usize) -> Result<Self, DataError> {
        let (_, header, stored) = open_arr0(path)?;
        let (n, h, w, c) =
            validate_image_header(&header).map_err(|m| DataError::invalid(path, m))?;
        // The zip directory says how many bytes the entry holds: a header that claims more images
        // than that is refused now rather than after the images that are there.
        let claimed = (n as u64).saturating_mul((h * w * c) as u64);
        if claimed > stored {
            return Err(DataError::invalid(
                path,
                format!(
                    "`arr_0` is truncated or corrupt: its header claims {n} images of {w}x{h}x{c} ({}) but the entry holds {}",
                    crate::budget::human_bytes(claimed),
                    crate::budget::human_bytes(stored)
                ),
            ));
        }
        // At most twice a batch of images in flight, and at most a quarter of the budget.
        let rgb_bytes = (h * w * 3).max(1) as u64;
        let in_flight = (crate::budget::image_allowance() / rgb_bytes).max(1);
        let (sender, receiver) = sync_channel((batch_hint.max(1) * 2).min(in_flight as usize));
        let thread_path = path.to_path_buf();
        std::thread::spawn(move || {
            let result = (|| -> Result<(), String> {
                let (mut archive, _, _) = open_arr0(&thread_path).map_err(|e| e.to_string())?;
                let name = if archive.index_for_name("arr_0.npy").is_some() {
                    "arr_0.npy"
                } else {
                    "arr_0"
                };
                let mut entry = archive.by_name(name).map_err(|e| e.to_string())?;
                read_npy_header(&mut entry)?;
                let mut image = vec![0u8; h * w * c];
                for i in 0..n {
                    entry
                        .read_exact(&mut image)
                        .map_err(|e| format!("`arr_0` ends early, at image {i} of {n}: {e}"))?;
                    let rgb = if c == 3 {
                        image.clone()
                    } else {
                        image.iter().flat_map(|&v| [v, v, v]).collect()
                    };
                    if sender.send(Ok(rgb)).is_err() {
                        return Ok(());
                    }
                }
                if entry.read(&mut [0u8; 1]).map_err(|e| e.to_string())? > 0 {
                    return Err(format!(
                        "`arr_0` has data after its {n} images: its header's shape does not describe it"
                    ));
                }
                Ok(())
            })();
            if let Err(message) = result {
                let _ = sender.send(Err(message));
            }
        });
        Ok(NpzImages {
            path: path.to_path_buf(),
            len: n,
            height: h,
            width: w,
            delivered: 0,
            receiver,
        })
    }

    /// Image height and width.
    pub fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }
}

impl ImageSource for NpzImages {
    fn len(&self) -> usize {
        self.len
    }

    fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError> {
        let count =
            super::affordable_batch(max, (self.height, self.width)).min(self.len - self.delivered);
        if count == 0 {
            return Ok(None);
        }
        let mut data = Vec::with_capacity(count * self.height * self.width * 3);
        for _ in 0..count {
            match self.receiver.recv() {
                Ok(Ok(image)) => data.extend_from_slice(&image),
                Ok(Err(message)) => return Err(DataError::invalid(&self.path, message)),
                Err(_) => {
                    return Err(DataError::invalid(
                        &self.path,
                        "the image reader stopped unexpectedly",
                    ))
                }
            }
        }
        self.delivered += count;
        if self.delivered == self.len {
            // The reader's last word: data after the last image, or a failed checksum.
            if let Ok(Err(message)) = self.receiver.recv() {
                return Err(DataError::invalid(&self.path, message));
            }
        }
        image_batch(&self.path, (count, self.height, self.width), data)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_headers() {
        let h = parse_header_dict(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (5, 32, 32, 3), }",
        )
        .unwrap();
        assert_eq!(h.shape, vec![5, 32, 32, 3]);
        assert_eq!(validate_image_header(&h).unwrap(), (5, 32, 32, 3));
        let one =
            parse_header_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }").unwrap();
        assert_eq!(one.shape, vec![7]);
        assert!(validate_image_header(&one)
            .unwrap_err()
            .contains("dtype <f4"));
    }

    #[test]
    fn header_parsing_is_strict() {
        let descr_in_a_string =
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), 'x': \"'descr': '|u1'\"}";
        assert!(parse_header_dict(descr_in_a_string)
            .unwrap_err()
            .contains("unexpected or repeated key `x`"));
        let reordered = "{'shape': (4, 2), 'fortran_order': True, 'descr': '<f4'}  \n";
        let h = parse_header_dict(reordered).unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("<f4", true, vec![4, 2])
        );
        assert_eq!(
            parse_header_dict("{'descr': '|u1', 'fortran_order': False, 'shape': (3L, 2L)}")
                .unwrap()
                .shape,
            vec![3, 2]
        );
        assert_eq!(
            parse_header_dict("{'descr': '<f8', 'fortran_order': False, 'shape': ()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        for bad in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} trailing",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'descr': '|u1', 'fortran_order': False, 'shape': (4,)}",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-4,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            "'descr': '<f4'",
        ] {
            assert!(parse_header_dict(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_absurd_shapes() {
        let huge = NpyHeader {
            descr: "|u1".into(),
            fortran_order: false,
            shape: vec![1, 1 << 40, 1 << 40, 3],
        };
        assert!(validate_image_header(&huge)
            .unwrap_err()
            .contains("implausibly large"));
    }

    #[test]
    fn rejects_nchw_and_wrong_rank() {
        let nchw = NpyHeader {
            descr: "|u1".into(),
            fortran_order: false,
            shape: vec![4, 3, 64, 64],
        };
        assert!(validate_image_header(&nchw)
            .unwrap_err()
            .contains("N x C x H x W"));
        let rank3 = NpyHeader {
            descr: "|u1".into(),
            fortran_order: false,
            shape: vec![64, 64, 3],
        };
        assert!(validate_image_header(&rank3)
            .unwrap_err()
            .contains("4 dimensions"));
    }
}
