//! `merge`: `sample --shard K/N` outputs joined into one npz in sample-index order (with their
//! labels, or for t2i samples their caption indices and texts), or the
//! `features` files of the shards (which carry the shards' `indices`) joined into one feature
//! file in sample order, so that every statistic and metric equals the unsharded run's without
//! moving images between machines.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array2, Array4, Axis};

use super::generate::CAPTION_INDICES;
use crate::captions::TEXT_KEY;
use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::features::FeatureSet;
use crate::io::{npz_entry_names, read_i64, read_strings};
use crate::progress::Progress;

struct ShardReader {
    images: NpzImages,
    indices: Vec<i64>,
    labels: Option<Vec<i64>>,
    caption_indices: Option<Vec<i64>>,
    captions: Option<Vec<String>>,
    next: usize,
    buffer: Option<Array4<u8>>,
    buffer_pos: usize,
}

impl ShardReader {
    fn next_image(&mut self) -> Result<ndarray::Array3<u8>> {
        let exhausted = self
            .buffer
            .as_ref()
            .is_none_or(|b| self.buffer_pos >= b.dim().0);
        if exhausted {
            self.buffer = self.images.next_batch(64)?;
            self.buffer_pos = 0;
        }
        let buffer = self.buffer.as_ref().context("shard ended early")?;
        let image = buffer.index_axis(Axis(0), self.buffer_pos).to_owned();
        self.buffer_pos += 1;
        self.next += 1;
        Ok(image)
    }
}

/// Joins feature files (`features` of each shard) into one, rows in sample-index order when every
/// file carries `indices`, else in the order given. The merged rows are the shards' rows unchanged,
/// so statistics and every metric of the merged file equal those of the features of the merged
/// images.
fn merge_features(shards: &[PathBuf], out: &Path, progress: Progress) -> Result<()> {
    let sets: Vec<FeatureSet> = shards
        .iter()
        .map(|p| FeatureSet::load(p).with_context(|| format!("feature shard {}", p.display())))
        .collect::<Result<_>>()?;
    let merged = join_features(&sets, shards)?;
    merged.save(out)?;
    progress.say(format!(
        "merged features of {} samples into {}",
        merged.len(),
        out.display()
    ));
    Ok(())
}

/// The rows of `sets` (read from `shards`) as one feature set, in sample-index order when every
/// set carries `indices`, else in the order given; the rows themselves are unchanged.
pub fn join_features(sets: &[FeatureSet], shards: &[PathBuf]) -> Result<FeatureSet> {
    if sets.is_empty() {
        bail!("no feature shards to join");
    }
    let keys = |f: &FeatureSet| {
        [
            f.pool.is_some(),
            f.spatial.is_some(),
            f.logits.is_some(),
            f.dinov2.is_some(),
            f.clip.is_some(),
        ]
    };
    for (set, path) in sets.iter().zip(shards).skip(1) {
        if keys(set) != keys(&sets[0]) {
            bail!(
                "{}: holds a different set of features (pool/spatial/logits/dinov2/clip) than {}",
                path.display(),
                shards[0].display()
            );
        }
    }
    let with_indices = sets.iter().filter(|s| s.indices.is_some()).count();
    if with_indices != 0 && with_indices != sets.len() {
        bail!("some feature shards carry `indices` and some do not: merge them all with or all without");
    }
    // (sample index, shard, row) in output order.
    let mut order: Vec<(i64, usize, usize)> = Vec::new();
    let mut running = 0i64;
    for (k, set) in sets.iter().enumerate() {
        for row in 0..set.len() {
            let index = set.indices.as_ref().map_or(running, |i| i[row]);
            order.push((index, k, row));
            running += 1;
        }
    }
    if with_indices > 0 {
        order.sort_unstable();
        if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!(
                "sample index {} is in more than one feature shard ({} and {})",
                w[0].0,
                shards[w[0].1].display(),
                shards[w[1].1].display()
            );
        }
    }
    let gather = |pick: fn(&FeatureSet) -> Option<&Array2<f32>>| -> Result<Option<Array2<f32>>> {
        let Some(first) = pick(&sets[0]) else {
            return Ok(None);
        };
        let dim = first.ncols();
        let mut out = Array2::<f32>::zeros((order.len(), dim));
        for (row_out, &(_, k, row)) in order.iter().enumerate() {
            let source = pick(&sets[k]).context("feature present in every shard")?;
            if source.ncols() != dim {
                bail!(
                    "{}: features of width {}, the first shard has {dim}",
                    shards[k].display(),
                    source.ncols()
                );
            }
            out.row_mut(row_out).assign(&source.row(row));
        }
        Ok(Some(out))
    };
    let merged = FeatureSet {
        pool: gather(|f| f.pool.as_ref())?,
        spatial: gather(|f| f.spatial.as_ref())?,
        logits: gather(|f| f.logits.as_ref())?,
        dinov2: gather(|f| f.dinov2.as_ref())?,
        clip: gather(|f| f.clip.as_ref())?,
        indices: (with_indices > 0).then(|| order.iter().map(|&(i, _, _)| i).collect()),
    };
    Ok(merged)
}

