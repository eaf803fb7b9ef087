//! CPU throughput of the feature networks beyond Inception with random weights in the released
//! architectures: DINOv2 ViT-L/14 at 224 (FD_DINOv2) and CLIP ViT-L/14 at 336 (CMMD), batch 16,
//! preprocessing from u8 images included; criterion reports images per second.
//!
//! `cargo bench --bench feature_networks` (libtorch uses all cores unless OMP settings say
//! otherwise).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llamagen_eval::models::clip::{self, ClipConfig, ClipVisionModel};
use llamagen_eval::models::dinov2::{self, Dinov2, Dinov2Config};
use ndarray::Array4;
use tch::{nn, Device};

const BATCH: usize = 16;

fn images() -> Array4<u8> {
    Array4::from_shape_fn((BATCH, 256, 256, 3), |(i, y, x, c)| {
        ((x * 3 + y * 7 + i * 31 + c * 50) % 256) as u8
    })
}

fn feature_networks(c: &mut Criterion) {
    tch::manual_seed(0);
    let images = images();
    let mut group = c.benchmark_group("feature_networks_cpu");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(60));
    group.throughput(Throughput::Elements(BATCH as u64));

    let vs = nn::VarStore::new(Device::Cpu);
    let dinov2_model = Dinov2::new(&vs.root(), &Dinov2Config::vit_l14());
    group.bench_function("dinov2_vitl14_224_batch16", |bench| {
        bench.iter(|| {
            let input = dinov2::preprocess(images.view());
            tch::no_grad(|| dinov2_model.features(&input))
        })
    });
    drop(dinov2_model);

    let vs = nn::VarStore::new(Device::Cpu);
    let config = ClipConfig::vit_l14_336();
    let clip_model = ClipVisionModel::new(&vs.root(), &config);
    group.bench_function("clip_vitl14_336_batch16", |bench| {
        bench.iter(|| {
            let input = clip::preprocess(images.view(), config.image_size as usize)
                .expect("256x256 RGB batch");
            clip_model.embed(&input).expect("336 px input")
        })
    });
    group.finish();
}

criterion_group!(benches, feature_networks);
criterion_main!(benches);
