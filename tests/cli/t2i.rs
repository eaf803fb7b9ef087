//! Text-to-image end to end: `fid --gpt` and `sample` on the golden t2i checkpoint with
//! `--caption-embeddings` (an npz numpy writes from the golden T5 output) reproduce LlamaGen's
//! greedy images, store the captions beside the samples and under the grid images, and do not
//! depend on batch size, shards, interruption, overlap or launcher ranks; bad caption inputs fail
//! before sampling.

use std::fs::File;
use std::path::{Path, PathBuf};

use llamagen_test_support as support;
use ndarray::{Array1, Array4};
use ndarray_npy::NpzReader;
use tch::Tensor;

use crate::harness::{
    all_succeed, generator, golden, llamagen_eval, metrics_json, one_core,
    random_inception_and_reference, ranks, s, scored_against, scratch_with_inception, srun_tasks,
    tiny_t2i, Run,
};

/// The caption npz files of `fixtures/t2i_caption_npz.py` in `dir`, and the caption texts.
fn caption_files(dir: &Path) -> Vec<String> {
    let out = support::run_reference(
        "fixtures/t2i_caption_npz.py",
        &[golden("t2i_public_io.safetensors").as_path(), dir],
    );
    serde_json::from_str(out.trim()).unwrap()
}

fn sample(out: &Path, captions: &Path, extra: &[&str]) -> Run {
    let mut args = tiny_t2i("sample");
    args.extend([
        "--caption-embeddings",
        s(captions),
        "--quiet",
        "--out",
        s(out),
    ]);
    args.extend_from_slice(extra);
    llamagen_eval(&args)
}

/// A t2i sample npz: images, caption indices, and the caption texts as numpy reads them.
struct Samples {
    images: Array4<u8>,
    caption_indices: Array1<i64>,
    /// Each sample's text: `captions[caption_indices]`.
    captions: Option<Vec<String>>,
    /// The stored `captions`: each distinct text once.
    distinct: Option<Vec<String>>,
}

