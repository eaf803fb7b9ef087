//! The metric registry, in three tables:
//!
//! - [`MetricKey`]: every figure a run may record, with everything the suite knows about it (its
//!   JSON/CSV key, which way it improves, how far `check` lets it move by default, its chart
//!   labels and the spread drawn with it). `check`, `report` and the charts read only this.
//! - [`Metric`]: the families `fid`, `metrics` and `sweep` compute (`--metrics fid,kid`): the
//!   figures each records and what each needs from the inputs. The planner
//!   ([`crate::evaluate::plan`]) reads the needs; the kernel of each family is its arm of
//!   [`crate::evaluate::compute`].
//! - [`ReconMetric`]: the families `recon` computes, the same way; those that compare feature
//!   sets name the [`Metric`] whose kernel computes them.
//!
//! A metric is added by a row here and its kernel, nowhere else: the command line parses the
//! families through their [`Choice`] lists. [`MetricKey::ALL`] is the stable order of the keys of
//! `metrics.json` and of the metric columns of `metrics.csv` and `summary.csv`.

#![warn(missing_docs)]

use anyhow::{bail, Result};

use crate::choice::Choice;
use crate::feature_set::Network;
use Direction::{HigherIsBetter, Informational, LowerIsBetter};
use Tolerance::{Absolute, Off, Relative};

/// An enum declared as a table: one row per value, its doc comment and its properties; the enum,
/// its `ALL` (in declaration order, which the derived `Ord` follows) and a `const fn row` come
/// from the rows, so the compiler sees that every value has every property.
macro_rules! table {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident -> $row:ty {
            $( $(#[$vmeta:meta])* $variant:ident => $info:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; 0 $(+ { let _ = stringify!($variant); 1 })*] =
                [$($name::$variant),*];

            const fn row(self) -> $row {
                match self {
                    $( $name::$variant => $info, )*
                }
            }
        }
    };
}

/// [`Choice`] (and `FromStr`, `Display`) of a family table: each row's `name` and `help`.
macro_rules! family_choice {
    ($name:ident, $what:literal) => {
        impl Choice for $name {
            const WHAT: &'static str = $what;
            const VALUES: &'static [(Self, &'static str, &'static str)] = &{
                let mut values = [($name::ALL[0], "", ""); $name::ALL.len()];
                let mut i = 0;
                while i < values.len() {
                    let row = $name::ALL[i].row();
                    values[i] = ($name::ALL[i], row.name, row.help);
                    i += 1;
                }
                values
            };
        }
        crate::choice::choice_str!($name);

        impl $name {
            /// The name `--metrics` takes (`fid-inf`).
            pub const fn name(self) -> &'static str {
                self.row().name
            }

            /// The figures it records, in registry order.
            pub const fn keys(self) -> &'static [MetricKey] {
                self.row().keys
            }
        }
    };
}

