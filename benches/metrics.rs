//! Criterion benchmarks of the metric math at the sizes real evaluations use (or scaled down, with
//! the scaling stated in the benchmark name).

use criterion::{criterion_group, criterion_main, Criterion};
use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::image_quality::{ssim, SsimMode};
use llamagen_metrics::kid::{kernel_inception_distance, KidConfig};
use llamagen_metrics::manifold::{manifold_metrics, ManifoldConfig};
use llamagen_metrics::stats::{GaussianAccumulator, GaussianStats};
use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_features(rng: &mut ChaCha8Rng, n: usize, dim: usize) -> Array2<f32> {
    Array2::from_shape_fn((n, dim), |_| rng.random::<f32>())
}

/// Times `routine` as the one benchmark of `group`, over ten samples (each takes seconds).
fn bench_alone<O>(c: &mut Criterion, group: &str, name: &str, mut routine: impl FnMut() -> O) {
    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    group.bench_function(name, |bench| bench.iter(&mut routine));
    group.finish();
}

fn frechet(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = GaussianStats::from_features_f32(random_features(&mut rng, 4096, 2048).view())
        .expect("stats");
    let b = GaussianStats::from_features_f32(random_features(&mut rng, 4096, 2048).view())
        .expect("stats");
    bench_alone(c, "frechet", "frechet_distance_2048", || {
        frechet_distance(&a, &b).expect("fid")
    });
}

fn statistics(c: &mut Criterion) {
    // 50k x 2048 costs ~5x this 10k x 2048 run: the work is one rank-k update per batch.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let batch = random_features(&mut rng, 1000, 2048);
    bench_alone(
        c,
        "statistics",
        "accumulate_10k_x_2048_in_batches_of_1000",
        || {
            let mut acc = GaussianAccumulator::new(2048);
            for _ in 0..10 {
                acc.add_batch_f32(batch.view()).expect("batch");
            }
            acc.finalize().expect("stats")
        },
    );
}

fn precision_recall(c: &mut Criterion) {
    // Scaled down from 10k x 50k x 2048: distance work grows with n_ref * n_sample * dim, so the
    // full size costs about (10k * 50k) / (2k * 4k) = 62.5x this run, plus the within-set passes.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let reference = random_features(&mut rng, 2000, 2048);
    let samples = random_features(&mut rng, 4000, 2048);
    bench_alone(
        c,
        "precision_recall",
        "manifold_2k_ref_x_4k_samples_x_2048",
        || {
            manifold_metrics(reference.view(), samples.view(), &ManifoldConfig::default())
                .expect("pr")
        },
    );
}

fn kid(c: &mut Criterion) {
    // torch-fidelity's defaults (100 subsets of 1000) on 2k x 2k: the union of the subsets is the
    // whole of both sets, so this is one shared kernel pass over 2k x 2k plus the subset sums.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let reference = random_features(&mut rng, 2000, 2048);
    let samples = random_features(&mut rng, 2000, 2048);
    bench_alone(c, "kid", "kid_2k_x_2k_x_2048_100_subsets_of_1000", || {
        kernel_inception_distance(reference.view(), samples.view(), &KidConfig::default())
            .expect("kid")
    });
}

fn ssim_bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let originals = Array4::from_shape_fn((8, 256, 256, 3), |_| rng.random::<u8>());
    let reconstructions = originals.mapv(|v| v.saturating_add(3));
    let mut group = c.benchmark_group("ssim");
    group.sample_size(10);
    for mode in [
        SsimMode::Gaussian,
        SsimMode::Uniform,
        SsimMode::LlamagenCompat,
    ] {
        group.bench_function(format!("{mode:?}_8_images_256x256x3"), |bench| {
            bench.iter(|| ssim(originals.view(), reconstructions.view(), mode).expect("ssim"))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    frechet,
    statistics,
    precision_recall,
    kid,
    ssim_bench
);
criterion_main!(benches);
