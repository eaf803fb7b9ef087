//! Precision/recall (ADM `ManifoldEstimator`), density/coverage and KID: against the ADM evaluator's
//! golden figures in `metrics_public.npz`, and live against torch-fidelity 0.4.0 on random features
//! written as .npy (`tests/python/oracles/torch_fidelity_kid_prc.py`).

use std::fs::File;
use std::path::Path;

use llamagen_metrics::kid::{kernel_inception_distance, KidConfig};
use llamagen_metrics::manifold::{
    manifold_metrics, manifold_radii, DistancePrecision, ManifoldConfig, ManifoldMetrics,
};
use llamagen_test_support as support;
use ndarray::{Array1, Array2};
use ndarray_npy::{write_npy, NpzReader, WritableElement};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

struct Golden {
    reference: Array2<f32>,
    samples: Array2<f32>,
    radii_ref: Array1<f32>,
    radii_sample: Array1<f32>,
    expected: Value,
}

fn golden() -> Golden {
    let dir = support::golden_dir();
    let mut npz = NpzReader::new(File::open(dir.join("metrics_public.npz")).unwrap()).unwrap();
    let manifest: Value = serde_json::from_reader(
        File::open(dir.join("manifest_public.json")).expect("manifest_public.json"),
    )
    .unwrap();
    Golden {
        reference: npz.by_name("ref").unwrap(),
        samples: npz.by_name("sample").unwrap(),
        radii_ref: npz.by_name("radii_ref").unwrap(),
        radii_sample: npz.by_name("radii_sample").unwrap(),
        expected: manifest["adm_metrics"].clone(),
    }
}

fn expected(g: &Golden, key: &str) -> f64 {
    g.expected[key]
        .as_f64()
        .unwrap_or_else(|| panic!("adm_metrics.{key} in the manifest"))
}

#[test]
fn golden_adm_precision_recall_float64() {
    let g = golden();
    let got = manifold_metrics(g.reference.view(), g.samples.view(), &Default::default()).unwrap();
    let (n_ref, n_sample) = (g.reference.nrows() as f64, g.samples.nrows() as f64);
    println!(
        "exact: precision {} (golden float64 {}, fp16 {}), recall {} (golden float64 {}, fp16 {}), density {}, coverage {}",
        got.precision,
        expected(&g, "precision_float64"),
        expected(&g, "precision"),
        got.recall,
        expected(&g, "recall_float64"),
        expected(&g, "recall"),
        got.density,
        got.coverage
    );
    assert!((got.precision - expected(&g, "precision_float64")).abs() <= 1.0 / n_sample + 1e-12);
    assert!((got.recall - expected(&g, "recall_float64")).abs() <= 1.0 / n_ref + 1e-12);
    assert!((got.precision - expected(&g, "precision")).abs() <= 0.005);
    assert!((got.recall - expected(&g, "recall")).abs() <= 0.005);
}

#[test]
fn golden_adm_precision_recall_fp16() {
    let g = golden();
    let config = ManifoldConfig {
        precision: DistancePrecision::AdmFp16,
        ..Default::default()
    };
    let got = manifold_metrics(g.reference.view(), g.samples.view(), &config).unwrap();
    let (n_ref, n_sample) = (g.reference.nrows() as f64, g.samples.nrows() as f64);
    println!(
        "AdmFp16: precision {} (golden {}), recall {} (golden {})",
        got.precision,
        expected(&g, "precision"),
        got.recall,
        expected(&g, "recall")
    );
    assert!((got.precision - expected(&g, "precision")).abs() <= 2.0 / n_sample + 1e-12);
    assert!((got.recall - expected(&g, "recall")).abs() <= 2.0 / n_ref + 1e-12);

    for (name, features, golden_radii) in [
        ("ref", &g.reference, &g.radii_ref),
        ("sample", &g.samples, &g.radii_sample),
    ] {
        let radii = manifold_radii(features.mapv(f64::from).view(), &config).unwrap();
        let mismatched = radii
            .iter()
            .zip(golden_radii.iter())
            .filter(|(a, b)| **a != f64::from(**b))
            .count();
        println!(
            "AdmFp16 radii_{name}: {mismatched} of {} differ from ADM's",
            radii.len()
        );
        assert_eq!(mismatched, 0, "radii_{name}");
    }
}