table! {
    /// A figure a run may record, and everything the suite knows about it. The declaration
    /// order is the registry order ([`MetricKey::ALL`]), which the derived `Ord` follows.
    ///
    /// Default tolerances are loose enough for reruns on other hardware and thread counts with
    /// the same samples and seed, tight enough to catch a worse checkpoint. Spreads are
    /// informational and `off`: they are shown (and drawn as whiskers), never checked.
    pub enum MetricKey -> Info {
        /// Fréchet Inception Distance on pool features.
        Fid => Info {
            name: "fid",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "FID",
            axis: "FID (Fréchet distance, unitless)",
            std: None,
        },
        /// Spatial FID on ADM's mixed_6/conv features.
        Sfid => Info {
            name: "sfid",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "sFID",
            axis: "sFID (spatial Fréchet distance, unitless)",
            std: None,
        },
        /// Inception Score (mean over splits).
        InceptionScore => Info {
            name: "inception_score",
            direction: HigherIsBetter,
            tolerance: Relative(0.02),
            short: "Inception Score",
            axis: "Inception Score (unitless; whiskers: ± std over splits)",
            std: Some(MetricKey::InceptionScoreStd),
        },
        /// Standard deviation of the Inception Score over splits.
        InceptionScoreStd => Info {
            name: "inception_score_std",
            direction: Informational,
            tolerance: Off,
            short: "Inception Score std",
            axis: "Inception Score std over splits (unitless)",
            std: None,
        },
        /// Precision (fraction of samples on the reference manifold).
        Precision => Info {
            name: "precision",
            direction: HigherIsBetter,
            tolerance: Absolute(0.02),
            short: "Precision",
            axis: "Precision (fraction of samples, 0–1)",
            std: None,
        },
        /// Recall (fraction of reference images on the sample manifold).
        Recall => Info {
            name: "recall",
            direction: HigherIsBetter,
            tolerance: Absolute(0.02),
            short: "Recall",
            axis: "Recall (fraction of reference images, 0–1)",
            std: None,
        },
        /// Density.
        Density => Info {
            name: "density",
            direction: HigherIsBetter,
            tolerance: Absolute(0.05),
            short: "Density",
            axis: "Density (unitless; about 1 for matching sets)",
            std: None,
        },
        /// Coverage.
        Coverage => Info {
            name: "coverage",
            direction: HigherIsBetter,
            tolerance: Absolute(0.02),
            short: "Coverage",
            axis: "Coverage (fraction of reference images, 0–1)",
            std: None,
        },
        /// Kernel Inception Distance (mean over subsets).
        Kid => Info {
            name: "kid",
            direction: LowerIsBetter,
            tolerance: Absolute(0.001),
            short: "KID",
            axis: "KID (squared MMD, unitless; whiskers: ± std over subsets)",
            std: Some(MetricKey::KidStd),
        },
        /// Standard deviation of KID over subsets.
        KidStd => Info {
            name: "kid_std",
            direction: Informational,
            tolerance: Off,
            short: "KID std",
            axis: "KID std over subsets (squared MMD, unitless)",
            std: None,
        },
        /// Reconstruction FID of a tokenizer.
        Rfid => Info {
            name: "rfid",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "rFID",
            axis: "rFID (reconstruction FID, unitless)",
            std: None,
        },
        /// Peak signal-to-noise ratio of reconstructions, in dB.
        Psnr => Info {
            name: "psnr",
            direction: HigherIsBetter,
            tolerance: Absolute(0.1),
            short: "PSNR",
            axis: "PSNR (dB)",
            std: None,
        },
        /// SSIM of reconstructions (Gaussian 11x11 window).
        Ssim => Info {
            name: "ssim",
            direction: HigherIsBetter,
            tolerance: Absolute(0.005),
            short: "SSIM",
            axis: "SSIM (unitless, at most 1)",
            std: None,
        },
        /// SSIM as LlamaGen's evaluation computes it.
        SsimLlamagen => Info {
            name: "ssim_llamagen",
            direction: HigherIsBetter,
            tolerance: Absolute(0.005),
            short: "SSIM (LlamaGen)",
            axis: "SSIM, LlamaGen's variant (unitless, at most 1)",
            std: None,
        },
        /// Fraction of codebook entries used.
        CodebookUsage => Info {
            name: "codebook_usage",
            direction: HigherIsBetter,
            tolerance: Absolute(0.01),
            short: "Codebook usage",
            axis: "Codebook usage (fraction of entries used, 0–1)",
            std: None,
        },
        /// Perplexity of codebook use (effective number of codes).
        CodebookPerplexity => Info {
            name: "codebook_perplexity",
            direction: HigherIsBetter,
            tolerance: Relative(0.02),
            short: "Codebook perplexity",
            axis: "Codebook perplexity (effective number of codes)",
            std: None,
        },
        /// FID extrapolated to infinitely many samples (Chong & Forsyth 2020).
        FidInf => Info {
            name: "fid_inf",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "FID∞",
            axis: "FID extrapolated to infinitely many samples (unitless)",
            std: None,
        },
        /// Fréchet distance of DINOv2 ViT-L/14 features (Stein et al. 2023).
        FdDinov2 => Info {
            name: "fd_dinov2",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "FD_DINOv2",
            axis: "FD_DINOv2 (Fréchet distance of DINOv2 features, unitless)",
            std: None,
        },
        /// FD_DINOv2 extrapolated to infinitely many samples.
        FdDinov2Inf => Info {
            name: "fd_dinov2_inf",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "FD_DINOv2∞",
            axis: "FD_DINOv2 extrapolated to infinitely many samples (unitless)",
            std: None,
        },
        /// Precision on DINOv2 features.
        Dinov2Precision => Info {
            name: "dinov2_precision",
            direction: HigherIsBetter,
            tolerance: Absolute(0.02),
            short: "Precision (DINOv2)",
            axis: "Precision on DINOv2 features (fraction of samples, 0–1)",
            std: None,
        },
        /// Recall on DINOv2 features.
        Dinov2Recall => Info {
            name: "dinov2_recall",
            direction: HigherIsBetter,
            tolerance: Absolute(0.02),
            short: "Recall (DINOv2)",
            axis: "Recall on DINOv2 features (fraction of reference images, 0–1)",
            std: None,
        },
        /// Density on DINOv2 features.
        Dinov2Density => Info {
            name: "dinov2_density",
            direction: HigherIsBetter,
            tolerance: Absolute(0.05),
            short: "Density (DINOv2)",
            axis: "Density on DINOv2 features (unitless; about 1 for matching sets)",
            std: None,
        },
        /// Coverage on DINOv2 features.
        Dinov2Coverage => Info {
            name: "dinov2_coverage",
            direction: HigherIsBetter,
            tolerance: Absolute(0.02),
            short: "Coverage (DINOv2)",
            axis: "Coverage on DINOv2 features (fraction of reference images, 0–1)",
            std: None,
        },
        /// CMMD: MMD of CLIP ViT-L/14@336 embeddings, x1000 (Jayasumana et al. 2024).
        Cmmd => Info {
            name: "cmmd",
            direction: LowerIsBetter,
            tolerance: Relative(0.05),
            short: "CMMD",
            axis: "CMMD (MMD of CLIP embeddings x 1000, unitless)",
            std: None,
        },
        /// CLIP score: mean over samples of 100 x max(cos(image, caption), 0) (Hessel et al. 2021,
        /// torchmetrics' definition).
        ClipScore => Info {
            name: "clip_score",
            direction: HigherIsBetter,
            tolerance: Absolute(0.5),
            short: "CLIP score",
            axis: "CLIP score (100 x cosine of image and caption, 0–100; whiskers: ± std)",
            std: Some(MetricKey::ClipScoreStd),
        },
        /// Standard deviation of the per-sample CLIP scores.
        ClipScoreStd => Info {
            name: "clip_score_std",
            direction: Informational,
            tolerance: Off,
            short: "CLIP score std",
            axis: "CLIP score std over samples (0–100)",
            std: None,
        },
    }
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Smaller values are better (distances).
    LowerIsBetter,
    /// Larger values are better (scores, fractions, fidelity).
    HigherIsBetter,
    /// Shown, never a regression (spreads such as `inception_score_std`).
    Informational,
}

