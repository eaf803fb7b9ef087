//! Evaluation metrics for image generators, on plain `ndarray` data and no deep-learning framework.
//!
//! Every figure is computed to match a reference evaluator on the same inputs: the ADM evaluator
//! (FID, sFID, Inception Score, precision/recall), pytorch-fid and torch-fidelity (FID, KID),
//! scikit-image (PSNR, SSIM), google-research `cmmd` (CMMD) and torchmetrics (CLIP score). Linear
//! algebra runs on the system OpenBLAS/LAPACK.

// Linked for the BLAS/LAPACK symbols that ndarray, ndarray-linalg and lapack-sys call.
extern crate openblas_src;

pub mod blas;
pub mod bootstrap;
pub mod clip_score;
pub mod cmmd;
pub mod codebook;
pub mod error;
pub mod frechet;
pub mod frechet_infinity;
pub mod image_quality;
pub mod inception_score;
pub mod kid;
pub mod linalg;
pub mod manifold;
pub mod stats;

pub use error::{MetricsError, Result};
