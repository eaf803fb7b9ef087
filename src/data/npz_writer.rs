//! Writes an ADM-style npz whose `arr_0` images are streamed in one at a time (so a 10,000-image
//! reference batch is never held in memory), followed by small arrays such as `mu` and `sigma`.
//! The file is built under a temporary name and renamed into place by [`ImageNpzWriter::finish`];
//! dropped unfinished, it leaves nothing behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ndarray::{ArrayBase, ArrayView3, Data, Dimension};
use ndarray_npy::{WritableElement, WriteNpyExt};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::DataError;
use crate::io::Abandonable;

/// A streaming writer of `arr_0` (u8 N x H x W x 3) plus further arrays.
pub struct ImageNpzWriter {
    zip: Option<ZipWriter<BufWriter<Abandonable>>>,
    /// Set when the writer is dropped unfinished (see [`Abandonable`]).
    abandoned: Arc<AtomicBool>,
    tmp: PathBuf,
    path: PathBuf,
    shape: [usize; 3],
    remaining: usize,
}

/// The npy v1 header of a C-ordered u8 array of `shape`.
fn npy_u8_header(shape: &[usize]) -> Vec<u8> {
    npy_header("|u1", shape)
}

/// A whole npy file: the 1-D numpy unicode array (`<U{n}`, UTF-32 little-endian, NUL-padded to
/// the longest string) of `strings`.
pub fn npy_strings(strings: &[String]) -> Vec<u8> {
    let width = strings
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut bytes = npy_header(&format!("<U{width}"), &[strings.len()]);
    for s in strings {
        let mut n = 0;
        for c in s.chars() {
            bytes.extend_from_slice(&u32::from(c).to_le_bytes());
            n += 1;
        }
        bytes.resize(bytes.len() + 4 * (width - n), 0);
    }
    bytes
}

/// The npy v1 header of a C-ordered array of numpy dtype `descr` and `shape`.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + dict + newline, padded to a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header
}

