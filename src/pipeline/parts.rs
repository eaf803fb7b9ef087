//! The part files of the jobs' ranks and their joins in sample order: features (with their
//! sample indices), sample npz files, and the grid's first images. What a part is and how it is
//! gathered is the distribution layer's ([`crate::dist`]); what its files hold is the jobs'.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ndarray::{Array1, Array3, Axis};

use crate::captions::TEXT_KEY;
use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::dist::Part;
use crate::feature_set::FeatureSet;
use crate::io::{read_i64, read_strings};
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
        anyhow::ensure!(
            set.indices.is_some(),
            "{}: features without `indices`",
            path.display()
        );
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
    let files: Vec<PathBuf> = parts
        .iter()
        .map(|p| p.require_file("samples"))
        .collect::<Result<_, _>>()?;
    merge(&files, out, progress)
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
    let mut captions: Vec<Option<Vec<String>>> = Vec::new();
    for part in parts {
        let Some(path) = part.file("grid") else {
            continue;
        };
        let part_indices = read_i64(&path, "indices")?
            .with_context(|| format!("{}: no `indices`", path.display()))?;
        let part_captions = read_strings(&path, TEXT_KEY)?;
        if let Some(c) = &part_captions {
            anyhow::ensure!(
                c.len() == part_indices.len(),
                "{}: {} captions for {} indices",
                path.display(),
                c.len(),
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
                        .map_or_else(String::new, |c| c[p.row].clone())
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
        writer.add_strings(TEXT_KEY, &captions[..images.len()])?;
    }
    writer.finish()?;
    Ok(())
}