#[test]
fn block_size_does_not_change_results() {
    let g = golden();
    let reference = g.reference.slice(ndarray::s![..400, ..]);
    let samples = g.samples.slice(ndarray::s![..300, ..]);
    for precision in [DistancePrecision::Exact, DistancePrecision::AdmFp16] {
        let base = manifold_metrics(
            reference,
            samples,
            &ManifoldConfig {
                precision,
                ..Default::default()
            },
        )
        .unwrap();
        for block_size in [1, 37, 128] {
            let config = ManifoldConfig {
                block_size,
                precision,
                ..Default::default()
            };
            assert_eq!(manifold_metrics(reference, samples, &config).unwrap(), base);
        }
    }
}

/// Non-negative, ReLU-like features: `max(0, approximately normal(shift, 1))`.
fn features(rng: &mut ChaCha8Rng, n: usize, d: usize, shift: f64) -> Array2<f64> {
    Array2::from_shape_simple_fn((n, d), || {
        let normal: f64 = (0..4).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>() * 0.866;
        (normal + shift).max(0.0)
    })
}

fn run_reference<T: WritableElement>(
    dir: &Path,
    reference: &Array2<T>,
    samples: &Array2<T>,
    kid: &KidConfig,
    k: usize,
) -> Value {
    let ref_path = dir.join("ref.npy");
    let sample_path = dir.join("sample.npy");
    write_npy(&ref_path, reference).unwrap();
    write_npy(&sample_path, samples).unwrap();
    let args = [
        kid.subsets.to_string(),
        kid.subset_size.to_string(),
        kid.seed.to_string(),
        k.to_string(),
    ];
    let mut paths: Vec<&Path> = vec![&ref_path, &sample_path];
    paths.extend(args.iter().map(Path::new));
    let out = support::run_reference("oracles/torch_fidelity_kid_prc.py", &paths);
    serde_json::from_str(out.trim()).unwrap()
}

fn field(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// `fraction` of `n` as a whole count.
fn count(fraction: f64, n: usize) -> i64 {
    let c = fraction * n as f64;
    assert!(
        (c - c.round()).abs() < 1e-3,
        "{fraction} is not a fraction of {n}"
    );
    c.round() as i64
}

fn report(label: &str, ours: &ManifoldMetrics, kid_mean: f64, kid_std: f64, reference: &Value) {
    println!(
        "{label}: ours precision {} recall {} density {} coverage {} KID {kid_mean} ± {kid_std}",
        ours.precision, ours.recall, ours.density, ours.coverage
    );
    println!("{label}: reference {reference}");
}

#[test]
fn torch_fidelity_parity_float64() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6b69_6470);
    let reference = features(&mut rng, 700, 48, 0.2);
    let samples = features(&mut rng, 600, 48, 0.35);
    let kid = KidConfig {
        subsets: 40,
        subset_size: 250,
        seed: 2020,
    };
    let k = 3;
    let dir = tempfile::tempdir().unwrap();
    let theirs = run_reference(dir.path(), &reference, &samples, &kid, k);

    let ours = manifold_metrics(reference.view(), samples.view(), &Default::default()).unwrap();
    let ours_kid = kernel_inception_distance(reference.view(), samples.view(), &kid).unwrap();
    report("float64", &ours, ours_kid.mean, ours_kid.std, &theirs);

    // Same math in float64 on both sides: only summation order differs.
    assert!(support::rel_diff(ours_kid.mean, field(&theirs, "kid_mean")) < 1e-9);
    assert!(support::rel_diff(ours_kid.std, field(&theirs, "kid_std")) < 1e-9);
    // torch-fidelity compares Euclidean distances with kthvalue(k + 1) radii (self included), ADM
    // squared distances with the k-th other point: the same sets for distinct points.
    // torch-fidelity returns the fractions as float32 means, so compare counts.
    assert_eq!(
        count(ours.precision, 600),
        count(field(&theirs, "precision"), 600)
    );
    assert_eq!(
        count(ours.recall, 700),
        count(field(&theirs, "recall"), 700)
    );
    assert!(support::rel_diff(ours.density, field(&theirs, "density")) < 1e-12);
    assert!(support::rel_diff(ours.coverage, field(&theirs, "coverage")) < 1e-12);
}

