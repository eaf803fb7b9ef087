//! `llamagen-eval inspect` on an npz: the entries with their numpy types and shapes as numpy
//! wrote them, what the tool reads them as, and the content sha256; a file that is no npz is
//! refused naming it.

use std::fs::File;

use ndarray::{Ix1, Ix4, OwnedRepr};

use llamagen_test_support::golden;

use crate::harness::{cli, s, ScratchDir};

#[test]
fn inspect_reads_an_adm_reference_batch() {
    let reference = golden("adm_ref_public.npz");
    let stdout = cli()
        .args(["inspect", s(&reference)])
        .run()
        .success()
        .stdout_text();
    let mut npz = ndarray_npy::NpzReader::new(File::open(&reference).unwrap()).unwrap();
    let images = npz.by_name::<OwnedRepr<u8>, Ix4>("arr_0").unwrap();
    let mu = npz.by_name::<OwnedRepr<f32>, Ix1>("mu").unwrap();
    let mu_s = npz.by_name::<OwnedRepr<f32>, Ix1>("mu_s").unwrap();
    let (n, height, width) = (images.dim().0, images.dim().1, images.dim().2);
    for needle in [
        format!("arr_0            uint8    {:?}", images.shape()),
        format!("{n} images of {height}x{width} (3 channels)"),
        format!("`mu`/`sigma` of dimension {}", mu.len()),
        format!("`mu_s`/`sigma_s` of dimension {}", mu_s.len()),
    ] {
        assert!(stdout.contains(&needle), "`{needle}` not in:\n{stdout}");
    }
    let sha = stdout
        .split_once("content sha256: ")
        .map(|(_, rest)| rest.trim())
        .unwrap_or_default();
    assert!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "{stdout}"
    );

    let root = &ScratchDir::new();
    let bogus = root.join("nothing.npz");
    std::fs::write(&bogus, b"not a zip").unwrap();
    cli()
        .args(["inspect", s(&bogus)])
        .run()
        .refused_with(&["nothing.npz", "not a readable npz (zip) file"]);
}
