//! The evaluation pipeline as library calls, one path for every input kind:
//!
//! ```text
//! source (npz | folder | generator) ──> pass (batches, journal) ──> stages (features, stats,
//!   npz writer, grid, reconstruction scores) ──> feature set ──> evaluate(sample, reference)
//!   ──> run record (metrics.json / metrics.csv)
//! ```
//!
//! - [`generator`]: a LlamaGen generator (c2i, or t2i with captions) + tokenizer as an image
//!   source, sampling and decoding on their own threads while the pass evaluates; [`batch`]:
//!   its batch sizes (`auto` from free memory).
//! - [`pass`]: the one batch loop, with [`journal`] for resuming after a kill.
//! - [`features`], [`stats`], [`sinks`], [`recon`]: what a pass does with the images.
//! - [`gather`], [`split`]: a job split over the ranks of a launcher, rank 0 joining the parts.
//! - [`cache`]: features of image files cached by content; [`reference`]: every reference kind.
//! - [`evaluate`]: features in, run record out; [`fid`], [`generate`], [`sweep`], [`merge`]:
//!   the jobs the commands run.
//!
//! Nothing here parses flags or prints results: the CLI does that.

#![warn(missing_docs)]

pub mod batch;
pub mod cache;
pub mod evaluate;
pub mod features;
pub mod fid;
pub mod generate;
pub mod generator;
pub mod inception;
pub mod merge;
pub mod parts;
pub mod pass;
pub mod recon;
pub mod reference;
pub mod sinks;
pub mod stats;
pub mod sweep;

pub use batch::BatchSize;
pub use cache::FeatureCache;
pub use evaluate::{evaluate, MetricRequest};
pub use features::FeatureStage;
pub use fid::{FidConfig, GeneratedEvaluation, GeneratedRun};
pub use generate::GenerationPlan;
pub use generator::{Batches, Generator, GeneratorConfig, Precision, Timing};
pub use inception::{InceptionConfig, InceptionWeights};
pub use pass::{JournalConfig, PassConfig, Stage};
pub use reference::ReferenceNeeds;
