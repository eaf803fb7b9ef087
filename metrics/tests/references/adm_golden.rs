//! FID, sFID and Inception Score against the ADM evaluator's own outputs on the golden features
//! (`../shared/golden/metrics_public.npz`, expected values in `manifest_public.json`).

use std::fs::File;

use llamagen_metrics::frechet::frechet_distance;
use llamagen_metrics::inception_score::{inception_score, Splits};
use llamagen_metrics::stats::{GaussianAccumulator, GaussianStats};
use llamagen_test_support as support;
use ndarray::{s, Array1, Array2};
use ndarray_npy::NpzReader;

fn golden_features() -> NpzReader<File> {
    let path = support::golden_dir().join("metrics_public.npz");
    NpzReader::new(File::open(&path).expect("golden npz opens")).expect("golden npz reads")
}

fn array(npz: &mut NpzReader<File>, key: &str) -> Array2<f32> {
    npz.by_name(key)
        .unwrap_or_else(|e| panic!("golden entry {key}: {e}"))
}

fn expected(metric: &str) -> f64 {
    let path = support::golden_dir().join("manifest_public.json");
    let manifest: serde_json::Value = serde_json::from_reader(File::open(path).unwrap()).unwrap();
    manifest["adm_metrics"][metric]
        .as_f64()
        .unwrap_or_else(|| panic!("manifest has adm_metrics.{metric}"))
}

#[test]
fn fid_and_sfid_match_adm_to_1e6() {
    let mut npz = golden_features();
    for (metric, sample_key, ref_key) in [
        ("fid", "sample", "ref"),
        ("sfid", "spatial_sample", "spatial_ref"),
    ] {
        let sample = GaussianStats::from_features_f32(array(&mut npz, sample_key).view()).unwrap();
        let reference = GaussianStats::from_features_f32(array(&mut npz, ref_key).view()).unwrap();
        let ours = frechet_distance(&sample, &reference).unwrap();
        let adm = expected(metric);
        assert!(
            support::rel_diff(ours, adm) < 1e-6,
            "{metric}: ours {ours}, ADM {adm}"
        );
    }
    let reference = GaussianStats::from_features_f32(array(&mut npz, "ref").view()).unwrap();
    let self_distance = frechet_distance(&reference, &reference).unwrap();
    assert!(
        self_distance.abs() < 1e-9,
        "FID of a set against itself: {self_distance}"
    );
}

#[test]
fn streamed_shards_equal_whole_set_statistics() {
    let mut npz = golden_features();
    let sample = array(&mut npz, "sample");
    let whole = GaussianStats::from_features_f32(sample.view()).unwrap();
    let mut first = GaussianAccumulator::new(sample.ncols());
    let mut second = GaussianAccumulator::new(sample.ncols());
    for (i, start) in (0..sample.nrows()).step_by(333).enumerate() {
        let batch = sample.slice(s![start..(start + 333).min(sample.nrows()), ..]);
        if i % 2 == 0 { &mut first } else { &mut second }
            .add_batch_f32(batch)
            .unwrap();
    }
    first.merge(&second).unwrap();
    let merged = first.finalize().unwrap();
    let reference = GaussianStats::from_features_f32(array(&mut npz, "ref").view()).unwrap();
    let a = frechet_distance(&whole, &reference).unwrap();
    let b = frechet_distance(&merged, &reference).unwrap();
    assert!(support::rel_diff(b, a) < 1e-12, "{a} vs {b}");
}

/// The golden entry `name` of `npz` as f64, whether it is stored as f64 or as f32.
fn entry_f64<D: ndarray::Dimension>(
    npz: &mut NpzReader<File>,
    name: &str,
) -> ndarray::Array<f64, D> {
    npz.by_name(name)
        .or_else(|_| {
            npz.by_name::<ndarray::OwnedRepr<f32>, D>(name)
                .map(|a| a.mapv(f64::from))
        })
        .unwrap_or_else(|e| panic!("golden entry {name}: {e}"))
}

/// `mu`/`sigma` (or `mu_s`/`sigma_s`) of the golden ADM reference batch, as f64.
fn reference_stats(mu: &str, sigma: &str) -> GaussianStats {
    let path = support::golden_dir().join("adm_ref_public.npz");
    let mut npz = NpzReader::new(File::open(&path).expect("golden npz opens")).unwrap();
    let mu: Array1<f64> = entry_f64(&mut npz, mu);
    let sigma: Array2<f64> = entry_f64(&mut npz, sigma);
    GaussianStats::new(mu, sigma).unwrap()
}

#[test]
fn adm_reference_batch_statistics_reproduce_fid() {
    let pool = reference_stats("mu", "sigma");
    let spatial = reference_stats("mu_s", "sigma_s");
    assert_eq!((pool.dim(), spatial.dim()), (256, 128));
    let mut npz = golden_features();
    let sample = GaussianStats::from_features_f32(array(&mut npz, "sample").view()).unwrap();
    let spatial_sample =
        GaussianStats::from_features_f32(array(&mut npz, "spatial_sample").view()).unwrap();
    let fid = frechet_distance(&sample, &pool).unwrap();
    let sfid = frechet_distance(&spatial_sample, &spatial).unwrap();
    assert!(support::rel_diff(fid, expected("fid")) < 1e-6, "fid {fid}");
    assert!(
        support::rel_diff(sfid, expected("sfid")) < 1e-6,
        "sfid {sfid}"
    );
}

#[test]
fn inception_score_matches_adm_to_1e5() {
    let mut npz = golden_features();
    let activations = array(&mut npz, "is_activations").mapv(f64::from);
    let weight = array(&mut npz, "is_weight").mapv(f64::from);
    let logits = activations.dot(&weight).mapv(|v| v as f32);
    let all = inception_score(logits.view(), Splits::default()).unwrap();
    assert_eq!(all.splits, 3, "5000 + 5000 + 2000");
    let adm = expected("inception_score");
    assert!(
        support::rel_diff(all.mean, adm) < 1e-5,
        "IS ours {} ADM {adm}",
        all.mean
    );
    let first = inception_score(logits.slice(s![..5000, ..]), Splits::default()).unwrap();
    let adm_first = expected("inception_score_first_5000");
    assert!(
        support::rel_diff(first.mean, adm_first) < 1e-5,
        "IS(5000) ours {} ADM {adm_first}",
        first.mean
    );
}
