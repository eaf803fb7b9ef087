//! llamagen-eval: evaluation and benchmarking of LlamaGen-style autoregressive image generators.
//!
//! Layers, bottom up:
//! - `llamagen-metrics` (a separate crate): the metric math on plain arrays.
//! - [`checkpoint`], [`models`], [`sampling`], [`captions`], [`data`], [`io`]: reading checkpoints,
//!   captions and images, the networks, per-sample deterministic sampling, file helpers;
//!   [`budget`]: the memory any one input file may make them allocate.
//! - [`pipeline`]: sources, the journaled batch pass, features, references, evaluation, and the
//!   jobs (`fid`, `sample`, `recon`, `stats`, `sweep`, `merge`) as library calls.
//! - [`metric`] and [`record`]: the one metric registry and the run record every job writes;
//!   [`check`] and [`report`] read them.
//!
//! The command line (`src/main.rs`, `src/cli/`) only parses flags into these types and prints.

#![warn(missing_docs)]

pub mod budget;
pub mod captions;
pub mod check;
pub mod checkpoint;
pub mod choice;
pub mod data;
pub mod demo;
pub mod device;
pub mod dist;
pub mod doctor;
pub mod evaluate;
pub mod feature_set;
pub mod inspect;
pub mod interrupt;
pub mod io;
pub mod journal;
pub mod launcher;
pub mod layout;
pub mod metric;
pub mod models;
pub mod partition;
pub mod pipeline;
pub mod progress;
pub mod record;
pub mod report;
pub mod sampling;
pub mod weight_files;