/// How far a metric may move in the worse direction before it counts as a regression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// In the metric's own units.
    Absolute(f64),
    /// A fraction of the baseline's magnitude (`2%` is `Relative(0.02)`).
    Relative(f64),
    /// A multiple of the difference's standard error (`2se`), from the bootstrap uncertainty of
    /// both records; usable only when both carry it.
    StandardErrors(f64),
    /// Not checked (`off`).
    Off,
}

impl Tolerance {
    /// `0.05` (absolute), `2%` (relative), `2se` (standard errors) or `off`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Tolerance::Off);
        }
        let lower = text.to_ascii_lowercase();
        let (number, unit): (&str, fn(f64) -> Tolerance) = if let Some(n) = text.strip_suffix('%') {
            (n, |v| Tolerance::Relative(v / 100.0))
        } else if let Some(n) = lower.strip_suffix("se") {
            (&text[..n.len()], Tolerance::StandardErrors)
        } else {
            (text, Tolerance::Absolute)
        };
        let value: f64 = number.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "`{text}` is not a number, a percentage (`2%`), standard errors (`2se`) or `off`"
            )
        })?;
        if !value.is_finite() || value < 0.0 {
            bail!("`{text}` must be a finite number at least 0");
        }
        Ok(unit(value))
    }

    /// The allowed worsening from `baseline`, given the standard error `se` of the difference
    /// when both records carry one; `None` for a [`Tolerance::StandardErrors`] without it.
    pub fn allowed(self, baseline: f64, se: Option<f64>) -> Option<f64> {
        match self {
            Tolerance::Absolute(a) => Some(a),
            Tolerance::Relative(r) => Some(r * baseline.abs()),
            Tolerance::StandardErrors(k) => se.map(|se| k * se),
            Tolerance::Off => Some(f64::INFINITY),
        }
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Absolute(a) => write!(f, "{a}"),
            Tolerance::Relative(r) => write!(f, "{}%", r * 100.0),
            Tolerance::StandardErrors(k) => write!(f, "{k}se"),
            Tolerance::Off => f.write_str("off"),
        }
    }
}

