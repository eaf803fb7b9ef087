//! The networks, one file per model, with parameters named as in the original checkpoints.

pub mod clip;
pub mod clip_text;
pub mod dinov2;
pub mod gpt;
pub mod hf_weights;
pub mod inception;
pub mod t5;
pub mod tokenizer;
pub mod vq;
