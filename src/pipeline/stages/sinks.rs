//! Stages that keep images: the ADM/LlamaGen npz writer (all images, or a chosen subset) and the
//! PNG grid of the first samples that `report` shows. Both are [`ImageSink`]s: they journal
//! nothing, and a resumed run hands them the completed batches' images again.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{Array3, Array4};

use crate::data::npz_writer::ImageNpzWriter;
use crate::pipeline::pass::Stage;

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
}

/// A stage that keeps images and journals nothing: a resumed run hands it the images of the
/// completed batches it wants again.
pub trait ImageSink {
    /// Keeps what it wants of the images at `positions`.
    fn push(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<()>;

    /// Whether it wants any of the images at `positions`.
    fn wants(&self, positions: Range<usize>) -> bool;
}

impl<S: ImageSink> Stage for S {
    fn process(&mut self, positions: Range<usize>, images: &Array4<u8>) -> Result<Vec<Vec<u8>>> {
        self.push(positions, images)?;
        Ok(Vec::new())
    }

    fn wants_images(&self, positions: Range<usize>) -> bool {
        self.wants(positions)
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        images: Option<&Array4<u8>>,
        _records: &[Vec<u8>],
    ) -> Result<()> {
        match images {
            Some(images) => self.push(positions, images),
            None if self.wants(positions) => bail!("resumed batch without its images"),
            None => Ok(()),
        }
    }
}

impl ImageSink for NpzStage {
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

    fn wants(&self, positions: Range<usize>) -> bool {
        match &self.keep {
            None => self.writer.is_some(),
            Some(keep) => keep.range(positions).next().is_some(),
        }
    }
}

/// Images kept for the grid of a run.
pub const GRID_IMAGES: usize = 64;

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
}

impl ImageSink for GridStage {
    fn push(&mut self, _positions: Range<usize>, images: &Array4<u8>) -> Result<()> {
        for image in images.outer_iter() {
            if self.images.len() < self.max {
                self.images.push(image.to_owned());
            }
        }
        Ok(())
    }

    fn wants(&self, _positions: Range<usize>) -> bool {
        self.images.len() < self.max
    }
}

/// Lines of caption text under each image of a captioned grid.
const CAPTION_LINES: usize = 3;

/// The caption strip under an image `width` pixels wide: the font size, the line height and
/// the strip's height.
fn caption_strip(width: usize) -> (u32, usize, usize) {
    let font_px = (width / 16).clamp(10, 18);
    let line = font_px + font_px / 3 + 1;
    (font_px as u32, line, CAPTION_LINES * line + 4)
}

/// `text` broken into at most [`CAPTION_LINES`] lines that `fits`: greedily by words, a word too
/// long for a line by characters; the last line ends in `…` when text was left out.
fn wrap_caption(text: &str, fits: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut cut = false;
    'words: for word in text.split_whitespace() {
        let joined = if current.is_empty() {
            word.to_owned()
        } else {
            format!("{current} {word}")
        };
        if fits(&joined) {
            current = joined;
            continue;
        }
        let mut rest = word;
        if !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        loop {
            if lines.len() == CAPTION_LINES {
                cut = true;
                break 'words;
            }
            if fits(rest) {
                current = rest.to_owned();
                break;
            }
            // The longest prefix that fits (at least one character).
            let mut end = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
            for (i, c) in rest.char_indices().skip(1) {
                if !fits(&rest[..i + c.len_utf8()]) {
                    break;
                }
                end = i + c.len_utf8();
            }
            lines.push(rest[..end].to_owned());
            rest = &rest[end..];
            if rest.is_empty() {
                break;
            }
        }
    }
    if !current.is_empty() {
        if lines.len() == CAPTION_LINES {
            cut = true;
        } else {
            lines.push(current);
        }
    }
    if cut {
        if let Some(last) = lines.last_mut() {
            while !last.is_empty() && !fits(&format!("{last}…")) {
                last.pop();
            }
            last.push('…');
        }
    }
    lines
}

