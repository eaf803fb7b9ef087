//! What a pass does with each batch of images ([`crate::pipeline::pass::Stage`]): every stage
//! takes the batch, returns the per-image records the journal keeps, and restores itself from
//! them when a resumed run skips the batch.
//!
//! - [`features`]: the feature networks' rows, journaled and kept in memory (or handed to another
//!   keeper of rows);
//! - [`stats`]: the Gaussian statistics of a reference batch, accumulated from those rows as
//!   batches pass;
//! - [`sinks`]: the npz writer (all images or a chosen subset) and the grid of the first images.
//!
//! `recon`'s stage, which scores reconstructions against the originals, lives with its job
//! ([`crate::pipeline::jobs::recon`]).

pub mod features;
pub mod sinks;
pub mod stats;