/// Joins `shards` (sample npz files, or feature files made of them) into `out` in sample order.
pub fn merge(shards: &[PathBuf], out: &Path, progress: Progress) -> Result<()> {
    let first = shards.first().context("no shards to merge")?;
    let names = npz_entry_names(first)?;
    if !names.iter().any(|n| n == "arr_0")
        && names.iter().any(|n| {
            matches!(
                n.as_str(),
                "pool" | "spatial" | "logits" | "dinov2" | "clip"
            )
        })
    {
        return merge_features(shards, out, progress);
    }
    let mut readers = Vec::new();
    let mut size = None;
    let mut offset = 0i64;
    for path in shards {
        let images = NpzImages::open(path, 64)?;
        let n = images.len();
        let indices = match read_i64(path, "indices")? {
            Some(i) => i,
            None => {
                // An unsharded file: its samples are 0..n (or follow the previous file's).
                let i: Vec<i64> = (offset..offset + n as i64).collect();
                tracing::info!("{} has no `indices`: taking {offset}..", path.display());
                i
            }
        };
        offset = offset.max(indices.iter().copied().max().map_or(0, |m| m + 1));
        if indices.len() != n {
            bail!(
                "{}: {} indices for {n} images",
                path.display(),
                indices.len()
            );
        }
        if indices.windows(2).any(|w| w[0] >= w[1]) {
            bail!("{}: `indices` is not increasing", path.display());
        }
        let labels = read_i64(path, "arr_1")?;
        let caption_indices = read_i64(path, CAPTION_INDICES)?;
        let captions = read_strings(path, TEXT_KEY)?;
        let lengths = [
            ("labels", labels.as_ref().map(Vec::len)),
            ("caption indices", caption_indices.as_ref().map(Vec::len)),
            ("captions", captions.as_ref().map(Vec::len)),
        ];
        for (what, len) in lengths {
            if let Some(len) = len.filter(|&len| len != n) {
                bail!("{}: {len} {what} for {n} images", path.display());
            }
        }
        let s = images.image_size();
        if *size.get_or_insert(s) != s {
            bail!(
                "{}: images of {s:?}, the other shards have {:?}",
                path.display(),
                size.unwrap_or_default()
            );
        }
        readers.push(ShardReader {
            images,
            indices,
            labels,
            caption_indices,
            captions,
            next: 0,
            buffer: None,
            buffer_pos: 0,
        });
    }
    let with_labels = readers.iter().all(|s| s.labels.is_some());
    let with_caption_indices = readers.iter().all(|s| s.caption_indices.is_some());
    let with_captions = readers.iter().all(|s| s.captions.is_some());
    let mut all: Vec<i64> = readers.iter().flat_map(|s| s.indices.clone()).collect();
    all.sort_unstable();
    if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
        bail!("sample index {} is in more than one shard", w[0]);
    }
    let total = all.len();
    let complete = all.iter().enumerate().all(|(i, &v)| v == i as i64);
    if !complete {
        tracing::warn!(
            "the shards do not cover 0..{total}: writing their samples in index order, with `indices`"
        );
    }
    let (h, w) = size.context("no shards")?;
    let mut writer = ImageNpzWriter::create(out, total, h, w)?;
    let mut labels = Vec::with_capacity(total);
    let mut caption_indices = Vec::new();
    let mut captions = Vec::new();
    let bar = progress.bar(total, "merge", "img");
    for _ in 0..total {
        let (k, _) = readers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.next < s.indices.len())
            .min_by_key(|(_, s)| s.indices[s.next])
            .context("shards ended early")?;
        let shard = &mut readers[k];
        if let Some(l) = &shard.labels {
            labels.push(l[shard.next]);
        }
        if let Some(c) = &shard.caption_indices {
            caption_indices.push(c[shard.next]);
        }
        if let Some(c) = &shard.captions {
            captions.push(c[shard.next].clone());
        }
        let image = shard.next_image()?;
        writer.push(image.view())?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if with_labels {
        writer.add_array("arr_1", &Array1::from(labels))?;
    }
    if with_caption_indices {
        writer.add_array(CAPTION_INDICES, &Array1::from(caption_indices))?;
    }
    if with_captions {
        writer.add_strings(TEXT_KEY, &captions)?;
    }
    if !complete {
        writer.add_array("indices", &Array1::from(all))?;
    }
    writer.finish()?;
    progress.say(format!(
        "wrote {} ({total} images from {} shards)",
        out.display(),
        shards.len()
    ));
    Ok(())
}
