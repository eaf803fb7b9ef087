//! `llamagen-eval demo`: the main job end to end on built-in tiny models — a tokenizer, a generator
//! and an Inception network in their real architectures with seeded random weights made here, no
//! downloads — sampling at two CFG scales, every metric against a reference built from synthetic
//! images, and the CSV/JSON/PNG report. The figures mean nothing (random weights); the run shows
//! every stage working and what the outputs look like.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use tch::nn;

use crate::data::npz_writer::ImageNpzWriter;
use crate::device::DeviceChoice;
use crate::dist::Distribution;
use crate::evaluate::MetricOptions;
use crate::evaluate::MetricRequest;
use crate::layout::RunLayout;
use crate::models::gpt::{Gpt, GptConfig, HeadChoice};
use crate::models::inception::{InceptionV3, Resize};
use crate::models::vq::{VqConfig, VqModel, VqWeights};
use crate::partition::Shard;
use crate::pipeline::jobs::settings::StatsConfig;
use crate::pipeline::jobs::stats;
use crate::pipeline::jobs::sweep;
use crate::pipeline::{
    BatchSize, FidConfig, GenerationPlan, GeneratorConfig, InceptionConfig, Precision,
};
use crate::progress::Progress;
use crate::sampling::{Conditioning, LabelSpec, SamplingParams};

/// The demo's models: LlamaGen's VQ-16 layout and GPT at toy widths (64x64 images, 4x4 tokens).
fn vq_config() -> VqConfig {
    VqConfig {
        ch: 32,
        ch_mult: vec![1, 1, 2, 2, 4],
        z_channels: 64,
        codebook_size: 1024,
        embed_dim: 8,
        num_res_blocks: 2,
    }
}

fn gpt_config() -> GptConfig {
    GptConfig {
        dim: 64,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 4,
        vocab_size: 1024,
        num_classes: 10,
        condition: crate::models::gpt::Condition::Class,
        ffn_hidden: 256,
        block_size: 16,
        cls_token_num: 1,
        rope_base: 10_000.0,
        norm_eps: 1e-5,
    }
}

const IMAGE_SIZE: usize = 64;
const CFG_SCALES: [f64; 2] = [1.5, 4.0];

/// Writes seeded random weights for the demo's three models as safetensors files in `dir`:
/// the tokenizer, the generator (4 heads) and the FID Inception network, in that order.
pub fn make_models(dir: &Path) -> Result<[PathBuf; 3]> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    tch::manual_seed(0);
    let paths = [
        dir.join("vq.safetensors"),
        dir.join("gpt.safetensors"),
        dir.join("inception.safetensors"),
    ];
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _vq = VqModel::new(&vs.root(), &vq_config());
    vs.save(&paths[0])?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _gpt = Gpt::new(&vs.root(), &gpt_config());
    // A randomly initialised GPT is nearly uniform over tokens; sharper logits make CFG visible.
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name == "output.weight" {
                var.copy_(&(&var * 8.0));
            }
        }
    });
    vs.save(&paths[1])?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _inception = InceptionV3::new(&vs.root());
    // He-normal convolutions and unit BatchNorm scales keep activations alive through ~90 layers
    // (the default inits shrink them towards zero layer after layer).
    // In name order: the variables come as a hash map, and the draws must not depend on its order.
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in variables {
            if name.ends_with("conv.weight") {
                let size = var.size();
                let fan_in = (size[1] * size[2] * size[3]) as f64;
                let _ = var.normal_(0.0, (2.0 / fan_in).sqrt());
            } else if name.ends_with("bn.weight") {
                let _ = var.fill_(1.0);
            }
        }
    });
    vs.save(&paths[2])?;
    Ok(paths)
}

