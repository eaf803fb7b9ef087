//! Sampling from a LlamaGen generator as `autoregressive/models/generate.py` does, made
//! reproducible per sample.
//!
//! - Prefill on the condition (the class token at position 0, or a t2i model's caption positions
//!   with their masks), then one image token per step with the key/value cache.
//! - Classifier-free guidance when `cfg_scale > 1` (LlamaGen's condition; at 1 or below the
//!   conditional logits are used alone): the batch is `[cond; uncond]` with the null class
//!   (`num_classes`) as the unconditional label, or for captions the null caption
//!   (`uncond_embedding`) with the same masks, and the logits are
//!   `uncond + (cond - uncond) * cfg_scale`, computed in f32 on the device. `cfg_interval` I > -1:
//!   image tokens `j >= I + 2` use the conditional logits only (the prefill is token 0; LlamaGen's
//!   decode loop counter `i = j - 1` switches guidance off once `i > I`).
//! - LlamaGen's `logits_to_probs`: divide by `max(temperature, 1e-5)`, keep the `top_k` largest
//!   (ties with the k-th kept), keep the smallest prefix of the sorted distribution whose mass
//!   reaches `top_p` (the first token always kept), softmax.
//!
//! Determinism beyond LlamaGen: token `j` of sample `i` is drawn by inverting the CDF (in token
//! order) of the filtered probabilities at a uniform number that is a hash of `(seed, i, j)`
//! ([`uniform`]). Sample `i` therefore depends only on the seed, its index and its condition (label
//! or caption; the caption of sample `i` is a function of `i`, [`Conditioning`]) — not on
//! the batch size, the batch it lands in, the shard or the number of devices (up to the rounding
//! of batched matrix products, which can in principle move a draw that falls within ~1e-7 of a CDF
//! boundary).
//!
//! The probabilities and the draw are computed in f64 from the f32 logits, as tensor operations on
//! the model's device ([`filtered_probs`], [`draw_from_probs`], [`draw_tokens`]), so the logits
//! never leave the device and the tokens come back once per batch. [`logits_to_probs`] and
//! [`draw`] are the same computation on one host row, in plain Rust: the definition the tensor
//! path is tested against. On the CPU the two agree bit for bit except for `exp`, where libtorch's
//! vectorised exponential may differ from Rust's in the last bit; a token moves only if its
//! uniform falls within ~1e-16 of a CDF boundary. On CUDA the prefix sums are parallel scans, so
//! the totals are not bit-identical to the host's sequential sums either, with the same
//! consequence (~1e-16 instead of 0).

use std::rc::Rc;

use tch::{Device, Kind, TchError, Tensor};

use crate::captions::{CaptionSet, PromptSource};
use crate::models::gpt::{Gpt, GptError};
pub use crate::partition::MAX_SAMPLES;

/// Sampling settings (LlamaGen's names and defaults of `sample_c2i_ddp.py`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Classifier-free guidance scale; guidance is on only above 1.0.
    pub cfg_scale: f64,
    /// -1: guide every token; `I > -1`: guide image tokens `j <= I + 1` only.
    pub cfg_interval: i64,
    /// Logits are divided by `max(temperature, 1e-5)`; 0 is near-greedy.
    pub temperature: f64,
    /// 0: no top-k filter.
    pub top_k: usize,
    /// 1.0: no top-p filter.
    pub top_p: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            cfg_scale: 1.5,
            cfg_interval: -1,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl SamplingParams {
    /// Whether the batch carries the unconditional half (LlamaGen: `cfg_scale > 1.0`).
    pub fn uses_cfg(&self) -> bool {
        self.cfg_scale > 1.0
    }

    /// Whether image token `j` (0 = the prefill) is drawn from guided logits.
    pub fn guided_at(&self, j: i64) -> bool {
        self.uses_cfg() && (self.cfg_interval <= -1 || j <= self.cfg_interval + 1)
    }

    /// Checks the values, with messages naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "the temperature must be a non-negative number, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !self.cfg_scale.is_finite() {
            return Err(format!(
                "the CFG scale must be finite, got {}",
                self.cfg_scale
            ));
        }
        Ok(())
    }
}

/// SplitMix64's finaliser: a bijective, well-mixing hash of 64 bits.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for `(seed, sample index, stream)`: counter-based, so any subset of samples and
/// steps can be produced in any order.
pub fn random_bits(seed: u64, index: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ index) ^ stream)
}

