//! The text-to-image generator against the golden outputs of LlamaGen's own t2i path
//! (`../shared/golden/gpt_t2i_public.pt`, `t2i_public_io.safetensors`): `sample_t2i.py`'s left
//! padding of the T5 output, and greedy `generate()` with caption masks and guidance against the
//! null caption, sampled and decoded through the generator the `sample` and `fid --gpt` commands
//! use.

use std::collections::HashMap;
use std::rc::Rc;

use llamagen_eval::captions::CaptionSet;
use llamagen_eval::data::ImageSource;
use llamagen_eval::device::DeviceChoice;
use llamagen_eval::models::gpt::{left_pad_captions, Condition, Gpt};
use llamagen_eval::models::vq::VqWeights;
use llamagen_eval::pipeline::{BatchSize, Generator, GeneratorConfig, Precision};
use llamagen_eval::sampling::{generate_conditioned, Conditioning, Conditions, SamplingParams};
use tch::{Device, Tensor};

use crate::gpt_golden::{floats, four_heads, longs, one_thread};
use crate::harness::{assert_pixels_within_one, golden, golden_json, golden_tensors};

fn io() -> HashMap<String, Tensor> {
    golden_tensors("t2i_public_io.safetensors")
}

fn manifest() -> serde_json::Value {
    golden_json("t2i_public.json")
}

/// The golden captions as the caption set `--caption-embeddings` makes (T5's right-padded output).
fn caption_set(io: &HashMap<String, Tensor>) -> CaptionSet {
    CaptionSet::from_right_padded(
        &io["t5_last_hidden_state"],
        &io["attention_mask"],
        Some(vec!["five".into(), "seventeen".into(), "all".into()]),
        &golden("t2i_public_io.safetensors"),
    )
    .unwrap()
}

#[test]
fn t2i_config_is_inferred_from_the_checkpoint() {
    one_thread();
    let (_vs, model) = Gpt::load(&golden("gpt_t2i_public.pt"), Device::Cpu, &four_heads(), 16)
        .unwrap_or_else(|e| panic!("gpt_t2i_public.pt: {e}"));
    let c = model.config();
    let m = &manifest()["gpt"];
    let caption_dim = m["caption_dim"].as_i64().unwrap();
    assert_eq!(c.condition, Condition::Caption { caption_dim });
    assert_eq!(c.cls_token_num, m["cls_token_num"].as_i64().unwrap());
    assert_eq!(c.dim, m["dim"].as_i64().unwrap());
    assert_eq!(c.n_layer, m["n_layer"].as_i64().unwrap());
    assert_eq!(c.n_head, m["n_head"].as_i64().unwrap());
    assert_eq!(c.vocab_size, m["vocab_size"].as_i64().unwrap());
    assert_eq!(c.block_size, m["block_size"].as_i64().unwrap());
}

#[test]
fn left_padding_reproduces_sample_t2i() {
    let io = io();
    let (embs, masks) =
        left_pad_captions(&io["t5_last_hidden_state"], &io["attention_mask"]).unwrap();
    assert_eq!(floats(&embs), floats(&io["caption_embs_left_padded"]));
    assert_eq!(longs(&masks), longs(&io["emb_masks_left_padded"]));
    // The caption set keeps only the valid rows and gives the same batches, in any order.
    let set = caption_set(&io);
    let (embs, masks) = set.embeddings().batch(&[2, 0, 1]).unwrap();
    let order = Tensor::from_slice(&[2i64, 0, 1]);
    assert_eq!(
        floats(&embs),
        floats(&io["caption_embs_left_padded"].index_select(0, &order))
    );
    assert_eq!(
        longs(&masks),
        longs(&io["emb_masks_left_padded"].index_select(0, &order))
    );
}

/// The generator of `sample` and `fid --gpt` on the golden t2i checkpoint, greedy, fp32 on the
/// CPU.
fn generator(cfg_scale: f64, set: CaptionSet) -> Generator {
    one_thread();
    let config = GeneratorConfig {
        gpt: golden("gpt_t2i_public.pt"),
        vq: golden("vq_public.pt"),
        vq_weights: VqWeights::Auto,
        image_size: 64,
        image_size_eval: None,
        sampling: SamplingParams {
            cfg_scale,
            cfg_interval: -1,
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        },
        seed: 0,
        conditioning: Conditioning::Captions(Rc::new(set)),
        precision: Precision::Fp32,
        heads: four_heads(),
        decode_batch_size: None,
        device: DeviceChoice::Cpu,
    };
    Generator::new(&config).unwrap()
}

/// Samples 0..n (sample i shows caption i % 3) generated `batch` at a time: their tokens (from
/// the journal records) and decoded images.
fn run(generator: &mut Generator, n: usize, batch: usize) -> (Vec<Vec<i64>>, Vec<u8>) {
    let batches = generator.plan_batches(n, BatchSize::Fixed(batch), None, None, None);
    let mut source = generator.source((0..n as u64).collect(), false, batches, None);
    let images = source.next_batch(n).unwrap().unwrap();
    let records = source.batch_records();
    let tokens = records[0]
        .chunks_exact(16 * 4)
        .map(|sample| {
            sample
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        })
        .collect();
    (tokens, images.into_raw_vec_and_offset().0)
}