fn read(path: &Path) -> Samples {
    let mut npz = NpzReader::new(File::open(path).unwrap()).unwrap();
    let names = npz.names().unwrap();
    assert!(!names.iter().any(|n| n.starts_with("arr_1")), "{names:?}");
    let (distinct, captions) = if names.iter().any(|n| n.starts_with("captions")) {
        let out = support::run_python_code(
            "import json, sys, numpy as np; f = np.load(sys.argv[1]); \
             c = f['captions']; \
             print(json.dumps([c.tolist(), c[f['caption_indices']].tolist()]))",
            &[path],
        );
        let (distinct, captions): (Vec<String>, Vec<String>) =
            serde_json::from_str(out.trim()).unwrap();
        (Some(distinct), Some(captions))
    } else {
        (None, None)
    };
    Samples {
        images: npz.by_name("arr_0").unwrap(),
        caption_indices: npz.by_name("caption_indices").unwrap(),
        captions,
        distinct,
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(File::open(path).unwrap());
    let info = decoder.read_info().unwrap();
    (info.info().width, info.info().height)
}

/// The golden greedy images of `key` within the tokenizer rounding allowance of the VQ golden
/// tests (every value within 1, at most 0.1% off).
fn assert_golden_images(images: &Array4<u8>, key: &str) {
    let io: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(golden("t2i_public_io.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let expected = Vec::<u8>::try_from(io[&format!("{key}_images_uint8_nhwc")].view([-1])).unwrap();
    let ours: Vec<u8> = images.iter().copied().collect();
    assert_eq!(ours.len(), expected.len(), "{key}: sizes");
    let off = ours.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert!(
        ours.iter().zip(&expected).all(|(a, b)| a.abs_diff(*b) <= 1),
        "{key}: a pixel value is off by more than 1"
    );
    assert!(off * 1000 <= expected.len(), "{key}: {off} values differ");
}

/// Panics unless the PNG at `path` is a grid of `cols` x `rows` cells with a caption strip (of
/// more than 20 pixels) under each row.
#[track_caller]
fn assert_captioned_grid(path: &Path, cols: u32, rows: u32) {
    let (w, h) = png_size(path);
    assert_eq!(w, plain_grid(cols, rows).0);
    assert!(h > plain_grid(cols, rows).1 + rows * 20, "{h}");
}

/// A grid of 64-px images in `cols` x `rows` cells, without captions.
fn plain_grid(cols: u32, rows: u32) -> (u32, u32) {
    (cols * 66 + 2, rows * 66 + 2)
}

#[test]
fn t2i_fid_and_sample_reproduce_llamagen_with_captions() {
    let _cores = one_core();
    let (root, weights, reference) = &scratch_with_inception(10);
    let texts = caption_files(root);
    let captions = root.join("captions.npz");

    // fid --gpt: 6 greedy samples with guidance 4, captions cycled (sample i shows caption i % 3).
    let out = root.join("fid");
    let saved = root.join("fid_samples.npz");
    let mut args = tiny_t2i("fid");
    args.extend([
        "--caption-embeddings",
        s(&captions),
        "--samples",
        "6",
        "--cfg-scale",
        "4.0",
        "--top-k",
        "1",
        "--gen-batch-size",
        "4",
        "--decode-batch-size",
        "6",
        "--metrics",
        "fid",
        "--save-samples",
        s(&saved),
        "--quiet",
        "--out",
        s(&out),
    ]);
    args.extend(scored_against(reference, weights));
    llamagen_eval(&args).success();
    let record = metrics_json(&out);
    let fid = record["metrics"]["fid"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{record}");
    let run = &record["run"];
    assert_eq!(run["n_samples"], 6);
    assert_eq!(run["labels"], "captions");
    assert_eq!(run["n_captions"], 3);
    assert_eq!(run["captions"], serde_json::json!(texts));
    assert!(run["captions_file"]
        .as_str()
        .unwrap()
        .ends_with("captions.npz"));
    let samples = read(&saved);
    assert_golden_images(
        &samples
            .images
            .slice(ndarray::s![..3, .., .., ..])
            .to_owned(),
        "t2i_greedy_cfg4.0",
    );
    // Greedy: the same caption gives the same image (one decode batch for all six).
    assert_eq!(
        samples.images.slice(ndarray::s![3.., .., .., ..]),
        samples.images.slice(ndarray::s![..3, .., .., ..])
    );
    assert_eq!(samples.caption_indices.to_vec(), vec![0, 1, 2, 0, 1, 2]);
    let cycled: Vec<String> = (0..6).map(|i| texts[i % 3].clone()).collect();
    assert_eq!(samples.captions.as_ref().unwrap(), &cycled);
    assert_eq!(samples.distinct.as_ref().unwrap(), &texts);
    // The grid (3 x 2 cells) has a caption strip under each image.
    assert_captioned_grid(&out.join("grid.png"), 3, 2);

    // sample: guidance 7.5, one sample per caption by default.
    let npz = root.join("samples.npz");
    let grid = root.join("grid.png");
    sample(
        &npz,
        &captions,
        &["--cfg-scale", "7.5", "--top-k", "1", "--grid", s(&grid)],
    )
    .success();
    let samples = read(&npz);
    assert_golden_images(&samples.images, "t2i_greedy_cfg7.5");
    assert_eq!(samples.captions.unwrap(), texts);
    assert_captioned_grid(&grid, 2, 2);

    // Hugging Face's names, float16 embeddings and bool masks, without texts: no `captions`
    // entry, and a grid without caption strips.
    let npz = root.join("hf.npz");
    let grid = root.join("hf_grid.png");
    sample(
        &npz,
        &root.join("hf_names.npz"),
        &["--samples", "2", "--grid", s(&grid)],
    )
    .success();
    let samples = read(&npz);
    assert_eq!(samples.images.dim(), (2, 64, 64, 3));
    assert_eq!(samples.caption_indices.to_vec(), vec![0, 1]);
    assert!(samples.captions.is_none());
    assert_eq!(png_size(&grid), plain_grid(2, 1));
}

/// Random sampling with guidance of 4 samples of the 3 captions.
const RANDOM: [&str; 8] = [
    "--samples",
    "4",
    "--cfg-scale",
    "3.0",
    "--seed",
    "7",
    "--decode-batch-size",
    "2",
];

#[test]
fn t2i_samples_do_not_depend_on_batching_shards_interruption_or_ranks() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let texts = caption_files(dir.path());
    let captions = p("captions.npz");
    let run = |name: &str, extra: &[&str]| -> Samples {
        let mut args = RANDOM.to_vec();
        args.extend_from_slice(extra);
        sample(&p(name), &captions, &args).success();
        read(&p(name))
    };
    let reference = run("bs1.npz", &["--gen-batch-size", "1"]);
    let cycled: Vec<String> = (0..4).map(|i| texts[i % 3].clone()).collect();
    assert_eq!(reference.captions.as_ref().unwrap(), &cycled);
    assert_eq!(reference.caption_indices.to_vec(), vec![0, 1, 2, 0]);
    // Random sampling: samples 0 and 3 show the same caption but differ.
    assert_ne!(
        reference.images.index_axis(ndarray::Axis(0), 0),
        reference.images.index_axis(ndarray::Axis(0), 3)
    );
    let same = |other: &Samples, what: &str| {
        assert_eq!(other.images, reference.images, "{what}: images");
        assert_eq!(other.caption_indices, reference.caption_indices, "{what}");
        assert_eq!(other.captions, reference.captions, "{what}: captions");
    };
    same(&run("bs3.npz", &["--gen-batch-size", "3"]), "batch size 3");
    same(
        &run("no_overlap.npz", &["--gen-batch-size", "4", "--no-overlap"]),
        "no overlap",
    );

    // Shards 1/2 and 0/2, merged.
    for k in ["0", "1"] {
        let shard = format!("{k}/2");
        run(
            &format!("shard{k}.npz"),
            &["--gen-batch-size", "2", "--shard", &shard],
        );
    }
    let shard1 = read(&p("shard1.npz"));
    assert_eq!(shard1.caption_indices.to_vec(), vec![1, 0]);
    assert_eq!(shard1.distinct.unwrap(), texts[..2]);
    llamagen_eval(&[
        "merge",
        s(&p("shard1.npz")),
        s(&p("shard0.npz")),
        "--out",
        s(&p("merged.npz")),
        "--quiet",
    ])
    .success();
    same(&read(&p("merged.npz")), "merged shards");

    // Interrupted after 2 new samples, then resumed with another batch size.
    let out = p("resumed.npz");
    let mut args = RANDOM.to_vec();
    args.extend(["--gen-batch-size", "2", "--stop-after", "2"]);
    assert!(!sample(&out, &captions, &args).succeeded());
    assert!(!out.exists());
    // Other captions refuse to resume.
    let mut args = RANDOM.to_vec();
    args.extend(["--gen-batch-size", "3", "--resume"]);
    let refused = sample(&out, &p("hf_names.npz"), &args);
    assert!(!refused.succeeded());
    assert!(
        refused.stderr_text().contains("other settings"),
        "{}",
        refused.stderr_text()
    );
    let resumed = sample(&out, &captions, &args).success();
    assert!(resumed.stderr_text().contains("resuming after 2"));
    same(&read(&out), "resumed");

    // Two ranks of a Slurm job: rank 0 gathers one process's samples, and the captioned grid.
    let gathered = p("ranks.npz");
    let grid = p("ranks_grid.png");
    let args: Vec<String> = tiny_t2i("sample")
        .into_iter()
        .chain(RANDOM)
        .chain([
            "--caption-embeddings",
            s(&captions),
            "--gen-batch-size",
            "2",
            "--grid",
            s(&grid),
            "--quiet",
            "--out",
            s(&gathered),
        ])
        .map(str::to_owned)
        .collect();
    all_succeed(ranks(&args, &srun_tasks(2)));
    same(&read(&gathered), "two ranks");
    assert_captioned_grid(&grid, 2, 2);
}

#[test]
fn bad_caption_inputs_fail_before_sampling() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    caption_files(root);
    let out = root.join("x.npz");
    let fails = |output: Run, expected: &[&str]| {
        let stderr = output.stderr_text();
        assert!(!output.succeeded(), "should fail: {expected:?}");
        for e in expected {
            assert!(stderr.contains(e), "expected `{e}` in: {stderr}");
        }
        assert!(!out.exists());
        assert!(
            !root.join("x.npz.journal").exists(),
            "a journal was started: {stderr}"
        );
    };
    let (t2i, c2i) = ("gpt_t2i_public.pt", "gpt_public.pt");
    let run = |gpt: &'static str, extra: &[&str]| {
        let mut args = generator("sample", gpt);
        args.extend(["--samples", "2", "--out", s(&out)]);
        args.extend_from_slice(extra);
        llamagen_eval(&args)
    };
    let captions = root.join("captions.npz");
    let with = |name: &str| run(t2i, &["--caption-embeddings", s(&root.join(name))]);

    // Captions for a class-conditional checkpoint, and the reverse.
    fails(
        run(c2i, &["--caption-embeddings", s(&captions)]),
        &[
            "a class-conditional (c2i) generator",
            "drop --caption-embeddings",
        ],
    );
    fails(
        run(t2i, &[]),
        &[
            "is a text-to-image (t2i) generator",
            "--caption-embeddings FILE.npz",
        ],
    );
    fails(
        run(t2i, &["--labels", "1,2"]),
        &["is a text-to-image (t2i) generator"],
    );
    fails(
        run(
            t2i,
            &["--labels", "1", "--caption-embeddings", s(&captions)],
        ),
        &["--caption-embeddings", "cannot be used with", "--labels"],
    );
    fails(
        run(
            t2i,
            &["--class-balanced", "--caption-embeddings", s(&captions)],
        ),
        &["cannot be used with", "--class-balanced"],
    );
    // Embeddings that do not fit the checkpoint, or do not fit together.
    fails(
        with("wide.npz"),
        &[
            "wide.npz holds 3 captions of 120 positions of width 16",
            "takes 120 positions of width 32",
        ],
    );
    fails(
        with("short.npz"),
        &["3 captions of 100 positions", "takes 120 positions"],
    );
    fails(with("empty.npz"), &["empty.npz: empty caption embeddings"]);
    fails(
        with("masks_short.npz"),
        &["caption masks of shape [3, 119] for embeddings of shape [3, 120, 32]"],
    );
    fails(
        with("no_masks.npz"),
        &["no_masks.npz: has no `emb_masks` or `attention_mask` entry"],
    );
    fails(
        with("left_padded.npz"),
        &["not right-padded", "left-padded already"],
    );
    fails(with("missing.npz"), &["missing.npz: cannot open"]);
    // The same checks in `fid --gpt`.
    let (weights, reference) = random_inception_and_reference(root, 4);
    let mut args = tiny_t2i("fid");
    let wide = root.join("wide.npz");
    let fid_out = root.join("fid");
    args.extend([
        "--caption-embeddings",
        s(&wide),
        "--samples",
        "2",
        "--out",
        s(&fid_out),
    ]);
    args.extend(scored_against(&reference, &weights));
    let fid = llamagen_eval(&args);
    assert!(!fid.succeeded());
    let stderr = fid.stderr_text();
    assert!(stderr.contains("width 16"), "{stderr}");
    assert!(!fid_out.join("metrics.json").exists());
    assert!(!fid_out.join(".journal").exists());
}

/// A T5 folder (the golden tiny encoder, its config and a tiny tokenizer trained by
/// `fixtures/tiny_tokenizers.py`) and a whole-`CLIPModel` folder (the golden tiny vision and text
/// towers in one file, a `CLIPConfig` and the tiny CLIP tokenizer), as users download them.
fn text_model_folders(root: &Path) -> (PathBuf, PathBuf) {
    let tokenizers = root.join("tokenizers");
    support::run_reference("fixtures/tiny_tokenizers.py", &[tokenizers.as_path()]);
    let t5 = root.join("flan-t5-tiny");
    std::fs::create_dir(&t5).unwrap();
    std::fs::copy(
        golden("t5_tiny_public.safetensors"),
        t5.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(golden("t5_tiny_public_config.json"), t5.join("config.json")).unwrap();
    std::fs::copy(
        tokenizers.join("t5/tokenizer.json"),
        t5.join("tokenizer.json"),
    )
    .unwrap();
    let clip = root.join("clip-tiny");
    std::fs::create_dir(&clip).unwrap();
    let mut tensors =
        Tensor::read_safetensors(golden("clip_vision_tiny_public.safetensors")).unwrap();
    tensors.extend(Tensor::read_safetensors(golden("clip_text_tiny_public.safetensors")).unwrap());
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, clip.join("model.safetensors")).unwrap();
    let config = |name: &str| -> serde_json::Value {
        serde_json::from_reader(File::open(golden(name)).unwrap()).unwrap()
    };
    let combined = serde_json::json!({
        "model_type": "clip",
        "projection_dim": 32,
        "vision_config": config("clip_vision_tiny_public_config.json"),
        "text_config": config("clip_text_tiny_public_config.json"),
    });
    std::fs::write(clip.join("config.json"), combined.to_string()).unwrap();
    std::fs::copy(
        tokenizers.join("clip/tokenizer.json"),
        clip.join("tokenizer.json"),
    )
    .unwrap();
    (t5, clip)
}

#[test]
fn t2i_from_prompts_with_t5_and_clip_score() {
    let _cores = one_core();
    let (root, weights, reference) = &scratch_with_inception(10);
    let (t5, clip) = text_model_folders(root);
    let prompts = root.join("captions.jsonl");
    std::fs::write(
        &prompts,
        "{\"caption\": \"Two cats sleeping on a red sofa.\", \"image_id\": 7}\n\
         {\"caption\": \"A blue Porsche parked in front of a yellow wall.\", \"image_id\": 9}\n\
         {\"caption\": \"A bowl of fruit on a wooden kitchen table.\"}\n",
    )
    .unwrap();
    let texts = [
        "Two cats sleeping on a red sofa.",
        "A blue Porsche parked in front of a yellow wall.",
        "A bowl of fruit on a wooden kitchen table.",
    ];
    let out = root.join("fid");
    let clip_weights = clip.join("model.safetensors");
    let mut args = tiny_t2i("fid");
    args.extend([
        "--prompts",
        s(&prompts),
        "--t5",
        s(&t5),
        "--t5-precision",
        "fp32",
        "--samples",
        "4",
        "--cfg-scale",
        "7.5",
        "--features",
        "inception,clip",
        "--clip",
        s(&clip_weights),
        "--metrics",
        "fid,clip-score",
        "--quiet",
        "--out",
        s(&out),
    ]);
    args.extend(scored_against(reference, weights));
    llamagen_eval(&args).success();
    let record = metrics_json(&out);
    let metrics = &record["metrics"];
    assert!(metrics["fid"].as_f64().unwrap().is_finite(), "{record}");
    let score = metrics["clip_score"].as_f64().unwrap();
    let spread = metrics["clip_score_std"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&score) && spread >= 0.0, "{record}");
    assert_eq!(record["run"]["captions"], serde_json::json!(texts));
    assert_eq!(record["run"]["n_captions"], 3);
    // The grid carries the captions: taller than a plain 2 x 2 grid of 64-px images.
    let (w, h) = png_size(&out.join("grid.png"));
    let plain = plain_grid(2, 2);
    assert!(w == plain.0 && h > plain.1, "{w}x{h}");

    // `sample` embeds the same captions the same way: identical images run after run, the texts
    // stored beside them.
    let samples = |name: &str| {
        let path = root.join(name);
        let mut args = tiny_t2i("sample");
        args.extend([
            "--prompts",
            s(&prompts),
            "--t5",
            s(&t5),
            "--t5-precision",
            "fp32",
            "--quiet",
            "--out",
            s(&path),
        ]);
        llamagen_eval(&args).success();
        read(&path)
    };
    let (a, b) = (samples("a.npz"), samples("b.npz"));
    assert_eq!(a.images, b.images);

    // A resume whose T5 folder holds other weights at the same path is refused: the encoder is
    // identified by its files' content.
    let encoder = root.join("t5-replaced");
    std::fs::create_dir(&encoder).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(t5.join(file), encoder.join(file)).unwrap();
    }
    let interrupted = root.join("interrupted.npz");
    let resumable = |extra: &[&str]| {
        let mut args = tiny_t2i("sample");
        args.extend([
            "--prompts",
            s(&prompts),
            "--t5",
            s(&encoder),
            "--t5-precision",
            "fp32",
            "--quiet",
            "--out",
            s(&interrupted),
        ]);
        args.extend_from_slice(extra);
        llamagen_eval(&args)
    };
    let stopped = resumable(&["--gen-batch-size", "1", "--stop-after", "1"]);
    assert!(
        stopped.stderr_text().contains("resume the run to continue"),
        "{}",
        stopped.stderr_text()
    );
    let mut tensors = Tensor::read_safetensors(encoder.join("model.safetensors")).unwrap();
    for (_, tensor) in tensors.iter_mut() {
        let _ = tensor.g_mul_scalar_(1.5);
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, encoder.join("model.safetensors")).unwrap();
    let refused = resumable(&["--gen-batch-size", "1", "--resume"]).failure();
    assert!(
        refused.stderr_text().contains("`caption_embeddings`"),
        "{}",
        refused.stderr_text()
    );
    assert!(!interrupted.exists());
    assert_eq!(a.caption_indices.to_vec(), vec![0, 1, 2]);
    assert_eq!(a.captions, Some(texts.map(String::from).to_vec()));

    // Bad inputs fail before any sampling, each naming the problem.
    let empty = root.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let no_tokenizer = root.join("t5-without-tokenizer");
    std::fs::create_dir(&no_tokenizer).unwrap();
    std::fs::copy(
        t5.join("model.safetensors"),
        no_tokenizer.join("model.safetensors"),
    )
    .unwrap();
    // NaN weights are blamed on the encoder's folder, not on the prompts.
    let damaged = root.join("t5-damaged");
    std::fs::create_dir(&damaged).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(t5.join(file), damaged.join(file)).unwrap();
    }
    let mut tensors = Tensor::read_safetensors(t5.join("model.safetensors")).unwrap();
    for (_, tensor) in tensors.iter_mut() {
        let _ = tensor.fill_(f64::NAN);
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, damaged.join("model.safetensors")).unwrap();
    for (gpt, prompts, t5, words) in [
        ("gpt_t2i_public.pt", &empty, &t5, "empty"),
        (
            "gpt_t2i_public.pt",
            &prompts,
            &damaged,
            "t5-damaged: the t5 encoder gave nan",
        ),
        (
            "gpt_t2i_public.pt",
            &prompts,
            &no_tokenizer,
            "tokenizer.json",
        ),
        ("gpt_public.pt", &prompts, &t5, "class-conditional"),
    ] {
        let mut args = generator("sample", gpt);
        args.extend(["--prompts", s(prompts), "--t5", s(t5), "--quiet", "--out"]);
        let never = root.join("never.npz");
        args.push(s(&never));
        let run = llamagen_eval(&args).failure();
        assert!(
            run.stderr_text().to_lowercase().contains(words),
            "{words}: {}",
            run.stderr_text()
        );
        assert!(!never.exists());
    }
}

