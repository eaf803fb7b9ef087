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
//!   its batch sizes (`auto` from free memory); [`timing`]: where a generation's time went.
//! - [`pass`]: the one batch loop, with [`crate::journal`] for resuming after a kill.
//! - [`stages`]: what a pass does with the images.
//! - [`inception`]: which feature networks a run uses; [`feature_cache`]: features of image
//!   files cached by content; [`reference`]: every reference kind.
//! - [`parts`]: the part files of a job's ranks and their joins (how parts are gathered is
//!   [`crate::dist`]'s).
//! - [`jobs`]: the jobs the commands run.
//!
//! Nothing here parses flags or prints results: the CLI does that.

#![warn(missing_docs)]

pub mod batch;
pub mod feature_cache;
pub mod generator;
pub mod inception;
pub mod jobs;
pub mod parts;
pub mod pass;
pub mod reference;
pub mod stages;
pub mod timing;

pub use batch::BatchSize;
pub use feature_cache::FeatureCache;
pub use generator::{Generator, GeneratorConfig, Precision};
pub use inception::{InceptionConfig, InceptionWeights};
pub use jobs::fid::{GeneratedEvaluation, GeneratedRun};
pub use jobs::generate::GenerationPlan;
pub use jobs::settings::{FidConfig, StatsConfig};
pub use pass::{JournalConfig, PassConfig, Stage};
pub use reference::ReferenceNeeds;
pub use timing::{Batches, Timing};