/// Writes a PNG grid of u8 NHWC images (2 px black padding, as torchvision's `save_image`),
/// atomically; with `captions` (one per image), each image has its caption written under it, in
/// up to three lines of the bundled font.
pub fn write_grid(path: &Path, images: &[Array3<u8>], captions: Option<&[String]>) -> Result<()> {
    if images.is_empty() {
        bail!("no images for the grid");
    }
    if let Some(c) = captions {
        if c.len() != images.len() {
            bail!("{} captions for {} grid images", c.len(), images.len());
        }
    }
    let (h, w, _) = images[0].dim();
    let n = images.len();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (font_px, line, strip) = caption_strip(w);
    let strip = if captions.is_some() { strip } else { 0 };
    let cell = h + strip;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (cell + pad) + pad);
    let mut canvas = vec![0u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let (y0, x0) = (pad + r * (cell + pad), pad + c * (w + pad));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    canvas[((y0 + y) * gw + x0 + x) * 3 + ch] = img[[y, x, ch]];
                }
            }
        }
        if captions.is_some() {
            canvas[((y0 + h) * gw + x0) * 3..]
                .chunks_mut(gw * 3)
                .take(strip)
                .for_each(|row| row[..w * 3].fill(255));
        }
    }
    if let Some(captions) = captions {
        draw_captions(
            &mut canvas,
            (gw, gh),
            captions,
            (cols, w, h, pad),
            font_px,
            line,
        )
        .with_context(|| format!("grid {}", path.display()))?;
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

/// Writes each caption in the white strip under its image (`layout`: columns, image width and
/// height, padding) on the RGB `canvas` of `size`.
fn draw_captions(
    canvas: &mut [u8],
    size: (usize, usize),
    captions: &[String],
    layout: (usize, usize, usize, usize),
    font_px: u32,
    line: usize,
) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let (cols, w, h, pad) = layout;
    let (_, _, strip) = caption_strip(w);
    crate::report::charts::register_font()?;
    let style = crate::report::charts::font(font_px)
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    let root =
        BitMapBackend::with_buffer(canvas, (size.0 as u32, size.1 as u32)).into_drawing_area();
    let width = |text: &str| {
        root.estimate_text_size(text, &style)
            .map_or(usize::MAX, |(tw, _)| tw as usize)
    };
    let fits = |text: &str| width(text) + 4 <= w;
    for (i, caption) in captions.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let (y0, x0) = (pad + r * (h + strip + pad) + h + 2, pad + c * (w + pad));
        for (k, text) in wrap_caption(caption, &fits).iter().enumerate() {
            root.draw_text(text, &style, ((x0 + w / 2) as i32, (y0 + k * line) as i32))
                .map_err(|e| anyhow::anyhow!("cannot draw a caption: {e}"))?;
        }
    }
    root.present()
        .map_err(|e| anyhow::anyhow!("cannot draw the captions: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_wrap_into_three_lines() {
        // One character is one unit wide; lines hold 10.
        let fits = |t: &str| t.chars().count() <= 10;
        assert_eq!(wrap_caption("a cat on a mat", &fits), ["a cat on a", "mat"]);
        assert_eq!(
            wrap_caption("abcdefghijklmnopqrstuvwxy z", &fits),
            ["abcdefghij", "klmnopqrst", "uvwxy z"]
        );
        let long = wrap_caption("one two three four five six seven eight nine", &fits);
        assert_eq!(long, ["one two", "three four", "five six…"]);
        assert!(long.iter().all(|l| fits(l)));
        assert!(wrap_caption("   ", &fits).is_empty());
    }

    fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width as usize, info.height as usize, buf)
    }

    #[test]
    fn captioned_grids_write_text_under_each_image() {
        let dir = tempfile::tempdir().unwrap();
        let images: Vec<Array3<u8>> = (0..3)
            .map(|i| Array3::from_shape_fn((64, 64, 3), |(y, x, c)| (i * 40 + y + x + c) as u8))
            .collect();
        let plain = dir.path().join("plain.png");
        write_grid(&plain, &images, None).unwrap();
        let (pw, ph, _) = read_png(&plain);
        assert_eq!((pw, ph), (2 * 66 + 2, 2 * 66 + 2));
        let captioned = dir.path().join("captioned.png");
        let captions = vec!["a red bus".to_owned(), String::new(), "two dogs".to_owned()];
        write_grid(&captioned, &images, Some(&captions)).unwrap();
        let (gw, gh, pixels) = read_png(&captioned);
        let (_, _, strip) = caption_strip(64);
        assert_eq!((gw, gh), (2 * 66 + 2, 2 * (64 + strip + 2) + 2));
        let at = |x: usize, y: usize| &pixels[(y * gw + x) * 3..(y * gw + x) * 3 + 3];
        // The images are unchanged.
        for (i, image) in images.iter().enumerate() {
            let (y0, x0) = (2 + (i / 2) * (64 + strip + 2), 2 + (i % 2) * 66);
            for (y, x) in [(0, 0), (17, 40), (63, 63)] {
                assert_eq!(
                    at(x0 + x, y0 + y),
                    image.slice(ndarray::s![y, x, ..]).as_slice().unwrap()
                );
            }
        }
        // Dark text in the strips of captioned images, none in the strip of the empty caption.
        let dark = |i: usize| {
            let (y0, x0) = (2 + (i / 2) * (64 + strip + 2) + 64, 2 + (i % 2) * 66);
            (y0..y0 + strip)
                .flat_map(|y| (x0..x0 + 64).map(move |x| (x, y)))
                .filter(|&(x, y)| at(x, y)[0] < 128)
                .count()
        };
        assert!(dark(0) > 20 && dark(2) > 20, "{} {}", dark(0), dark(2));
        assert_eq!(dark(1), 0);
        assert!(write_grid(&captioned, &images, Some(&captions[..2])).is_err());
    }
}
