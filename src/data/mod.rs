//! Image sources: where the images to evaluate come from, read in batches so that a 50,000-image
//! set never has to sit in memory at once.

pub mod folder;
pub mod npz;
pub mod npz_writer;
pub mod pil_resize;

use std::path::PathBuf;

use ndarray::Array4;

use crate::pipeline::journal::StreamSpec;

/// Why images could not be read. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file was read but its content is not usable images (wrong format, shape or dtype).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The offending file (an `.npz`, or an image in a folder source).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The file or directory could not be opened or read.
    #[error("{}", path.display())]
    Io {
        /// The file or directory being read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl DataError {
    /// A [`DataError::Invalid`] for `path`, saying what is wrong with its content.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A finite sequence of u8 RGB images (N, H, W, 3), delivered in batches.
pub trait ImageSource {
    /// Number of images in the whole source.
    fn len(&self) -> usize;
    /// True when the source holds no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Height and width of every image delivered.
    fn image_size(&self) -> (usize, usize);
    /// The next up to `max` images, or `None` at the end.
    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError>;
    /// What the source reads, for messages and run records.
    fn describe(&self) -> String;

    /// The sample index of the image at `position` (a sharded or generated source's own
    /// numbering; else the position itself).
    fn index_of(&self, position: usize) -> u64 {
        position as u64
    }

    /// Per-image records a resumed run needs to reproduce this source's images cheaply (a
    /// generator's tokens); none for files, which can simply be read again.
    fn journal_streams(&self) -> Vec<StreamSpec> {
        Vec::new()
    }

    /// The records of the batch last returned by [`ImageSource::next_batch`], one byte vector per
    /// stream of [`ImageSource::journal_streams`].
    fn batch_records(&mut self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// The next `count` images again, for a resumed run, from their journal `records`.
    fn replay(&mut self, count: usize, _records: &[Vec<u8>]) -> Result<Array4<u8>, DataError> {
        let mut parts = Vec::new();
        let mut got = 0;
        while got < count {
            let batch = self.next_batch(count - got)?.ok_or_else(|| {
                DataError::invalid(
                    self.describe(),
                    format!("ended {} images early", count - got),
                )
            })?;
            got += batch.dim().0;
            parts.push(batch);
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| DataError::invalid(self.describe(), e.to_string()))
    }

    /// Moves past the next `count` images without producing them.
    fn skip(&mut self, count: usize, records: &[Vec<u8>]) -> Result<(), DataError> {
        self.replay(count, records).map(drop)
    }
}

/// Opens images from a folder (PNG/JPEG) or an npz (`arr_0`). With `image_size`, every image is
/// centre-cropped to that square size as ADM's `center_crop_arr` does (a no-op for images already
/// that size).
pub fn open_images(
    path: &std::path::Path,
    image_size: Option<usize>,
    batch_hint: usize,
) -> Result<Box<dyn ImageSource + Send>, DataError> {
    if path.is_dir() {
        return Ok(Box::new(folder::FolderImages::open(path, image_size)?));
    }
    let npz = npz::NpzImages::open(path, batch_hint)?;
    match image_size {
        Some(size) if npz.image_size() != (size, size) => {
            Ok(Box::new(CenterCropped { inner: npz, size }))
        }
        _ => Ok(Box::new(npz)),
    }
}

/// Centre-crops every image of an npz source to a square size.
struct CenterCropped {
    inner: npz::NpzImages,
    size: usize,
}

impl ImageSource for CenterCropped {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn image_size(&self) -> (usize, usize) {
        (self.size, self.size)
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError> {
        let Some(batch) = self.inner.next_batch(max)? else {
            return Ok(None);
        };
        let (n, h, w, _) = batch.dim();
        let mut data = Vec::with_capacity(n * self.size * self.size * 3);
        for image in batch.outer_iter() {
            let pixels = image.as_standard_layout();
            let slice = pixels.as_slice().expect("standard layout is contiguous");
            data.extend(pil_resize::center_crop_arr(slice, w, h, self.size));
        }
        Array4::from_shape_vec((n, self.size, self.size, 3), data)
            .map(Some)
            .map_err(|e| DataError::invalid(self.inner.describe(), e.to_string()))
    }

    fn describe(&self) -> String {
        format!(
            "{} (centre-cropped to {})",
            self.inner.describe(),
            self.size
        )
    }
}
