//! `llamagen-eval demo`: the main job end to end on built-in tiny models — a tokenizer, a generator
//! and an Inception network in their real architectures with seeded random weights made here, no
//! downloads — sampling at two CFG scales, every metric against a reference built from synthetic
//! images, and the CSV/JSON/PNG report. The figures mean nothing (random weights); the run shows
//! every stage working and what the outputs look like.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, FromArgMatches};
use ndarray::Array3;
use rand::{Rng, SeedableRng};
use tch::nn;

use crate::commands;
use crate::data::npz_writer::ImageNpzWriter;
use crate::models::gpt::{Gpt, GptConfig};
use crate::models::inception::InceptionV3;
use crate::models::vq::{VqConfig, VqModel};

#[derive(Args, Debug)]
pub struct DemoCommand {
    /// Where the demo writes its models, runs and report.
    #[arg(long, value_name = "DIR", default_value = "reports/demo")]
    pub out: PathBuf,
    /// Samples per CFG scale.
    #[arg(long, default_value_t = 24)]
    pub samples: usize,
}

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
        ffn_hidden: 256,
        block_size: 16,
        cls_token_num: 1,
        rope_base: 10_000.0,
        norm_eps: 1e-5,
    }
}

const IMAGE_SIZE: usize = 64;
const CFG_SCALES: [&str; 2] = ["1.5", "4"];

/// Writes seeded random weights for the three models as safetensors files in `dir`.
fn make_models(dir: &Path) -> Result<[PathBuf; 3]> {
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

/// Smooth colour gradients with noise: a synthetic "dataset" for the reference batch.
fn make_reference_images(path: &Path, count: usize) -> Result<()> {
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

/// Parses `args` as the flags of one subcommand, the way the command line would.
fn parse<T: Args + FromArgMatches>(name: &'static str, args: &[OsString]) -> Result<T> {
    let command = T::augment_args(clap::Command::new(name));
    let matches = command
        .try_get_matches_from(std::iter::once(OsString::from(name)).chain(args.iter().cloned()))
        .with_context(|| format!("demo arguments for `{name}`"))?;
    Ok(T::from_arg_matches(&matches)?)
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

pub fn run(cmd: &DemoCommand, quiet: bool) -> Result<()> {
    let say = |text: &str| {
        if !quiet {
            eprintln!("demo: {text}");
        }
    };
    let out = &cmd.out;
    say("making tiny models with seeded random weights (VQ-16 layout, GPT, FID Inception-V3)");
    let [vq, gpt, inception] = make_models(&out.join("models"))?;
    let reference_images = out.join("reference_images.npz");
    make_reference_images(&reference_images, 48)?;
    let reference = out.join("reference.npz");
    say("building the reference batch (statistics + kept images) with `stats`");
    let stats: commands::stats::StatsCommand = parse(
        "stats",
        &os(&[
            &"--data",
            &reference_images,
            &"--out",
            &reference,
            &"--keep-images",
            &"48",
            &"--inception",
            &inception,
            &"--device",
            &"cpu",
            &"--batch-size",
            &"16",
        ]),
    )?;
    commands::stats::run(&stats, quiet)?;

    say(&format!(
        "`sweep`: sampling {} images at each CFG scale ({}), `fid` on each, then `report`",
        cmd.samples,
        CFG_SCALES.join(", ")
    ));
    let sweep: commands::sweep::SweepCommand = parse(
        "sweep",
        &os(&[
            &"--cfg-scales",
            &CFG_SCALES.join(","),
            &"--gpt",
            &gpt,
            &"--vq",
            &vq,
            &"--n-head",
            &"4",
            &"--image-size",
            &IMAGE_SIZE.to_string(),
            &"--samples",
            &cmd.samples.to_string(),
            &"--seed",
            &"0",
            &"--ref",
            &reference,
            &"--inception",
            &inception,
            &"--device",
            &"cpu",
            &"--batch-size",
            &"16",
            &"--kid-subset-size",
            &"16",
            &"--kid-subsets",
            &"20",
            &"--save-samples",
            &"samples.npz",
            &"--out",
            &out.join("sweep"),
        ]),
    )?;
    commands::sweep::run(&sweep, quiet)?;

    if !quiet {
        eprintln!(
            "\ndemo: done — outputs in {}\n\
             demo: the figures above are MEANINGLESS: every model has random weights.\n\
             demo: with real checkpoints and the ADM reference batch, the same job is:\n  \
             llamagen-eval fid --gpt c2i_L_384.pt --vq vq_ds16_c2i.pt --image-size 384 --image-size-eval 256 \\\n    \
             --samples 50000 --cfg-scale 2.0 --ref VIRTUAL_imagenet256_labeled.npz \\\n    \
             --inception pt_inception-2015-12-05-6726825d.pth",
            out.display()
        );
    }
    Ok(())
}