/// A uniform number in [0, 1) (53 bits) for token `step` of sample `index`.
pub fn uniform(seed: u64, index: u64, step: u64) -> f64 {
    (random_bits(seed, index, step) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The stream of the per-sample random class label (beyond any token step).
pub const LABEL_STREAM: u64 = u64::MAX;

/// How class labels are assigned to sample indices.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelSpec {
    /// `labels[i % len]`.
    Explicit(Vec<i64>),
    /// Uniform over the classes, drawn per sample from `(seed, i)` (LlamaGen draws uniform labels).
    Uniform,
    /// `i % num_classes`: every class equally often when the count is a multiple of the classes.
    Balanced,
}

impl LabelSpec {
    /// The class label of sample `index`; depends only on `(seed, index)`, never on batching.
    pub fn label(&self, seed: u64, index: u64, num_classes: i64) -> i64 {
        match self {
            LabelSpec::Explicit(labels) => labels[(index % labels.len() as u64) as usize],
            LabelSpec::Uniform => {
                ((u128::from(random_bits(seed, index, LABEL_STREAM)) * num_classes as u128) >> 64)
                    as i64
            }
            LabelSpec::Balanced => (index % num_classes as u64) as i64,
        }
    }

    /// How run records and resume checks name the assignment (`uniform`, `class-balanced`,
    /// `explicit:3,7`).
    pub fn name(&self) -> String {
        match self {
            LabelSpec::Explicit(l) => format!(
                "explicit:{}",
                l.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            ),
            LabelSpec::Uniform => "uniform".to_owned(),
            LabelSpec::Balanced => "class-balanced".to_owned(),
        }
    }
}

/// What the samples of a run are conditioned on.
#[derive(Debug, Clone)]
pub enum Conditioning {
    /// Class labels (c2i).
    Classes(LabelSpec),
    /// Captions (t2i): sample i takes caption `i % count`.
    Captions(Rc<CaptionSet>),
    /// Captions still to be embedded (t2i from a prompt file): the generator embeds them as it
    /// loads ([`Conditioning::resolve`]) and then holds [`Conditioning::Captions`].
    Prompts(PromptSource),
}

/// Checks a run's sample count: at least 1 and at most [`MAX_SAMPLES`].
pub fn check_sample_count(n: usize) -> anyhow::Result<usize> {
    if n == 0 {
        anyhow::bail!("--samples 0: ask for at least one sample");
    }
    if n > MAX_SAMPLES {
        anyhow::bail!(
            "--samples {n}: at most {MAX_SAMPLES} samples per run (a run keeps a few bytes per sample in memory and its journal); evaluations use 50,000"
        );
    }
    Ok(n)
}

impl Conditioning {
    /// The condition of sample `index`: its class label, or the index of its caption in the set.
    /// Depends only on `(seed, index)`, never on batching.
    pub fn condition(&self, seed: u64, index: u64, num_classes: i64) -> i64 {
        match self {
            Conditioning::Classes(labels) => labels.label(seed, index, num_classes),
            Conditioning::Captions(captions) => captions.caption_of(index) as i64,
            // Not embedded yet: the generator resolves prompts before it samples.
            Conditioning::Prompts(_) => 0,
        }
    }

    /// Captions embedded: [`Conditioning::Prompts`] run through their T5 encoder on `device`,
    /// the others as they are.
    pub fn resolve(&self, device: Device) -> anyhow::Result<Conditioning> {
        Ok(match self {
            Conditioning::Prompts(source) => Conditioning::Captions(Rc::new(source.embed(device)?)),
            other => other.clone(),
        })
    }

    /// The caption set, when the samples are captioned.
    pub fn captions(&self) -> Option<&CaptionSet> {
        match self {
            Conditioning::Classes(_) | Conditioning::Prompts(_) => None,
            Conditioning::Captions(captions) => Some(captions),
        }
    }

    /// How run records and resume checks name the conditioning: [`LabelSpec::name`], or
    /// `captions`.
    pub fn name(&self) -> String {
        match self {
            Conditioning::Classes(labels) => labels.name(),
            Conditioning::Captions(_) | Conditioning::Prompts(_) => "captions".to_owned(),
        }
    }
}

/// The conditions of one generation batch, one per sample.
#[derive(Debug, Clone, Copy)]
pub enum Conditions<'a> {
    /// Class labels `[B]` (c2i).
    Labels(&'a [i64]),
    /// Caption embeddings `[B, cls_token_num, caption_dim]` (any float dtype), left-padded as
    /// LlamaGen's `sample_t2i.py` does ([`crate::models::gpt::left_pad_captions`]), and their
    /// masks `[B, cls_token_num]` (nonzero = valid) (t2i).
    Captions {
        /// The embeddings.
        embeddings: &'a Tensor,
        /// The masks.
        masks: &'a Tensor,
    },
}

impl Conditions<'_> {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        match self {
            Conditions::Labels(labels) => labels.len(),
            Conditions::Captions { masks, .. } => {
                masks.size().first().map_or(0, |&n| n.max(0) as usize)
            }
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// LlamaGen's `logits_to_probs` on one row, in f64: temperature, top-k, top-p, softmax.
pub fn logits_to_probs(logits: &[f32], temperature: f64, top_k: usize, top_p: f64) -> Vec<f64> {
    let t = temperature.max(1e-5);
    let mut x: Vec<f64> = logits.iter().map(|&l| f64::from(l) / t).collect();
    let n = x.len();
    if top_k > 0 && top_k < n {
        let mut scratch = x.clone();
        let k = top_k.max(1);
        // The k-th largest value; everything strictly below it goes (ties are kept, as torch's
        // `logits < topk[..., -1]`).
        let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let kth = *kth;
        for v in x.iter_mut() {
            if *v < kth {
                *v = f64::NEG_INFINITY;
            }
        }
    }
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut p: Vec<f64> = x.iter().map(|&v| (v - max).exp()).collect();
    if top_p < 1.0 {
        let total: f64 = p.iter().sum();
        let mut order: Vec<usize> = (0..n).filter(|&i| p[i] > 0.0).collect();
        order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
        // Remove sorted position s when the mass before it already exceeds top_p (LlamaGen's
        // shifted `cumulative_probs > top_p`); the first is always kept.
        let mut cumulative = 0.0;
        let mut keep_until = order.len();
        for (s, &i) in order.iter().enumerate() {
            if s > 0 && cumulative > top_p {
                keep_until = s;
                break;
            }
            cumulative += p[i] / total;
        }
        for &i in &order[keep_until..] {
            p[i] = 0.0;
        }
    }
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|v| *v /= total);
    p
}

