//! The tensor draw (`draw_tokens`, what `generate` runs on the model's device) against the host
//! reference `draw(&logits_to_probs(row), u)`, row by row, on random logits built to hit the
//! edges: exact ties, huge ranges, near-flat rows, every filter setting and extreme uniforms.

use llamagen_eval::sampling::{
    draw, draw_from_probs, draw_tokens, filtered_probs, generate, logits_to_probs, uniform,
    SamplingParams,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// One row of logits of a randomly chosen character.
fn random_row(rng: &mut ChaCha8Rng, vocab: usize) -> Vec<f32> {
    match rng.random_range(0..5) {
        // Ordinary spread at a random scale.
        0 => {
            let scale = [0.1f32, 1.0, 5.0, 30.0][rng.random_range(0..4)];
            (0..vocab)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect()
        }
        // Few distinct values: many exact ties, also at the top-k threshold, and zeros of both
        // signs (which the host's `total_cmp` orders +0.0 first).
        1 => (0..vocab)
            .map(|_| match rng.random_range(-3i32..=4) {
                4 => -0.0,
                v => v as f32 * 0.5,
            })
            .collect(),
        // A large range: most probabilities underflow to exactly 0.
        2 => (0..vocab).map(|_| rng.random_range(-1e4f32..1e4)).collect(),
        // Near-flat: neighbouring f32 values around 1.
        3 => (0..vocab)
            .map(|_| 1.0 + rng.random_range(-4i32..=4) as f32 * f32::EPSILON)
            .collect(),
        // One dominant token over a flat floor.
        _ => {
            let mut row = vec![0.0f32; vocab];
            row[rng.random_range(0..vocab)] = rng.random_range(2.0f32..40.0);
            row
        }
    }
}

fn random_params(rng: &mut ChaCha8Rng, vocab: usize) -> SamplingParams {
    let temperature = match rng.random_range(0..4) {
        0 => 0.0,
        1 => 1.0,
        _ => rng.random_range(0.0..=2.0),
    };
    let top_k = match rng.random_range(0..5) {
        0 => 0,
        1 => 1,
        2 => rng.random_range(2..=50),
        3 => vocab,
        _ => vocab + rng.random_range(1..100),
    };
    let top_p = match rng.random_range(0..4) {
        0 => 1.0,
        1 => 1e-3,
        // (0, 1]: 1 - [0, 1).
        _ => 1.0 - rng.random_range(0.0..1.0),
    };
    SamplingParams {
        cfg_scale: 1.0,
        cfg_interval: -1,
        temperature,
        top_k,
        top_p,
    }
}

fn random_uniform(rng: &mut ChaCha8Rng) -> f64 {
    match rng.random_range(0..6) {
        0 => 0.0,
        // The largest value `sampling::uniform` can produce.
        1 => 1.0 - f64::EPSILON / 2.0,
        2 => 1.0 - 1e-12,
        _ => rng.random_range(0.0..1.0),
    }
}

fn longs(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.contiguous().view([-1])).expect("a host i64 tensor")
}

fn doubles(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.contiguous().view([-1])).expect("a host f64 tensor")
}

#[test]
fn tensor_draws_equal_the_host_reference() {
    // The tests of this binary run in parallel threads: one libtorch thread each.
    tch::set_num_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(20_240_601);
    let vocabs = [12usize, 1000, 16384];
    let mut rows_checked = 0usize;
    let mut group = 0usize;
    let mut probs_compared = 0usize;
    let mut probs_bit_equal = 0usize;
    while rows_checked < 10_000 {
        let vocab = vocabs[rng.random_range(0..vocabs.len())];
        let params = random_params(&mut rng, vocab);
        let batch = rng.random_range(1..=8usize).min(10_000 - rows_checked);
        let rows: Vec<Vec<f32>> = (0..batch).map(|_| random_row(&mut rng, vocab)).collect();
        let uniforms: Vec<f64> = (0..batch).map(|_| random_uniform(&mut rng)).collect();
        let logits = Tensor::from_slice(&rows.concat()).view([batch as i64, vocab as i64]);
        let tokens = longs(
            &draw_tokens(&logits, &Tensor::from_slice(&uniforms), &params).expect("draw_tokens"),
        );
        // The filtered probabilities themselves on every 25th group: same support, and equal up
        // to the last-bit differences of libtorch's vectorised `exp`.
        let probs = (group % 25 == 0).then(|| {
            let p = filtered_probs(&logits, &params).expect("filtered_probs");
            assert_eq!(p.kind(), Kind::Double);
            doubles(&p)
        });
        for (r, (row, &u)) in rows.iter().zip(&uniforms).enumerate() {
            let host = logits_to_probs(row, params.temperature, params.top_k, params.top_p);
            let expected = draw(&host, u) as i64;
            assert_eq!(
                tokens[r], expected,
                "group {group} row {r}: vocab {vocab}, {params:?}, u {u}"
            );
            if let Some(probs) = &probs {
                let ours = &probs[r * vocab..(r + 1) * vocab];
                for (i, (&a, &b)) in ours.iter().zip(&host).enumerate() {
                    assert_eq!(
                        a > 0.0,
                        b > 0.0,
                        "group {group} row {r} token {i}: support differs ({a} vs {b}), {params:?}"
                    );
                    assert!(
                        (a - b).abs() <= 1e-14 * b,
                        "group {group} row {r} token {i}: {a} vs {b}, {params:?}"
                    );
                }
                probs_compared += 1;
                probs_bit_equal += usize::from(ours == host.as_slice());
            }
        }
        rows_checked += batch;
        group += 1;
    }
    println!(
        "{rows_checked} rows in {group} batches: tokens equal; {probs_bit_equal} of \
         {probs_compared} compared probability rows bit-identical"
    );
}

