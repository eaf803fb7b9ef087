//! `merge`: `sample --shard K/N` outputs joined into one npz in sample-index order (with their
//! labels, or for t2i samples their caption indices and one table of their distinct texts), or the
//! `features` files of the shards (which carry the shards' `indices`) joined into one feature
//! file in sample order, so that every statistic and metric equals the unsharded run's without
//! moving images between machines.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array4, Axis};

use crate::captions::{CaptionTable, CAPTION_INDICES, TEXT_KEY};
use crate::data::npz::NpzImages;
use crate::data::npz_writer::ImageNpzWriter;
use crate::data::ImageSource;
use crate::feature_set::FeatureSet;
use crate::io::{npz_entry_names, read_i64};
use crate::partition::join_order;
use crate::progress::Progress;

struct ShardReader {
    images: NpzImages,
    indices: Vec<i64>,
    labels: Option<Vec<i64>>,
    /// Which caption of the set each sample shows (files without caption texts).
    caption_indices: Option<Vec<i64>>,
    captions: Option<CaptionTable>,
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
    let merged = FeatureSet::join(&sets, shards)?;
    merged.save(out)?;
    progress.say(format!(
        "merged features of {} samples into {}",
        merged.len(),
        out.display()
    ));
    Ok(())
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
        let captions = CaptionTable::read(path)?;
        // With texts, `caption_indices` are rows of the file's own table (read with it).
        let caption_indices = match captions {
            Some(_) => None,
            None => read_i64(path, CAPTION_INDICES)?,
        };
        let lengths = [
            ("labels", labels.as_ref().map(Vec::len)),
            ("caption indices", caption_indices.as_ref().map(Vec::len)),
            ("caption indices", captions.as_ref().map(|t| t.rows.len())),
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
    if !with_captions && readers.iter().any(|s| s.captions.is_some()) {
        bail!(
            "some shards hold caption texts (`{TEXT_KEY}`) and others do not: merge the shards of \
             one run"
        );
    }
    let order = join_order(
        &readers
            .iter()
            .map(|r| r.indices.as_slice())
            .collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| anyhow::anyhow!(e.naming(&shard_names(shards))))?;
    let all: Vec<i64> = order.iter().map(|p| p.index).collect();
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
    let bar = progress.bar(total, "merge", "img");
    for placement in &order {
        // Each shard's indices increase, so its rows are taken in file order.
        let k = placement.part;
        let shard = &mut readers[k];
        if let Some(l) = &shard.labels {
            labels.push(l[shard.next]);
        }
        if let Some(c) = &shard.caption_indices {
            caption_indices.push(c[shard.next]);
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
        // One table for the merged file: each distinct text once, in sample order.
        let texts = order.iter().map(|p| {
            readers[p.part]
                .captions
                .as_ref()
                .map_or("", |table| table.text(p.row))
        });
        CaptionTable::new(texts).write(&mut writer)?;
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

/// The shard files' names, for messages.
fn shard_names(shards: &[PathBuf]) -> Vec<String> {
    shards.iter().map(|p| p.display().to_string()).collect()
}
