//! Rank 0's (or `merge OUT_DIR`'s) side of a launched job: waiting for every rank's manifest,
//! checking that the parts are one job's, the record of how the job was split, and clearing the
//! parts once the joined outputs are written.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::manifest::{present_parts, read_manifest, GatherError, Part};
use crate::io::FileError;
use crate::layout::{manifest_name, RunLayout};
use crate::partition::join_order;
use crate::progress::Progress;

/// Waits until the manifests of ranks `0..world_size` are all in `layout`'s parts folder, saying
/// which ranks are still missing; after `timeout`, [`GatherError::Missing`]. With `launch`, only
/// manifests of that launch count (a part an earlier launch left behind waits to be replaced by
/// its rank); without, any manifest counts (a gather offline).
pub fn wait_for_parts(
    layout: &RunLayout,
    launch: Option<&str>,
    world_size: usize,
    timeout: Duration,
    progress: Progress,
) -> Result<Vec<Part>, GatherError> {
    let start = Instant::now();
    let mut last_said: Option<(Vec<usize>, Instant)> = None;
    loop {
        let mut parts = Vec::with_capacity(world_size);
        let mut missing = Vec::new();
        for rank in 0..world_size {
            let path = layout.manifest(rank);
            if !path.is_file() {
                missing.push(rank);
                continue;
            }
            let part = read_manifest(&path)?;
            match launch {
                Some(id) if part.manifest.launch.as_deref() != Some(id) => missing.push(rank),
                _ => parts.push(part),
            }
        }
        if missing.is_empty() {
            return Ok(parts);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(missing_parts(layout, &missing, "", waited));
        }
        let say = last_said
            .as_ref()
            .is_none_or(|(ranks, at)| *ranks != missing || at.elapsed() >= Duration::from_secs(60));
        if say {
            let line = format!(
                "gather: waiting for rank {} ({} s of at most {} s)",
                join(&missing),
                waited.as_secs(),
                timeout.as_secs()
            );
            tracing::info!("{line}");
            progress.say(line);
            last_said = Some((missing, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(200).min(timeout.saturating_sub(waited)));
    }
}

/// [`GatherError::Missing`] for `ranks` (followed by `more`) after `waited`.
fn missing_parts(layout: &RunLayout, ranks: &[usize], more: &str, waited: Duration) -> GatherError {
    GatherError::Missing {
        dir: layout.parts().to_path_buf(),
        ranks: join(ranks) + more,
        expected: ranks
            .iter()
            .map(|&r| manifest_name(r))
            .collect::<Vec<_>>()
            .join(", ")
            + more,
        waited_s: waited.as_secs(),
        out: layout.output().to_path_buf(),
    }
}

fn join(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Missing ranks an offline gather names at most.
const MISSING_NAMED: usize = 64;

/// Every part of the job whose parts are in `layout`, checked (a gather offline: `merge OUT`).
pub fn parts_in(layout: &RunLayout, progress: Progress) -> Result<Vec<Part>, GatherError> {
    let present = present_parts(layout.parts())?;
    let world_size = present[0].manifest.world_size;
    // The world size is a manifest's word: with more ranks than manifests some are missing, and
    // the first few are named rather than every rank looked for, so that a damaged world size
    // (2^58) cannot size or walk a list of that many ranks.
    if world_size > present.len() {
        let missing: Vec<usize> = (0..world_size)
            .filter(|&rank| !layout.manifest(rank).is_file())
            .take(MISSING_NAMED + 1)
            .collect();
        let more = if missing.len() > MISSING_NAMED {
            ", …"
        } else {
            ""
        };
        let named = &missing[..missing.len().min(MISSING_NAMED)];
        return Err(missing_parts(layout, named, more, Duration::ZERO));
    }
    let parts = wait_for_parts(layout, None, world_size, Duration::ZERO, progress)?;
    check_parts(layout, &parts)?;
    Ok(parts)
}

/// Checks that `parts` are one job's: the same world size and settings, every file as its rank
/// wrote it (its sha256 in the manifest), and between them every sample exactly once.
pub fn check_parts(layout: &RunLayout, parts: &[Part]) -> Result<(), GatherError> {
    let dir = layout.parts();
    let Some(first) = parts.first() else {
        return Err(FileError::new(dir, "holds no part manifests").into());
    };
    let m0 = &first.manifest;
    for part in &parts[1..] {
        let m = &part.manifest;
        if m.world_size != m0.world_size {
            return Err(GatherError::WorldSize {
                rank: m.rank,
                path: part.path.clone(),
                theirs: m.world_size,
                first_rank: m0.rank,
                ours: m0.world_size,
            });
        }
        if m.settings != m0.settings || m.samples != m0.samples {
            let mut changes = differences(&m0.settings, &m.settings);
            if m.samples != m0.samples {
                changes.push(format!("`samples` was {}, here {}", m0.samples, m.samples));
            }
            return Err(GatherError::Settings {
                rank: m.rank,
                path: part.path.clone(),
                first_rank: m0.rank,
                first: first.path.clone(),
                changes: changes.join("; "),
            });
        }
    }
    for part in parts {
        part.verify_files()?;
    }
    let indices: Vec<Vec<i64>> = parts
        .iter()
        .map(|p| Ok(p.indices()?.into_iter().map(|i| i as i64).collect()))
        .collect::<Result<_, FileError>>()?;
    match join_order(&indices, Some(m0.samples)) {
        Ok(_) => Ok(()),
        Err(crate::partition::JoinError::Duplicate {
            index,
            first: a,
            second: b,
        }) => {
            let (one, other) = (&parts[a], &parts[b]);
            Err(GatherError::DuplicateIndex {
                index: index as u64,
                first_rank: one.manifest.rank,
                first: one.path.clone(),
                first_shard: one.manifest.shard.clone(),
                second_rank: other.manifest.rank,
                second: other.path.clone(),
                second_shard: other.manifest.shard.clone(),
            })
        }
        Err(crate::partition::JoinError::Missing {
            index,
            covered,
            total,
        }) => Err(GatherError::Incomplete {
            dir: dir.to_path_buf(),
            covered,
            total,
            first_missing: index as u64,
        }),
        // A shard's indices lie below the job's sample count by construction.
        Err(e @ crate::partition::JoinError::OutOfRange { .. }) => {
            Err(FileError::new(dir, e.to_string()).into())
        }
    }
}

fn differences(first: &Map<String, Value>, other: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<&String> = first.keys().chain(other.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| first.get(*k) != other.get(*k))
        .map(|k| {
            format!(
                "`{k}` was {}, here {}",
                first.get(k).unwrap_or(&Value::Null),
                other.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

/// How the job was split, for the run record: `world_size`, `launcher`, `ranks` (one entry per
/// rank) and the total throughput (all ranks' images over the slowest rank's wall time).
pub fn split_record(parts: &[Part]) -> Vec<(&'static str, Value)> {
    let ranks: Vec<Value> = parts
        .iter()
        .map(|p| json!(p.manifest.rank_record))
        .collect();
    let number = |p: &Part, key: &str| p.manifest.timing[key].as_f64().unwrap_or(0.0);
    let images: f64 = parts.iter().map(|p| number(p, "images")).sum();
    let tokens: f64 = parts.iter().map(|p| number(p, "tokens")).sum();
    let wall = parts
        .iter()
        .map(|p| number(p, "wall_s"))
        .fold(0.0, f64::max)
        .max(1e-9);
    let launcher = parts
        .first()
        .map_or_else(String::new, |p| p.manifest.launcher.clone());
    vec![
        ("world_size", json!(parts.len())),
        ("launcher", json!(launcher)),
        ("ranks", Value::Array(ranks)),
        (
            "throughput",
            json!({
                "images": images,
                "tokens": tokens,
                "wall_s": wall,
                "images_per_s": images / wall,
                "tokens_per_s": parts.iter().map(|p| number(p, "tokens_per_s")).sum::<f64>(),
            }),
        ),
    ]
}

/// The printed summary of a gathered job: one line per rank and the total.
pub fn split_summary(parts: &[Part]) -> String {
    let mut text = String::new();
    for part in parts {
        let r = &part.manifest.rank_record;
        text.push_str(&format!(
            "rank {}: {} samples on {} ({}), {:.2} images/s, {:.1} tokens/s, {:.1} s\n",
            r.rank, r.samples, r.host, r.device_name, r.images_per_s, r.tokens_per_s, r.wall_s,
        ));
    }
    for (key, value) in split_record(parts) {
        if key == "throughput" {
            text.push_str(&format!(
                "total: {} images in {:.1} s over {} ranks ({}): {:.2} images/s, {:.1} tokens/s\n",
                value["images"],
                value["wall_s"].as_f64().unwrap_or(0.0),
                parts.len(),
                parts.first().map_or("", |p| p.manifest.launcher.as_str()),
                value["images_per_s"].as_f64().unwrap_or(0.0),
                value["tokens_per_s"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    text
}

/// Removes the parts folder and the (emptied) folder of the ranks' journals once the gathered
/// outputs are written.
pub fn clean_up(layout: &RunLayout) -> Result<(), FileError> {
    let dir = layout.parts();
    std::fs::remove_dir_all(dir).map_err(|e| FileError::new(dir, format!("cannot remove: {e}")))?;
    let journals = layout.journal();
    if let Err(e) = std::fs::remove_dir(journals) {
        if journals.exists() {
            tracing::warn!("{}: not removed: {e}", journals.display());
        }
    }
    Ok(())
}