/// One row of the figure registry.
struct Info {
    name: &'static str,
    direction: Direction,
    tolerance: Tolerance,
    short: &'static str,
    axis: &'static str,
    std: Option<MetricKey>,
}

impl MetricKey {
    /// The key of `metrics.json` and the column of `metrics.csv` (e.g. `inception_score`).
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// The metric a name means: its key, or `is` / `is_std` for the Inception Score and its
    /// spread; case and surrounding spaces are ignored. `None` for names outside the registry.
    pub fn from_name(name: &str) -> Option<MetricKey> {
        let lower = name.trim().to_ascii_lowercase();
        let lower = match lower.as_str() {
            "is" => "inception_score",
            "is_std" => "inception_score_std",
            other => other,
        };
        MetricKey::ALL.into_iter().find(|m| m.name() == lower)
    }

    /// Which way the metric improves.
    pub const fn direction(self) -> Direction {
        self.row().direction
    }

    /// How far `check` lets the metric worsen when neither the baseline nor `--tolerance` says.
    pub const fn default_tolerance(self) -> Tolerance {
        self.row().tolerance
    }

    /// A short label for titles and legends (e.g. `Inception Score`).
    pub const fn short_label(self) -> &'static str {
        self.row().short
    }

    /// A chart axis label with the metric's units (e.g. `PSNR (dB)`).
    pub const fn axis_label(self) -> &'static str {
        self.row().axis
    }

    /// The spread recorded with the metric (`kid_std` for `kid`), drawn as whiskers on its bars.
    pub const fn std_companion(self) -> Option<MetricKey> {
        self.row().std
    }
}

impl std::fmt::Display for MetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a [`Metric`] family needs from the inputs; the planner checks a family's needs in order
/// and names the first that is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// At least `2 * min_size` samples (10,000), unless the family is asked for by name: the
    /// extrapolated distances are defaulted only from there on.
    ManySamples,
    /// The samples' pool features, row by row.
    SamplePool,
    /// The samples' pool features, as their Gaussian statistics.
    SamplePoolStats,
    /// The samples' spatial features, as their Gaussian statistics.
    SampleSpatialStats,
    /// The samples' Inception logits.
    SampleLogits,
    /// The samples' DINOv2 features, row by row.
    SampleDinov2,
    /// The samples' DINOv2 features, as their Gaussian statistics.
    SampleDinov2Stats,
    /// The samples' CLIP image embeddings.
    SampleClip,
    /// Each sample's caption, as a CLIP text embedding.
    Captions,
    /// The reference's pool statistics (mu/sigma).
    ReferencePoolStats,
    /// The reference's spatial statistics (mu_s/sigma_s).
    ReferenceSpatialStats,
    /// The reference's pool features, row by row.
    ReferencePoolFeatures,
    /// The reference's DINOv2 statistics.
    ReferenceDinov2Stats,
    /// The reference's DINOv2 features, row by row.
    ReferenceDinov2Features,
    /// The reference's CLIP embeddings.
    ReferenceClip,
    /// More than k samples and reference pool features (each point's k-th nearest other point).
    PoolNeighbours,
    /// More than k samples and reference DINOv2 features.
    Dinov2Neighbours,
}