/// The token whose CDF interval (in token order) holds `u` in [0, 1): never one of probability 0.
pub fn draw(probs: &[f64], u: f64) -> usize {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += p;
            last_positive = i;
            if cumulative > target {
                return i;
            }
        }
    }
    last_positive
}

/// The last column of `[B, N]` as `[B, 1]`.
fn last_column(t: &Tensor) -> Result<Tensor, TchError> {
    let n = t.size2()?.1;
    t.f_narrow(1, n - 1, 1)
}

/// Row totals `[B, 1]` of non-negative `[B, N]` f64, summed left to right (the prefix sums go to
/// `sums`). On the CPU libtorch's `cumsum` is a sequential loop per row, so its last column is
/// exactly the host's `iter().sum()`; `sum()` is a vectorised tree that rounds differently.
fn row_totals(t: &Tensor, sums: &Tensor) -> Result<Tensor, TchError> {
    last_column(&t.f_cumsum_out(sums, 1, Kind::Double)?)
}

/// The two `[B, V]` f64 tensors a batch of draws works in: the probabilities and prefix sums.
/// [`generate`] allocates them once per batch rather than once per step.
struct DrawBuffers {
    probs: Tensor,
    sums: Tensor,
}

impl DrawBuffers {
    fn new(rows: i64, vocab: i64, device: Device) -> Result<Self, TchError> {
        Ok(DrawBuffers {
            probs: Tensor::f_empty([rows, vocab], (Kind::Double, device))?,
            sums: Tensor::f_empty([rows, vocab], (Kind::Double, device))?,
        })
    }

    fn for_logits(logits: &Tensor) -> Result<Self, TchError> {
        let (rows, vocab) = logits.size2()?;
        DrawBuffers::new(rows, vocab, logits.device())
    }
}

