//! CPU throughput of the LlamaGen tokenizer: encode + decode of 256x256 images with the full-size
//! VQ-16 architecture (ch 128, ch_mult [1,1,2,2,4], z_channels 256, codebook 16384 x 8) and random
//! weights; criterion reports images per second (one image per iteration).
//!
//! `cargo bench --bench vq` (libtorch uses all cores unless `--threads` / OMP settings say
//! otherwise).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llamagen_eval::models::vq::{images_to_input, VqConfig, VqModel};
use tch::{nn, Device, Kind, Tensor};

fn encode_decode(c: &mut Criterion) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = VqModel::new(&vs.root(), &VqConfig::vq_16());
    let images = Tensor::randint(256, [1, 256, 256, 3], (Kind::Uint8, Device::Cpu));
    let input = images_to_input(&images);
    let mut group = c.benchmark_group("vq16_cpu");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_decode_256px_batch1", |bench| {
        bench.iter(|| {
            let (indices, recon) = model.reconstruct(&input);
            assert_eq!(indices.size(), [1, 16, 16]);
            recon
        })
    });
    group.finish();
}

criterion_group!(benches, encode_decode);
criterion_main!(benches);
