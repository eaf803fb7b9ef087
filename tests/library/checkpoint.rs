//! Checkpoint reader tests: the golden LlamaGen checkpoints; checkpoints written live by
//! tests/python/fixtures/make_checkpoints.py with the venv's torch (zip, legacy, deflated, big-endian,
//! every dtype, strided views, nested containers) compared exactly with the values torch wrote;
//! error messages. Damaged and hostile files are fuzzed in `fuzz_readers`.

use std::collections::HashMap;
use std::path::Path;

use crate::harness::{assert_mentions, golden};
use llamagen_eval::checkpoint::{load_into, Checkpoint, ErrorKind, Format, LoadOptions, Value};
use llamagen_test_support as support;
use tch::{Kind, Tensor};

/// Runs make_checkpoints.py into a fresh temporary directory.
fn generate(with_golden: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![dir.path().to_path_buf()];
    if with_golden {
        args.push(support::golden_dir());
    }
    support::run_reference("fixtures/make_checkpoints.py", &args);
    dir
}

fn expected(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("expected.safetensors"))
        .expect("expected.safetensors")
        .into_iter()
        .collect()
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.kind(), want.kind(), "{name}: dtype");
    assert_eq!(got.size(), want.size(), "{name}: shape");
    assert!(got.equal(want), "{name}: values differ");
}