/// One row of the [`Metric`] table.
struct Family {
    name: &'static str,
    help: &'static str,
    keys: &'static [MetricKey],
    needs: &'static [Need],
}

table! {
    /// A metric family the user can ask for with `--metrics` of `fid`, `metrics` and `sweep`.
    /// Without `--metrics`, every family the inputs allow is computed, in this order.
    pub enum Metric -> Family {
        /// Fréchet Inception Distance on pool features.
        Fid => Family {
            name: "fid",
            help: "Fréchet Inception Distance on pool features",
            keys: &[MetricKey::Fid],
            needs: &[Need::SamplePoolStats, Need::ReferencePoolStats],
        },
        /// Spatial FID on ADM's mixed_6/conv features.
        Sfid => Family {
            name: "sfid",
            help: "Spatial FID on ADM's mixed_6/conv features",
            keys: &[MetricKey::Sfid],
            needs: &[Need::SampleSpatialStats, Need::ReferenceSpatialStats],
        },
        /// Inception Score (and its std over splits).
        Is => Family {
            name: "is",
            help: "Inception Score (and its std over splits)",
            keys: &[MetricKey::InceptionScore, MetricKey::InceptionScoreStd],
            needs: &[Need::SampleLogits],
        },
        /// Precision, recall, density and coverage.
        Pr => Family {
            name: "pr",
            help: "Precision, recall, density and coverage",
            keys: &[
                MetricKey::Precision,
                MetricKey::Recall,
                MetricKey::Density,
                MetricKey::Coverage,
            ],
            needs: &[Need::SamplePool, Need::ReferencePoolFeatures, Need::PoolNeighbours],
        },
        /// Kernel Inception Distance (and its std over subsets).
        Kid => Family {
            name: "kid",
            help: "Kernel Inception Distance (and its std over subsets)",
            keys: &[MetricKey::Kid, MetricKey::KidStd],
            needs: &[Need::SamplePool, Need::ReferencePoolFeatures],
        },
        /// FID extrapolated to infinitely many samples (the fit in the run record).
        FidInf => Family {
            name: "fid-inf",
            help: "FID extrapolated to infinitely many samples (Chong & Forsyth 2020)",
            keys: &[MetricKey::FidInf],
            needs: &[Need::ManySamples, Need::SamplePool, Need::ReferencePoolStats],
        },
        /// Fréchet distance of DINOv2 features (dgm-eval's FD_DINOv2).
        FdDinov2 => Family {
            name: "fd-dinov2",
            help: "Fréchet distance of DINOv2 features (needs --features ...,dinov2)",
            keys: &[MetricKey::FdDinov2],
            needs: &[Need::SampleDinov2Stats, Need::ReferenceDinov2Stats],
        },
        /// FD_DINOv2 extrapolated to infinitely many samples.
        FdDinov2Inf => Family {
            name: "fd-dinov2-inf",
            help: "FD_DINOv2 extrapolated to infinitely many samples",
            keys: &[MetricKey::FdDinov2Inf],
            needs: &[Need::ManySamples, Need::SampleDinov2, Need::ReferenceDinov2Stats],
        },
        /// Precision, recall, density and coverage on DINOv2 features.
        Dinov2Pr => Family {
            name: "dinov2-pr",
            help: "Precision, recall, density and coverage on DINOv2 features",
            keys: &[
                MetricKey::Dinov2Precision,
                MetricKey::Dinov2Recall,
                MetricKey::Dinov2Density,
                MetricKey::Dinov2Coverage,
            ],
            needs: &[
                Need::SampleDinov2,
                Need::ReferenceDinov2Features,
                Need::Dinov2Neighbours,
            ],
        },
        /// CMMD: MMD of CLIP embeddings (Jayasumana et al. 2024).
        Cmmd => Family {
            name: "cmmd",
            help: "CMMD on CLIP embeddings (needs --features ...,clip)",
            keys: &[MetricKey::Cmmd],
            needs: &[Need::SampleClip, Need::ReferenceClip],
        },
        /// CLIP score of each sample against its caption (text-to-image runs).
        ClipScore => Family {
            name: "clip-score",
            help: "CLIP score of each sample against its caption (text-to-image runs; needs \
                   --features ...,clip with a CLIPModel file)",
            keys: &[MetricKey::ClipScore, MetricKey::ClipScoreStd],
            needs: &[Need::SampleClip, Need::Captions],
        },
    }
}
family_choice!(Metric, "metric");