/// `exp` of `v`, in place where it can be. libtorch's vectorised CPU `exp` is 10 to 40 times
/// slower on inputs whose result is 0 or subnormal, and a top-k filter (-inf) or a low
/// temperature puts most of a row there. Below -746 the exponential rounds to 0 (the host's
/// `f64::exp` returns exactly 0 there too), so those entries are set rather than computed; the
/// rare inputs with subnormal results keep the slow exact path.
fn exp_(mut v: Tensor) -> Result<Tensor, TchError> {
    const ROUNDS_TO_ZERO: f64 = -746.0;
    if v.device() == Device::Cpu && v.f_min()?.f_double_value(&[])? < ROUNDS_TO_ZERO {
        let dead = v.f_lt(ROUNDS_TO_ZERO)?;
        return v
            .f_masked_fill_(&dead, 0.0)?
            .f_exp_()?
            .f_masked_fill_(&dead, 0.0);
    }
    v.f_exp_()
}

/// The integers whose signed order is `f64::total_cmp`'s on `x`: the bits with the magnitude bits
/// of negative numbers flipped, as Rust implements `total_cmp`. Unlike a float comparison it puts
/// +0.0 above -0.0, as the host's top-p sort does.
fn total_cmp_key(x: &Tensor) -> Result<Tensor, TchError> {
    let bits = x.f_view_dtype(Kind::Int64)?;
    bits.f_bitwise_right_shift_tensor_scalar(63)?
        .f_bitwise_and_(i64::MAX)?
        .f_bitwise_xor_tensor_(&bits)
}

/// Per row, the tokens in the host's top-p order: descending `key`, equal keys by ascending index
/// (a stable sort). Every token of positive `p` is in it; the rest may be left out, as the host
/// leaves them out of its sort. `top_k`: the top-k filter's selection, if it ran.
fn top_p_order(key: &Tensor, p: &Tensor, top_k: Option<Tensor>) -> Result<Tensor, TchError> {
    let vocab = key.size2()?.1;
    if key.device() == Device::Cpu {
        // The host sorts only the tokens of positive probability (with top-k on, about k of them):
        // sorting whole rows instead would make the CPU draws several times slower. They are the
        // m tokens of largest key (p grows with x); the count comes back to the host for free
        // here, whereas on a GPU reading it would stall the stream, and sorting whole rows there
        // is cheap.
        let m = p
            .f_gt(0.0)?
            .f_sum_dim_intlist(1, false, Kind::Int64)?
            .f_max()?
            .f_int64_value(&[])?;
        // The top-k selection holds them when m <= k: a row whose positive tokens include the
        // k-th key includes all its ties, so it has exactly the k selected ones.
        let candidates = match top_k {
            Some(selected) if m <= selected.size2()?.1 => selected,
            _ if m < vocab => key.f_topk(m, 1, true, false)?.1,
            _ => return Ok(key.f_sort_stable(true, 1, true)?.1),
        };
        // Back in token order, so that the stable sort breaks ties by index.
        let (candidates, _) = candidates.f_sort(1, false)?;
        let (_, by_key) = key
            .f_gather(1, &candidates, false)?
            .f_sort_stable(true, 1, true)?;
        return candidates.f_gather(1, &by_key, false);
    }
    Ok(key.f_sort_stable(true, 1, true)?.1)
}

/// [`logits_to_probs`] on every row of `[B, V]` logits on any device: f64 `[B, V]` probabilities
/// on the logits' device. The logits are f32 as the host's, or bf16/f16, which widen exactly.
pub fn filtered_probs(logits: &Tensor, params: &SamplingParams) -> Result<Tensor, TchError> {
    filtered_probs_in(logits, params, &DrawBuffers::for_logits(logits)?)
}

