//! The part files of the jobs' ranks and their joins in sample order: features (with their
//! sample indices), sample npz files, and the grid's first images. What a part is and how it is
//! gathered is the distribution layer's ([`crate::dist`]); what its files hold is the jobs'.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use ndarray::{Array1, Array3, Axis};

use crate::captions::CaptionTable;
use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::dist::Part;
use crate::feature_set::FeatureSet;
use crate::io::read_i64;
use crate::partition::join_order;
use crate::pipeline::jobs::merge::merge;
use crate::pipeline::stages::sinks::GRID_IMAGES;

/// Writes `features` of the samples `indices` as a part file at `path`.
pub fn write_features_part(features: &mut FeatureSet, indices: &[u64], path: &Path) -> Result<()> {
    features.indices = Some(indices.iter().map(|&i| i as i64).collect());
    let saved = features.save(path);
    features.indices = None;
    Ok(saved?)
}

/// The parts' features as one set in sample order.
pub fn join_part_features(parts: &[Part]) -> Result<FeatureSet> {
    let mut sets = Vec::with_capacity(parts.len());
    let mut paths = Vec::with_capacity(parts.len());
    for part in parts {
        let path = part.require_file("features")?;
        let set = FeatureSet::load(&path)
            .with_context(|| format!("features of rank {}", part.manifest.rank))?;
        let Some(indices) = &set.indices else {
            anyhow::bail!("{}: features without `indices`", path.display());
        };
        check_rows(part, &path, &indices.to_vec())?;
        sets.push(set);
        paths.push(path);
    }
    let mut joined = FeatureSet::join(&sets, &paths)?;
    joined.indices = None;
    Ok(joined)
}

/// Joins the parts' sample files into the npz `out`, in sample order.
pub fn join_part_samples(
    parts: &[Part],
    out: &Path,
    progress: crate::progress::Progress,
) -> Result<()> {
    let mut files = Vec::with_capacity(parts.len());
    for part in parts {
        let path = part.require_file("samples")?;
        let indices = read_i64(&path, "indices")?
            .with_context(|| format!("{}: samples without `indices`", path.display()))?;
        check_rows(part, &path, &indices)?;
        files.push(path);
    }
    merge(&files, out, progress)
}

/// Refuses a part file whose rows are not exactly its rank's samples (the indices of its shard,
/// in order), naming the file, the rank and the missing and extra sample indices.
fn check_rows(part: &Part, path: &Path, held: &[i64]) -> Result<()> {
    let expected: Vec<i64> = part.indices()?.into_iter().map(|i| i as i64).collect();
    if held == expected.as_slice() {
        return Ok(());
    }
    let want: BTreeSet<i64> = expected.iter().copied().collect();
    let have: BTreeSet<i64> = held.iter().copied().collect();
    let missing: Vec<i64> = want.difference(&have).copied().collect();
    let extra: Vec<i64> = have.difference(&want).copied().collect();
    let listed = |what: &str, indices: &[i64]| {
        (!indices.is_empty()).then(|| {
            let shown: Vec<String> = indices.iter().take(10).map(i64::to_string).collect();
            let more = if indices.len() > 10 { ", …" } else { "" };
            format!("{} {what} ({}{more})", indices.len(), shown.join(", "))
        })
    };
    let what = [listed("missing", &missing), listed("extra", &extra)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let what = if what.is_empty() {
        "repeated or out of order".to_owned()
    } else {
        what.join(", ")
    };
    anyhow::bail!(
        "{}: rank {}'s part holds {} rows for its {} samples (shard {}): sample indices {what}; rerun the job with --resume so that rank {} makes its part again",
        path.display(),
        part.manifest.rank,
        held.len(),
        expected.len(),
        part.manifest.shard,
        part.manifest.rank,
    )
}

/// The images of a grid, and their captions (t2i runs with caption texts).
pub struct GridImages {
    /// The images, in sample order.
    pub images: Vec<Array3<u8>>,
    /// One caption per image.
    pub captions: Option<Vec<String>>,
}

/// The first [`GRID_IMAGES`] samples of the job, from the parts' grid files, with their captions
/// when every part has them.
pub fn join_part_grids(parts: &[Part]) -> Result<GridImages> {
    let mut indices = Vec::new();
    let mut images: Vec<Vec<Array3<u8>>> = Vec::new();
    let mut captions: Vec<Option<CaptionTable>> = Vec::new();
    for part in parts {
        let Some(path) = part.file("grid") else {
            continue;
        };
        let part_indices = read_i64(&path, "indices")?
            .with_context(|| format!("{}: no `indices`", path.display()))?;
        let part_captions = CaptionTable::read(&path)?;
        if let Some(c) = &part_captions {
            anyhow::ensure!(
                c.rows.len() == part_indices.len(),
                "{}: {} captions for {} indices",
                path.display(),
                c.rows.len(),
                part_indices.len()
            );
        }
        let mut npz = NpzImages::open(&path, GRID_IMAGES)?;
        let mut part_images = Vec::new();
        while let Some(batch) = npz.next_batch(GRID_IMAGES)? {
            part_images.extend(batch.axis_iter(Axis(0)).map(|image| image.to_owned()));
        }
        anyhow::ensure!(
            part_images.len() == part_indices.len(),
            "{}: {} images for {} indices",
            path.display(),
            part_images.len(),
            part_indices.len()
        );
        indices.push(part_indices);
        images.push(part_images);
        captions.push(part_captions);
    }
    let order = join_order(&indices, None).context("the parts' grid images")?;
    let first = &order[..order.len().min(GRID_IMAGES)];
    let captioned = !first.is_empty() && captions.iter().all(Option::is_some);
    Ok(GridImages {
        images: first
            .iter()
            .map(|p| images[p.part][p.row].clone())
            .collect(),
        captions: captioned.then(|| {
            first
                .iter()
                .map(|p| {
                    captions[p.part]
                        .as_ref()
                        .map_or_else(String::new, |c| c.text(p.row).to_owned())
                })
                .collect()
        }),
    })
}

/// Writes a rank's grid images (its first samples) with their sample indices, and their captions
/// (t2i runs with caption texts).
pub fn write_grid_part(
    path: &Path,
    images: &[Array3<u8>],
    indices: &[u64],
    captions: Option<&[String]>,
) -> Result<()> {
    let Some(first) = images.first() else {
        anyhow::bail!("no images for the grid part");
    };
    let (h, w, _) = first.dim();
    let mut writer = ImageNpzWriter::create(path, images.len(), h, w)?;
    for image in images {
        writer.push(image.view())?;
    }
    let idx: Array1<i64> = indices[..images.len()].iter().map(|&i| i as i64).collect();
    writer.add_array("indices", &idx)?;
    if let Some(captions) = captions {
        CaptionTable::new(captions[..images.len()].iter().map(String::as_str))
            .write(&mut writer)?;
    }
    writer.finish()?;
    Ok(())
}
