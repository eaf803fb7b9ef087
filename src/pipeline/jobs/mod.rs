//! The jobs the commands run, as library calls: each takes typed settings, checks its inputs
//! and outputs before any long work, and runs one journaled pass (or several) through the
//! stages; those that split over ranks implement [`crate::dist::ShardedJob`].
//!
//! - [`features`]: `features`, image features into one file;
//! - [`stats`]: `stats`, an ADM-compatible reference batch;
//! - [`generate`]: the generation pass, and `sample` (samples into an npz);
//! - [`fid`]: `fid` of a sample batch or of samples generated on the fly;
//! - [`sweep`]: `sweep`, `fid --gpt` at several CFG scales with one loaded generator;
//! - [`recon`]: `recon`, how well a tokenizer reconstructs images;
//! - [`merge`]: `merge`, shard files joined in sample order;
//! - [`settings`]: the jobs' settings, and what a launched job keeps for `merge OUT_DIR`;
//!   [`offline`]: that gather.

pub mod features;
pub mod fid;
pub mod generate;
pub mod merge;
pub mod offline;
pub mod recon;
pub mod settings;
pub mod stats;
pub mod sweep;
