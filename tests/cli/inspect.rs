//! `llamagen-eval inspect` on an npz: the entries with their numpy types and shapes as numpy
//! wrote them, what the tool reads them as, and the content sha256; a file that is no npz is
//! refused naming it. On a checkpoint: what the tool makes of it — the network and the
//! configuration the loaders infer, checked against the settings the golden files were made with
//! (their manifests and config files), parameter counts and sha256 from Python.

use std::fs::File;
use std::path::Path;

use ndarray::{Ix1, Ix4, OwnedRepr};

use llamagen_test_support::{golden, run_python_code};

use crate::harness::{cli, random_inception_weights, s, ScratchDir};

/// `golden/<name>` parsed as JSON.
fn golden_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(golden(name)).unwrap()).unwrap()
}

fn int(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .unwrap_or_else(|| panic!("{v} is not an integer"))
}

/// The sha256 of each file, and the element count of its `model` state dict where it has one,
/// by Python (hashlib, torch.load), not by the tool.
fn python_facts(files: &[&Path]) -> serde_json::Value {
    const CODE: &str = "
import hashlib, json, sys, torch
out = {}
for path in sys.argv[1:]:
    entry = {'sha256': hashlib.sha256(open(path, 'rb').read()).hexdigest()}
    if path.endswith('.pt'):
        ck = torch.load(path, map_location='cpu', weights_only=False)
        entry['model_numel'] = sum(t.numel() for t in ck['model'].values())
    out[path] = entry
print(json.dumps(out))
";
    let args: Vec<&str> = files.iter().map(|f| s(f)).collect();
    serde_json::from_str(&run_python_code(CODE, &args)).unwrap()
}

/// `inspect FILE`'s "what the tool makes of it" section.
fn made_of(file: &Path) -> String {
    let stdout = cli()
        .args(["inspect", s(file)])
        .run()
        .success()
        .stdout_text();
    match stdout.split_once("what the tool makes of it\n") {
        Some((_, section)) => section.to_owned(),
        None => panic!(
            "no section on what the tool makes of {}:\n{stdout}",
            file.display()
        ),
    }
}

fn assert_has(text: &str, needles: &[String]) {
    for needle in needles {
        assert!(text.contains(needle.as_str()), "`{needle}` not in:\n{text}");
    }
}

/// The head counts `inspect` offers after `flag` (`pass --n-head N, one of 1, 2, 4 (...)`).
fn offered_heads(text: &str, flag: &str) -> Vec<i64> {
    let needle = format!("pass {flag} N, one of ");
    let Some((_, rest)) = text.split_once(&needle) else {
        panic!("`{needle}` not in:\n{text}");
    };
    rest.split(" (")
        .next()
        .unwrap_or_default()
        .split(", ")
        .map(|n| n.parse().unwrap_or_else(|_| panic!("`{n}` in:\n{text}")))
        .collect()
}