/// The tokenizer rounding allowance of the VQ golden tests.
fn assert_pixels_match(ours: &[u8], golden: &Tensor, what: &str) {
    let golden = Vec::<u8>::try_from(golden.contiguous().view([-1])).unwrap();
    assert_pixels_within_one(ours, &golden, what);
}

#[test]
fn greedy_t2i_runs_reproduce_llamagen_generate() {
    let io = io();
    let runs = manifest()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 3);
    let mut generator = generator(1.0, caption_set(&io));
    for run_info in runs {
        let key = run_info["key"].as_str().unwrap();
        generator
            .set_cfg_scale(run_info["cfg_scale"].as_f64().unwrap())
            .unwrap();
        let (tokens, images) = run(&mut generator, 3, 3);
        assert_eq!(tokens.concat(), longs(&io[key]), "{key}: sequences differ");
        assert_pixels_match(&images, &io[&format!("{key}_images_uint8_nhwc")], key);
        // One sample at a time, and the captions again from sample 3 on: the same sequences.
        let (again, _) = run(&mut generator, 6, 1);
        assert_eq!(again[..3], tokens[..], "{key}: batch of 1");
        assert_eq!(again[3..], tokens[..], "{key}: captions cycled");
    }
}

#[test]
fn caption_masks_decide_the_golden_sequences() {
    // The golden sequences see the masks: with every caption position visible (the padded T5
    // rows, zeroed, included), the sampler gives other sequences.
    one_thread();
    let io = io();
    let (_vs, model) =
        Gpt::load(&golden("gpt_t2i_public.pt"), Device::Cpu, &four_heads(), 16).unwrap();
    let embeddings = &io["caption_embs_left_padded"];
    let masks = &io["emb_masks_left_padded"];
    for (cfg_scale, key) in [(1.0, "t2i_greedy_cfg1.0"), (7.5, "t2i_greedy_cfg7.5")] {
        let params = SamplingParams {
            cfg_scale,
            cfg_interval: -1,
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        };
        let tokens = |masks: &Tensor| {
            let conditions = Conditions::Captions { embeddings, masks };
            generate_conditioned(&model, conditions, &[0, 1, 2], &params, 0, false)
                .unwrap()
                .tokens
                .concat()
        };
        assert_eq!(tokens(masks), longs(&io[key]), "{key}");
        assert_ne!(
            tokens(&masks.ones_like()),
            longs(&io[key]),
            "{key}: unmasked"
        );
    }
}

#[test]
fn t2i_tokens_do_not_depend_on_batching() {
    // Random sampling with guidance, top-k and top-p through the sampler the pipeline calls: 12
    // samples of the three golden captions in batches of 1, 4 and 5, and shuffled, give the same
    // tokens; another seed gives others.
    one_thread();
    let io = io();
    let set = caption_set(&io);
    let (_vs, model) =
        Gpt::load(&golden("gpt_t2i_public.pt"), Device::Cpu, &four_heads(), 16).unwrap();
    let params = SamplingParams {
        cfg_scale: 3.0,
        cfg_interval: 6,
        temperature: 1.2,
        top_k: 300,
        top_p: 0.9,
    };
    let run = |order: &[u64], batch: usize, seed: u64| -> Vec<Vec<i64>> {
        let mut out = vec![Vec::new(); order.len()];
        for chunk in order.chunks(batch) {
            let captions: Vec<usize> = chunk.iter().map(|&i| set.caption_of(i)).collect();
            let (embeddings, masks) = set.embeddings().batch(&captions).unwrap();
            let conditions = Conditions::Captions {
                embeddings: &embeddings,
                masks: &masks,
            };
            let g = generate_conditioned(&model, conditions, chunk, &params, seed, false).unwrap();
            for (&i, t) in chunk.iter().zip(g.tokens) {
                out[i as usize] = t;
            }
        }
        out
    };
    let natural: Vec<u64> = (0..12).collect();
    let reference = run(&natural, 1, 5);
    assert_eq!(run(&natural, 4, 5), reference);
    assert_eq!(run(&natural, 5, 5), reference);
    let shuffled: Vec<u64> = [7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6].to_vec();
    assert_eq!(run(&shuffled, 5, 5), reference);
    assert_ne!(run(&natural, 4, 6), reference);
    // The same caption at two sample indices gives two samples.
    assert_ne!(reference[0], reference[3]);
    // Labels are refused for the t2i model, and the caption batch must match the indices.
    let err = llamagen_eval::sampling::generate(&model, &[0], &[0], &params, 0, false).unwrap_err();
    assert!(
        err.to_string().contains("captions, not class labels"),
        "{err}"
    );
    let (embeddings, masks) = set.embeddings().batch(&[0, 1]).unwrap();
    let conditions = Conditions::Captions {
        embeddings: &embeddings,
        masks: &masks,
    };
    assert!(generate_conditioned(&model, conditions, &[0], &params, 0, false).is_err());
}