/// [`filtered_probs`] computed in (and returned as) `buffers.probs`.
fn filtered_probs_in(
    logits: &Tensor,
    params: &SamplingParams,
    buffers: &DrawBuffers,
) -> Result<Tensor, TchError> {
    let device = logits.device();
    let vocab = logits.size2()?.1;
    // Divided by a 0-dim tensor on the device, not by a scalar: CUDA turns division by a host
    // scalar into multiplication by its reciprocal, which rounds differently from the host's `/`.
    let t = Tensor::f_scalar_tensor(params.temperature.max(1e-5), (Kind::Double, device))?;
    let mut x = buffers.probs.shallow_clone();
    x.f_copy_(logits)?;
    let mut x = x.f_div_(&t)?;
    let top_k = params.top_k > 0 && (params.top_k as i64) < vocab;
    let top_p = params.top_p < 1.0;
    // Both filters order x by `total_cmp`, as the host does. The key is taken before x changes:
    // the tokens the top-k filter removes rank below every kept one either way.
    let key = if top_k || top_p {
        Some(total_cmp_key(&x)?)
    } else {
        None
    };
    let mut selected = None;
    if let (true, Some(key)) = (top_k, &key) {
        // The k-th largest value per row (the host's `select_nth_unstable_by`); strictly smaller
        // values go, ties with it stay.
        let (top, indices) = key.f_topk(params.top_k as i64, 1, true, false)?;
        let kth = indices.f_gather(1, &top.f_argmin(1, true)?, false)?;
        let below = x.f_lt_tensor(&x.f_gather(1, &kth, false)?)?;
        x = x.f_masked_fill_(&below, f64::NEG_INFINITY)?;
        selected = Some(indices);
    }
    let max = x.f_amax(1, true)?;
    let mut p = exp_(x.f_sub_(&max)?)?;
    if let (true, Some(key)) = (top_p, key) {
        let total = row_totals(&p, &buffers.sums)?;
        let order = top_p_order(&key, &p, selected)?;
        let width = order.size2()?.1;
        let mut sorted = p.f_gather(1, &order, false)?;
        let cumulative = sorted.f_div(&total)?.f_cumsum_(1, Kind::Double)?;
        // Sorted position s goes when the mass before it (the cumulative sum up to s - 1) exceeds
        // top_p; position 0 always stays (the padded false).
        let remove = cumulative
            .f_narrow(1, 0, width - 1)?
            .f_gt(params.top_p)?
            .f_constant_pad_nd([1, 0])?;
        // Tokens left out of the order have p = 0 already.
        p = p.f_scatter_(1, &order, &sorted.f_masked_fill_(&remove, 0.0)?)?;
    }
    let total = row_totals(&p, &buffers.sums)?;
    p.f_div_(&total)
}

/// [`draw`] on every row: `[B, V]` f64 probabilities and `[B]` f64 uniforms (on their device) give
/// the `[B]` i64 tokens.
pub fn draw_from_probs(probs: &Tensor, uniforms: &Tensor) -> Result<Tensor, TchError> {
    draw_from_probs_in(probs, uniforms, &probs.f_empty_like()?)
}

/// [`draw_from_probs`] with the CDF computed in `sums` (`[B, V]` f64, not `probs`).
fn draw_from_probs_in(
    probs: &Tensor,
    uniforms: &Tensor,
    sums: &Tensor,
) -> Result<Tensor, TchError> {
    let (rows, vocab) = probs.size2()?;
    let cdf = probs.f_cumsum_out(sums, 1, Kind::Double)?;
    let target = uniforms.f_view([rows, 1])?.f_mul(&last_column(&cdf)?)?;
    // The CDF is non-decreasing, so the upper-bound binary search finds the first token whose
    // cumulative mass exceeds the target: never one of probability 0, whose cumulative mass equals
    // its predecessor's.
    let first_above = Tensor::f_searchsorted(&target, &cdf, false, true, "right", None::<Tensor>)?
        .f_view([rows])?;
    // No entry exceeds the target only when u * total equals the total: u = 1, since for u < 1 the
    // product rounds below any normal total. The host then returns the last token of positive
    // probability; every other candidate lies at or before it, so a minimum applies that fallback.
    // The CPU reads back whether any row needs it (free there) and skips the search otherwise.
    if probs.device() == Device::Cpu && first_above.f_max()?.f_int64_value(&[])? < vocab {
        return Ok(first_above);
    }
    // The last positive token is the first one of the reversed row (argmax: the first maximum).
    let last_positive = probs
        .f_gt(0.0)?
        .f_flip([1])?
        .f_view_dtype(Kind::Uint8)?
        .f_argmax(1, false)?
        .f_neg()?
        .f_add_scalar(vocab - 1)?;
    first_above.f_minimum(&last_positive)
}

/// The tokens `[B]` (i64, on the logits' device) that [`draw`]`(`[`logits_to_probs`]`(row), u)`
/// gives for each row of the `[B, V]` logits and `[B]` f64 uniforms.
pub fn draw_tokens(
    logits: &Tensor,
    uniforms: &Tensor,
    params: &SamplingParams,
) -> Result<Tensor, TchError> {
    draw_tokens_in(logits, uniforms, params, &DrawBuffers::for_logits(logits)?)
}

