//! Image resizing that reproduces Pillow's `Image.resize` for 8-bit RGB with the BOX and BICUBIC
//! filters, pixel for pixel: the ADM evaluator's `center_crop_arr` builds reference batches with
//! it, so reference statistics only match when the pixels do.
//!
//! Pillow resamples separably (horizontal pass, then vertical), with filter support widened by the
//! downscale factor, coefficients normalised per output pixel and then fixed to 22-bit integers,
//! and each pass rounded back to u8. All of that is mirrored here.

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow's `Image.BOX`.
    Box,
    /// Pillow's `Image.BICUBIC` (cubic convolution with a = -0.5).
    Bicubic,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output position: first input index and fixed-point weights.
struct Coefficients {
    start: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for out in 0..out_size {
        let center = (out as f64 + 0.5) * scale;
        // Truncation toward zero, as C's (int) cast, after adding 0.5.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (lo..hi)
            .map(|i| filter.weight((i as f64 - center + 0.5) / filter_scale))
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect();
        start.push(lo);
        weights.push(fixed);
    }
    Coefficients { start, weights }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an RGB8 image (row-major, 3 bytes per pixel) from `w` x `h` to `out_w` x `out_h`.
pub fn resize_rgb8(
    pixels: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    let horizontal = if out_w != w {
        let c = coefficients(w, out_w, filter);
        let mut out = vec![0u8; out_w * h * 3];
        for y in 0..h {
            let row = &pixels[y * w * 3..(y + 1) * w * 3];
            for x in 0..out_w {
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (k, &wt) in c.weights[x].iter().enumerate() {
                        acc += i64::from(row[(c.start[x] + k) * 3 + ch]) * i64::from(wt);
                    }
                    out[(y * out_w + x) * 3 + ch] = clip8(acc);
                }
            }
        }
        out
    } else {
        pixels.to_vec()
    };
    if out_h == h {
        return horizontal;
    }
    let c = coefficients(h, out_h, filter);
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            for ch in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (k, &wt) in c.weights[y].iter().enumerate() {
                    acc += i64::from(horizontal[((c.start[y] + k) * out_w + x) * 3 + ch])
                        * i64::from(wt);
                }
                out[(y * out_w + x) * 3 + ch] = clip8(acc);
            }
        }
    }
    out
}

/// ADM's `center_crop_arr`: halve with BOX while the short side is at least twice `size`, resize
/// with BICUBIC so the short side is `size` (Python's round-half-even on the other side), then
/// take the centred `size` x `size` crop. Returns the crop as RGB8.
pub fn center_crop_arr(pixels: &[u8], w: usize, h: usize, size: usize) -> Vec<u8> {
    let (mut data, mut w, mut h) = (pixels.to_vec(), w, h);
    while w.min(h) >= 2 * size {
        let (nw, nh) = (w / 2, h / 2);
        data = resize_rgb8(&data, w, h, nw, nh, Filter::Box);
        (w, h) = (nw, nh);
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        (w as f64 * scale).round_ties_even() as usize,
        (h as f64 * scale).round_ties_even() as usize,
    );
    if (nw, nh) != (w, h) {
        data = resize_rgb8(&data, w, h, nw, nh, Filter::Bicubic);
    }
    let (y0, x0) = ((nh - size) / 2, (nw - size) / 2);
    let mut crop = Vec::with_capacity(size * size * 3);
    for y in y0..y0 + size {
        crop.extend_from_slice(&data[(y * nw + x0) * 3..(y * nw + x0 + size) * 3]);
    }
    crop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_halving_averages_two_by_two() {
        let pixels: Vec<u8> = [10u8, 20, 30, 40].iter().flat_map(|&v| [v, v, v]).collect();
        assert_eq!(
            resize_rgb8(&pixels, 2, 2, 1, 1, Filter::Box),
            vec![25, 25, 25]
        );
    }

    #[test]
    fn same_size_is_identity() {
        let pixels: Vec<u8> = (0..48).map(|v| v as u8).collect();
        assert_eq!(resize_rgb8(&pixels, 4, 4, 4, 4, Filter::Bicubic), pixels);
    }
}
