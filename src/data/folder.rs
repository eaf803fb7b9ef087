//! Images from a folder of PNG/JPEG files (recursive, sorted by path), converted to RGB as
//! `PIL.Image.convert("RGB")` does, optionally centre-cropped to a square size with ADM's
//! `center_crop_arr`. Files are decoded in parallel, one batch at a time.

use std::path::{Path, PathBuf};

use ndarray::Array4;
use rayon::prelude::*;

use super::pil_resize::center_crop_arr;
use super::{image_batch, DataError, ImageSource};
use crate::partition::Shard;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The image files under `dir`, recursively, sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    // Real (canonical) paths seen so far, with the path they were reached by: a folder or file
    // reached twice — a symlink loop, or a link to something listed already — would be counted
    // twice (or forever), so it is refused.
    let mut seen: std::collections::HashMap<PathBuf, PathBuf> = std::collections::HashMap::new();
    let mut visit = |path: &Path| -> Result<(), DataError> {
        let real = std::fs::canonicalize(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(first) = seen.insert(real.clone(), path.to_path_buf()) {
            return Err(DataError::invalid(
                path,
                format!(
                    "is {} again (already listed as {}): a symlink loop or a duplicate would count images twice; remove the link",
                    real.display(),
                    first.display()
                ),
            ));
        }
        Ok(())
    };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    visit(dir)?;
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| DataError::Io {
            path: current.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| DataError::Io {
                    path: current.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                visit(&path)?;
                pending.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                visit(&path)?;
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Decodes one file to RGB8, returning (pixels, width, height).
fn decode_rgb(path: &Path) -> Result<(Vec<u8>, usize, usize), DataError> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // A small file can claim huge dimensions (a decompression bomb): the decoder refuses to
    // allocate beyond the per-image budget.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(crate::budget::image_allowance());
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => DataError::invalid(
            path,
            format!(
                "the image is larger than the per-image limit of {}; {}",
                crate::budget::human_bytes(crate::budget::image_allowance()),
                crate::budget::how_to_raise()
            ),
        ),
        e => DataError::invalid(path, format!("cannot decode the image: {e}")),
    })?;
    let rgb = image.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok((rgb.into_raw(), w, h))
}

/// A folder of images as an [`ImageSource`].
pub struct FolderImages {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    size: (usize, usize),
    crop: Option<usize>,
    /// The index of `files[k]` is `first + k * step` (the whole folder: 0 and 1).
    first: usize,
    step: usize,
}

impl FolderImages {
    /// Lists `dir`; with `crop = Some(n)` every image is centre-cropped to n x n (ADM), otherwise all
    /// images must share the first image's size (checked here, from the headers).
    pub fn open(dir: &Path, crop: Option<usize>) -> Result<Self, DataError> {
        let files = list_images(dir)?;
        if files.is_empty() {
            return Err(DataError::invalid(
                dir,
                "contains no PNG or JPEG images (searched recursively)",
            ));
        }
        let size = match crop {
            Some(n) => (n, n),
            None => one_size(&files)?,
        };
        Ok(FolderImages {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            size,
            crop,
            first: 0,
            step: 1,
        })
    }

    /// Only the images of `shard` (indices `shard.index`, `shard.index + shard.count`, ... of the
    /// sorted folder); the others are never decoded.
    pub fn stride(mut self, shard: Shard) -> Self {
        self.files = std::mem::take(&mut self.files)
            .into_iter()
            .skip(shard.index)
            .step_by(shard.count)
            .collect();
        self.first = shard.index;
        self.step = shard.count;
        self
    }

    fn load(&self, path: &Path) -> Result<Vec<u8>, DataError> {
        let (pixels, w, h) = decode_rgb(path)?;
        match self.crop {
            Some(n) => Ok(center_crop_arr(&pixels, w, h, n)),
            None if (h, w) == self.size => Ok(pixels),
            None => Err(DataError::MixedSizes {
                path: path.to_path_buf(),
                size: (h, w),
                first: self.size,
            }),
        }
    }
}

/// The (height, width) every image of `files` has, read from their headers before any pixel is
/// decoded: a folder of mixed sizes is refused before a long run starts, not at its first odd
/// image.
fn one_size(files: &[PathBuf]) -> Result<(usize, usize), DataError> {
    let size_of = |path: &PathBuf| {
        image::image_dimensions(path)
            .map(|(w, h)| (h as usize, w as usize))
            .map_err(|e| DataError::invalid(path, format!("cannot read the image size: {e}")))
    };
    let first = size_of(&files[0])?;
    let odd = files.par_iter().find_map_first(|path| match size_of(path) {
        Ok(size) if size == first => None,
        Ok(size) => Some(DataError::MixedSizes {
            path: path.clone(),
            size,
            first,
        }),
        Err(e) => Some(e),
    });
    match odd {
        Some(error) => Err(error),
        None => Ok(first),
    }
}

impl ImageSource for FolderImages {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn image_size(&self) -> (usize, usize) {
        self.size
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Array4<u8>>, DataError> {
        let end = (self.next + super::affordable_batch(max, self.size)).min(self.files.len());
        if self.next == end {
            return Ok(None);
        }
        let images: Vec<Vec<u8>> = self.files[self.next..end]
            .par_iter()
            .map(|path| self.load(path))
            .collect::<Result<_, _>>()?;
        let count = end - self.next;
        self.next = end;
        let (h, w) = self.size;
        image_batch(&self.dir, (count, h, w), images.concat())
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn index_of(&self, position: usize) -> u64 {
        (self.first + position * self.step) as u64
    }
}
