//! `recon`'s stage of the journaled pass: per batch, the reconstructions (from the tokenizer or
//! a batch made elsewhere), their per-image scores, code indices and feature rows, journaled and
//! accumulated in image order ([`Totals`]), or restored from the journal on resume.

use std::collections::BTreeSet;
use std::ops::Range;

use anyhow::{Context, Result};
use llamagen_metrics::codebook::{CodebookUsage, LLAMAGEN_USAGE_WINDOW};
use llamagen_metrics::image_quality::{self, SsimMode};
use llamagen_metrics::stats::{GaussianAccumulator, GaussianStats};
use ndarray::{Array2, Array4};
use tch::{Kind, Tensor};

use super::ReconMetric;
use crate::data::{DataError, ImageSource};
use crate::feature_set::{Extractor, FeatureSet, Network};
use crate::journal::StreamSpec;
use crate::models::inception::POOL_DIM;
use crate::models::vq::{images_to_input, to_pixels, VqModel};
use crate::pipeline::pass::Stage;
use crate::pipeline::stages::features::{rows_from_record, rows_to_record};

/// Where reconstructions come from, opened.
pub(super) enum Source {
    Vq {
        _vs: tch::nn::VarStore,
        model: Box<VqModel>,
    },
    Batch(Box<dyn ImageSource + Send>),
}

pub(super) struct ReconStage<'e> {
    pub(super) source: Source,
    pub(super) extractor: Option<&'e Extractor>,
    pub(super) image_shape: (usize, usize),
    pub(super) save_pixels: bool,
    pub(super) totals: Totals,
}

/// The per-image figures of a run, accumulated in image order.
pub(super) struct Totals {
    pub(super) wanted: BTreeSet<ReconMetric>,
    pub(super) codes_per_image: usize,
    pub(super) psnr: Vec<f64>,
    pub(super) ssim: Vec<f64>,
    pub(super) ssim_llamagen: Vec<f64>,
    pub(super) counts: Vec<u64>,
    pub(super) window: Vec<i64>,
    pub(super) num_indices: u64,
    /// The feature rows the figures need, in journal-stream order.
    pub(super) tracks: Vec<Track>,
}

/// One kind of feature row a run keeps per image: one network's features of the
/// reconstructions or of the originals, as running statistics (Fréchet distances) or as every
/// row (CMMD).
pub(super) struct Track {
    /// Journal stream and part entry (`recon_pool`, `input_dinov2`, ...).
    pub(super) name: &'static str,
    /// The feature array it takes (`pool`, `dinov2`, `clip`).
    pub(super) key: &'static str,
    /// The originals' features (else the reconstructions').
    pub(super) input: bool,
    /// Features per row.
    pub(super) dim: usize,
    /// Running statistics, for a Fréchet distance.
    pub(super) stats: Option<GaussianAccumulator>,
    /// Every row, for CMMD.
    pub(super) rows: Option<Vec<f32>>,
}

impl Track {
    pub(super) fn new(name: &'static str, key: &'static str, input: bool, dim: usize) -> Self {
        let all_rows = key == "clip";
        Track {
            name,
            key,
            input,
            dim,
            stats: (!all_rows).then(|| GaussianAccumulator::new(dim)),
            rows: all_rows.then(Vec::new),
        }
    }

    pub(super) fn add(&mut self, rows: &Array2<f32>) -> Result<()> {
        anyhow::ensure!(
            rows.ncols() == self.dim,
            "`{}` rows of {} features, expected {}",
            self.name,
            rows.ncols(),
            self.dim
        );
        if let Some(acc) = self.stats.as_mut() {
            acc.add_batch_f32(rows.view())?;
        }
        if let Some(all) = self.rows.as_mut() {
            all.extend(rows.iter());
        }
        Ok(())
    }

    pub(super) fn statistics(&self) -> Result<GaussianStats> {
        self.stats
            .as_ref()
            .with_context(|| format!("no statistics of `{}`", self.name))?
            .finalize()
            .with_context(|| format!("`{}` needs at least 2 images", self.name))
    }

    pub(super) fn all_rows(&self) -> Result<Array2<f32>> {
        let rows = self
            .rows
            .clone()
            .with_context(|| format!("no rows of `{}`", self.name))?;
        Ok(Array2::from_shape_vec(
            (rows.len() / self.dim, self.dim),
            rows,
        )?)
    }
}

/// Feature widths of the networks a run uses beyond Inception.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ExtraDims {
    pub(super) dinov2: Option<usize>,
    pub(super) clip: Option<usize>,
}

