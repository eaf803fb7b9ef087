//! A launched `recon`'s parts: each rank's per-image values written from its journal
//! ([`write_part`]), and rank 0's (or `merge OUT_DIR`'s) gather of them in image order
//! ([`gather_recon`], [`gather_recon_offline`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use llamagen_metrics::stats::GaussianStats;
use ndarray::{Array1, Array2, ArrayView3};
use ndarray_npy::ReadNpzError;
use serde_json::{Map, Value};

use super::config::{wanted_metrics, ReconConfig, Reconstructions};
use super::stage::{ExtraDims, ReconStage, Totals};
use super::ReconMetric;
use crate::dist::part::PartReport;
use crate::dist::{clean_up, parts_in, split_record, Part, RankPart};
use crate::evaluate::run_info;
use crate::evaluate::Reference;
use crate::io::{write_npz_atomically, FileError};
use crate::journal::Journal;
use crate::layout::RunLayout;
use crate::partition::join_order;
use crate::pipeline::feature_cache::FeatureCache;
use crate::pipeline::jobs::merge::merge;
use crate::pipeline::pass::PassOutcome;
use crate::pipeline::stages::features::rows_from_record;
use crate::progress::Progress;
use crate::record::RunRecord;

/// Writes the `count` reconstructions in `journal` to the npz `path`, with their image
/// `indices` when given (a rank's part).
pub(super) fn write_pixels(
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
pub(super) fn write_part(
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
pub(super) struct RankScores {
    indices: Vec<i64>,
    scores: Array2<f64>,
    codes: Option<Array2<i32>>,
    /// Feature rows by track name (`recon_pool`, `input_dinov2`, ...).
    features: BTreeMap<String, Array2<f32>>,
}

impl RankScores {
    pub(super) fn read(path: &Path) -> Result<Self> {
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
pub(super) fn gather_recon(
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
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let order: Vec<(usize, usize)> = join_order(&indices, Some(total))
        .map_err(|e| anyhow::anyhow!(e.naming(&names)))?
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
        ..Default::default()
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
            Some(Reference::pool_stats(r, config.crop, &mut cache)?)
        }
        _ => None,
    };
    let record = gather_recon(config, &parts, reference.as_ref())?;
    clean_up(&layout)?;
    Ok(record)
}
