//! How many samples are generated at once: a number, or `auto` — the largest batch whose
//! key/value cache, logits and decoded images fit in the device's free memory, capped where a
//! larger batch stops paying off.
//!
//! The batch size never changes a sample (sample i depends only on its seed, index and label, and
//! the last batch is padded to full size so every sample is computed in the same kernel
//! configuration), so it is not part of any resume fingerprint; only the decode batch, whose
//! convolution arithmetic varies with the batch shape, is.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::models::gpt::{Condition, GptConfig};
use crate::models::vq::VqConfig;

/// `--gen-batch-size` of generation (`fid --gpt`, `sweep`, `sample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchSize {
    /// Chosen from the device's free memory ([`auto_batch_size`]).
    #[default]
    Auto,
    /// This many samples per batch (at least 1).
    Fixed(usize),
}

impl FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(BatchSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(BatchSize::Fixed(n)),
            _ => Err(format!(
                "`{s}`: give a positive number of samples, or `auto`"
            )),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Auto => f.write_str("auto"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// Share of the free memory an automatic batch may fill: the rest absorbs allocator
/// fragmentation, cuDNN workspaces and what the estimates below leave out.
const USABLE_SHARE: f64 = 0.8;

/// Largest automatic batch on a CUDA device. One decoding step of a batch reads every weight
/// once; past a few hundred rows (a batch of 256 is 512 rows with guidance) the step's matrix
/// products are compute-bound on current GPUs, so larger batches add memory, not speed, and
/// waste more on the padded last batch.
pub const CUDA_CAP: usize = 256;

/// Largest automatic batch on the CPU. Measured with `sample` on the demo models (2 cores, 128
/// samples, sampling and decoding): 71-80 images/s at batch 4, 83-85 at 8, 94 at 16, 101-104 at
/// 32 and 64-65 at 64, where the decoder's activations outgrow the caches; beyond 32 a batch
/// costs speed and memory and the padded last batch wastes more.
pub const CPU_CAP: usize = 32;

/// Automatic batch when the free memory is unknown (`device::free_memory` could not tell):
/// LlamaGen's own per-GPU sampling batch.
pub const UNKNOWN_MEMORY_BATCH: usize = 32;

/// The automatic batch: the largest power of two (up to `cap`) whose `per_sample_bytes` each,
/// plus `reserved_bytes` once, fit in [`USABLE_SHARE`] of `free_bytes`; at least 1. With the free
/// memory unknown, `fallback` (capped). A power of two, so that the small changes in free memory
/// between a run and its resume rarely change the choice.
pub fn auto_batch_size(
    free_bytes: Option<u64>,
    per_sample_bytes: u64,
    reserved_bytes: u64,
    cap: usize,
    fallback: usize,
) -> usize {
    let cap = cap.max(1);
    let Some(free) = free_bytes else {
        return fallback.clamp(1, cap);
    };
    let usable = (free as f64 * USABLE_SHARE) as u64;
    let fits = usable.saturating_sub(reserved_bytes) / per_sample_bytes.max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX).clamp(1, cap);
    // The largest power of two not above `fits`.
    1 << (usize::BITS - 1 - fits.leading_zeros())
}

/// Bytes per element of a dtype the generator runs in.
pub fn dtype_bytes(kind: Kind) -> u64 {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Half | Kind::BFloat16 => 2,
        _ => 4,
    }
}

/// Device memory one sample takes while it is sampled: its key/value cache
/// (2 x n_layer x (cls_token_num + block_size) x n_kv_head x head_dim values), twice with
/// classifier-free guidance (a conditional and a null-class row), plus the per-step logits (a
/// few f32 copies of the vocabulary: model output, guided mix, host copy) and activations; for a
/// t2i model also the prefill's over its caption positions (the caption embeddings, a layer's
/// feed-forward and attention weights).
pub fn sampling_bytes_per_sample(config: &GptConfig, kind: Kind, guided: bool) -> u64 {
    let rows = if guided { 2 } else { 1 };
    let positions = (config.cls_token_num + config.block_size) as u64;
    let kv = 2
        * config.n_layer as u64
        * positions
        * config.n_kv_head as u64
        * config.head_dim() as u64
        * dtype_bytes(kind);
    let logits = 4 * config.vocab_size as u64 * 4;
    let mut activations = 16 * config.dim.max(config.ffn_hidden) as u64 * 4
        + 2 * config.n_head as u64 * positions * 4;
    if let Condition::Caption { caption_dim } = config.condition {
        let captions = config.cls_token_num as u64;
        activations += captions * caption_dim as u64 * 4
            + captions * 4 * (config.dim + config.ffn_hidden) as u64 * dtype_bytes(kind)
            + config.n_head as u64 * captions * captions * 4;
    }
    rows * (kv + logits + activations)
}

/// Device memory one image takes while the tokenizer decodes it: the decoder's widest
/// full-resolution activation (`ch x ch_mult[0]` channels, f32) about six times over (a residual
/// block's input, normalised, activated and convolved copies, and the upsampled output).
pub fn decode_bytes_per_image(config: &VqConfig, image_size: i64) -> u64 {
    let channels = config.ch * config.ch_mult.first().copied().unwrap_or(1);
    6 * channels as u64 * (image_size * image_size) as u64 * 4
}