impl Totals {
    pub(super) fn add_indices(&mut self, indices: &[i64]) -> Result<()> {
        for &i in indices {
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| self.counts.get_mut(i))
                .with_context(|| format!("token index {i} outside the codebook"))?;
            *slot += 1;
        }
        self.num_indices += indices.len() as u64;
        self.window.extend_from_slice(indices);
        if self.window.len() > LLAMAGEN_USAGE_WINDOW {
            self.window
                .drain(..self.window.len() - LLAMAGEN_USAGE_WINDOW);
        }
        Ok(())
    }

    /// Restores or adds one batch's per-image values; `features[k]` holds the rows of track k.
    pub(super) fn absorb(
        &mut self,
        n: usize,
        scores: &[[f64; 3]],
        codes: &[i64],
        features: &[Array2<f32>],
    ) -> Result<()> {
        debug_assert_eq!(scores.len(), n);
        if self.wanted.contains(&ReconMetric::Psnr) {
            self.psnr.extend(scores.iter().map(|s| s[0]));
        }
        if self.wanted.contains(&ReconMetric::Ssim) {
            self.ssim.extend(scores.iter().map(|s| s[1]));
            self.ssim_llamagen.extend(scores.iter().map(|s| s[2]));
        }
        if self.codes_per_image > 0 {
            self.add_indices(codes)?;
        }
        anyhow::ensure!(
            features.len() == self.tracks.len(),
            "{} feature sets for {} tracks",
            features.len(),
            self.tracks.len()
        );
        for (track, rows) in self.tracks.iter_mut().zip(features) {
            track.add(rows)?;
        }
        Ok(())
    }
}

pub(super) fn data_error(e: DataError) -> anyhow::Error {
    e.into()
}

impl Stage for ReconStage<'_> {
    fn streams(&self) -> Vec<StreamSpec> {
        let (h, w) = self.image_shape;
        let mut streams = vec![StreamSpec::new("scores", 3 * 8)];
        if self.totals.codes_per_image > 0 {
            streams.push(StreamSpec::new("codes", self.totals.codes_per_image * 4));
        }
        for track in &self.totals.tracks {
            streams.push(StreamSpec::new(track.name, track.dim * 4));
        }
        if self.save_pixels {
            streams.push(StreamSpec::new("recon_pixels", h * w * 3));
        }
        streams
    }

    fn process(
        &mut self,
        _positions: Range<usize>,
        originals: &Array4<u8>,
    ) -> Result<Vec<Vec<u8>>> {
        let (n, height, width, _) = originals.dim();
        let mut codes = Vec::new();
        let recons: Array4<u8> = match &mut self.source {
            Source::Vq { model, .. } => {
                let standard = originals.as_standard_layout();
                let slice = standard
                    .as_slice()
                    .context("image batches are contiguous")?;
                let images = Tensor::from_slice(slice)
                    .view([n as i64, height as i64, width as i64, 3])
                    .to_device(model.device());
                let (indices, recon) = model.reconstruct(&images_to_input(&images));
                codes = Vec::<i64>::try_from(
                    indices
                        .to_device(tch::Device::Cpu)
                        .to_kind(Kind::Int64)
                        .flatten(0, -1),
                )?;
                let pixels = to_pixels(&recon).contiguous().flatten(0, -1);
                Array4::from_shape_vec((n, height, width, 3), Vec::<u8>::try_from(pixels)?)?
            }
            Source::Batch(recon) => {
                let batch = recon
                    .next_batch(n)
                    .map_err(data_error)?
                    .with_context(|| format!("{} ended early", recon.describe()))?;
                anyhow::ensure!(batch.dim() == originals.dim(), "reconstruction batch shape");
                batch
            }
        };
        let mut scores = vec![[f64::NAN; 3]; n];
        if self.totals.wanted.contains(&ReconMetric::Psnr) {
            let report = image_quality::psnr(originals.view(), recons.view())?;
            for (s, v) in scores.iter_mut().zip(report.per_image) {
                s[0] = v;
            }
        }
        if self.totals.wanted.contains(&ReconMetric::Ssim) {
            let std = image_quality::ssim(originals.view(), recons.view(), SsimMode::default())?;
            let compat =
                image_quality::ssim(originals.view(), recons.view(), SsimMode::LlamagenCompat)?;
            for ((s, a), b) in scores.iter_mut().zip(std.per_image).zip(compat.per_image) {
                s[1] = a;
                s[2] = b;
            }
        }
        let mut features = Vec::with_capacity(self.totals.tracks.len());
        if let Some(extractor) = self.extractor {
            let networks = |input: bool| -> Vec<Network> {
                let mut networks: Vec<Network> = self
                    .totals
                    .tracks
                    .iter()
                    .filter(|t| t.input == input)
                    .map(|t| network_of(t.key))
                    .collect();
                networks.dedup();
                networks
            };
            let recon_features = extractor.extract(&recons, &networks(false))?;
            let input_networks = networks(true);
            let input_features = if input_networks.is_empty() {
                FeatureSet::default()
            } else {
                extractor.extract(originals, &input_networks)?
            };
            for track in &self.totals.tracks {
                let set = if track.input {
                    &input_features
                } else {
                    &recon_features
                };
                features.push(
                    set.get(track.key)
                        .cloned()
                        .with_context(|| format!("no `{}` features", track.key))?,
                );
            }
        }
        if self.totals.codes_per_image > 0 {
            anyhow::ensure!(
                codes.len() == n * self.totals.codes_per_image,
                "the tokenizer gave {} codes for {n} images of {} codes",
                codes.len(),
                self.totals.codes_per_image
            );
        }
        self.totals.absorb(n, &scores, &codes, &features)?;
        let mut records = vec![scores
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect()];
        if self.totals.codes_per_image > 0 {
            records.push(
                codes
                    .iter()
                    .flat_map(|&c| (c as i32).to_le_bytes())
                    .collect(),
            );
        }
        for rows in &features {
            records.push(rows_to_record(rows));
        }
        if self.save_pixels {
            records.push(recons.as_standard_layout().iter().copied().collect());
        }
        Ok(records)
    }

    fn restore(
        &mut self,
        positions: Range<usize>,
        _images: Option<&Array4<u8>>,
        records: &[Vec<u8>],
    ) -> Result<()> {
        let n = positions.len();
        if let Source::Batch(recon) = &mut self.source {
            recon.skip(n, &[]).map_err(data_error)?;
        }
        let mut records = records.iter();
        let mut next = || records.next().context("journal stream of a resumed batch");
        let scores: Vec<[f64; 3]> = next()?
            .chunks_exact(24)
            .map(|c| {
                let v = |k: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&c[k * 8..k * 8 + 8]);
                    f64::from_le_bytes(b)
                };
                [v(0), v(1), v(2)]
            })
            .collect();
        let codes: Vec<i64> = if self.totals.codes_per_image > 0 {
            next()?
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        } else {
            Vec::new()
        };
        let dims: Vec<usize> = self.totals.tracks.iter().map(|t| t.dim).collect();
        let features = dims
            .into_iter()
            .map(|dim| rows_from_record(next()?, n, dim))
            .collect::<Result<Vec<_>>>()?;
        self.totals.absorb(n, &scores, &codes, &features)
    }
}

