//! llamagen-eval: evaluation and benchmarking of LlamaGen-style autoregressive image generators.
//!
//! The metric math lives in the `llamagen-metrics` crate; this crate holds what needs libtorch
//! (models, feature extraction, sampling), data IO, and the command-line front end.

pub mod cache;
pub mod check;
pub mod checkpoint;
pub mod commands;
pub mod data;
pub mod demo;
pub mod device;
pub mod doctor;
pub mod evaluate;
pub mod features;
pub mod io;
pub mod metric;
pub mod models;
pub mod progress;
pub mod record;
pub mod report;
pub mod sampling;
