//! Stages that keep images: the ADM/LlamaGen npz writer (all images, or a chosen subset) and the
//! PNG grid of the first samples that `report` shows.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{Array3, Array4};

use super::pass::Stage;
use crate::data::npz_writer::ImageNpzWriter;

/// Writes the images (or those at the `keep` positions) into an npz `arr_0`, in order.
pub struct NpzStage {
    writer: Option<ImageNpzWriter>,
    keep: Option<BTreeSet<usize>>,
}

impl NpzStage {
    /// All images into `writer`.
    pub fn new(writer: ImageNpzWriter) -> Self {
        NpzStage {
            writer: Some(writer),
            keep: None,
        }
    }

    /// Only the images at the `keep` positions into `writer`.
    pub fn subset(writer: ImageNpzWriter, keep: BTreeSet<usize>) -> Self {
        NpzStage {
            writer: Some(writer),
            keep: Some(keep),
        }
    }

    /// The writer, to add further arrays and finish the file.
    pub fn into_writer(self) -> Option<ImageNpzWriter> {
        self.writer
    }

    fn push(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        for (position, image) in positions.zip(images.outer_iter()) {
            if self.keep.as_ref().is_none_or(|k| k.contains(&position)) {
                writer.push(image)?;
            }
        }
        Ok(())
    }
}

impl Stage for NpzStage {
    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        self.push(positions, images)?;
        Ok(Vec::new())
    }

    fn wants_images(&self, positions: Range<usize>) -> bool {
        match &self.keep {
            None => self.writer.is_some(),
            Some(keep) => keep.range(positions).next().is_some(),
        }
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        images: Option<&Array4<u8>>,
        _records: &[Vec<u8>],
    ) -> Result<()> {
        match images {
            Some(images) => self.push(positions, images),
            None if self.wants_images(positions) => bail!("resumed batch without its images"),
            None => Ok(()),
        }
    }
}

/// Keeps the first `max` images for a grid.
pub struct GridStage {
    max: usize,
    images: Vec<Array3<u8>>,
}

impl GridStage {
    /// Up to `max` images (64 for the report's 8x8 grids).
    pub fn new(max: usize) -> Self {
        GridStage {
            max,
            images: Vec::new(),
        }
    }

    /// The kept images.
    pub fn into_images(self) -> Vec<Array3<u8>> {
        self.images
    }

    fn push(&mut self, images: &Array4<u8>) {
        for image in images.outer_iter() {
            if self.images.len() < self.max {
                self.images.push(image.to_owned());
            }
        }
    }
}

impl Stage for GridStage {
    fn process(&mut self, _positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        self.push(images);
        Ok(Vec::new())
    }

    fn wants_images(&self, _positions: Range<usize>) -> bool {
        self.images.len() < self.max
    }

    fn restore(
        &mut self,
        _positions: Range<usize>,
        images: Option<&Array4<u8>>,
        _records: &[Vec<u8>],
    ) -> Result<()> {
        if let Some(images) = images {
            self.push(images);
        }
        Ok(())
    }
}

/// Writes a PNG grid of u8 NHWC images (2 px black padding, as torchvision's `save_image`),
/// atomically.
pub fn write_grid(path: &Path, images: &[Array3<u8>]) -> Result<()> {
    if images.is_empty() {
        bail!("no images for the grid");
    }
    let (h, w, _) = images[0].dim();
    let n = images.len();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut canvas = vec![0u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + c * (w + pad));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    canvas[((y0 + y) * gw + x0 + x) * 3 + ch] = img[[y, x, ch]];
                }
            }
        }
    }
    crate::io::write_file_atomically(path, |out| {
        let mut encoder = png::Encoder::new(out, gw as u32, gh as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&canvas)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
    .with_context(|| format!("grid {}", path.display()))?;
    Ok(())
}