impl Metric {
    /// What it needs from the inputs, in the order the planner checks.
    pub const fn needs(self) -> &'static [Need] {
        self.row().needs
    }
}

/// What a [`ReconMetric`] family needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconNeed {
    /// The tokenizer itself (reconstructions made elsewhere have no token indices).
    Tokenizer,
    /// This feature network's features of the reconstructions and of the originals.
    Features(Network),
}

/// One row of the [`ReconMetric`] table.
struct ReconFamily {
    name: &'static str,
    help: &'static str,
    keys: &'static [MetricKey],
    needs: &'static [ReconNeed],
    shared: Option<Metric>,
}

table! {
    /// A figure family `recon` can report (`recon --metrics`). Without `--metrics`, every family
    /// the inputs allow is computed.
    pub enum ReconMetric -> ReconFamily {
        /// Fréchet distance of the reconstructions' Inception pool features to the reference's.
        Rfid => ReconFamily {
            name: "rfid",
            help: "Fréchet distance of the reconstructions' Inception pool features to the \
                   reference's",
            keys: &[MetricKey::Rfid],
            needs: &[ReconNeed::Features(Network::Inception)],
            shared: Some(Metric::Fid),
        },
        /// Peak signal-to-noise ratio (data range 255).
        Psnr => ReconFamily {
            name: "psnr",
            help: "Peak signal-to-noise ratio (data range 255)",
            keys: &[MetricKey::Psnr],
            needs: &[],
            shared: None,
        },
        /// SSIM, both the standard (Gaussian window) and the LlamaGen-compatible figure.
        Ssim => ReconFamily {
            name: "ssim",
            help: "SSIM, both the standard (Gaussian window) and the LlamaGen-compatible figure",
            keys: &[MetricKey::Ssim, MetricKey::SsimLlamagen],
            needs: &[],
            shared: None,
        },
        /// Codebook usage and perplexity over the set (needs the tokenizer).
        Codebook => ReconFamily {
            name: "codebook",
            help: "Codebook usage and perplexity over the set (needs --vq)",
            keys: &[MetricKey::CodebookUsage, MetricKey::CodebookPerplexity],
            needs: &[ReconNeed::Tokenizer],
            shared: None,
        },
        /// Fréchet distance of the reconstructions' DINOv2 features to the originals' (needs
        /// DINOv2).
        FdDinov2 => ReconFamily {
            name: "fd-dinov2",
            help: "FD_DINOv2 of the reconstructions to the originals (needs --features \
                   ...,dinov2)",
            keys: &[MetricKey::FdDinov2],
            needs: &[ReconNeed::Features(Network::Dinov2)],
            shared: Some(Metric::FdDinov2),
        },
        /// CMMD of the reconstructions' CLIP embeddings to the originals' (needs CLIP).
        Cmmd => ReconFamily {
            name: "cmmd",
            help: "CMMD of the reconstructions to the originals (needs --features ...,clip)",
            keys: &[MetricKey::Cmmd],
            needs: &[ReconNeed::Features(Network::Clip)],
            shared: Some(Metric::Cmmd),
        },
    }
}
family_choice!(ReconMetric, "recon metric");

