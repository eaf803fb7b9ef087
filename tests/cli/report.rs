//! `llamagen-eval report` on fixture run folders: the documented CSV columns, PNG charts of the
//! stated size, the Markdown report, sample grids, and clean errors for unusable run folders.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{cli, runs_against_two_references, Run};

/// The documented columns of `summary.csv`, in order.
const COLUMNS: [&str; 39] = [
    "run",
    "baseline",
    "checkpoint",
    "vq",
    "cfg_scale",
    "cfg_interval",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "fid",
    "sfid",
    "inception_score",
    "inception_score_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "kid",
    "kid_std",
    "rfid",
    "psnr",
    "ssim",
    "ssim_llamagen",
    "codebook_usage",
    "codebook_perplexity",
    "fid_inf",
    "fd_dinov2",
    "fd_dinov2_inf",
    "dinov2_precision",
    "dinov2_recall",
    "dinov2_density",
    "dinov2_coverage",
    "cmmd",
    "clip_score",
    "clip_score_std",
    "n_samples",
    "n_reference",
    "tool_version",
];

/// `report` with `args`, quiet.
fn report(args: &[&std::ffi::OsStr]) -> Run {
    cli().arg("report").args(args).quiet().run()
}

fn write_run(dir: &Path, metrics: serde_json::Value, run: serde_json::Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let doc = json!({"metrics": metrics, "run": run});
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A sampled run at `cfg` with plausible figures.
fn sampled_run(root: &Path, name: &str, gpt: &str, cfg: f64, fid: f64) -> PathBuf {
    write_run(
        &root.join(name),
        json!({
            "fid": fid, "sfid": 2.0 * fid, "inception_score": 150.0 + 60.0 * cfg,
            "inception_score_std": 3.0, "precision": 0.6 + 0.1 * cfg, "recall": 0.75 - 0.1 * cfg,
            "density": 0.9 + 0.1 * cfg, "coverage": 0.7, "kid": fid / 1000.0, "kid_std": 0.0002
        }),
        json!({
            "tool_version": "0.1.0", "command_line": "llamagen-eval fid ...", "gpt": gpt,
            "vq": "/ckpt/vq_ds16_c2i.pt", "cfg_scale": cfg, "cfg_interval": -1, "temperature": 1.0,
            "top_k": 0, "top_p": 1.0, "seed": 0, "n_samples": 50, "n_reference": 100
        }),
    )
}

fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("PNG decodes");
    (frame.width, frame.height)
}

fn write_png(path: &Path, width: u32, height: u32) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    let data: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
    writer.write_image_data(&data).unwrap();
}

#[test]
fn report_writes_the_documented_csv_charts_and_markdown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut runs = Vec::new();
    for (name, cfg, fid) in [
        ("b-cfg1.5", 1.5, 4.1),
        ("b-cfg1.75", 1.75, 3.4),
        ("b-cfg2.0", 2.0, 3.1),
        ("b-cfg2.25", 2.25, 3.6),
    ] {
        runs.push(sampled_run(root, name, "/ckpt/c2i_B_256.pt", cfg, fid));
    }
    runs.push(sampled_run(
        root,
        "l-cfg2.0",
        "/ckpt/c2i_L_256.pt",
        2.0,
        2.5,
    ));
    write_png(&runs[1].join("grid.png"), 64, 32);
    // A tokenizer run: other metrics, no sampling fields.
    runs.push(write_run(
        &root.join("recon"),
        json!({"rfid": 2.2, "psnr": 20.8, "ssim": 0.67, "ssim_llamagen": 0.68,
               "codebook_usage": 0.97, "codebook_perplexity": 3500.0}),
        json!({"tool_version": "0.1.0", "vq": "/ckpt/vq_ds16_c2i.pt", "n_samples": 50}),
    ));
    let baseline = runs[2].clone();
    let out = root.join("report");
    let mut args: Vec<&std::ffi::OsStr> = runs.iter().map(|r| r.as_os_str()).collect();
    args.extend(["--baseline".as_ref(), baseline.as_os_str()]);
    args.extend(["--out".as_ref(), out.as_os_str()]);
    report(&args).success();

    // summary.csv: the documented columns, one row per run, the baseline marked.
    let mut csv = csv::Reader::from_path(out.join("summary.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, COLUMNS);
    assert_eq!(
        header,
        llamagen_eval::report::summary_columns(),
        "documented columns drifted from the code"
    );
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), runs.len());
    let col = |row: &csv::StringRecord, name: &str| {
        row[COLUMNS.iter().position(|c| *c == name).unwrap()].to_string()
    };
    for (row, column, value) in [
        (2, "run", "b-cfg2.0"),
        (2, "baseline", "true"),
        (0, "baseline", "false"),
        (0, "checkpoint", "/ckpt/c2i_B_256.pt"),
        (1, "cfg_scale", "1.75"),
        (2, "fid", "3.1"),
        (2, "rfid", ""),
        (0, "n_samples", "50"),
        (0, "n_reference", "100"),
        (0, "tool_version", "0.1.0"),
        (5, "checkpoint", "/ckpt/vq_ds16_c2i.pt"),
        (5, "psnr", "20.8"),
        (5, "cfg_scale", ""),
    ] {
        assert_eq!(col(&rows[row], column), value, "row {row}, column {column}");
    }

    // Charts: every one a 1200x800 PNG.
    let mut charts = vec![
        "fid_is_vs_cfg.png".to_string(),
        "precision_recall.png".to_string(),
    ];
    for metric in [
        "fid",
        "sfid",
        "inception_score",
        "precision",
        "recall",
        "density",
        "coverage",
        "kid",
        "rfid",
        "psnr",
        "ssim",
        "ssim_llamagen",
        "codebook_usage",
        "codebook_perplexity",
    ] {
        charts.push(format!("metric_{metric}.png"));
    }
    for chart in &charts {
        assert_eq!(png_size(&out.join(chart)), (1200, 800), "{chart}");
    }
    // Spreads are whiskers, not charts of their own.
    assert!(!out.join("metric_kid_std.png").exists());
    // The saved sample grid is copied as it was.
    assert_eq!(png_size(&out.join("grid_b-cfg1.75.png")), (64, 32));

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for chart in &charts {
        assert!(
            md.contains(&format!("]({chart})")),
            "report.md lacks {chart}"
        );
    }
    assert!(md.contains("](grid_b-cfg1.75.png)"));
    assert!(md.contains("](summary.csv)"));
    assert!(md.contains("| b-cfg2.0 ★ |"), "{md}");
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        runs.len() + 1,
        "table header and one row per run"
    );
    // Nothing temporary is left behind.
    for entry in std::fs::read_dir(&out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".png") || name.ends_with(".csv") || name.ends_with(".md"),
            "{name}"
        );
    }
}