#[test]
fn torch_fidelity_parity_float32() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6b69_6433);
    let reference = features(&mut rng, 500, 64, 0.1).mapv(|v| v as f32);
    let samples = features(&mut rng, 450, 64, 0.3).mapv(|v| v as f32);
    let kid = KidConfig {
        subsets: 30,
        subset_size: 200,
        seed: 7,
    };
    let dir = tempfile::tempdir().unwrap();
    let theirs = run_reference(dir.path(), &reference, &samples, &kid, 3);

    let ours = manifold_metrics(reference.view(), samples.view(), &Default::default()).unwrap();
    let ours_kid = kernel_inception_distance(reference.view(), samples.view(), &kid).unwrap();
    report("float32", &ours, ours_kid.mean, ours_kid.std, &theirs);

    // torch-fidelity keeps float32 features in float32 (cdist, kernels and MMD sums); we promote
    // to float64, so agreement is to float32 round-off and precision/recall to near-ties.
    assert!(support::rel_diff(ours_kid.mean, field(&theirs, "kid_mean")) < 1e-4);
    assert!(support::rel_diff(ours_kid.std, field(&theirs, "kid_std")) < 1e-3);
    assert!((count(ours.precision, 450) - count(field(&theirs, "precision"), 450)).abs() <= 1);
    assert!((count(ours.recall, 500) - count(field(&theirs, "recall"), 500)).abs() <= 1);
}

#[test]
fn torch_fidelity_parity_kid_subset_by_subset() {
    // Few small subsets of large sets: their union is far bigger than the subsets, so each
    // subset's kernel matrices are formed on their own instead of the union's.
    let mut rng = ChaCha8Rng::seed_from_u64(0x6b69_6434);
    let reference = features(&mut rng, 3000, 32, 0.2);
    let samples = features(&mut rng, 2500, 32, 0.3);
    let kid = KidConfig {
        subsets: 6,
        subset_size: 120,
        seed: 11,
    };
    let dir = tempfile::tempdir().unwrap();
    let theirs = run_reference(dir.path(), &reference, &samples, &kid, 3);
    let ours = kernel_inception_distance(reference.view(), samples.view(), &kid).unwrap();
    println!(
        "subset by subset: ours KID {} ± {}, reference {theirs}",
        ours.mean, ours.std
    );
    assert!(support::rel_diff(ours.mean, field(&theirs, "kid_mean")) < 1e-9);
    assert!(support::rel_diff(ours.std, field(&theirs, "kid_std")) < 1e-9);
}

#[test]
fn public_errors_are_typed() {
    use llamagen_metrics::MetricsError;
    let a = Array2::<f64>::zeros((10, 4));
    let b = Array2::<f64>::zeros((10, 5));
    assert!(matches!(
        manifold_metrics(a.view(), b.view(), &Default::default()),
        Err(MetricsError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        kernel_inception_distance(a.view(), b.view(), &Default::default()),
        Err(MetricsError::DimensionMismatch { .. })
    ));
    let config = ManifoldConfig {
        k: 10,
        ..Default::default()
    };
    assert!(matches!(
        manifold_metrics(a.view(), a.view(), &config),
        Err(MetricsError::KTooLarge { k: 10, n: 10 })
    ));
    let mut nan = a.clone();
    nan[[2, 2]] = f64::NAN;
    assert!(matches!(
        manifold_metrics(a.view(), nan.view(), &Default::default()),
        Err(MetricsError::NonFinite { rows: 1, .. })
    ));
    assert!(matches!(
        kernel_inception_distance(nan.view(), a.view(), &Default::default()),
        Err(MetricsError::NonFinite { rows: 1, .. })
    ));
    let empty = Array2::<f64>::zeros((0, 4));
    assert!(matches!(
        manifold_metrics(empty.view(), a.view(), &Default::default()),
        Err(MetricsError::TooFewSamples { got: 0, .. })
    ));
    assert!(matches!(
        kernel_inception_distance(a.view(), empty.view(), &Default::default()),
        Err(MetricsError::TooFewSamples { got: 0, .. })
    ));
}