impl ReconMetric {
    /// What it needs, in the order `recon` checks.
    pub const fn needs(self) -> &'static [ReconNeed] {
        self.row().needs
    }

    /// The [`Metric`] whose kernel computes it, with the reconstructions as the samples and the
    /// originals (or the rFID reference) as the reference; its figures are recorded under
    /// [`ReconMetric::keys`], in the same order. `None`: computed by `recon` itself, per image.
    pub const fn shared(self) -> Option<Metric> {
        self.row().shared
    }

    /// The feature network whose features of the reconstructions it compares.
    pub fn network(self) -> Option<Network> {
        self.needs().iter().find_map(|n| match n {
            ReconNeed::Features(network) => Some(*network),
            ReconNeed::Tokenizer => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_registry_order() {
        for (i, key) in MetricKey::ALL.into_iter().enumerate() {
            assert_eq!(MetricKey::from_name(key.name()), Some(key));
            assert_eq!(
                MetricKey::from_name(&format!(" {} ", key.name().to_uppercase())),
                Some(key)
            );
            assert_eq!(key as usize, i, "ALL follows the declaration order");
        }
        let mut sorted = MetricKey::ALL;
        sorted.sort();
        assert_eq!(sorted, MetricKey::ALL);
        let names: Vec<&str> = MetricKey::ALL.map(MetricKey::name).to_vec();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), MetricKey::ALL.len(), "{names:?}");
        assert_eq!(names[2], "inception_score");
        assert_eq!(MetricKey::from_name("IS"), Some(MetricKey::InceptionScore));
        assert_eq!(
            MetricKey::from_name("is_std"),
            Some(MetricKey::InceptionScoreStd)
        );
        assert_eq!(MetricKey::from_name("nope"), None);
    }

    #[test]
    fn spreads_are_informational_companions() {
        for key in MetricKey::ALL {
            let is_spread = MetricKey::ALL
                .into_iter()
                .any(|m| m.std_companion() == Some(key));
            assert_eq!(
                key.direction() == Direction::Informational,
                is_spread,
                "{key}"
            );
            assert_eq!(
                is_spread,
                key.default_tolerance() == Tolerance::Off,
                "{key}"
            );
            assert!(!key.short_label().is_empty() && !key.axis_label().is_empty());
        }
        assert_eq!(MetricKey::Kid.std_companion(), Some(MetricKey::KidStd));
        assert_eq!(MetricKey::Fid.direction(), Direction::LowerIsBetter);
        assert_eq!(MetricKey::Psnr.direction(), Direction::HigherIsBetter);
    }

    #[test]
    fn families_record_registered_figures_under_their_own_names() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>().unwrap(), m);
            assert!(!m.keys().is_empty() && !m.needs().is_empty(), "{m}");
        }
        for m in ReconMetric::ALL {
            assert_eq!(m.to_string().parse::<ReconMetric>().unwrap(), m);
            if let Some(shared) = m.shared() {
                assert_eq!(shared.keys().len(), m.keys().len(), "{m}");
            }
        }
        assert_eq!(Metric::FidInf.to_string(), "fid-inf");
        assert!("rfid".parse::<Metric>().is_err());
        assert_eq!(ReconMetric::Cmmd.network(), Some(Network::Clip));
    }

    #[test]
    fn tolerances_parse_and_print() {
        assert_eq!(Tolerance::parse("0.05").unwrap(), Tolerance::Absolute(0.05));
        assert_eq!(Tolerance::parse(" 2% ").unwrap(), Tolerance::Relative(0.02));
        assert_eq!(Tolerance::parse("OFF").unwrap(), Tolerance::Off);
        assert_eq!(
            Tolerance::parse("2SE").unwrap(),
            Tolerance::StandardErrors(2.0)
        );
        for bad in ["x", "-1", "1%%", "inf", "se", "-1se", "2se%"] {
            assert!(Tolerance::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Tolerance::Relative(0.05).to_string(), "5%");
        assert_eq!(Tolerance::StandardErrors(1.5).to_string(), "1.5se");
        assert_eq!(Tolerance::Relative(0.1).allowed(-20.0, None), Some(2.0));
        assert_eq!(Tolerance::Off.allowed(1.0, None), Some(f64::INFINITY));
        assert_eq!(
            Tolerance::StandardErrors(2.0).allowed(1.0, Some(0.25)),
            Some(0.5)
        );
        assert_eq!(Tolerance::StandardErrors(2.0).allowed(1.0, None), None);
    }
}
