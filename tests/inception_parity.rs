//! Our Inception-V3 features against torch-fidelity's (ADM-compatible) and pytorch-fid's, with random
//! weights in the real architecture made by the reference code itself.

mod common;

use std::path::Path;

use llamagen_eval::models::inception::{InceptionV3, Resize};
use ndarray::Array4;
use ndarray_npy::{read_npy, write_npy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Tensor};

fn load_model(dir: &Path) -> (nn::VarStore, InceptionV3) {
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let model = InceptionV3::new(&vs.root());
    vs.load(dir.join("inception.safetensors"))
        .expect("weights load");
    (vs, model)
}

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

#[test]
fn features_match_torch_fidelity_and_pytorch_fid() {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference(
        "inception_reference.py",
        &["make-weights".as_ref(), dir.path().as_os_str()],
    );
    let (_vs, model) = load_model(dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for size in [64, 256, 299] {
        let images = random_images(&mut rng, 3, size);
        let images_path = dir.path().join(format!("images{size}.npy"));
        write_npy(&images_path, &images).unwrap();
        let out = dir.path().join(format!("ref{size}"));
        std::fs::create_dir_all(&out).unwrap();
        common::run_reference(
            "inception_reference.py",
            &[
                "features".as_ref(),
                dir.path().join("inception.pth").as_os_str(),
                images_path.as_os_str(),
                out.as_os_str(),
            ],
        );
        let reference = |name: &str| -> Vec<f32> {
            let a: ndarray::Array2<f32> = read_npy(out.join(format!("{name}.npy"))).unwrap();
            a.iter().copied().collect()
        };
        let adm = tch::no_grad(|| model.features(&to_nchw(&images), Resize::Adm));
        for (name, ours) in [
            ("adm_pool", &adm.pool),
            ("adm_spatial", &adm.spatial),
            ("adm_logits", &adm.logits),
        ] {
            let err = common::max_rel_err(&tensor_vec(ours), &reference(name));
            assert!(err < 1e-4, "{size}px {name}: relative error {err:e}");
        }
        let fid = tch::no_grad(|| model.features(&to_nchw(&images), Resize::PytorchFid));
        let err = common::max_rel_err(&tensor_vec(&fid.pool), &reference("pytorch_fid_pool"));
        assert!(
            err < 1e-4,
            "{size}px pytorch-fid pool: relative error {err:e}"
        );
    }
}