/// Codebook usage of a run, from its incremental counts.
pub fn usage_from_counts(counts: &[u64], window: &[i64], num_indices: u64) -> CodebookUsage {
    let window: Vec<usize> = window
        .iter()
        .filter_map(|&i| usize::try_from(i).ok())
        .collect();
    llamagen_metrics::codebook::usage_from_counts(counts, &window, num_indices as usize)
}

/// The feature network a feature array comes from.
pub(super) fn network_of(key: &str) -> Network {
    match key {
        "dinov2" => Network::Dinov2,
        "clip" => Network::Clip,
        _ => Network::Inception,
    }
}

impl Totals {
    /// Nothing accumulated yet; for each wanted family that compares features
    /// ([`ReconMetric::network`]), that network's rows of the reconstructions and of the
    /// originals: pool statistics of the reconstructions with `rfid`, and of the inputs too when
    /// they are their own reference (`input_reference`); DINOv2 statistics and CLIP rows of both
    /// with `fd_dinov2` and `cmmd` (widths in `dims`).
    pub(super) fn new(
        wanted: BTreeSet<ReconMetric>,
        codes_per_image: usize,
        codebook_size: usize,
        input_reference: bool,
        dims: ExtraDims,
    ) -> Result<Self> {
        let mut tracks = Vec::new();
        for network in wanted.iter().filter_map(|m| m.network()) {
            let (recon, input, key, dim) = match network {
                Network::Inception => ("recon_pool", "input_pool", "pool", POOL_DIM as usize),
                Network::Dinov2 => (
                    "recon_dinov2",
                    "input_dinov2",
                    "dinov2",
                    dims.dinov2.context("DINOv2's feature width")?,
                ),
                Network::Clip => (
                    "recon_clip",
                    "input_clip",
                    "clip",
                    dims.clip.context("CLIP's embedding width")?,
                ),
            };
            tracks.push(Track::new(recon, key, false, dim));
            // rFID's reference may be given; the other comparisons are with the originals.
            if network != Network::Inception || input_reference {
                tracks.push(Track::new(input, key, true, dim));
            }
        }
        Ok(Totals {
            wanted,
            codes_per_image,
            psnr: Vec::new(),
            ssim: Vec::new(),
            ssim_llamagen: Vec::new(),
            counts: vec![0; codebook_size],
            window: Vec::new(),
            num_indices: 0,
            tracks,
        })
    }

    pub(super) fn track(&self, name: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llamagen_metrics::codebook::codebook_usage;

    #[test]
    fn incremental_counts_give_the_metrics_crate_usage() {
        let indices: Vec<i64> = (0..70_000).map(|i| (i * 7 + i / 13) % 97).collect();
        let mut counts = vec![0u64; 128];
        for &i in &indices {
            counts[i as usize] += 1;
        }
        let window = &indices[indices.len() - LLAMAGEN_USAGE_WINDOW..];
        let ours = usage_from_counts(&counts, window, indices.len() as u64);
        assert_eq!(ours, codebook_usage(&indices, 128).unwrap());
    }
}