#[test]
fn inspect_infers_the_generators_as_the_loader_does() {
    let (c2i, t2i) = (golden("gpt_public.pt"), golden("gpt_t2i_public.pt"));
    let facts = python_facts(&[&c2i, &t2i]);
    let manifest = golden_json("manifest_public.json");
    let gpt = &manifest["gpt"];
    let (dim, layers, heads) = (int(&gpt["dim"]), int(&gpt["n_layer"]), int(&gpt["n_head"]));
    let (vocab, block_size) = (int(&gpt["vocab_size"]), int(&gpt["block_size"]));
    let grid = (block_size as f64).sqrt() as i64;
    // Both tiny GPTs are 64 wide, no registry width, and name no registry model: the head count
    // is the flag's to give, and the true one must be among the offered.
    let text = made_of(&c2i);
    assert_has(
        &text,
        &[
            "class-conditional (c2i)".into(),
            format!("{} classes", int(&gpt["num_classes"])),
            format!("{} class token", int(&gpt["cls_token_num"])),
            format!("dim {dim}, {layers} layers"),
            format!("{vocab} image tokens"),
            // The tokenizer's 64 px test images, 16x downsampled (golden README): a 4x4 grid.
            format!("{} px (args.image_size", int(&manifest["vq"]["image"])),
            format!("{grid}x{grid} = {block_size} tokens with a ds16 tokenizer"),
            format!("parameters  {}", facts[s(&c2i)]["model_numel"]),
            "`model`".into(),
        ],
    );
    assert!(offered_heads(&text, "--n-head").contains(&heads), "{text}");

    let t2i_settings = golden_json("t2i_public.json");
    let gpt = &t2i_settings["gpt"];
    let text = made_of(&t2i);
    assert_has(
        &text,
        &[
            "text-to-image (t2i)".into(),
            format!(
                "captions: T5 embeddings of width {} in {} caption positions",
                int(&gpt["caption_dim"]),
                int(&gpt["cls_token_num"])
            ),
            format!("dim {}, {} layers", int(&gpt["dim"]), int(&gpt["n_layer"])),
            format!("{} image tokens", int(&gpt["vocab_size"])),
            // Neither `args` nor the file name tells its size: the default generation size.
            "256 px (the default".into(),
            format!("parameters  {}", facts[s(&t2i)]["model_numel"]),
        ],
    );
    assert!(
        offered_heads(&text, "--n-head").contains(&int(&gpt["n_head"])),
        "{text}"
    );
}

#[test]
fn inspect_infers_the_tokenizer_as_the_loader_does() {
    let vq = &golden_json("manifest_public.json")["vq"];
    let ch_mult: Vec<i64> = vq["ch_mult"].as_array().unwrap().iter().map(int).collect();
    let text = made_of(&golden("vq_public.pt"));
    assert_has(
        &text,
        &[
            "LlamaGen VQ tokenizer".into(),
            format!(
                "{} entries of dimension {}",
                int(&vq["codebook_size"]),
                int(&vq["embed_dim"])
            ),
            // "VQ-16 layout: 16x downsampling" (golden README).
            "16x (5 levels)".into(),
            format!(
                "ch {}, ch_mult {ch_mult:?}, z_channels {}",
                int(&vq["ch"]),
                int(&vq["z_channels"])
            ),
            "`model` (--vq-weights auto".into(),
        ],
    );
}

#[test]
fn inspect_names_the_feature_networks_and_their_checksums() {
    let files = [
        golden("dinov2_tiny_public_pretrain.pth"),
        golden("clip_vision_tiny_public.safetensors"),
        golden("clip_text_tiny_public.safetensors"),
        golden("t5_tiny_public.safetensors"),
        random_inception_weights(),
    ];
    let [dinov2, clip_vision, clip_text, t5, inception] = &files;
    let facts = python_facts(&files.iter().map(|f| f.as_path()).collect::<Vec<_>>());
    let sha = |file: &Path| facts[s(file)]["sha256"].as_str().unwrap().to_owned();
    let unknown = "; no released checksum known to compare";
    let nets = golden_json("feature_nets_public.json");

    let d = &nets["dinov2"];
    let text = made_of(dinov2);
    let grid = int(&d["img_size"]) / int(&d["patch_size"]);
    assert_has(
        &text,
        &[
            "DINOv2 ViT (--dinov2)".into(),
            format!(
                "embed_dim {}, {} blocks, patch {}, {grid}x{grid} position grid, MLP FFN hidden {}, {} register tokens",
                int(&d["embed_dim"]),
                int(&d["depth"]),
                int(&d["patch_size"]),
                int(&d["embed_dim"]) * int(&d["mlp_ratio"]),
                int(&d["num_register_tokens"])
            ),
            format!("{}{unknown}", sha(dinov2)),
        ],
    );
    assert!(
        offered_heads(&text, "--dinov2-heads").contains(&int(&d["num_heads"])),
        "{text}"
    );

    let c = &nets["clip"];
    assert_has(
        &made_of(clip_vision),
        &[
            "CLIP (--clip)".into(),
            format!(
                "vision      hidden {}, {} layers, {} heads",
                int(&c["hidden"]),
                int(&c["layers"]),
                int(&c["heads"])
            ),
            format!(
                "patch {} at {} px, projection {}",
                int(&c["patch_size"]),
                int(&c["image_size"]),
                int(&c["proj"])
            ),
            format!("{}{unknown}", sha(clip_vision)),
        ],
    );
    let c = golden_json("clip_text_tiny_public_config.json");
    assert_has(
        &made_of(clip_text),
        &[
            "CLIP (--clip)".into(),
            format!(
                "text        hidden {}, {} layers, {} heads",
                int(&c["hidden_size"]),
                int(&c["num_hidden_layers"]),
                int(&c["num_attention_heads"])
            ),
            format!(
                "context {}, vocabulary {}, projection {}",
                int(&c["max_position_embeddings"]),
                int(&c["vocab_size"]),
                int(&c["projection_dim"])
            ),
            format!("{}{unknown}", sha(clip_text)),
        ],
    );
    let t = &golden_json("t2i_public.json")["t5"];
    assert_has(
        &made_of(t5),
        &[
            "T5 encoder".into(),
            format!(
                "d_model {}, {} layers, {} heads of {}, d_ff {} (gated), vocabulary {}",
                int(&t["d_model"]),
                int(&t["layers"]),
                int(&t["heads"]),
                int(&t["d_kv"]),
                int(&t["d_ff"]),
                int(&t["vocab"])
            ),
            format!("{}{unknown}", sha(t5)),
        ],
    );
    // Random weights of the FID architecture: Inception, but not pytorch-fid's release.
    assert_has(
        &made_of(inception),
        &[
            "FID Inception-V3 (--inception)".into(),
            format!(
                "{}: NOT the released pt_inception-2015-12-05-6726825d.pth",
                sha(inception)
            ),
        ],
    );
}

