//! Sharded sampling, features per shard, `merge` of the feature files: the merged features are the
//! unsharded run's, row for row in sample order, so every statistic computed from them is too.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use llamagen_test_support as support;
use ndarray::{Array1, Array2};
use ndarray_npy::NpzReader;

fn llamagen_eval(args: &[&std::ffi::OsStr]) {
    let output = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("binary runs");
    assert!(
        output.status.success(),
        "{:?}: {}",
        args,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sample(out: &Path, shard: Option<&str>) {
    let golden = support::golden_dir();
    let (gpt, vq) = (golden.join("gpt_public.pt"), golden.join("vq_public.pt"));
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "sample".as_ref(),
        "--gpt".as_ref(),
        gpt.as_os_str(),
        "--vq".as_ref(),
        vq.as_os_str(),
        "--n-head".as_ref(),
        "4".as_ref(),
        "--image-size".as_ref(),
        "64".as_ref(),
        "--samples".as_ref(),
        "5".as_ref(),
        "--seed".as_ref(),
        "3".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    if let Some(shard) = shard {
        args.push("--shard".as_ref());
        args.push(shard.as_ref());
    }
    llamagen_eval(&args);
}

fn features(weights: &Path, images: &Path, out: &Path) {
    llamagen_eval(&[
        "features".as_ref(),
        "--images".as_ref(),
        images.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--inception".as_ref(),
        weights.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
    ]);
}

fn read(path: &Path, key: &str) -> Array2<f32> {
    NpzReader::new(File::open(path).unwrap())
        .unwrap()
        .by_name(key)
        .unwrap()
}

#[test]
fn merged_shard_features_equal_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let weights = support::random_inception_weights(Path::new(env!("CARGO_TARGET_TMPDIR")));
    sample(&root.join("all.npz"), None);
    sample(&root.join("s0.npz"), Some("0/2"));
    sample(&root.join("s1.npz"), Some("1/2"));
    for name in ["all", "s0", "s1"] {
        features(
            &weights,
            &root.join(format!("{name}.npz")),
            &root.join(format!("f_{name}.npz")),
        );
    }
    let merged = root.join("f_merged.npz");
    // Shards in reverse order: merge restores sample order from their `indices`.
    llamagen_eval(&[
        "merge".as_ref(),
        root.join("f_s1.npz").as_os_str(),
        root.join("f_s0.npz").as_os_str(),
        "--out".as_ref(),
        merged.as_os_str(),
    ]);
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
    let output = Command::new(env!("CARGO_BIN_EXE_llamagen-eval"))
        .args(["merge"])
        .args([
            root.join("f_s0.npz"),
            root.join("f_all.npz"),
            "--out".into(),
            root.join("bad.npz"),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!root.join("bad.npz").exists());
}