#[test]
fn one_cfg_scale_gives_no_cfg_chart_and_a_baseline_outside_the_list_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = sampled_run(root, "a", "/ckpt/a.pt", 2.0, 3.0);
    let b = sampled_run(root, "b", "/ckpt/b.pt", 2.0, 2.8);
    let out = root.join("out");
    report(&[
        a.as_os_str(),
        "--baseline".as_ref(),
        b.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
    .success();
    assert!(!out.join("fid_is_vs_cfg.png").exists());
    assert_eq!(png_size(&out.join("metric_fid.png")), (1200, 800));
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let runs: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(runs, ["b", "a"]);
}

#[test]
fn unusable_run_folders_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let good = sampled_run(root, "good", "/ckpt/a.pt", 2.0, 3.0);
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("metrics.json"), "{\"metrics\": {\"fid\": 3.0,").unwrap();
    let shapeless = root.join("shapeless");
    std::fs::create_dir_all(&shapeless).unwrap();
    std::fs::write(shapeless.join("metrics.json"), "[1, 2]").unwrap();
    for (bad, expected) in [
        (&empty, "empty/metrics.json not found"),
        (&broken, "broken/metrics.json: invalid JSON"),
        (&shapeless, "shapeless/metrics.json: expected a JSON object"),
        (&root.join("absent"), "absent does not exist"),
    ] {
        let out = root.join("out");
        let output = report(&[
            good.as_os_str(),
            bad.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        let stderr = output.stderr_text();
        assert_eq!(output.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!out.exists(), "outputs written for a bad run");
    }
}

#[test]
fn runs_against_different_references_need_allow_mixed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let [(run_a, _), (run_b, _)] = runs_against_two_references(root);
    let args = |out: &str| -> Vec<std::ffi::OsString> {
        vec![
            run_a.clone().into(),
            run_b.clone().into(),
            "--out".into(),
            root.join(out).into(),
        ]
    };
    let refused = report(
        &args("mixed")
            .iter()
            .map(|a| a.as_os_str())
            .collect::<Vec<_>>(),
    );
    refused.refused_with(&[
        "evaluated against 2 different references",
        &run_a.join("metrics.json").display().to_string(),
        &run_b.join("metrics.json").display().to_string(),
        "--allow-mixed",
    ]);
    assert!(!root.join("mixed").exists());
    let mut allowed = args("allowed");
    allowed.push("--allow-mixed".into());
    report(&allowed.iter().map(|a| a.as_os_str()).collect::<Vec<_>>()).success();
    assert!(root.join("allowed/summary.csv").is_file());
    // An older record without `reference_sha256` is reported beside them, with a note.
    let old = sampled_run(root, "old", "/ckpt/c2i_B_256.pt", 1.5, 8.0);
    let output = cli()
        .arg("report")
        .args([&run_a, &old])
        .arg("--out")
        .arg(root.join("with-old"))
        .run()
        .success();
    let stderr = output.stderr_text();
    assert!(
        stderr.contains(&format!(
            "note: {} records no reference_sha256",
            old.join("metrics.json").display()
        )),
        "{stderr}"
    );
}
