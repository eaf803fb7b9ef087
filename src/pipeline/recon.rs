//! `recon`: how well a tokenizer reconstructs a set of images — rFID, PSNR, SSIM (standard and
//! LlamaGen-compatible), codebook usage, and with `--features inception,dinov2,clip` FD_DINOv2 and
//! CMMD of the reconstructions against the originals — from a LlamaGen VQ checkpoint or from
//! reconstructions made elsewhere, in one journaled pass over the originals.
//!
//! Per image, the journal keeps the scores, the code indices, the feature rows of the
//! reconstruction (and of the original when the inputs are the reference) and, when
//! they are to be saved, the reconstructed pixels; a resumed run rebuilds every accumulator from
//! them with the same batch boundaries, so its figures equal an uninterrupted run's. Under a
//! launcher the images are split over the ranks and rank 0 accumulates every rank's per-image
//! values in image order, over the same batches (see [`super::split`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llamagen_metrics::cmmd::cmmd_f32;
use llamagen_metrics::codebook::{CodebookUsage, LLAMAGEN_USAGE_WINDOW};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::image_quality::{self, SsimMode};
use llamagen_metrics::stats::{GaussianAccumulator, GaussianStats};
use ndarray::{Array1, Array2, Array4, ArrayView3};
use ndarray_npy::ReadNpzError;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use super::cache::FeatureCache;
use super::evaluate::run_info;
use super::features::{rows_from_record, rows_to_record};
use super::inception::InceptionConfig;
use super::merge::merge;
use super::pass::{self, JournalConfig, PassConfig, PassOutcome, Stage};
use crate::data::{DataError, ImageSource};
use crate::dist::part::PartReport;
use crate::dist::{clean_up, parts_in, split_record, Distribution, Part, RankPart};
use crate::evaluate::Reference;
use crate::features::{Extractor, FeatureSet, Network};
use crate::io::{write_npz_atomically, FileError};
use crate::journal::{Journal, StreamSpec};
use crate::layout::RunLayout;
use crate::metric::MetricKey;
use crate::models::inception::POOL_DIM;
use crate::models::vq::{images_to_input, to_pixels, VqModel, VqWeights};
use crate::partition::Shard;
use crate::partition::{join_order, JoinError};
use crate::progress::Progress;
use crate::record::{MetricValues, RunRecord};

/// Default side for folders of images (ADM centre crop), as LlamaGen evaluates at 256.
pub const FOLDER_IMAGE_SIZE: usize = 256;

/// The figures `recon` can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReconMetric {
    /// Fréchet distance of the reconstructions' Inception pool features to the reference's.
    Rfid,
    /// Peak signal-to-noise ratio (data range 255).
    Psnr,
    /// SSIM, both the standard (Gaussian window) and the LlamaGen-compatible figure.
    Ssim,
    /// Codebook usage and perplexity over the set (needs the tokenizer).
    Codebook,
    /// Fréchet distance of the reconstructions' DINOv2 features to the originals' (needs DINOv2).
    FdDinov2,
    /// CMMD of the reconstructions' CLIP embeddings to the originals' (needs CLIP).
    Cmmd,
}

impl ReconMetric {
    /// Every figure.
    pub const ALL: [ReconMetric; 6] = [
        ReconMetric::Rfid,
        ReconMetric::Psnr,
        ReconMetric::Ssim,
        ReconMetric::Codebook,
        ReconMetric::FdDinov2,
        ReconMetric::Cmmd,
    ];
}

/// Precision the tokenizer runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReconPrecision {
    /// float32.
    #[default]
    Fp32,
    /// bfloat16.
    Bf16,
}

/// Where reconstructions come from.
#[derive(Debug, Clone)]
pub enum Reconstructions {
    /// A LlamaGen VQ checkpoint, run here.
    Tokenizer {
        /// The checkpoint.
        vq: PathBuf,
        /// Which weights of a training checkpoint.
        weights: VqWeights,
        /// Its dtype.
        precision: ReconPrecision,
        /// Also write the reconstructions as an npz.
        save: Option<PathBuf>,
    },
    /// Reconstructions made elsewhere (npz `arr_0`, same order and shape as the originals).
    Batch(PathBuf),
}