fn open(path: &Path) -> Checkpoint {
    Checkpoint::open(path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn golden_vq_checkpoint() {
    let ck = open(&golden("vq_public.pt"));
    assert_eq!(ck.format(), Format::Zip);
    assert_eq!(ck.top_level_keys(), ["model", "steps", "args"]);
    assert_eq!(ck.get("steps").and_then(Value::as_i64), Some(4242));
    let args = ck.get("args").expect("args");
    match args {
        Value::Object(o) => assert_eq!(o.class, "argparse.Namespace"),
        other => panic!("args is {other:?}"),
    }
    assert_eq!(args.get("vq_model").and_then(Value::as_str), Some("tiny"));
    assert_eq!(
        args.get("codebook_size").and_then(Value::as_i64),
        Some(1024)
    );
    assert_eq!(ck.state_dict_key(false).unwrap(), Some("model".to_owned()));

    let sd: HashMap<String, Tensor> = ck.state_dict(false).unwrap().into_iter().collect();
    assert_eq!(sd.len(), 344);
    let emb = &sd["quantize.embedding.weight"];
    assert_eq!(emb.size(), [1024, 8]);
    assert_eq!(emb.kind(), Kind::Float);
    assert_eq!(sd["quantize.codebook_used"].size(), [65536]);
    assert_eq!(sd["encoder.conv_in.weight"].size()[0], 32);
    let total: i64 = sd.values().map(|t| t.numel() as i64).sum();
    assert_eq!(total, 4_574_891);

    let summary = ck.summary();
    assert_eq!(summary.tensors, 344);
    assert_eq!(summary.parameters, 4_574_891);
    assert_mentions(
        &summary.to_string(),
        &[
            "args.vq_model = 'tiny'",
            "args.codebook_size = 1024",
            "steps = 4242",
            "model: 344 tensors",
        ],
    );
}

#[test]
fn golden_gpt_checkpoint_with_optimizer() {
    let ck = open(&golden("gpt_public.pt"));
    assert_eq!(ck.top_level_keys(), ["model", "optimizer", "steps", "args"]);
    assert_eq!(ck.get("steps").and_then(Value::as_i64), Some(777));
    let args = ck.get("args").expect("args");
    assert_eq!(args.get("gpt_model").and_then(Value::as_str), Some("tiny"));
    assert_eq!(args.get("image_size").and_then(Value::as_i64), Some(64));
    let model = ck.tensors_at(Some("model")).unwrap();
    assert_eq!(model.len(), 18);
    assert_eq!(model[0].0, "cls_embedding.embedding_table.weight");
    let opt: HashMap<String, Tensor> = ck
        .tensors_at(Some("optimizer"))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(opt.len(), 18 * 3);
    assert_eq!(opt["state.0.step"].double_value(&[]), 1.0);
    assert_eq!(opt["state.17.exp_avg"].size(), model[17].1.size());
    let groups = ck.select(Some("optimizer/param_groups")).unwrap();
    let Value::List(groups) = groups else {
        panic!("param_groups is {groups:?}")
    };
    assert_eq!(groups[0].get("lr").and_then(Value::as_f64), Some(1e-4));
}

#[test]
fn golden_consolidated_equals_training_checkpoint() {
    let bare = open(&golden("gpt_public_consolidated.pth"));
    assert_eq!(bare.state_dict_key(false).unwrap(), None);
    let bare = bare.state_dict(false).unwrap();
    let full = open(&golden("gpt_public.pt")).state_dict(false).unwrap();
    assert_eq!(bare.len(), 18);
    assert_eq!(bare.len(), full.len());
    for ((n1, t1), (n2, t2)) in bare.iter().zip(&full) {
        assert_eq!(n1, n2);
        assert_same(n1, t1, t2);
    }
}

#[test]
fn golden_safetensors() {
    let ck = open(&golden("vq_public_io.safetensors"));
    assert_eq!(ck.format(), Format::Safetensors);
    let t: HashMap<String, Tensor> = ck.tensors_at(None).unwrap().into_iter().collect();
    assert_eq!(t["indices"].size(), [64]);
    assert_eq!(t["indices"].kind(), Kind::Int64);
    assert_eq!(t["images_uint8_nhwc"].size(), [4, 64, 64, 3]);
    assert_eq!(t["images_uint8_nhwc"].kind(), Kind::Uint8);
    assert_eq!(t["recon"].size(), [4, 3, 64, 64]);
    assert!(ck.summary().to_string().contains("safetensors"));
}

/// A VarStore with one zero variable per `(name, shape)`, named as the checkpoint names them.
fn var_store(vars: &[(String, Vec<i64>)]) -> tch::nn::VarStore {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    for (name, shape) in vars {
        let parts: Vec<&str> = name.split('.').collect();
        let (last, dirs) = parts.split_last().expect("non-empty name");
        let mut p = vs.root();
        for d in dirs {
            p = p / *d;
        }
        let _ = p.zeros(last, shape);
    }
    vs
}

#[test]
fn golden_loads_into_var_store_and_mismatches_are_listed() {
    let path = golden("gpt_public_consolidated.pth");
    let ck = open(&path);
    let sd = ck.state_dict(false).unwrap();
    let shapes: Vec<(String, Vec<i64>)> = sd.iter().map(|(n, t)| (n.clone(), t.size())).collect();

    let mut vs = var_store(&shapes);
    let report = ck
        .load_into(&mut vs, false, &LoadOptions::default())
        .unwrap();
    assert_eq!(report.loaded, 18);
    let vars = vs.variables();
    for (name, t) in &sd {
        assert_same(name, &vars[name], t);
    }

    // One variable missing from the checkpoint, one checkpoint tensor without a variable, one shape
    // that differs: all three in one error that names the file.
    let mut wrong = shapes.clone();
    wrong.remove(0);
    wrong[0].1 = vec![3, 3];
    wrong.push(("extra.weight".to_owned(), vec![2]));
    let mut vs = var_store(&wrong);
    let err = ck
        .load_into(&mut vs, false, &LoadOptions::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err.kind, ErrorKind::Mismatch(_)), "{msg}");
    assert_mentions(&msg, &[
        "gpt_public_consolidated.pth",
        "1 missing from the checkpoint (extra.weight)",
        "1 unexpected in the checkpoint (cls_embedding.embedding_table.weight)",
        "1 with a different shape (tok_embeddings.weight: checkpoint [1024, 64] vs model [3, 3])",
    ]);
    // Nothing was copied.
    assert_eq!(
        vs.variables()["layers.0.attention.wqkv.weight"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );

    // Lenient loading skips what does not match names, and `ignore` drops names.
    let mut vs = var_store(&shapes[1..]);
    let opts = LoadOptions {
        allow_unexpected: true,
        ..LoadOptions::default()
    };
    let report = load_into(&mut vs, &sd, &path, &opts).unwrap();
    assert_eq!(report.loaded, 17);
    assert_eq!(report.unexpected, ["cls_embedding.embedding_table.weight"]);
    let opts = LoadOptions {
        ignore: vec!["cls_embedding.*".to_owned()],
        ..LoadOptions::default()
    };
    assert_eq!(
        load_into(&mut vs, &sd, &path, &opts).unwrap().ignored.len(),
        1
    );
}

fn assert_error(path: &Path, needles: &[&str]) -> ErrorKind {
    let err = match Checkpoint::open(path) {
        Ok(ck) => ck.tensors_at(None).expect_err("a damaged file loads"),
        Err(e) => e,
    };
    let msg = err.to_string();
    let file = path.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*file), "error does not name the file: {msg}");
    assert_mentions(&msg, needles);
    err.kind
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, keep) in [
        ("gpt_public_consolidated.pth", 0.5),
        ("gpt_public_consolidated.pth", 0.999),
        ("vq_public_io.safetensors", 0.5),
    ] {
        let bytes = std::fs::read(golden(name)).unwrap();
        let cut = dir.path().join(format!("cut_{keep}_{name}"));
        std::fs::write(&cut, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
        let kind = assert_error(&cut, &[]);
        assert!(
            matches!(kind, ErrorKind::Truncated(_) | ErrorKind::Safetensors(_)),
            "{name}: {kind}"
        );
    }
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "hello, I am not a checkpoint").unwrap();
    assert!(matches!(
        assert_error(&text, &["not a PyTorch checkpoint"]),
        ErrorKind::UnknownFormat(_)
    ));
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        assert_error(&empty, &["empty"]),
        ErrorKind::Truncated(_)
    ));
    let missing = dir.path().join("absent.pt");
    assert!(matches!(
        assert_error(&missing, &["cannot read"]),
        ErrorKind::Io(_)
    ));
    let ck = open(&golden("vq_public.pt"));
    let err = ck.tensors_at(Some("ema")).unwrap_err().to_string();
    assert!(
        err.contains("no entry `ema`") && err.contains("model, steps, args"),
        "{err}"
    );
    assert!(ck.state_dict(true).is_err());
}

