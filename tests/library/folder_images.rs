//! Image folders read as the ADM evaluator reads them: PIL's RGB conversion and guided-diffusion's
//! `center_crop_arr`, compared with Pillow itself; unreadable folders and files fail by name.

use std::fs::File;

use llamagen_eval::data::folder::FolderImages;
use llamagen_eval::data::ImageSource;
use llamagen_test_support as support;
use ndarray::Array4;
use ndarray_npy::NpzReader;

use crate::harness::refusal;

#[test]
fn center_crop_matches_pillow() {
    let dir = tempfile::tempdir().unwrap();
    support::run_reference(
        "oracles/adm_center_crop.py",
        &[dir.path().as_os_str(), "64".as_ref()],
    );
    let mut npz = NpzReader::new(File::open(dir.path().join("expected.npz")).unwrap()).unwrap();
    let expected: Array4<u8> = npz.by_name("arr_0").unwrap();
    let mut source = FolderImages::open(&dir.path().join("images"), Some(64)).unwrap();
    assert_eq!(source.len(), expected.dim().0);
    let ours = source.next_batch(100).unwrap().unwrap();
    assert!(source.next_batch(100).unwrap().is_none());
    // Sorted order: a.png, b/c/gray.png, b/rgba.png, b/wide.png, photo.jpg.
    for (i, (a, b)) in ours.outer_iter().zip(expected.outer_iter()).enumerate() {
        let max_diff = a
            .iter()
            .zip(b.iter())
            .map(|(&x, &y)| x.abs_diff(y))
            .max()
            .unwrap();
        if i < 4 {
            assert_eq!(
                max_diff, 0,
                "PNG image {i} differs from Pillow by up to {max_diff}"
            );
        } else {
            // JPEG decoders differ slightly in inverse DCT and chroma upsampling (libjpeg-turbo in
            // Pillow, zune-jpeg here): a few levels at most, well under a level on average.
            let mean = a
                .iter()
                .zip(b.iter())
                .map(|(&x, &y)| f64::from(x.abs_diff(y)))
                .sum::<f64>()
                / a.len() as f64;
            assert!(
                max_diff <= 8 && mean < 0.5,
                "JPEG image differs from Pillow: max {max_diff}, mean {mean}"
            );
            eprintln!("JPEG vs Pillow: max diff {max_diff}, mean {mean:.3}");
        }
    }
}

#[test]
fn bad_folders_fail_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (_, err) = refusal(FolderImages::open(&empty, Some(32)));
    assert!(
        err.contains("empty") && err.contains("no PNG or JPEG"),
        "{err}"
    );

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let mut source = FolderImages::open(&corrupt, Some(32)).unwrap();
    let err = source
        .next_batch(4)
        .expect_err("corrupt PNG fails")
        .to_string();
    assert!(err.contains("broken.png"), "{err}");
}

/// Writes a small PNG.
fn png(path: &std::path::Path, shade: u8) {
    image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 0, 255 - shade]))
        .save(path)
        .unwrap();
}

#[test]
fn symlink_loops_and_duplicates_are_refused_naming_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for k in 0..4 {
        png(&images.join(format!("{k}.png")), k * 40);
    }
    assert_eq!(FolderImages::open(&images, None).unwrap().len(), 4);

    // `ln -s . loop`: the folder again, below itself.
    std::os::unix::fs::symlink(".", images.join("loop")).unwrap();
    let (_, err) = refusal(FolderImages::open(&images, None));
    assert!(
        err.contains("loop") && err.contains("symlink loop"),
        "{err}"
    );
    std::fs::remove_file(images.join("loop")).unwrap();

    // A link to an image already listed would count it twice.
    std::os::unix::fs::symlink(images.join("0.png"), images.join("again.png")).unwrap();
    let (_, err) = refusal(FolderImages::open(&images, None));
    assert!(
        err.contains(".png") && err.contains("already listed"),
        "{err}"
    );
}