impl ImageNpzWriter {
    /// Starts `path` with an `arr_0` entry that will hold `count` images of `height` x `width` x 3.
    pub fn create(
        path: &Path,
        count: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, DataError> {
        let tmp = crate::io::temporary_sibling(path);
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = File::create(&tmp).map_err(io)?;
        let (file, abandoned) = Abandonable::new(file);
        let mut zip = ZipWriter::new(BufWriter::new(file));
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(true);
        let mut writer = ImageNpzWriter {
            zip: None,
            abandoned,
            tmp,
            path: path.to_path_buf(),
            shape: [height, width, 3],
            remaining: count,
        };
        zip.start_file("arr_0.npy", options)
            .map_err(|e| DataError::invalid(path, format!("cannot start arr_0: {e}")))?;
        zip.write_all(&npy_u8_header(&[count, height, width, 3]))
            .map_err(io)?;
        writer.zip = Some(zip);
        Ok(writer)
    }

    fn zip(&mut self) -> Result<&mut ZipWriter<BufWriter<Abandonable>>, DataError> {
        let path = self.path.clone();
        self.zip
            .as_mut()
            .ok_or_else(|| DataError::invalid(path, "writer already finished"))
    }

    /// Appends one image (H x W x 3) to `arr_0`.
    pub fn push(&mut self, image: ArrayView3<'_, u8>) -> Result<(), DataError> {
        if image.shape() != self.shape {
            return Err(DataError::invalid(
                &self.path,
                format!(
                    "image of shape {:?} in a batch of {:?}",
                    image.shape(),
                    self.shape
                ),
            ));
        }
        if self.remaining == 0 {
            return Err(DataError::invalid(&self.path, "more images than announced"));
        }
        self.remaining -= 1;
        let bytes: Vec<u8> = image.iter().copied().collect();
        let path = self.path.clone();
        self.zip()?
            .write_all(&bytes)
            .map_err(|source| DataError::Io { path, source })
    }

    /// Adds a further array entry (after all images).
    pub fn add_array<A, S, D>(
        &mut self,
        name: &str,
        array: &ArrayBase<S, D>,
    ) -> Result<(), DataError>
    where
        A: WritableElement,
        S: Data<Elem = A>,
        D: Dimension,
    {
        let path = self.path.clone();
        array
            .write_npy(self.start_entry(name)?)
            .map_err(|e| DataError::invalid(&path, format!("cannot write {name}: {e}")))
    }

    /// Adds a numpy unicode array (`<U{n}`, `n` the longest string's characters) of `strings`
    /// (after all images), which numpy reads as `np.load(path)[name]`.
    pub fn add_strings(&mut self, name: &str, strings: &[String]) -> Result<(), DataError> {
        let path = self.path.clone();
        self.start_entry(name)?
            .write_all(&npy_strings(strings))
            .map_err(|source| DataError::Io { path, source })
    }

    /// Starts the stored entry `name.npy` after all images, for an array written into it.
    fn start_entry(
        &mut self,
        name: &str,
    ) -> Result<&mut ZipWriter<BufWriter<Abandonable>>, DataError> {
        if self.remaining != 0 {
            return Err(DataError::invalid(
                &self.path,
                format!("{} announced images were never written", self.remaining),
            ));
        }
        let path = self.path.clone();
        let zip = self.zip()?;
        zip.start_file(
            format!("{name}.npy"),
            SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
        )
        .map_err(|e| DataError::invalid(&path, format!("cannot start {name}: {e}")))?;
        Ok(zip)
    }

    /// Completes the archive and moves it into place.
    pub fn finish(mut self) -> Result<(), DataError> {
        if self.remaining != 0 {
            return Err(DataError::invalid(
                &self.path,
                format!("{} announced images were never written", self.remaining),
            ));
        }
        let path = self.path.clone();
        let zip = self
            .zip
            .take()
            .ok_or_else(|| DataError::invalid(&path, "writer already finished"))?;
        let mut inner = zip
            .finish()
            .map_err(|e| DataError::invalid(&path, format!("cannot complete the npz: {e}")))?;
        inner.flush().map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        std::fs::rename(&self.tmp, &path).map_err(|source| DataError::Io { path, source })
    }
}

impl Drop for ImageNpzWriter {
    fn drop(&mut self) {
        if self.zip.is_some() {
            self.abandoned.store(true, Ordering::Relaxed);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array4};

    #[test]
    fn header_is_padded_to_64() {
        let h = npy_u8_header(&[10, 256, 256, 3]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(*h.last().unwrap(), b'\n');
    }

    #[test]
    fn round_trips_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.npz");
        let images = Array4::from_shape_fn((3, 4, 5, 3), |(n, y, x, c)| {
            (n * 60 + y * 10 + x * 2 + c) as u8
        });
        let mut writer = ImageNpzWriter::create(&path, 3, 4, 5).unwrap();
        for image in images.outer_iter() {
            writer.push(image).unwrap();
        }
        writer
            .add_array("mu", &Array1::from(vec![1.0f64, 2.0]))
            .unwrap();
        writer.finish().unwrap();
        let mut source = super::super::npz::NpzImages::open(&path, 2).unwrap();
        use super::super::ImageSource;
        let first = source.next_batch(2).unwrap().unwrap();
        let second = source.next_batch(2).unwrap().unwrap();
        assert!(source.next_batch(2).unwrap().is_none());
        assert_eq!(first, images.slice(ndarray::s![..2, .., .., ..]));
        assert_eq!(second, images.slice(ndarray::s![2.., .., .., ..]));
    }

    #[test]
    fn strings_round_trip() {
        let strings = vec!["a cat".to_owned(), String::new(), "ünïcode ✓".to_owned()];
        let bytes = npy_strings(&strings);
        let mut reader = bytes.as_slice();
        let header = super::super::npz::read_npy_header(&mut reader).unwrap();
        assert_eq!(header.descr, "<U9");
        assert_eq!(header.shape, vec![3]);
        let read = super::super::npz::read_npy_strings(&mut reader, &header).unwrap();
        assert_eq!(read, strings);
        // A truncated array is refused.
        let mut short = &bytes[..bytes.len() - 4];
        let header = super::super::npz::read_npy_header(&mut short).unwrap();
        assert!(super::super::npz::read_npy_strings(&mut short, &header).is_err());
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.npz");
        let writer = ImageNpzWriter::create(&path, 2, 4, 4).unwrap();
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