#[test]
fn generated_checkpoints_match_torch() {
    let dir = generate(true);
    let dir = dir.path();
    let want = expected(dir);

    for file in [
        "full_zip.pt",
        "full_zip_p4.pt",
        "full_legacy.pt",
        "full_deflated.pt",
    ] {
        let ck = open(&dir.join(file));
        let format = if file == "full_legacy.pt" {
            Format::Legacy
        } else {
            Format::Zip
        };
        assert_eq!(ck.format(), format, "{file}");
        let all = ck.tensors_at(None).unwrap();
        let n_expected = want
            .keys()
            .filter(|k| !k.starts_with("bigendian.") && !k.starts_with("golden_"))
            .count();
        assert_eq!(all.len(), n_expected, "{file}: tensor count");
        for (name, t) in &all {
            let w = want
                .get(name)
                .unwrap_or_else(|| panic!("{file}: unexpected tensor {name}"));
            assert_same(&format!("{file}: {name}"), t, w);
        }
        // Sub-keys name tensors relative to the key; `ema` is picked when asked for.
        let model = ck.state_dict(false).unwrap();
        assert_eq!(model.len(), 7 + 2 * 10);
        for (name, t) in &model {
            assert_same(name, t, &want[&format!("model.{name}")]);
        }
        let ema = ck.state_dict(true).unwrap();
        assert_eq!(ema.len(), 9);
        assert_same("ema.w_t", &ema[1].1, &want["ema.w_t"]);
        let b = ck.tensors_at(Some("nested/a.1.1")).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0, "b");

        // Plain values and opaque objects.
        let root = ck.root();
        assert_eq!(root.get("steps"), Some(&Value::Int(1234)));
        assert_eq!(root.get("epoch").and_then(Value::as_i64), Some(7));
        assert_eq!(root.get("loss").and_then(Value::as_f64), Some(0.5));
        assert_eq!(
            root.get("big"),
            Some(&Value::BigInt("1180591620717411303424".into()))
        );
        assert_eq!(root.get("neg"), Some(&Value::Int(-5)));
        assert_eq!(root.get("blob"), Some(&Value::Bytes(vec![0, 1].into())));
        assert!(matches!(root.get("tags"), Some(Value::Set(s)) if s.len() == 2));
        let args = root.get("args").unwrap();
        assert_eq!(args.get("gpt_model").and_then(Value::as_str), Some("GPT-B"));
        assert_eq!(
            args.get("betas"),
            Some(&Value::Tuple(vec![Value::Float(0.9), Value::Float(0.95)]))
        );
        assert_eq!(args.get("flag"), Some(&Value::Bool(true)));
        let text = ck.summary().to_string();
        for needle in [
            "args.gpt_model = 'GPT-B'",
            "args.betas = (0.9, 0.95)",
            "epoch = 7",
            "loss = 0.5",
        ] {
            assert!(text.contains(needle), "{file}: {needle:?} not in\n{text}");
        }
    }

    // Views of one storage share it, as in torch.
    let ck = open(&dir.join("full_zip.pt"));
    let model: HashMap<String, Tensor> =
        ck.tensors_at(Some("model")).unwrap().into_iter().collect();
    assert_eq!(model["w_t"].stride(), [1, 8]);
    assert_eq!(model["w"].data_ptr(), model["w_t"].data_ptr());

    // A big-endian writer's file.
    let be = open(&dir.join("bigendian.pt"));
    let be = be.tensors_at(None).unwrap();
    assert_eq!(be.len(), 4);
    for (name, t) in &be {
        assert_same(name, t, &want[&format!("bigendian.{name}")]);
    }

    // The golden checkpoints, tensor by tensor, against torch.load.
    for (file, key, prefix) in [
        ("vq_public.pt", "model", "golden_vq"),
        ("gpt_public.pt", "model", "golden_gpt"),
        ("gpt_public.pt", "optimizer", "golden_gpt_optimizer"),
    ] {
        let got = open(&golden(file)).tensors_at(Some(key)).unwrap();
        let n = want
            .keys()
            .filter(|k| k.starts_with(&format!("{prefix}.")))
            .count();
        assert_eq!(got.len(), n, "{file}/{key}");
        for (name, t) in &got {
            assert_same(name, t, &want[&format!("{prefix}.{name}")]);
        }
    }

    // Errors.
    let kind = assert_error(
        &dir.join("bad_opcode.pt"),
        &["0x82", "EXT1", "offset 5", "archive/data.pkl"],
    );
    assert!(matches!(kind, ErrorKind::UnsupportedOpcode { .. }));
    let kind = assert_error(&dir.join("missing_data.pt"), &["full_zip/data/0"]);
    assert!(matches!(kind, ErrorKind::MissingEntry(_)), "{kind}");
    let kind = assert_error(&dir.join("u16.pt"), &["`model.u16`", "uint16"]);
    assert!(matches!(kind, ErrorKind::UnknownDtype { .. }));
    assert_eq!(
        open(&dir.join("u16.pt"))
            .tensor_metas_at(Some("model"))
            .unwrap()
            .len(),
        2
    );
    let legacy = std::fs::read(dir.join("full_legacy.pt")).unwrap();
    for keep in [legacy.len() - 3, legacy.len() / 2, 100] {
        let cut = dir.join("legacy_cut.pt");
        std::fs::write(&cut, &legacy[..keep]).unwrap();
        let kind = assert_error(&cut, &["truncated"]);
        assert!(matches!(kind, ErrorKind::Truncated(_)), "{kind}");
    }
}
