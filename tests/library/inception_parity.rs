//! Our Inception-V3 features against torch-fidelity's (ADM-compatible) and pytorch-fid's, with random
//! weights in the real architecture made by the reference code itself and read from its
//! `torch.save` file by our checkpoint reader.

use std::path::{Path, PathBuf};

use llamagen_eval::models::inception::{self, Resize};
use llamagen_test_support as support;
use ndarray::{Array2, Array4};
use ndarray_npy::{read_npy, write_npy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

fn random_images(rng: &mut ChaCha8Rng, n: usize, size: usize) -> Array4<u8> {
    // Smooth gradients plus noise: closer to natural images than pure noise.
    Array4::from_shape_fn((n, size, size, 3), |(i, y, x, c)| {
        let base = (x * 255 / size + y * 97 / size + i * 40 + c * 60) % 256;
        (base as i32 + rng.random_range(-30..=30)).clamp(0, 255) as u8
    })
}

fn to_nchw(images: &Array4<u8>) -> Tensor {
    let (n, h, w, c) = images.dim();
    let data: Vec<u8> = images.iter().copied().collect();
    Tensor::from_slice(&data)
        .view([n as i64, h as i64, w as i64, c as i64])
        .permute([0, 3, 1, 2])
}

fn tensor_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor")
}

fn reference(images_path: &Path, name: &str) -> Vec<f32> {
    let a: Array2<f32> = read_npy(images_path.with_extension(format!("{name}.npy"))).unwrap();
    a.iter().copied().collect()
}

#[test]
fn features_match_torch_fidelity_and_pytorch_fid() {
    let dir = tempfile::tempdir().unwrap();
    let weights = support::random_inception_weights(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let sizes = [64, 256, 299];
    let mut image_sets = Vec::new();
    let mut args: Vec<PathBuf> = vec![weights.clone()];
    for size in sizes {
        let images = random_images(&mut rng, 3, size);
        let path = dir.path().join(format!("images{size}.npy"));
        write_npy(&path, &images).unwrap();
        args.push(path.clone());
        image_sets.push((size, path, images));
    }
    support::run_reference("oracles/inception_reference.py", &args);

    let (_vs, model) = inception::load(&weights, tch::Device::Cpu).expect("weights load");
    for (size, path, images) in &image_sets {
        let adm = tch::no_grad(|| model.features(&to_nchw(images), Resize::Adm));
        for (name, ours) in [
            ("adm_pool", &adm.pool),
            ("adm_spatial", &adm.spatial),
            ("adm_logits", &adm.logits),
        ] {
            let err = support::max_rel_err(&tensor_vec(ours), &reference(path, name));
            assert!(err < 1e-4, "{size}px {name}: relative error {err:e}");
        }
        let fid = tch::no_grad(|| model.features(&to_nchw(images), Resize::PytorchFid));
        let err =
            support::max_rel_err(&tensor_vec(&fid.pool), &reference(path, "pytorch_fid_pool"));
        assert!(
            err < 1e-4,
            "{size}px pytorch-fid pool: relative error {err:e}"
        );
    }

    // Batch-size independence: one image at a time equals the whole batch.
    let (_, _, images) = &image_sets[1];
    let whole = tch::no_grad(|| model.features(&to_nchw(images), Resize::Adm));
    for i in 0..images.dim().0 {
        let single = images.slice(ndarray::s![i..i + 1, .., .., ..]).to_owned();
        let one = tch::no_grad(|| model.features(&to_nchw(&single), Resize::Adm));
        let err = support::max_rel_err(
            &tensor_vec(&one.pool),
            &tensor_vec(&whole.pool.get(i as i64)),
        );
        assert!(
            err < 1e-5,
            "image {i}: batch of 1 vs batch of 3 differ by {err:e}"
        );
    }
}