/// A `recon` run.
#[derive(Debug, Clone)]
pub struct ReconConfig {
    /// Original images (npz or folder).
    pub data: PathBuf,
    /// Centre-crop size of the originals (default: npz images as they are, folders at 256).
    pub image_size: Option<usize>,
    /// The reconstructions.
    pub reconstructions: Reconstructions,
    /// rFID reference; `None`: the originals themselves (LlamaGen's protocol).
    pub reference: Option<PathBuf>,
    /// `None`: every figure the inputs allow.
    pub metrics: Option<Vec<ReconMetric>>,
    /// Feature network (and batch size, and the device the tokenizer runs on).
    pub inception: InceptionConfig,
    /// Output folder (metrics.json, metrics.csv, the journal).
    pub out_dir: PathBuf,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Testing aid: stop with an error after this many batches.
    pub stop_after_batches: Option<usize>,
    /// Bars or none.
    pub progress: Progress,
}

/// Where reconstructions come from, opened.
enum Source {
    Vq {
        _vs: tch::nn::VarStore,
        model: Box<VqModel>,
    },
    Batch(Box<dyn ImageSource + Send>),
}

struct ReconStage<'e> {
    source: Source,
    extractor: Option<&'e Extractor>,
    image_shape: (usize, usize),
    save_pixels: bool,
    totals: Totals,
}

/// The per-image figures of a run, accumulated in image order.
struct Totals {
    wanted: BTreeSet<ReconMetric>,
    codes_per_image: usize,
    psnr: Vec<f64>,
    ssim: Vec<f64>,
    ssim_llamagen: Vec<f64>,
    counts: Vec<u64>,
    window: Vec<i64>,
    num_indices: u64,
    /// The feature rows the figures need, in journal-stream order.
    tracks: Vec<Track>,
}

/// One kind of feature row a run keeps per image: one network's features of the
/// reconstructions or of the originals, as running statistics (Fréchet distances) or as every
/// row (CMMD).
struct Track {
    /// Journal stream and part entry (`recon_pool`, `input_dinov2`, ...).
    name: &'static str,
    /// The feature array it takes (`pool`, `dinov2`, `clip`).
    key: &'static str,
    /// The originals' features (else the reconstructions').
    input: bool,
    /// Features per row.
    dim: usize,
    /// Running statistics, for a Fréchet distance.
    stats: Option<GaussianAccumulator>,
    /// Every row, for CMMD.
    rows: Option<Vec<f32>>,
}

