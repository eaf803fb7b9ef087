//! Where a generation's time went and how it was set up: the throughput record of a run
//! (`throughput` in `metrics.json`) and its paragraph for the terminal.

use std::time::Duration;

use serde_json::{json, Value};

/// The batch sizes of a generation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batches {
    /// Samples generated at once.
    pub generation: usize,
    /// Whether `generation` was chosen from the free memory (`auto`).
    pub auto: bool,
    /// Images the tokenizer decodes at once.
    pub decode: usize,
}

/// Where time went and how the run was set up, for the throughput report.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// Token sampling (with overlap: the busy time of the sampling thread).
    pub sampling: Duration,
    /// Tokenizer decoding and the resize (with overlap: the busy time of the decoding thread).
    pub decoding: Duration,
    /// Inception features of the generated images.
    pub inception: Duration,
    /// Time the pass's thread waited for generated images (with overlap).
    pub waiting: Duration,
    /// Wall time of the generation pass.
    pub wall: Duration,
    /// Tokens sampled.
    pub tokens: u64,
    /// Images sampled and decoded by this process.
    pub images: u64,
    /// Images a resumed run took from its journal: sampled by an earlier process.
    pub resumed: u64,
    /// The generator's device (`cpu`, `cuda:0`).
    pub device: String,
    /// The device as [`crate::device::describe`] names it (`cuda:0 (NVIDIA H100 80GB HBM3)`).
    pub device_name: String,
    /// Whether CUDA float32 matrix products and convolutions could use TF32 (`--tf32`).
    pub tf32: bool,
    /// The generator's dtype (`float32`, `bfloat16`, `float16`).
    pub dtype: String,
    /// The batch sizes used.
    pub batches: Option<Batches>,
    /// Images per Inception forward pass, when Inception ran.
    pub inception_batch: Option<usize>,
    /// Whether sampling, decoding and Inception overlapped.
    pub overlap: bool,
}

impl Timing {
    /// Tokens per second of sampling.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.sampling.as_secs_f64().max(1e-9)
    }

    /// Images per second of wall time.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// One paragraph for the terminal.
    pub fn report(&self) -> String {
        let wall = self.wall.as_secs_f64().max(1e-9);
        let share = |d: Duration| 100.0 * d.as_secs_f64() / wall;
        let resumed = match self.resumed {
            0 => String::new(),
            n => format!(" ({n} more resumed from the journal)"),
        };
        let mut text = if self.images == 0 {
            format!(
                "throughput: nothing new to sample: all {} images were resumed from the journal\n",
                self.resumed
            )
        } else {
            format!(
                "throughput: {} new images{resumed}, {} tokens in {:.1} s: {:.1} tokens/s (sampling), {:.2} images/s\n",
                self.images,
                self.tokens,
                wall,
                self.tokens_per_s(),
                self.images_per_s(),
            )
        };
        let mut setup = vec![
            format!("device {}", self.device_name),
            format!("dtype {}", self.dtype),
        ];
        if self.device.starts_with("cuda") {
            setup.push(format!("TF32 {}", if self.tf32 { "on" } else { "off" }));
        }
        if let Some(b) = self.batches {
            setup.push(format!(
                "generation batch {}{}",
                b.generation,
                if b.auto { " (auto)" } else { "" }
            ));
            setup.push(format!("decode batch {}", b.decode));
        }
        if let Some(n) = self.inception_batch {
            setup.push(format!("Inception batch {n}"));
        }
        setup.push(format!(
            "overlap {}",
            if self.overlap { "on" } else { "off" }
        ));
        text.push_str(&format!("setup: {}\n", setup.join(", ")));
        let mut parts = vec![
            format!(
                "sampling {:.1} s ({:.0}%)",
                self.sampling.as_secs_f64(),
                share(self.sampling)
            ),
            format!(
                "decoding {:.1} s ({:.0}%)",
                self.decoding.as_secs_f64(),
                share(self.decoding)
            ),
        ];
        if !self.inception.is_zero() {
            parts.push(format!(
                "Inception {:.1} s ({:.0}%)",
                self.inception.as_secs_f64(),
                share(self.inception)
            ));
        }
        if self.overlap {
            text.push_str(&format!(
                "busy time of the wall time: {} (sampling and decoding on their own threads; waiting for images {:.1} s)\n",
                parts.join(", "),
                self.waiting.as_secs_f64()
            ));
        } else {
            text.push_str(&format!("time: {}\n", parts.join(", ")));
        }
        text
    }

    /// The `throughput` object of the run record.
    pub fn record(&self) -> Value {
        json!({
            "images": self.images,
            "resumed_images": self.resumed,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s(),
            "images_per_s": self.images_per_s(),
            "sampling_s": self.sampling.as_secs_f64(),
            "decoding_s": self.decoding.as_secs_f64(),
            "inception_s": self.inception.as_secs_f64(),
            "waiting_for_images_s": self.waiting.as_secs_f64(),
            "wall_s": self.wall.as_secs_f64(),
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "tf32": self.tf32,
            "generation_batch_size": self.batches.map(|b| b.generation),
            "generation_batch_auto": self.batches.map(|b| b.auto),
            "decode_batch_size": self.batches.map(|b| b.decode),
            "inception_batch_size": self.inception_batch,
            "overlap": self.overlap,
        })
    }
}