#[test]
fn inspect_says_why_a_checkpoint_is_no_network() {
    // The GPT's test vectors: a safetensors file of arrays, no network's weights.
    let text = made_of(&golden("gpt_public_io.safetensors"));
    let mut needles = vec!["not a file this tool loads as a network".to_owned()];
    needles.extend(
        [
            "GPT",
            "VQ tokenizer",
            "DINOv2",
            "T5 encoder",
            "CLIP",
            "Inception",
        ]
        .map(|network| format!("\n              {network}: ")),
    );
    needles.push("no `cls_embedding.embedding_table.weight`".into());
    assert_has(&text, &needles);
}

#[test]
fn inspect_reads_an_adm_reference_batch() {
    let reference = golden("adm_ref_public.npz");
    let stdout = cli()
        .args(["inspect", s(&reference)])
        .run()
        .success()
        .stdout_text();
    let mut npz = ndarray_npy::NpzReader::new(File::open(&reference).unwrap()).unwrap();
    let images = npz.by_name::<OwnedRepr<u8>, Ix4>("arr_0").unwrap();
    let mu = npz.by_name::<OwnedRepr<f32>, Ix1>("mu").unwrap();
    let mu_s = npz.by_name::<OwnedRepr<f32>, Ix1>("mu_s").unwrap();
    let (n, height, width) = (images.dim().0, images.dim().1, images.dim().2);
    for needle in [
        format!("arr_0            uint8    {:?}", images.shape()),
        format!("{n} images of {height}x{width} (3 channels)"),
        format!("`mu`/`sigma` of dimension {}", mu.len()),
        format!("`mu_s`/`sigma_s` of dimension {}", mu_s.len()),
    ] {
        assert!(stdout.contains(&needle), "`{needle}` not in:\n{stdout}");
    }
    let sha = stdout
        .split_once("content sha256: ")
        .map(|(_, rest)| rest.trim())
        .unwrap_or_default();
    assert!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "{stdout}"
    );

    let root = &ScratchDir::new();
    let bogus = root.join("nothing.npz");
    std::fs::write(&bogus, b"not a zip").unwrap();
    cli()
        .args(["inspect", s(&bogus)])
        .run()
        .refused_with(&["nothing.npz", "not a readable npz (zip) file"]);
}
