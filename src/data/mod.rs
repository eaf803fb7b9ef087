//! Image sources: where the images to evaluate come from, read in batches so that a 50,000-image
//! set never has to sit in memory at once.

pub mod folder;
pub mod npz;
pub mod npz_writer;
pub mod pil_resize;

use std::path::PathBuf;

use ndarray::Array4;

use crate::journal::StreamSpec;
use crate::partition::Shard;

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
    /// A folder's images differ in size and no crop size was given.
    #[error("{}: is {}x{} but the first image is {}x{}: the folder's images must share one size, or be centre-cropped to one", path.display(), size.1, size.0, first.1, first.0)]
    MixedSizes {
        /// The image whose size differs.
        path: PathBuf,
        /// Its (height, width).
        size: (usize, usize),
        /// The first image's (height, width).
        first: (usize, usize),
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

/// A batch of RGB images of `shape` (N, H, W) from their pixels in NHWC order; `source` names
/// what they were read from when the pixels do not fill the shape.
pub(crate) fn image_batch(
    source: impl Into<PathBuf>,
    (n, height, width): (usize, usize, usize),
    pixels: Vec<u8>,
) -> Result<Option<Array4<u8>>, DataError> {
    Array4::from_shape_vec((n, height, width, 3), pixels)
        .map(Some)
        .map_err(|e| DataError::invalid(source, e.to_string()))
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

/// How many of `max` images of `size` (height, width) one batch may hold: a batch of huge images
/// is cut to half the input memory budget, but always holds at least one image.
pub(crate) fn affordable_batch(max: usize, (height, width): (usize, usize)) -> usize {
    let rgb_bytes = height.saturating_mul(width).saturating_mul(3).max(1) as u64;
    let affordable = (2 * crate::budget::image_allowance() / rgb_bytes).max(1);
    max.max(1)
        .min(usize::try_from(affordable).unwrap_or(usize::MAX))
}

/// Opens images from a folder (PNG/JPEG) or an npz (`arr_0`). With `crop`, every image is
/// centre-cropped to that square size as ADM's `center_crop_arr` does (a no-op for images already
/// that size).
pub fn open_images(
    path: &std::path::Path,
    crop: Option<usize>,
    batch_hint: usize,
) -> Result<Box<dyn ImageSource + Send>, DataError> {
    open_shard(path, crop, batch_hint, Shard::ALL)
}

/// Opens the images of `shard` only (indices `shard.index`, `shard.index + shard.count`, ...),
/// otherwise as [`open_images`]: a rank's share of a launched job. The source's
/// [`ImageSource::index_of`] gives each image's index in the whole set.
pub fn open_shard(
    path: &std::path::Path,
    crop: Option<usize>,
    batch_hint: usize,
    shard: Shard,
) -> Result<Box<dyn ImageSource + Send>, DataError> {
    if path.is_dir() {
        return Ok(Box::new(
            folder::FolderImages::open(path, crop)?.stride(shard),
        ));
    }
    let npz = npz::NpzImages::open(path, batch_hint)?;
    let size = npz.image_size();
    let inner: Box<dyn ImageSource + Send> = if shard == Shard::ALL {
        Box::new(npz)
    } else {
        Box::new(Strided::new(Box::new(npz), shard))
    };
    match crop {
        Some(side) if size != (side, side) => Ok(Box::new(CenterCropped { inner, size: side })),
        _ => Ok(inner),
    }
}

/// The images `shard.index`, `shard.index + shard.count`, ... of a sequential source (the others
/// are read and dropped).
pub struct Strided {
    inner: Box<dyn ImageSource + Send>,
    shard: Shard,
    len: usize,
    /// Images delivered.
    delivered: usize,
    /// Images read from `inner`.
    read: usize,
}

impl Strided {
    /// At most this many images are read from the inner source at once.
    const CHUNK: usize = 256;

    /// `shard`'s images of `inner`.
    pub fn new(inner: Box<dyn ImageSource + Send>, shard: Shard) -> Self {
        let len = shard.indices(inner.len()).len();
        Strided {
            inner,
            shard,
            len,
            delivered: 0,
            read: 0,
        }
    }
}

impl ImageSource for Strided {
    fn len(&self) -> usize {
        self.len
    }

    fn image_size(&self) -> (usize, usize) {
        self.inner.image_size()
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError> {
        let want = max.max(1).min(self.len - self.delivered);
        if want == 0 {
            return Ok(None);
        }
        let (h, w) = self.inner.image_size();
        let mut data = Vec::with_capacity(want * h * w * 3);
        // The inner position of the last image of this batch.
        let last = self.shard.index + (self.delivered + want - 1) * self.shard.count;
        while self.read <= last {
            let batch = self
                .inner
                .next_batch((last + 1 - self.read).min(Self::CHUNK))?
                .ok_or_else(|| {
                    DataError::invalid(
                        self.inner.describe(),
                        format!("ended after {} of {} images", self.read, last + 1),
                    )
                })?;
            for (k, image) in batch.outer_iter().enumerate() {
                let position = self.read + k;
                let ours = position >= self.shard.index
                    && (position - self.shard.index) % self.shard.count == 0;
                if ours {
                    data.extend(image.iter().copied());
                }
            }
            self.read += batch.dim().0;
        }
        self.delivered += want;
        image_batch(self.inner.describe(), (want, h, w), data)
    }

    fn describe(&self) -> String {
        format!(
            "{} (images {}, {}, ... of every {})",
            self.inner.describe(),
            self.shard.index,
            self.shard.index + self.shard.count,
            self.shard.count
        )
    }

    fn index_of(&self, position: usize) -> u64 {
        self.inner
            .index_of(self.shard.index + position * self.shard.count)
    }
}

/// Centre-crops every image of an npz source to a square size.
struct CenterCropped {
    inner: Box<dyn ImageSource + Send>,
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
        image_batch(self.inner.describe(), (n, self.size, self.size), data)
    }

    fn describe(&self) -> String {
        format!(
            "{} (centre-cropped to {})",
            self.inner.describe(),
            self.size
        )
    }

    fn index_of(&self, position: usize) -> u64 {
        self.inner.index_of(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten numbered images in batches of whatever size is asked.
    struct Numbered {
        next: usize,
    }

    impl ImageSource for Numbered {
        fn len(&self) -> usize {
            10
        }

        fn image_size(&self) -> (usize, usize) {
            (1, 1)
        }

        fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError> {
            let end = (self.next + max).min(10);
            if end == self.next {
                return Ok(None);
            }
            let values: Vec<u8> = (self.next..end)
                .flat_map(|i| [i as u8, i as u8, i as u8])
                .collect();
            let n = end - self.next;
            self.next = end;
            Ok(Some(Array4::from_shape_vec((n, 1, 1, 3), values).unwrap()))
        }

        fn describe(&self) -> String {
            "numbered".into()
        }
    }

    #[test]
    fn strided_sources_deliver_their_shard_with_its_indices() {
        let shard = Shard { index: 1, count: 3 };
        let mut source = Strided::new(Box::new(Numbered { next: 0 }), shard);
        assert_eq!(source.len(), 3);
        let mut seen = Vec::new();
        while let Some(batch) = source.next_batch(2).unwrap() {
            seen.extend(batch.outer_iter().map(|image| image[[0, 0, 0]]));
        }
        assert_eq!(seen, [1, 4, 7]);
        let indices: Vec<u64> = (0..3).map(|p| source.index_of(p)).collect();
        assert_eq!(indices, [1, 4, 7]);
    }
}