/// Prompt files are read within limits (an endless file and an over-long line are refused naming
/// the file and the line), a job embeds only the captions its samples take, and the sample npz
/// stores each distinct caption once, with each sample's row in `caption_indices`.
#[test]
fn prompt_files_are_bounded_and_only_sampled_captions_are_embedded() {
    let _cores = one_core();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (t5, _) = text_model_folders(root);
    let run = |prompts: &Path, out: &Path, extra: &[&str]| -> Run {
        let mut args = tiny_t2i("sample");
        args.extend([
            "--prompts",
            s(prompts),
            "--t5",
            s(&t5),
            "--t5-precision",
            "fp32",
            "--seed",
            "3",
            "--out",
            s(out),
        ]);
        args.extend_from_slice(extra);
        llamagen_eval(&args)
    };
    let never = root.join("never.npz");
    for extra in [&[][..], &["--samples", "2"][..]] {
        let stderr = run(Path::new("/dev/zero"), &never, extra)
            .failure()
            .stderr_text();
        assert!(
            stderr.contains("/dev/zero: line 1 is longer than 16 KiB"),
            "{stderr}"
        );
    }
    let long = root.join("long.txt");
    std::fs::write(&long, format!("a cat\n\n{}\n", "x".repeat(20_000))).unwrap();
    let stderr = run(&long, &never, &["--samples", "2"])
        .failure()
        .stderr_text();
    assert!(
        stderr.contains("long.txt: line 3 is longer than 16 KiB"),
        "{stderr}"
    );
    assert!(!never.exists());

    // 100,000 captions, 2 samples: their 2 captions are embedded, and the images are the first of
    // a file of 3 captions sampled whole (embedded together, as every caption of a file was).
    let many = root.join("many.txt");
    let text: String = (0..100_000)
        .map(|k| format!("a photo of object number {k}\n"))
        .collect();
    std::fs::write(&many, text).unwrap();
    let stderr = run(&many, &root.join("many.npz"), &["--samples", "2"])
        .success()
        .stderr_text();
    assert!(
        stderr.contains("embedding 2 distinct captions of its 100000"),
        "{stderr}"
    );
    let three = root.join("three.txt");
    std::fs::write(
        &three,
        "a photo of object number 0\na photo of object number 1\na green hat\n",
    )
    .unwrap();
    run(&three, &root.join("three.npz"), &[]).success();
    let (a, b) = (read(&root.join("many.npz")), read(&root.join("three.npz")));
    assert_eq!(a.images, b.images.slice(ndarray::s![..2, .., .., ..]));
    assert_eq!(a.caption_indices.to_vec(), vec![0, 1]);
    assert_eq!(a.captions.unwrap(), b.captions.unwrap()[..2]);

    // Repeated captions: each distinct text embedded and stored once; numpy reads each sample's
    // text through `caption_indices`.
    let repeated = root.join("repeated.txt");
    std::fs::write(
        &repeated,
        "a red cube\na blue ball\na red cube\na red cube\n",
    )
    .unwrap();
    let out = root.join("repeated.npz");
    let stderr = run(&repeated, &out, &["--samples", "10"])
        .success()
        .stderr_text();
    assert!(
        stderr.contains("embedding 2 distinct captions of its 4"),
        "{stderr}"
    );
    let samples = read(&out);
    let cycle = ["a red cube", "a blue ball", "a red cube", "a red cube"];
    let per_sample: Vec<String> = (0..10).map(|i| cycle[i % 4].to_owned()).collect();
    assert_eq!(samples.captions.unwrap(), per_sample);
    assert_eq!(samples.distinct.unwrap(), ["a red cube", "a blue ball"]);
    assert_eq!(
        samples.caption_indices.to_vec(),
        vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    );
    let shown = llamagen_eval(&["inspect", s(&out)]).success().stdout_text();
    assert!(
        shown.contains("10 images of 64x64 (3 channels), with captions (2 distinct texts"),
        "{shown}"
    );
}