/// [`draw_tokens`] working in `buffers`.
fn draw_tokens_in(
    logits: &Tensor,
    uniforms: &Tensor,
    params: &SamplingParams,
    buffers: &DrawBuffers,
) -> Result<Tensor, TchError> {
    let probs = filtered_probs_in(logits, params, buffers)?;
    draw_from_probs_in(&probs, uniforms, &buffers.sums)
}

/// The generated image tokens of a batch, with the guided logits of every step when asked for.
#[derive(Debug)]
pub struct Generated {
    /// `tokens[b][j]`: image token j of sample b.
    pub tokens: Vec<Vec<i64>>,
    /// Per step j, f32 `[B, vocab]` logits the draw used (only with `keep_logits`).
    pub logits: Vec<Tensor>,
}

/// Generates `block_size` image tokens for each `(label, index)`; sample `indices[b]` draws its
/// token j at [`uniform`]`(seed, indices[b], j)`.
pub fn generate(
    model: &Gpt,
    labels: &[i64],
    indices: &[u64],
    params: &SamplingParams,
    seed: u64,
    keep_logits: bool,
) -> Result<Generated, GptError> {
    generate_conditioned(
        model,
        Conditions::Labels(labels),
        indices,
        params,
        seed,
        keep_logits,
    )
}