impl Track {
    fn new(name: &'static str, key: &'static str, input: bool, dim: usize) -> Self {
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

    fn add(&mut self, rows: &Array2<f32>) -> Result<()> {
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

    fn statistics(&self) -> Result<GaussianStats> {
        self.stats
            .as_ref()
            .with_context(|| format!("no statistics of `{}`", self.name))?
            .finalize()
            .with_context(|| format!("`{}` needs at least 2 images", self.name))
    }

    fn all_rows(&self) -> Result<Array2<f32>> {
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
struct ExtraDims {
    dinov2: Option<usize>,
    clip: Option<usize>,
}

impl Totals {
    fn add_indices(&mut self, indices: &[i64]) -> Result<()> {
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
    fn absorb(
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

fn data_error(e: DataError) -> anyhow::Error {
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

fn path_value(p: Option<&Path>) -> Value {
    p.map(|p| Value::from(p.display().to_string()))
        .unwrap_or(Value::Null)
}

/// The feature network a feature array comes from.
fn network_of(key: &str) -> Network {
    match key {
        "dinov2" => Network::Dinov2,
        "clip" => Network::Clip,
        _ => Network::Inception,
    }
}

/// The figures `config` asks for, as far as its inputs allow.
fn wanted_metrics(config: &ReconConfig) -> Result<BTreeSet<ReconMetric>> {
    let explicit = config.metrics.is_some();
    let mut wanted: BTreeSet<ReconMetric> = config
        .metrics
        .clone()
        .unwrap_or_else(|| ReconMetric::ALL.to_vec())
        .into_iter()
        .collect();
    let tokenizer = matches!(config.reconstructions, Reconstructions::Tokenizer { .. });
    if !tokenizer && wanted.remove(&ReconMetric::Codebook) && explicit {
        bail!(
            "`codebook` needs the tokenizer; reconstructions made elsewhere have no token indices"
        );
    }
    let networks = [
        (
            ReconMetric::FdDinov2,
            config.inception.dinov2.is_some(),
            "fd-dinov2",
            "dinov2",
        ),
        (
            ReconMetric::Cmmd,
            config.inception.clip.is_some(),
            "cmmd",
            "clip",
        ),
    ];
    for (metric, loaded, name, network) in networks {
        if !loaded && wanted.remove(&metric) && explicit {
            bail!("`{name}` needs the {network} network: add --features inception,{network}");
        }
    }
    Ok(wanted)
}

impl Totals {
    /// Nothing accumulated yet; pool statistics of the reconstructions with `rfid`, and of the
    /// inputs too when they are their own reference (`input_reference`); DINOv2 statistics and
    /// CLIP rows of both with `fd_dinov2` and `cmmd` (widths in `dims`).
    fn new(
        wanted: BTreeSet<ReconMetric>,
        codes_per_image: usize,
        codebook_size: usize,
        input_reference: bool,
        dims: ExtraDims,
    ) -> Result<Self> {
        let mut tracks = Vec::new();
        if wanted.contains(&ReconMetric::Rfid) {
            tracks.push(Track::new("recon_pool", "pool", false, POOL_DIM as usize));
            if input_reference {
                tracks.push(Track::new("input_pool", "pool", true, POOL_DIM as usize));
            }
        }
        if wanted.contains(&ReconMetric::FdDinov2) {
            let dim = dims.dinov2.context("DINOv2's feature width")?;
            tracks.push(Track::new("recon_dinov2", "dinov2", false, dim));
            tracks.push(Track::new("input_dinov2", "dinov2", true, dim));
        }
        if wanted.contains(&ReconMetric::Cmmd) {
            let dim = dims.clip.context("CLIP's embedding width")?;
            tracks.push(Track::new("recon_clip", "clip", false, dim));
            tracks.push(Track::new("input_clip", "clip", true, dim));
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

    fn track(&self, name: &str) -> Option<&Track> {
        self.tracks.iter().find(|t| t.name == name)
    }

    /// The figures: metric values, and the record fields that come with them. `reference`: the
    /// rFID reference's statistics (`None`: the inputs').
    fn figures(
        &self,
        reference: Option<&GaussianStats>,
    ) -> Result<(MetricValues, Vec<(&'static str, Value)>)> {
        let mut values = MetricValues::default();
        let mut record = Vec::new();
        if let Some(recon_pool) = self.track("recon_pool") {
            let recon_stats = recon_pool.statistics()?;
            let reference_stats: GaussianStats = match (reference, self.track("input_pool")) {
                (Some(r), _) => r.clone(),
                (None, Some(input)) => input.statistics()?,
                (None, None) => bail!("no rFID reference"),
            };
            values.insert(
                MetricKey::Rfid,
                frechet_distance(&recon_stats, &reference_stats)?,
            );
        }
        if let (Some(recon), Some(input)) = (self.track("recon_dinov2"), self.track("input_dinov2"))
        {
            values.insert(
                MetricKey::FdDinov2,
                frechet_distance(&recon.statistics()?, &input.statistics()?)?,
            );
        }
        if let (Some(recon), Some(input)) = (self.track("recon_clip"), self.track("input_clip")) {
            values.insert(
                MetricKey::Cmmd,
                cmmd_f32(input.all_rows()?.view(), recon.all_rows()?.view())?,
            );
        }
        if self.wanted.contains(&ReconMetric::Psnr) {
            let finite: Vec<f64> = self
                .psnr
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if finite.is_empty() {
                values.insert(MetricKey::Psnr, f64::INFINITY);
            } else {
                values.insert(
                    MetricKey::Psnr,
                    finite.iter().sum::<f64>() / finite.len() as f64,
                );
            }
            record.push((
                "psnr_identical_images",
                Value::from(self.psnr.len() - finite.len()),
            ));
        }
        if self.wanted.contains(&ReconMetric::Ssim) {
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            values.insert(MetricKey::Ssim, mean(&self.ssim));
            values.insert(MetricKey::SsimLlamagen, mean(&self.ssim_llamagen));
            record.push((
                "ssim_window",
                Value::from("gaussian 11x11, sigma 1.5, data range 255"),
            ));
            record.push((
                "ssim_llamagen_definition",
                Value::from("LlamaGen's call: uniform 7x7, float32 [0,1] inputs, data_range 2.0"),
            ));
        }
        if self.wanted.contains(&ReconMetric::Codebook) {
            let usage = usage_from_counts(&self.counts, &self.window, self.num_indices);
            values.insert(MetricKey::CodebookUsage, usage.usage);
            values.insert(MetricKey::CodebookPerplexity, usage.perplexity);
            record.push(("codebook_size", Value::from(usage.codebook_size)));
            record.push(("codebook_used_entries", Value::from(usage.used_entries)));
            record.push(("codebook_tokens", Value::from(usage.num_indices)));
            record.push(("codebook_entropy_bits", Value::from(usage.entropy_bits)));
            record.push((
                "codebook_usage_last_65536",
                Value::from(usage.llamagen_usage),
            ));
        }
        Ok((values, record))
    }
}

/// Runs `recon` and writes its run folder; returns the record. In a launched job every rank
/// scores its images (r, r+N, ...) into `<out>/.parts/` and rank 0 computes the figures of all
/// of them, as one process would have; the other ranks return `None`.
pub fn reconstruct(config: &ReconConfig, distribution: &Distribution) -> Result<Option<RunRecord>> {
    let batch_size = config.inception.batch_size;
    let world = distribution.world;
    let split = world.is_distributed();
    let shard = Shard {
        index: world.rank,
        count: world.size,
    };
    // 1. Inputs and the output folder, all checked before anything is written.
    crate::io::check_output_dir(&config.out_dir)?;
    let image_size = config
        .image_size
        .or_else(|| config.data.is_dir().then_some(FOLDER_IMAGE_SIZE));
    let whole = crate::data::open_images(&config.data, image_size, batch_size)?;
    let total = whole.len();
    anyhow::ensure!(total > 0, "{}: no images", config.data.display());
    let (height, width) = whole.image_size();
    let data_name = whole.describe();
    let mut data = if split {
        drop(whole);
        crate::data::open_shard(&config.data, image_size, batch_size, shard)?
    } else {
        whole
    };
    let (source, save) = match &config.reconstructions {
        Reconstructions::Tokenizer {
            vq,
            weights,
            precision,
            save,
        } => {
            let device = config
                .inception
                .device
                .resolve()
                .map_err(anyhow::Error::msg)?;
            let (mut vs, model) = VqModel::load(vq, device, *weights)?;
            model
                .config()
                .check_image_size(&data_name, height as i64, width as i64)?;
            if *precision == ReconPrecision::Bf16 {
                vs.bfloat16();
            }
            (
                Source::Vq {
                    _vs: vs,
                    model: Box::new(model),
                },
                save.clone(),
            )
        }
        Reconstructions::Batch(batch) => {
            let recon = crate::data::open_images(batch, None, batch_size)?;
            if recon.len() != total || recon.image_size() != (height, width) {
                bail!(
                    "{}: {} reconstructions of {:?} do not match the {total} originals of {:?} in {}",
                    batch.display(),
                    recon.len(),
                    recon.image_size(),
                    (height, width),
                    data_name
                );
            }
            let recon = if split {
                drop(recon);
                crate::data::open_shard(batch, None, batch_size, shard)?
            } else {
                recon
            };
            (Source::Batch(recon), None)
        }
    };
    let vq = match &source {
        Source::Vq { model, .. } => Some(model.as_ref()),
        Source::Batch(_) => None,
    };
    let wanted = wanted_metrics(config)?;
    let codebook_size = vq.map_or(0, |m| m.config().codebook_size as usize);
    let codes_per_image = match vq {
        Some(m) if wanted.contains(&ReconMetric::Codebook) => {
            let f = m.config().downsample_factor() as usize;
            (height / f) * (width / f)
        }
        _ => 0,
    };
    let training_usage = vq.and_then(VqModel::training_codebook_usage);
    let vq_config = vq.map(|m| m.config().clone());
    let vq_device = vq.map(|m| format!("{:?}", m.device()));
    let rank_device = match vq {
        Some(m) => m.device(),
        None => config
            .inception
            .device
            .resolve()
            .map_err(anyhow::Error::msg)?,
    };

    let out_dir = &config.out_dir;
    let rfid = wanted.contains(&ReconMetric::Rfid);
    let features_needed =
        rfid || wanted.contains(&ReconMetric::FdDinov2) || wanted.contains(&ReconMetric::Cmmd);
    // Only the process that computes the figures needs the reference.
    let gathers = !split || world.rank == 0;
    let mut cache = None;
    let mut reference = None;
    if features_needed {
        let mut c = FeatureCache::new(
            FeatureCache::dir_for(out_dir),
            config.inception.clone(),
            config.progress,
        )?;
        if gathers && rfid {
            reference = config
                .reference
                .as_deref()
                .map(|r| Reference::pool_stats(r, config.image_size, &mut c))
                .transpose()?;
        }
        c.extractor()?;
        cache = Some(c);
    }
    let inception_sha = cache.as_ref().map(|c| c.weights().sha256.clone());
    let extra_fields = cache
        .as_ref()
        .map(|c| c.weights().extra_fields())
        .unwrap_or_default();
    let extractor = match cache.as_mut() {
        Some(c) => Some(c.extractor()?),
        None => None,
    };
    let feature_width =
        |network: Network| extractor.and_then(|e| e.outputs(network).first().map(|(_, d)| *d));
    let dims = ExtraDims {
        dinov2: feature_width(Network::Dinov2),
        clip: feature_width(Network::Clip),
    };

    // 2. The journaled pass.
    let (vq_path, vq_weights, precision) = match &config.reconstructions {
        Reconstructions::Tokenizer {
            vq,
            weights,
            precision,
            ..
        } => (Some(vq.as_path()), Some(*weights), Some(*precision)),
        Reconstructions::Batch(_) => (None, None, None),
    };
    let recon_batch = match &config.reconstructions {
        Reconstructions::Batch(p) => Some(p.as_path()),
        Reconstructions::Tokenizer { .. } => None,
    };
    let mut settings = Map::new();
    settings.insert("data".into(), json!(config.data.display().to_string()));
    settings.insert("n_images".into(), json!(total));
    settings.insert("image_size".into(), json!([height, width]));
    settings.insert("vq".into(), path_value(vq_path));
    settings.insert(
        "vq_weights".into(),
        json!(vq_weights.map(|w| format!("{w:?}"))),
    );
    settings.insert("recon_batch".into(), path_value(recon_batch));
    settings.insert(
        "precision".into(),
        json!(precision.map(|p| format!("{p:?}"))),
    );
    settings.insert("batch_size".into(), json!(batch_size));
    settings.insert(
        "metrics".into(),
        json!(wanted.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>()),
    );
    settings.insert("reference".into(), path_value(config.reference.as_deref()));
    settings.insert("inception_sha256".into(), json!(inception_sha));
    settings.insert("resize".into(), json!(config.inception.resize.name()));
    settings.insert("save_recon".into(), path_value(save.as_deref()));
    settings.extend(
        extra_fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone())),
    );
    let mut stage = ReconStage {
        source,
        extractor,
        image_shape: (height, width),
        save_pixels: save.is_some(),
        totals: Totals::new(
            wanted,
            codes_per_image,
            codebook_size,
            config.reference.is_none(),
            dims,
        )?,
    };

    // What the run record says besides the figures.
    let mut record = vec![
        ("n_images", Value::from(total)),
        ("image_size", json!([height, width])),
        ("data", Value::from(data_name)),
        ("tokenizer", path_value(vq_path)),
        ("recon_batch", path_value(recon_batch)),
        ("batch_size", Value::from(batch_size)),
    ];
    if let Some(vq_config) = &vq_config {
        record.push((
            "vq_config",
            json!({
                "ch": vq_config.ch,
                "ch_mult": vq_config.ch_mult,
                "z_channels": vq_config.z_channels,
                "codebook_size": vq_config.codebook_size,
                "embed_dim": vq_config.embed_dim,
                "num_res_blocks": vq_config.num_res_blocks,
                "downsample_factor": vq_config.downsample_factor(),
            }),
        ));
        record.push((
            "vq_weights",
            Value::from(format!("{:?}", vq_weights.unwrap_or_default()).to_lowercase()),
        ));
        record.push((
            "precision",
            Value::from(format!("{:?}", precision.unwrap_or_default()).to_lowercase()),
        ));
        record.push(("device", Value::from(vq_device.clone())));
    }
    if rfid {
        record.push((
            "rfid_reference",
            config
                .reference
                .as_ref()
                .map(|p| Value::from(p.display().to_string()))
                .unwrap_or_else(|| Value::from("inputs")),
        ));
        record.push(("resize", Value::from(config.inception.resize.name())));
        record.push(("inception_sha256", Value::from(inception_sha.clone())));
    }
    record.extend(extra_fields);
    if let Some(training) = training_usage {
        record.push(("training_codebook_usage", Value::from(training)));
    }

    let layout = RunLayout::folder(out_dir);
    if !config.resume && world.restarts == 0 && gathers {
        RunRecord::remove_stale(out_dir)?;
    }
    let mut pass_config = PassConfig {
        label: "recon",
        batch_size,
        progress: config.progress,
        journal: Some(JournalConfig {
            dir: layout.journal().to_path_buf(),
            settings: settings.clone(),
            resume: config.resume,
        }),
        stop_after_new: config.stop_after_batches.map(|b| b * batch_size),
    };
    if split {
        let part = RankPart::start(distribution, layout, total, config.resume, &settings)?;
        if part.kept(config.progress).is_none() {
            pass_config.journal = Some(JournalConfig {
                dir: part.journal(),
                settings,
                resume: part.resuming,
            });
            let mut outcome = pass::run(&pass_config, data.as_mut(), &mut [&mut stage])?;
            let run_fields = record.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            write_part(
                &part,
                &mut outcome,
                &stage,
                run_fields,
                rank_device,
                config.progress,
            )?;
            outcome.finish()?;
        }
        let Some(parts) = part.gather(config.progress)? else {
            return Ok(None);
        };
        let run = gather_recon(config, &parts, reference.as_ref())?;
        clean_up(&part.layout)?;
        return Ok(Some(run));
    }
    let mut outcome = pass::run(&pass_config, data.as_mut(), &mut [&mut stage])?;
    record.push(("resumed", Value::from(outcome.resumed > 0)));

    // 3. Figures and outputs.
    let (values, fields) = stage.totals.figures(reference.as_ref())?;
    record.extend(fields);
    if let Some(path) = &save {
        let journal = outcome
            .journal
            .as_mut()
            .context("the journal of reconstructed pixels")?;
        write_pixels(journal, path, total, (height, width), batch_size, None)?;
        record.push(("saved_recon", Value::from(path.display().to_string())));
    }
    let run = RunRecord {
        metrics: values,
        run: run_info(record),
    };
    run.write(out_dir)?;
    outcome.finish()?;
    Ok(Some(run))
}

/// Writes the `count` reconstructions in `journal` to the npz `path`, with their image
/// `indices` when given (a rank's part).
fn write_pixels(
    journal: &mut Journal,
    path: &Path,
    count: usize,
    (height, width): (usize, usize),
    batch_size: usize,
    indices: Option<&Array1<i64>>,
) -> Result<()> {
    let mut writer = crate::data::npz_writer::ImageNpzWriter::create(path, count, height, width)?;
    for start in (0..count).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(count);
        let bytes = journal.read("recon_pixels", start..end)?;
        for image in bytes.chunks_exact(height * width * 3) {
            writer.push(ArrayView3::from_shape((height, width, 3), image)?)?;
        }
    }
    if let Some(indices) = indices {
        writer.add_array("indices", indices)?;
    }
    writer.finish()?;
    Ok(())
}

/// Writes this rank's part from its pass's journal: per image (with its index) the scores, the
/// code indices and the pool features (`recon`), and the reconstructed pixels when they are
/// saved (`recon_pixels`); then the manifest, whose `run_fields` are the record's fields.
fn write_part(
    part: &RankPart<'_>,
    outcome: &mut PassOutcome,
    stage: &ReconStage<'_>,
    run_fields: Map<String, Value>,
    device: tch::Device,
    progress: Progress,
) -> Result<()> {
    let journal = outcome
        .journal
        .as_mut()
        .context("the journal of the rank's pass")?;
    let indices: Array1<i64> = part.indices().into_iter().map(|i| i as i64).collect();
    let n = indices.len();
    let totals = &stage.totals;
    let scores: Vec<f64> = journal
        .read("scores", 0..n)?
        .chunks_exact(8)
        .map(|b| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(b);
            f64::from_le_bytes(bytes)
        })
        .collect();
    let scores = Array2::from_shape_vec((n, 3), scores)?;
    let codes = if totals.codes_per_image > 0 {
        let codes: Vec<i32> = journal
            .read("codes", 0..n)?
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Some(Array2::from_shape_vec((n, totals.codes_per_image), codes)?)
    } else {
        None
    };
    let mut pools = Vec::new();
    for track in &totals.tracks {
        let rows = rows_from_record(&journal.read(track.name, 0..n)?, n, track.dim)?;
        pools.push((track.name, rows));
    }
    let (name, path) = part.file("recon");
    write_npz_atomically(&path, |npz| {
        npz.add_array("scores", &scores)?;
        if let Some(codes) = &codes {
            npz.add_array("codes", codes)?;
        }
        for (name, pool) in &pools {
            npz.add_array(*name, pool)?;
        }
        npz.add_array("indices", &indices)?;
        Ok(())
    })?;
    let mut files = BTreeMap::from([("recon".to_owned(), name)]);
    if stage.save_pixels {
        let (name, path) = part.file("recon_pixels");
        write_pixels(
            journal,
            &path,
            n,
            stage.image_shape,
            PIXEL_BATCH,
            Some(&indices),
        )?;
        files.insert("recon_pixels".to_owned(), name);
    }
    let (rank_record, timing) = part.image_job_record(device, outcome.resumed);
    part.write_manifest(
        PartReport {
            files,
            rank_record,
            timing,
            run_fields,
        },
        progress,
    )?;
    Ok(())
}

/// Reconstructions read from a journal at once when they are copied into a file.
const PIXEL_BATCH: usize = 64;

/// One rank's `recon` part, read back.
struct RankScores {
    indices: Vec<i64>,
    scores: Array2<f64>,
    codes: Option<Array2<i32>>,
    /// Feature rows by track name (`recon_pool`, `input_dinov2`, ...).
    features: BTreeMap<String, Array2<f32>>,
}

impl RankScores {
    fn read(path: &Path) -> Result<Self> {
        let mut npz = crate::io::open_npz(path)?;
        let names: Vec<String> = npz
            .names()
            .map_err(|e| FileError::new(path, format!("cannot list entries: {e}")))?
            .into_iter()
            .map(|n| n.trim_end_matches(".npy").to_owned())
            .collect();
        let has = |key: &str| names.iter().any(|n| n == key);
        let error = |key: &str, e: ReadNpzError| FileError::new(path, format!("`{key}`: {e}"));
        let indices: Array1<i64> = npz.by_name("indices").map_err(|e| error("indices", e))?;
        let scores = npz.by_name("scores").map_err(|e| error("scores", e))?;
        let codes = if has("codes") {
            Some(npz.by_name("codes").map_err(|e| error("codes", e))?)
        } else {
            None
        };
        let mut features = BTreeMap::new();
        for key in &names {
            if key.starts_with("recon_") || key.starts_with("input_") {
                let rows: Array2<f32> = npz.by_name(key).map_err(|e| error(key, e))?;
                features.insert(key.clone(), rows);
            }
        }
        Ok(RankScores {
            indices: indices.to_vec(),
            scores,
            codes,
            features,
        })
    }
}

/// The figures of every rank's part, accumulated in image order over the batches one process
/// would have used, written into the run folder with how the work was split.
fn gather_recon(
    config: &ReconConfig,
    parts: &[Part],
    reference: Option<&GaussianStats>,
) -> Result<RunRecord> {
    let first = parts.first().context("no parts to gather")?;
    let total = first.manifest.samples;
    let files: Vec<PathBuf> = parts
        .iter()
        .map(|p| p.require_file("recon"))
        .collect::<Result<_, _>>()?;
    let ranks: Vec<RankScores> = files
        .iter()
        .map(|f| RankScores::read(f))
        .collect::<Result<_>>()?;
    let indices: Vec<Vec<i64>> = ranks.iter().map(|r| r.indices.clone()).collect();
    let order: Vec<(usize, usize)> = join_order(&indices, Some(total))
        .map_err(|e| match e {
            JoinError::Duplicate {
                index,
                first,
                second,
            } => anyhow::anyhow!(
                "{}: image index {index} is in another part too ({})",
                files[second].display(),
                files[first].display()
            ),
            JoinError::OutOfRange { part, index, total } => anyhow::anyhow!(
                "{}: image index {index} outside 0..{total}",
                files[part].display()
            ),
            JoinError::Missing { index, .. } => anyhow::anyhow!("no part holds image {index}"),
        })?
        .into_iter()
        .map(|p| (p.part, p.row))
        .collect();
    let codes_per_image = ranks[0].codes.as_ref().map_or(0, |c| c.ncols());
    let codebook_size = match codes_per_image {
        0 => 0,
        _ => first.manifest.run_fields["vq_config"]["codebook_size"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .with_context(|| format!("{}: no codebook size", first.path.display()))?,
    };
    let width = |name: &str| ranks[0].features.get(name).map(|f| f.ncols());
    let mut totals = Totals::new(
        wanted_metrics(config)?,
        codes_per_image,
        codebook_size,
        config.reference.is_none(),
        ExtraDims {
            dinov2: width("recon_dinov2"),
            clip: width("recon_clip"),
        },
    )?;
    let tracks: Vec<(&'static str, usize)> =
        totals.tracks.iter().map(|t| (t.name, t.dim)).collect();
    let rows = |name: &str, dim: usize, chunk: &[(usize, usize)]| -> Result<Array2<f32>> {
        let mut out = Array2::<f32>::zeros((chunk.len(), dim));
        for (row_out, &(k, row)) in chunk.iter().enumerate() {
            let features = ranks[k].features.get(name).with_context(|| {
                format!(
                    "{}: no `{name}` features, which the metrics asked for need",
                    files[k].display()
                )
            })?;
            anyhow::ensure!(
                features.nrows() > row && features.ncols() == dim,
                "{}: `{name}` features of another shape",
                files[k].display()
            );
            out.row_mut(row_out).assign(&features.row(row));
        }
        Ok(out)
    };
    for chunk in order.chunks(config.inception.batch_size.max(1)) {
        let mut scores = Vec::with_capacity(chunk.len());
        let mut codes = Vec::with_capacity(chunk.len() * codes_per_image);
        for &(k, row) in chunk {
            let rank = &ranks[k];
            anyhow::ensure!(
                rank.scores.nrows() > row && rank.scores.ncols() == 3,
                "{}: `scores` of shape {:?}",
                files[k].display(),
                rank.scores.dim()
            );
            scores.push([
                rank.scores[[row, 0]],
                rank.scores[[row, 1]],
                rank.scores[[row, 2]],
            ]);
            if codes_per_image > 0 {
                let rank_codes = rank
                    .codes
                    .as_ref()
                    .filter(|c| c.nrows() > row && c.ncols() == codes_per_image)
                    .with_context(|| {
                        format!(
                            "{}: `codes` missing or of another shape",
                            files[k].display()
                        )
                    })?;
                codes.extend(rank_codes.row(row).iter().map(|&c| i64::from(c)));
            }
        }
        let features = tracks
            .iter()
            .map(|(name, dim)| rows(name, *dim, chunk))
            .collect::<Result<Vec<_>>>()?;
        totals.absorb(chunk.len(), &scores, &codes, &features)?;
    }
    let (values, fields) = totals.figures(reference)?;
    let mut run = run_info(fields);
    run.extend(first.manifest.run_fields.clone());
    let resumed = parts
        .iter()
        .any(|p| p.manifest.rank_record.resumed_samples > 0);
    run.insert("resumed".into(), Value::from(resumed));
    run.extend(
        split_record(parts)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    if let Reconstructions::Tokenizer {
        save: Some(path), ..
    } = &config.reconstructions
    {
        let pixels: Vec<PathBuf> = parts
            .iter()
            .map(|p| p.require_file("recon_pixels"))
            .collect::<Result<_, _>>()?;
        merge(&pixels, path, config.progress)?;
        run.insert(
            "saved_recon".into(),
            Value::from(path.display().to_string()),
        );
    }
    let record = RunRecord {
        metrics: values,
        run,
    };
    record.write(&config.out_dir)?;
    Ok(record)
}

/// `merge OUT_DIR` for a launched `recon` whose rank 0 did not finish the gather: the figures of
/// the parts in `<out>/.parts/` (the rFID reference resolved through the run folder's feature
/// cache, as the run did), written into the run folder.
pub fn gather_recon_offline(config: &ReconConfig) -> Result<RunRecord> {
    let layout = RunLayout::folder(&config.out_dir);
    let parts = parts_in(&layout, config.progress)?;
    let reference = match &config.reference {
        Some(r) if wanted_metrics(config)?.contains(&ReconMetric::Rfid) => {
            let mut cache = FeatureCache::new(
                FeatureCache::dir_for(&config.out_dir),
                config.inception.clone(),
                config.progress,
            )?;
            Some(Reference::pool_stats(r, config.image_size, &mut cache)?)
        }
        _ => None,
    };
    let record = gather_recon(config, &parts, reference.as_ref())?;
    clean_up(&layout)?;
    Ok(record)
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