/// Device memory one image takes in an Inception forward pass (its 299x299 input and the widest
/// early activations, 64 x 147 x 147, a few times over).
pub const INCEPTION_BYTES_PER_IMAGE: u64 = 32 << 20;

/// The cap of the automatic batch on `device`.
pub fn cap_for(device: Device) -> usize {
    if device.is_cuda() {
        CUDA_CAP
    } else {
        CPU_CAP
    }
}

/// The fixed-shape convolutions of a run (the tokenizer's decoder on padded batches, Inception)
/// let cuDNN's benchmark mode time its algorithms once per shape and keep the fastest. Global
/// to the process; only set for CUDA devices. The chosen algorithm can differ between runs, which
/// moves results in the last bits, as cuDNN's algorithm choice already does.
pub fn benchmark_fixed_shapes(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}

/// `float32`, `bfloat16`, ...: a dtype as run records name it.
pub fn dtype_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "float32".into(),
        Kind::Double => "float64".into(),
        Kind::Half => "float16".into(),
        Kind::BFloat16 => "bfloat16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn parses_numbers_and_auto() {
        assert_eq!("auto".parse(), Ok(BatchSize::Auto));
        assert_eq!("12".parse(), Ok(BatchSize::Fixed(12)));
        assert!("0".parse::<BatchSize>().is_err());
        assert!("-3".parse::<BatchSize>().is_err());
        assert!("big".parse::<BatchSize>().is_err());
        assert_eq!(BatchSize::Fixed(7).to_string(), "7");
        assert_eq!(BatchSize::Auto.to_string(), "auto");
    }

    #[test]
    fn auto_fills_the_usable_memory_in_powers_of_two() {
        // 10 GiB free, 8 GiB usable, 1 GiB reserved: 7 GiB / 100 MiB = 71 samples -> 64.
        assert_eq!(auto_batch_size(Some(10 * GIB), 100 << 20, GIB, 256, 32), 64);
        // Capped.
        assert_eq!(auto_batch_size(Some(1000 * GIB), 1 << 20, 0, 256, 32), 256);
        assert_eq!(auto_batch_size(Some(1000 * GIB), 1 << 20, 0, 16, 32), 16);
        // A cap that is not a power of two: the largest power of two below it.
        assert_eq!(auto_batch_size(Some(1000 * GIB), 1 << 20, 0, 100, 32), 64);
        // Nothing fits: still one sample (the allocation itself says what is missing).
        assert_eq!(auto_batch_size(Some(GIB), 2 * GIB, 0, 256, 32), 1);
        assert_eq!(auto_batch_size(Some(GIB), 1, 2 * GIB, 256, 32), 1);
        // Unknown memory: the fallback, capped.
        assert_eq!(auto_batch_size(None, 1, 0, 256, 32), 32);
        assert_eq!(auto_batch_size(None, 1, 0, 16, 32), 16);
        assert_eq!(cap_for(Device::Cpu), CPU_CAP);
        assert_eq!(cap_for(Device::Cuda(0)), CUDA_CAP);
        // Degenerate inputs stay in range.
        assert_eq!(auto_batch_size(Some(GIB), 0, 0, 0, 0), 1);
    }

    #[test]
    fn sampling_memory_is_the_kv_cache_and_more() {
        // GPT-B at 256 px: 12 layers, 12 heads of 64, 1 + 256 positions.
        let config = GptConfig::registry("GPT-B", 256).unwrap();
        let kv = 2 * 12 * 257 * 12 * 64 * 4;
        let plain = sampling_bytes_per_sample(&config, Kind::Float, false);
        assert!(plain > kv && plain < kv + kv / 2, "{plain} vs {kv}");
        assert_eq!(
            sampling_bytes_per_sample(&config, Kind::Float, true),
            2 * plain
        );
        assert!(sampling_bytes_per_sample(&config, Kind::BFloat16, false) < plain);
        // A t2i model: 120 caption positions in the cache, and the prefill over them.
        let t2i = GptConfig {
            condition: Condition::Caption { caption_dim: 2048 },
            cls_token_num: 120,
            ..config
        };
        let kv = 2 * 12 * (120 + 256) * 12 * 64 * 4;
        let prefill = 120 * 2048 * 4 + 120 * 4 * (768 + 2048) * 4;
        assert!(sampling_bytes_per_sample(&t2i, Kind::Float, false) > kv + prefill);
    }

    #[test]
    fn decoding_memory_grows_with_the_image() {
        let vq = VqConfig::vq_16();
        let at_256 = decode_bytes_per_image(&vq, 256);
        assert_eq!(at_256, 6 * 128 * 256 * 256 * 4);
        assert_eq!(decode_bytes_per_image(&vq, 512), 4 * at_256);
    }

    #[test]
    fn names() {
        assert_eq!(crate::device::name(Device::Cpu), "cpu");
        assert_eq!(crate::device::name(Device::Cuda(1)), "cuda:1");
        assert_eq!(dtype_name(Kind::BFloat16), "bfloat16");
        assert_eq!(dtype_name(Kind::Float), "float32");
    }
}
