//! `inspect`: what a file or run folder holds, and what the tool makes of it — a checkpoint's
//! keys and configuration and the network the loaders would make of it (the library's
//! [`identify`], formatted here with the flags that change it), an npz's entries read as a sample
//! batch, a reference, features or caption embeddings, a run folder's record.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use llamagen_eval::captions::{CAPTION_INDICES, TEXT_KEY};
use llamagen_eval::checkpoint::{human_count, Checkpoint};
use llamagen_eval::data::npz::{npz_entries, NpyHeader};
use llamagen_eval::feature_set::sha256_file;
use llamagen_eval::inspect::{
    identify, Checksum, FeatureNetwork, GptFile, HeadCount, HeadSource, Identity, StateDicts,
    VqFile,
};
use llamagen_eval::models::dinov2::Ffn;
use llamagen_eval::models::gpt::Condition;
use llamagen_eval::pipeline::generator::{TrainedSize, DEFAULT_IMAGE_SIZE};
use llamagen_eval::record::RunRecord;

/// Runs `inspect`.
pub fn run(path: &Path) -> Result<ExitCode> {
    let text = if path.is_dir() {
        run_folder(path)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"))
    {
        npz(path)?
    } else {
        let checkpoint = Checkpoint::open(path)?;
        let mut text = checkpoint.summary().to_string();
        text.push_str(&identity(&identify(&checkpoint)?));
        text
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn run_folder(dir: &Path) -> Result<String> {
    let record = RunRecord::read(dir)?;
    let mut text = format!("{}: a run folder\nmetrics:\n", dir.display());
    for line in record.table().lines() {
        let _ = writeln!(text, "  {line}");
    }
    text.push_str("run:\n");
    for (key, value) in &record.run {
        let _ = writeln!(text, "  {key:<28} {value}");
    }
    Ok(text)
}

/// numpy's name of an npy type string (`<f4` -> float32).
fn dtype(descr: &str) -> String {
    let kind = match descr.get(1..2) {
        Some("u") => "uint",
        Some("i") => "int",
        Some("f") => "float",
        Some("b") => return "bool".into(),
        Some("U") => return "str".into(),
        _ => return descr.into(),
    };
    let bytes: usize = descr.get(2..).and_then(|n| n.parse().ok()).unwrap_or(0);
    format!("{kind}{}", bytes * 8)
}

fn npz(path: &Path) -> Result<String> {
    let entries = npz_entries(path)?;
    let header = |name: &str| -> Option<&NpyHeader> {
        entries.iter().find(|(n, _)| n == name).map(|(_, h)| h)
    };
    let plural = if entries.len() == 1 {
        "entry"
    } else {
        "entries"
    };
    let mut text = format!("{}: npz, {} {plural}\n", path.display(), entries.len());
    for (name, header) in &entries {
        let _ = writeln!(
            text,
            "  {name:<16} {:<8} {:?}",
            dtype(&header.descr),
            header.shape
        );
    }
    let mut reading = Vec::new();
    let images = header("arr_0")
        .filter(|h| h.descr == "|u1")
        .map(|h| h.shape.as_slice());
    if let Some(&[n, height, width, channels]) = images.filter(|shape| shape.first() != Some(&0)) {
        let captions = header(CAPTION_INDICES).filter(|h| h.shape == [n]).map(|_| {
            match header(TEXT_KEY).and_then(|h| h.shape.first()) {
                Some(distinct) => format!(
                    ", with captions ({distinct} distinct texts in `{TEXT_KEY}`, each sample's row in `{CAPTION_INDICES}`)"
                ),
                None => format!(", with caption indices (`{CAPTION_INDICES}`)"),
            }
        });
        let labels = match header("arr_1").map(|h| h.shape.as_slice()) {
            Some([count]) if *count == n => ", with class labels (arr_1)".to_owned(),
            _ => captions.unwrap_or_default(),
        };
        reading.push(format!(
            "{n} images of {height}x{width} ({channels} channels){labels}: a sample batch (`fid SAMPLES REF`), or a reference's images for precision/recall/density/coverage and KID"
        ));
    }
    for (mean, covariance, what) in [
        ("mu", "sigma", "FID (Inception pool features)"),
        ("mu_s", "sigma_s", "sFID (Inception spatial features)"),
        ("mu_dinov2", "sigma_dinov2", "FD_DINOv2"),
    ] {
        if let (Some(mu), Some(_)) = (header(mean), header(covariance)) {
            reading.push(format!(
                "reference statistics for {what}: `{mean}`/`{covariance}` of dimension {}",
                mu.shape.first().copied().unwrap_or(0)
            ));
        }
    }
    if let Some(pool) = header("pool") {
        reading.push(format!(
            "a feature file of {} images (`features`): usable wherever images are, without running Inception",
            pool.shape.first().copied().unwrap_or(0)
        ));
    }
    if let Some(captions) = header("caption_embs") {
        reading.push(format!(
            "T5 caption embeddings of {} captions (`--caption-embeddings`)",
            captions.shape.first().copied().unwrap_or(0)
        ));
    }
    if reading.is_empty() {
        reading.push("nothing this tool reads: no `arr_0` images, statistics, features or caption embeddings".into());
    }
    text.push_str("what it is:\n");
    for line in reading {
        let _ = writeln!(text, "  {line}");
    }
    let sha = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    let _ = writeln!(text, "content sha256: {sha}");
    Ok(text)
}

/// The "what the tool makes of it" section of a checkpoint.
fn identity(identity: &Identity) -> String {
    let mut text = String::from("what the tool makes of it\n");
    let mut line = |label: &str, value: String| {
        let _ = writeln!(text, "  {label:<11} {value}");
    };
    match identity {
        Identity::Gpt(file) => gpt(file, &mut line),
        Identity::Vq(file) => vq(file, &mut line),
        Identity::Network { network, checksum } => {
            feature_network(network, &mut line);
            line("sha256", released(checksum));
        }
        Identity::NotANetwork(attempts) => {
            line(
                "network",
                "none: not a file this tool loads as a network; each loader's reason:".into(),
            );
            for attempt in attempts {
                line("", format!("{}: {}", attempt.network, attempt.reason));
            }
        }
    }
    text
}

/// `1, 2, 4`.
fn listed(values: &[i64]) -> String {
    values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What tells a head count.
fn head_source(source: &HeadSource) -> String {
    match source {
        HeadSource::RecordedModel(name) => format!("from the checkpoint's args.gpt_model {name}"),
        HeadSource::RegistryWidth(name) => format!("from the registry: {name} has this width"),
        HeadSource::ReleasedWidth => "from the released model of this width".into(),
        HeadSource::ConfigFile(file) => format!("from {}", file.display()),
    }
}

/// A head count and what tells it, or the flag to pass and the counts the shapes allow.
fn heads(heads: &HeadCount, unknown_why: &str, flag: &str) -> String {
    match heads {
        HeadCount::Known { heads, source } => format!("{heads} ({})", head_source(source)),
        HeadCount::Unknown { candidates } => format!(
            "unknown ({unknown_why}): pass {flag} N, one of {} (the counts the shapes allow)",
            listed(candidates)
        ),
    }
}

/// Which state dict the loader takes and which the file holds.
fn state_dicts(weights: &StateDicts, rule: &str) -> String {
    let used = weights
        .used
        .as_deref()
        .map_or("the top-level state dict".to_owned(), |k| format!("`{k}`"));
    let held = if weights.held.is_empty() {
        String::new()
    } else {
        format!("; the file holds {}", weights.held.join(", "))
    };
    format!("{used} ({rule}){held}")
}

fn gpt(file: &GptFile, line: &mut impl FnMut(&str, String)) {
    let c = &file.config;
    match c.condition {
        Condition::Class => {
            line(
                "network",
                "LlamaGen GPT generator (--gpt), class-conditional (c2i)".into(),
            );
            line(
                "condition",
                format!(
                    "class labels: {} classes (0..{}) and a null class for guidance; {} class \
                     token",
                    c.num_classes,
                    c.num_classes - 1,
                    c.cls_token_num
                ),
            );
        }
        Condition::Caption { caption_dim } => {
            line(
                "network",
                "LlamaGen GPT generator (--gpt), text-to-image (t2i)".into(),
            );
            line(
                "condition",
                format!(
                    "captions: T5 embeddings of width {caption_dim} in {} caption positions, with \
                     a learned null caption for guidance (--prompts F --t5 DIR, or \
                     --caption-embeddings F.npz)",
                    c.cls_token_num
                ),
            );
        }
    }
    line(
        "model",
        format!(
            "dim {}, {} layers, FFN hidden {}",
            c.dim, c.n_layer, c.ffn_hidden
        ),
    );
    let why = format!(
        "dim {} is no registry model's width and the checkpoint names no registry model",
        c.dim
    );
    let mut head_text = heads(&file.heads, &why, "--n-head");
    if matches!(file.heads, HeadCount::Known { .. }) && c.n_kv_head != c.n_head {
        let _ = write!(head_text, ", {} key/value heads", c.n_kv_head);
    }
    line("heads", head_text);
    line(
        "vocabulary",
        format!(
            "{} image tokens: the tokenizer's codebook must have {} entries",
            c.vocab_size, c.vocab_size
        ),
    );
    let size = &file.size;
    let pixels = size.pixels;
    let how = match size.trained {
        Some(TrainedSize::Recorded(_)) => {
            format!("args.image_size; pass --image-size {pixels}, other sizes are refused")
        }
        Some(TrainedSize::FileName(_)) => {
            format!("from the file name; pass --image-size {pixels}, other sizes are refused")
        }
        None => "the default: neither args.image_size nor the file name tells the trained size, \
                 --image-size sets it"
            .into(),
    };
    let tokens = match size.grid {
        Some(g) => format!("{g}x{g} = {} tokens", g * g),
        None => format!("no token grid (not a multiple of {})", size.factor),
    };
    line(
        "image",
        format!(
            "{pixels} px ({how}): {tokens} with a ds{} tokenizer",
            size.factor
        ),
    );
    let parameters = c.parameters().max(0) as u64;
    line(
        "parameters",
        format!("{parameters} ({})", human_count(parameters)),
    );
    line(
        "weights",
        state_dicts(&file.weights, "the GPT loader never takes `ema`"),
    );
}

fn vq(file: &VqFile, line: &mut impl FnMut(&str, String)) {
    let c = &file.config;
    line("network", "LlamaGen VQ tokenizer (--vq)".into());
    line(
        "codebook",
        format!("{} entries of dimension {}", c.codebook_size, c.embed_dim),
    );
    let (factor, size) = (c.downsample_factor(), DEFAULT_IMAGE_SIZE);
    line(
        "downsample",
        format!(
            "{factor}x ({} levels): a {size} px image is {}x{} tokens",
            c.ch_mult.len(),
            size / factor,
            size / factor
        ),
    );
    line(
        "channels",
        format!(
            "ch {}, ch_mult {:?}, z_channels {}, {} res blocks per encoder level (the decoder \
             mirrors it with one more)",
            c.ch, c.ch_mult, c.z_channels, c.num_res_blocks
        ),
    );
    line(
        "weights",
        state_dicts(&file.weights, "--vq-weights auto: `ema` when present"),
    );
}

fn feature_network(network: &FeatureNetwork, line: &mut impl FnMut(&str, String)) {
    match network {
        FeatureNetwork::Inception => {
            line("network", "FID Inception-V3 (--inception)".into());
        }
        FeatureNetwork::Dinov2 { config, heads: h } => {
            line("network", "DINOv2 ViT (--dinov2), FD_DINOv2".into());
            let ffn = match config.ffn {
                Ffn::Mlp { hidden } => format!("MLP FFN hidden {hidden}"),
                Ffn::SwiGlu { hidden } => format!("SwiGLU FFN hidden {hidden}"),
            };
            line(
                "model",
                format!(
                    "embed_dim {}, {} blocks, patch {}, {}x{} position grid, {ffn}, {} register \
                     tokens{}",
                    config.embed_dim,
                    config.depth,
                    config.patch_size,
                    config.pos_grid,
                    config.pos_grid,
                    config.num_register_tokens,
                    if config.layer_scale {
                        ", LayerScale"
                    } else {
                        ""
                    }
                ),
            );
            let why = format!("embed_dim {} is no released width", config.embed_dim);
            line("heads", heads(h, &why, "--dinov2-heads"));
        }
        FeatureNetwork::Clip { vision, text } => {
            line("network", "CLIP (--clip)".into());
            if let Some((c, source)) = vision {
                line(
                    "vision",
                    format!(
                        "hidden {}, {} layers, {} heads ({}), patch {} at {} px, projection {} (CMMD)",
                        c.hidden,
                        c.layers,
                        c.heads,
                        head_source(source),
                        c.patch_size,
                        c.image_size,
                        c.projection_dim
                    ),
                );
            }
            if let Some((c, source)) = text {
                line(
                    "text",
                    format!(
                        "hidden {}, {} layers, {} heads ({}), context {}, vocabulary {}, \
                         projection {} (CLIP score)",
                        c.hidden,
                        c.layers,
                        c.heads,
                        head_source(source),
                        c.context,
                        c.vocab_size,
                        c.projection_dim
                    ),
                );
            }
        }
        FeatureNetwork::T5 {
            config,
            config_file,
        } => {
            line(
                "network",
                "T5 encoder (--t5 DIR, as its model.safetensors), t2i captions".into(),
            );
            line(
                "model",
                format!(
                    "d_model {}, {} layers, {} heads of {}, d_ff {}{}, vocabulary {}",
                    config.d_model,
                    config.num_layers,
                    config.num_heads,
                    config.d_kv,
                    config.d_ff,
                    if config.gated { " (gated)" } else { "" },
                    config.vocab_size
                ),
            );
            line(
                "config",
                config_file.as_ref().map_or(
                    "from the tensor shapes (no config.json beside it)".into(),
                    |f| format!("from {}", f.display()),
                ),
            );
        }
    }
}

/// The sha256 and whether it is the released file's.
fn released(checksum: &Checksum) -> String {
    let sha = &checksum.sha256;
    match checksum.release {
        Some((file, true)) => format!("{sha}: the released {file}"),
        Some((file, false)) => format!(
            "{sha}: NOT the released {file}; figures from it are not comparable to published ones"
        ),
        None => format!("{sha}; no released checksum known to compare"),
    }
}