/// Smooth colour gradients with noise, `count` 64x64 images as an image npz: a synthetic
/// "dataset" for the reference batch.
pub fn make_reference_images(path: &Path, count: usize) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut writer = ImageNpzWriter::create(path, count, IMAGE_SIZE, IMAGE_SIZE)?;
    for _ in 0..count {
        let (fx, fy, phase): (f64, f64, f64) = (
            rng.random_range(0.5..4.0),
            rng.random_range(0.5..4.0),
            rng.random_range(0.0..6.3),
        );
        let image = Array3::from_shape_fn((IMAGE_SIZE, IMAGE_SIZE, 3), |(y, x, c)| {
            let t = (x as f64 * fx + y as f64 * fy) / IMAGE_SIZE as f64 * std::f64::consts::TAU
                + phase
                + c as f64;
            (127.5 + 100.0 * t.sin() + rng.random_range(-20.0..20.0)).clamp(0.0, 255.0) as u8
        });
        writer.push(image.view())?;
    }
    writer.finish()?;
    Ok(())
}

/// Runs the demo into `out` with `samples` samples per CFG scale.
pub fn run(out: &Path, samples: usize, progress: Progress) -> Result<()> {
    let say = |text: &str| progress.say(format!("demo: {text}"));
    say("making tiny models with seeded random weights (VQ-16 layout, GPT, FID Inception-V3)");
    let [vq, gpt, inception] = make_models(&out.join("models"))?;
    let reference_images = out.join("reference_images.npz");
    make_reference_images(&reference_images, 48)?;
    let reference = out.join("reference.npz");
    let inception = InceptionConfig {
        weights: Some(inception),
        resize: Resize::Adm,
        device: DeviceChoice::Cpu,
        batch_size: 16,
        dinov2: None,
        clip: None,
    };
    say("building the reference batch (statistics + kept images) with `stats`");
    stats::run_stats(
        &reference_images,
        &reference,
        &StatsConfig {
            crop: None,
            keep_images: 48,
            seed: 0,
            inception: inception.clone(),
            resume: false,
            progress,
        },
        &Distribution::single(),
    )?;

    say(&format!(
        "`sweep`: sampling {samples} images at each CFG scale ({}), `fid` on each, then `report`",
        CFG_SCALES.map(|s| s.to_string()).join(", ")
    ));
    let generator = GeneratorConfig {
        gpt,
        vq,
        vq_weights: VqWeights::Auto,
        image_size: IMAGE_SIZE as i64,
        image_size_eval: None,
        sampling: SamplingParams::default(),
        seed: 0,
        conditioning: Conditioning::Classes(LabelSpec::Uniform),
        precision: Precision::Auto,
        heads: HeadChoice {
            model_name: None,
            n_head: Some(4),
        },
        decode_batch_size: None,
        device: DeviceChoice::Cpu,
    };
    let mut options = MetricOptions::default();
    options.kid.subset_size = 16;
    options.kid.subsets = 20;
    let fid = FidConfig {
        reference,
        reference_crop: Some(IMAGE_SIZE),
        inception,
        metrics: MetricRequest {
            metrics: None,
            options,
        },
        progress,
    };
    let sweep_dir = out.join("sweep");
    let plan = GenerationPlan {
        samples,
        shard: Shard::ALL,
        batch_size: BatchSize::Auto,
        overlap: true,
        save_samples: Some(PathBuf::from("samples.npz")),
        layout: RunLayout::folder(&sweep_dir),
        resume: false,
        stop_after: None,
        progress,
        distribution: Distribution::single(),
    };
    let outcome = sweep::sweep(
        &fid,
        &generator,
        &CFG_SCALES,
        &plan,
        &sweep_dir,
        &mut |_, _, _| {},
    )?;
    for (scale, dir, run) in &outcome.runs {
        progress.say(format!("demo: CFG {scale} -> {}", dir.display()));
        if progress == Progress::Shown {
            print!("{}", run.record.metrics.table());
        }
    }
    progress.say(format!(
        "\ndemo: done — outputs in {}\n\
         demo: the figures above are MEANINGLESS: every model has random weights.\n\
         demo: with real checkpoints and the ADM reference batch, the same job is:\n  \
         llamagen-eval fid --gpt c2i_L_384.pt --vq vq_ds16_c2i.pt --image-size 384 --image-size-eval 256 \\\n    \
         --samples 50000 --cfg-scale 2.0 --ref VIRTUAL_imagenet256_labeled.npz \\\n    \
         --inception pt_inception-2015-12-05-6726825d.pth",
        out.display()
    ));
    Ok(())
}
