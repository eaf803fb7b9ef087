//! GPT-B-size decoding throughput with random weights (12 layers, dim 768, 12 heads, 256 image
//! tokens, vocabulary 16384): tokens/s at batch 1 and 8, with and without classifier-free
//! guidance, through the same `sampling::generate` path `sample` uses (KV cache, draws on the
//! model's device).
//!
//! `cargo bench --bench gpt`; `GPT_BENCH_DEVICE=cuda` runs it on the GPU, `GPT_BENCH_BATCHES=1,32`
//! and `GPT_BENCH_PRECISION=bf16` change the batches and the weights' dtype.

use std::time::Instant;

use llamagen_eval::models::gpt::{Gpt, GptConfig};
use llamagen_eval::sampling::{generate, SamplingParams};
use tch::{nn, Device};

fn main() {
    let device = match std::env::var("GPT_BENCH_DEVICE").as_deref() {
        Ok("cuda") => {
            // libtorch's CUDA half is loaded on demand (see `device::load_cuda`).
            assert!(
                llamagen_eval::device::load_cuda(),
                "libtorch_cuda could not be loaded"
            );
            Device::Cuda(0)
        }
        _ => Device::Cpu,
    };
    let batches: Vec<usize> = std::env::var("GPT_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,8".to_owned())
        .split(',')
        .map(|b| b.trim().parse().expect("batch sizes"))
        .collect();
    let config = GptConfig::registry("GPT-B", 256).expect("GPT-B");
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(&vs.root(), &config);
    if std::env::var("GPT_BENCH_PRECISION").as_deref() == Ok("bf16") {
        vs.bfloat16();
    }
    println!(
        "GPT-B ({:.0}M parameters), {} tokens per image, {device:?}, {} libtorch threads",
        config.parameters() as f64 / 1e6,
        config.block_size,
        tch::get_num_threads()
    );
    println!("| batch | CFG | tokens/s | images/s | s per batch |");
    println!("|---|---|---|---|---|");
    for &batch in &batches {
        for cfg_scale in [1.0, 2.0] {
            let params = SamplingParams {
                cfg_scale,
                ..Default::default()
            };
            let labels: Vec<i64> = (0..batch as i64).map(|i| i % 1000).collect();
            let indices: Vec<u64> = (0..batch as u64).collect();
            // Warm-up on a short batch, then one timed batch.
            let _ = generate(&model, &labels[..1], &indices[..1], &params, 0, false).unwrap();
            let start = Instant::now();
            let _ = generate(&model, &labels, &indices, &params, 0, false).unwrap();
            let secs = start.elapsed().as_secs_f64();
            let tokens = (batch as i64 * config.block_size) as f64;
            println!(
                "| {batch} | {} | {:.0} | {:.2} | {secs:.2} |",
                if cfg_scale > 1.0 { "2.0" } else { "off" },
                tokens / secs,
                batch as f64 / secs
            );
        }
    }
}