/// Generates `block_size` image tokens for each condition (class label or caption) and sample
/// index; sample `indices[b]` draws its token j at [`uniform`]`(seed, indices[b], j)`, whatever
/// its condition.
pub fn generate_conditioned(
    model: &Gpt,
    conditions: Conditions<'_>,
    indices: &[u64],
    params: &SamplingParams,
    seed: u64,
    keep_logits: bool,
) -> Result<Generated, GptError> {
    if conditions.len() != indices.len() {
        return Err(GptError::BadConfig(format!(
            "{} conditions for {} sample indices",
            conditions.len(),
            indices.len()
        )));
    }
    match conditions {
        Conditions::Labels(labels) => model.check_labels(labels)?,
        Conditions::Captions { embeddings, masks } => model.check_captions(embeddings, masks)?,
    }
    params.validate().map_err(GptError::BadConfig)?;
    let config = model.config();
    let b = indices.len() as i64;
    let len = config.block_size;
    let mut kept_logits = Vec::new();
    if b == 0 {
        return Ok(Generated {
            tokens: Vec::new(),
            logits: kept_logits,
        });
    }
    let cfg = params.uses_cfg();
    let device = model.device();
    let rows = if cfg { 2 * b } else { b };
    // Every uniform of the batch, computed on the host (they are counter-based hashes) and
    // uploaded once; row b, column j is token j of sample indices[b].
    let uniforms: Vec<f64> = indices
        .iter()
        .flat_map(|&index| (0..len as u64).map(move |j| uniform(seed, index, j)))
        .collect();
    let uniforms = Tensor::from_slice(&uniforms)
        .f_view([b, len])?
        .f_to_device(device)?;
    let tokens = Tensor::f_zeros([b, len], (Kind::Int64, device))?;
    let buffers = DrawBuffers::new(b, config.vocab_size, device)?;
    // With guidance both halves of the batch take the drawn tokens.
    let next = Tensor::f_zeros([rows], (Kind::Int64, device))?;
    let mut cache = model.new_cache(rows, config.cls_token_num + len);
    let mut logits = match conditions {
        Conditions::Labels(labels) => {
            let mut cond = labels.to_vec();
            if cfg {
                cond.extend(std::iter::repeat_n(config.num_classes, labels.len()));
            }
            model.prefill(&Tensor::from_slice(&cond).f_to_device(device)?, &mut cache)
        }
        Conditions::Captions { embeddings, masks } => {
            if cfg {
                // LlamaGen's `cond_null`: the null caption in every row, with the same masks.
                let null = model.null_captions(b)?;
                let both = Tensor::f_cat(
                    &[
                        embeddings.f_to_device(device)?.f_to_kind(null.kind())?,
                        null,
                    ],
                    0,
                )?;
                let masks = Tensor::f_cat(&[masks, masks], 0)?;
                model.prefill_captions(&both, &masks, &mut cache)?
            } else {
                model.prefill_captions(embeddings, masks, &mut cache)?
            }
        }
    };
    for j in 0..len {
        let step_logits = tch::no_grad(|| {
            if !cfg {
                logits.shallow_clone()
            } else if params.guided_at(j) {
                let c = logits.narrow(0, 0, b);
                let u = logits.narrow(0, b, b);
                &u + (&c - &u) * params.cfg_scale
            } else {
                logits.narrow(0, 0, b)
            }
        });
        let drawn = draw_tokens_in(&step_logits, &uniforms.f_select(1, j)?, params, &buffers)?;
        tokens.f_select(1, j)?.f_copy_(&drawn)?;
        if keep_logits {
            kept_logits.push(
                step_logits
                    .f_to_device(Device::Cpu)?
                    .f_to_kind(Kind::Float)?
                    .f_contiguous()?,
            );
        }
        if j + 1 < len {
            let input = if cfg {
                next.f_narrow(0, 0, b)?.f_copy_(&drawn)?;
                next.f_narrow(0, b, b)?.f_copy_(&drawn)?;
                &next
            } else {
                &drawn
            };
            logits = model.decode_step(input, j + 1, &mut cache);
        }
    }
    let tokens = Vec::<i64>::try_from(tokens.f_to_device(Device::Cpu)?.f_view([-1])?)?;
    Ok(Generated {
        tokens: tokens.chunks(len as usize).map(<[i64]>::to_vec).collect(),
        logits: kept_logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniforms_are_in_range_and_distinct() {
        let a = uniform(0, 0, 0);
        assert!((0.0..1.0).contains(&a));
        assert_ne!(a, uniform(0, 0, 1));
        assert_ne!(a, uniform(0, 1, 0));
        assert_ne!(a, uniform(1, 0, 0));
        let mean = (0..10_000).map(|i| uniform(7, i, 3)).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn filters_follow_llamagen() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        // top-k 2 keeps both 3.0s; top-k 1 keeps ties too.
        let p = logits_to_probs(&logits, 1.0, 2, 1.0);
        assert_eq!(p.iter().filter(|&&v| v > 0.0).count(), 2);
        let p = logits_to_probs(&logits, 1.0, 1, 1.0);
        assert_eq!(p.iter().filter(|&&v| v > 0.0).count(), 2);
        // top-p: the first token is always kept.
        let p = logits_to_probs(&[10.0, 0.0, 0.0], 1.0, 0, 0.1);
        assert_eq!(p, vec![1.0, 0.0, 0.0]);
        // Masses 0.5, 0.3, 0.2 with top-p 0.6: 0.5 < 0.6 so the second stays, the third goes.
        let l: Vec<f32> = [0.5f64, 0.3, 0.2].iter().map(|v| v.ln() as f32).collect();
        let p = logits_to_probs(&l, 1.0, 0, 0.6);
        assert!(p[0] > 0.0 && p[1] > 0.0 && p[2] == 0.0);
        assert!((p[0] - 0.625).abs() < 1e-6);
    }

    #[test]
    fn draws_never_pick_filtered_tokens() {
        let probs = [0.0, 0.25, 0.0, 0.75, 0.0];
        assert_eq!(draw(&probs, 0.0), 1);
        assert_eq!(draw(&probs, 0.2499), 1);
        assert_eq!(draw(&probs, 0.25), 3);
        assert_eq!(draw(&probs, 0.999_999_999), 3);
    }

    #[test]
    fn cfg_interval_matches_llamagen() {
        let p = SamplingParams {
            cfg_scale: 4.0,
            cfg_interval: 5,
            ..Default::default()
        };
        assert!(p.guided_at(0) && p.guided_at(6) && !p.guided_at(7));
        let always = SamplingParams {
            cfg_interval: -1,
            ..p
        };
        assert!(always.guided_at(255));
        let none = SamplingParams {
            cfg_scale: 1.0,
            ..p
        };
        assert!(!none.guided_at(0));
    }

    #[test]
    fn labels_are_per_sample() {
        let u = LabelSpec::Uniform;
        let labels: Vec<i64> = (0..1000).map(|i| u.label(3, i, 10)).collect();
        assert!(labels.iter().all(|l| (0..10).contains(l)));
        for c in 0..10 {
            let n = labels.iter().filter(|&&l| l == c).count();
            assert!((60..140).contains(&n), "class {c}: {n}");
        }
        assert_eq!(LabelSpec::Balanced.label(0, 23, 10), 3);
        assert_eq!(LabelSpec::Explicit(vec![4, 5]).label(0, 3, 10), 5);
    }
}