#[test]
fn tensor_filters_keep_ties_and_the_first_token() {
    tch::set_num_threads(1);
    let params = |temperature, top_k, top_p| SamplingParams {
        temperature,
        top_k,
        top_p,
        ..Default::default()
    };
    let support = |logits: &[f32], p: SamplingParams| -> Vec<bool> {
        let probs = filtered_probs(&Tensor::from_slice(logits).view([1, -1]), &p).unwrap();
        doubles(&probs).iter().map(|&v| v > 0.0).collect()
    };
    let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
    // top-k 1 keeps both 3.0s.
    assert_eq!(
        support(&logits, params(1.0, 1, 1.0)),
        [false, true, false, true, false]
    );
    // top-p below the first mass keeps only the first of the tied maxima (the lower index).
    assert_eq!(
        support(&logits, params(1.0, 0, 0.1)),
        [false, true, false, false, false]
    );
    // Equal zeros of both signs: the host's `total_cmp` order puts +0.0 first.
    assert_eq!(
        support(&[-0.0, 0.0, -0.0], params(1.0, 0, 0.1)),
        [false, true, false]
    );
    // A vocabulary of one with every filter on.
    assert_eq!(support(&[0.5], params(0.0, 1, 0.01)), [true]);
}

#[test]
fn tensor_draws_fall_back_to_the_last_positive_token() {
    tch::set_num_threads(1);
    // At u = 1 (beyond `uniform`'s range, but within `draw`'s contract) no CDF entry exceeds the
    // target: both pick the last token of positive probability, not a trailing zero.
    let probs = [0.2f64, 0.0, 0.8, 0.0, 0.0];
    let tensor = Tensor::from_slice(&probs).view([1, -1]);
    for u in [0.0, 0.2, 0.5, 1.0 - f64::EPSILON / 2.0, 1.0] {
        let ours = draw_from_probs(&tensor, &Tensor::from_slice(&[u])).unwrap();
        assert_eq!(longs(&ours), [draw(&probs, u) as i64], "u {u}");
    }
    assert_eq!(draw(&probs, 1.0), 2);
}

#[test]
fn generated_tokens_are_the_host_draws_from_the_kept_logits() {
    // `generate` end to end on the golden model, with guidance switching off mid-way and every
    // filter on: token j of each sample is the host reference's draw from the guided logits of
    // step j at uniform(seed, index, j). Since each step's logits follow from the earlier tokens,
    // this is the pre-tensor sampler's output, token for token.
    let model = crate::gpt_golden::load("gpt_public.pt");
    let params = SamplingParams {
        cfg_scale: 2.5,
        cfg_interval: 6,
        temperature: 1.1,
        top_k: 200,
        top_p: 0.95,
    };
    let labels = [3i64, 0, 9, 3, 5];
    let indices = [17u64, 0, 4, 1_000_003, 42];
    let seed = 7;
    let out = generate(&model, &labels, &indices, &params, seed, true).unwrap();
    let vocab = model.config().vocab_size as usize;
    assert_eq!(out.logits.len() as i64, model.config().block_size);
    for (j, step) in out.logits.iter().enumerate() {
        let flat = Vec::<f32>::try_from(step.view([-1])).unwrap();
        for (b, row) in flat.chunks(vocab).enumerate() {
            let probs = logits_to_probs(row, params.temperature, params.top_k, params.top_p);
            let u = uniform(seed, indices[b], j as u64);
            assert_eq!(
                out.tokens[b][j],
                draw(&probs, u) as i64,
                "sample {b} token {j}"
            );
        }
    }
}
