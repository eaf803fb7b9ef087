//! Sharded sampling, features per shard, `merge` of the feature files: the merged features are the
//! unsharded run's, row for row in sample order, so every statistic computed from them is too.

use std::fs::File;
use std::path::Path;

use llamagen_test_support as support;
use ndarray::{Array1, Array2};
use ndarray_npy::NpzReader;

use crate::harness::{all_cores, cli, scratch_with_random_inception, tiny_gpt};

fn sample(out: &Path, shard: Option<&str>) {
    let mut cli = cli()
        .args(tiny_gpt("sample"))
        .args(["--samples", "5", "--seed", "3", "--out"])
        .arg(out);
    if let Some(shard) = shard {
        cli = cli.args(["--shard", shard]);
    }
    cli.quiet().run().success();
}

fn features(weights: &Path, images: &Path, out: &Path) {
    cli()
        .args(["features", "--images"])
        .arg(images)
        .arg("--out")
        .arg(out)
        .arg("--inception")
        .arg(weights)
        .args(["--device", "cpu"])
        .quiet()
        .run()
        .success();
}

fn read(path: &Path, key: &str) -> Array2<f32> {
    NpzReader::new(File::open(path).unwrap())
        .unwrap()
        .by_name(key)
        .unwrap()
}

#[test]
fn merged_shard_features_equal_the_unsharded_run() {
    let _cores = all_cores();
    let (root, weights) = &scratch_with_random_inception();
    sample(&root.join("all.npz"), None);
    sample(&root.join("s0.npz"), Some("0/2"));
    sample(&root.join("s1.npz"), Some("1/2"));
    for name in ["all", "s0", "s1"] {
        features(
            weights,
            &root.join(format!("{name}.npz")),
            &root.join(format!("f_{name}.npz")),
        );
    }
    let merged = root.join("f_merged.npz");
    // Shards in reverse order: merge restores sample order from their `indices`.
    cli()
        .arg("merge")
        .arg(root.join("f_s1.npz"))
        .arg(root.join("f_s0.npz"))
        .arg("--out")
        .arg(&merged)
        .quiet()
        .run()
        .success();
    let indices: Array1<i64> = NpzReader::new(File::open(&merged).unwrap())
        .unwrap()
        .by_name("indices")
        .unwrap();
    assert_eq!(indices.to_vec(), vec![0, 1, 2, 3, 4]);
    for key in ["pool", "spatial", "logits"] {
        let (ours, whole) = (read(&merged, key), read(&root.join("f_all.npz"), key));
        let err = support::max_rel_err(ours.as_slice().unwrap(), whole.as_slice().unwrap());
        // The same images through Inception in other batch compositions (1e-5 batch tolerance).
        assert!(
            err < 1e-5,
            "{key}: merged shards differ from the unsharded run by {err:e}"
        );
    }

    // Shards with and without indices do not mix.
    cli()
        .arg("merge")
        .args([
            root.join("f_s0.npz"),
            root.join("f_all.npz"),
            "--out".into(),
            root.join("bad.npz"),
        ])
        .run()
        .refused_with(&["some feature shards carry `indices` and some do not"]);
    assert!(!root.join("bad.npz").exists());
}
