//! The metric registry: every figure a run may record, with everything the suite knows about it
//! (its JSON/CSV key, which way it improves, how far `check` lets it move by default, its chart
//! labels and the spread drawn with it).
//!
//! `evaluate`, `recon`, `check`, `report` and the charts all read this one table, so a metric is
//! added or renamed here and nowhere else. [`MetricKey::ALL`] is the stable order of the keys of
//! `metrics.json` and of the metric columns of `metrics.csv` and `summary.csv`.

#![warn(missing_docs)]

use anyhow::{bail, Result};

/// A figure a run may record. The declaration order is the registry order ([`MetricKey::ALL`]),
/// which the derived `Ord` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetricKey {
    /// Fréchet Inception Distance on pool features.
    Fid,
    /// Spatial FID on ADM's mixed_6/conv features.
    Sfid,
    /// Inception Score (mean over splits).
    InceptionScore,
    /// Standard deviation of the Inception Score over splits.
    InceptionScoreStd,
    /// Precision (fraction of samples on the reference manifold).
    Precision,
    /// Recall (fraction of reference images on the sample manifold).
    Recall,
    /// Density.
    Density,
    /// Coverage.
    Coverage,
    /// Kernel Inception Distance (mean over subsets).
    Kid,
    /// Standard deviation of KID over subsets.
    KidStd,
    /// Reconstruction FID of a tokenizer.
    Rfid,
    /// Peak signal-to-noise ratio of reconstructions, in dB.
    Psnr,
    /// SSIM of reconstructions (Gaussian 11x11 window).
    Ssim,
    /// SSIM as LlamaGen's evaluation computes it.
    SsimLlamagen,
    /// Fraction of codebook entries used.
    CodebookUsage,
    /// Perplexity of codebook use (effective number of codes).
    CodebookPerplexity,
    /// FID extrapolated to infinitely many samples (Chong & Forsyth 2020).
    FidInf,
    /// Fréchet distance of DINOv2 ViT-L/14 features (Stein et al. 2023).
    FdDinov2,
    /// FD_DINOv2 extrapolated to infinitely many samples.
    FdDinov2Inf,
    /// Precision on DINOv2 features.
    Dinov2Precision,
    /// Recall on DINOv2 features.
    Dinov2Recall,
    /// Density on DINOv2 features.
    Dinov2Density,
    /// Coverage on DINOv2 features.
    Dinov2Coverage,
    /// CMMD: MMD of CLIP ViT-L/14@336 embeddings, x1000 (Jayasumana et al. 2024).
    Cmmd,
    /// CLIP score: mean over samples of 100 x max(cos(image, caption), 0) (Hessel et al. 2021,
    /// torchmetrics' definition).
    ClipScore,
    /// Standard deviation of the per-sample CLIP scores.
    ClipScoreStd,
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
    /// Not checked (`off`).
    Off,
}

impl Tolerance {
    /// `0.05` (absolute), `2%` (relative) or `off`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Tolerance::Off);
        }
        let (number, relative) = match text.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (text, false),
        };
        let value: f64 = number.parse().map_err(|_| {
            anyhow::anyhow!("`{text}` is not a number, a percentage (`2%`) or `off`")
        })?;
        if !value.is_finite() || value < 0.0 {
            bail!("`{text}` must be a finite number at least 0");
        }
        Ok(if relative {
            Tolerance::Relative(value / 100.0)
        } else {
            Tolerance::Absolute(value)
        })
    }

    /// The allowed worsening from `baseline`.
    pub fn allowed(self, baseline: f64) -> f64 {
        match self {
            Tolerance::Absolute(a) => a,
            Tolerance::Relative(r) => r * baseline.abs(),
            Tolerance::Off => f64::INFINITY,
        }
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Absolute(a) => write!(f, "{a}"),
            Tolerance::Relative(r) => write!(f, "{}%", r * 100.0),
            Tolerance::Off => f.write_str("off"),
        }
    }
}

/// One row of the registry.
struct Info {
    name: &'static str,
    direction: Direction,
    tolerance: Tolerance,
    short: &'static str,
    axis: &'static str,
    std: Option<MetricKey>,
}

impl MetricKey {
    /// Every metric, in registry order.
    pub const ALL: [MetricKey; 26] = [
        MetricKey::Fid,
        MetricKey::Sfid,
        MetricKey::InceptionScore,
        MetricKey::InceptionScoreStd,
        MetricKey::Precision,
        MetricKey::Recall,
        MetricKey::Density,
        MetricKey::Coverage,
        MetricKey::Kid,
        MetricKey::KidStd,
        MetricKey::Rfid,
        MetricKey::Psnr,
        MetricKey::Ssim,
        MetricKey::SsimLlamagen,
        MetricKey::CodebookUsage,
        MetricKey::CodebookPerplexity,
        MetricKey::FidInf,
        MetricKey::FdDinov2,
        MetricKey::FdDinov2Inf,
        MetricKey::Dinov2Precision,
        MetricKey::Dinov2Recall,
        MetricKey::Dinov2Density,
        MetricKey::Dinov2Coverage,
        MetricKey::Cmmd,
        MetricKey::ClipScore,
        MetricKey::ClipScoreStd,
    ];

    /// The registry: one match, so the compiler sees that every metric has every property.
    ///
    /// Default tolerances are loose enough for reruns on other hardware and thread counts with
    /// the same samples and seed, tight enough to catch a worse checkpoint. Spreads are
    /// informational and `off`: they are shown (and drawn as whiskers), never checked.
    const fn info(self) -> Info {
        use Direction::{HigherIsBetter, Informational, LowerIsBetter};
        use Tolerance::{Absolute, Off, Relative};
        let (name, direction, tolerance, short, axis, std) = match self {
            MetricKey::Fid => (
                "fid",
                LowerIsBetter,
                Relative(0.05),
                "FID",
                "FID (Fréchet distance, unitless)",
                None,
            ),
            MetricKey::Sfid => (
                "sfid",
                LowerIsBetter,
                Relative(0.05),
                "sFID",
                "sFID (spatial Fréchet distance, unitless)",
                None,
            ),
            MetricKey::InceptionScore => (
                "inception_score",
                HigherIsBetter,
                Relative(0.02),
                "Inception Score",
                "Inception Score (unitless; whiskers: ± std over splits)",
                Some(MetricKey::InceptionScoreStd),
            ),
            MetricKey::InceptionScoreStd => (
                "inception_score_std",
                Informational,
                Off,
                "Inception Score std",
                "Inception Score std over splits (unitless)",
                None,
            ),
            MetricKey::Precision => (
                "precision",
                HigherIsBetter,
                Absolute(0.02),
                "Precision",
                "Precision (fraction of samples, 0–1)",
                None,
            ),
            MetricKey::Recall => (
                "recall",
                HigherIsBetter,
                Absolute(0.02),
                "Recall",
                "Recall (fraction of reference images, 0–1)",
                None,
            ),
            MetricKey::Density => (
                "density",
                HigherIsBetter,
                Absolute(0.05),
                "Density",
                "Density (unitless; about 1 for matching sets)",
                None,
            ),
            MetricKey::Coverage => (
                "coverage",
                HigherIsBetter,
                Absolute(0.02),
                "Coverage",
                "Coverage (fraction of reference images, 0–1)",
                None,
            ),
            MetricKey::Kid => (
                "kid",
                LowerIsBetter,
                Absolute(0.001),
                "KID",
                "KID (squared MMD, unitless; whiskers: ± std over subsets)",
                Some(MetricKey::KidStd),
            ),
            MetricKey::KidStd => (
                "kid_std",
                Informational,
                Off,
                "KID std",
                "KID std over subsets (squared MMD, unitless)",
                None,
            ),
            MetricKey::Rfid => (
                "rfid",
                LowerIsBetter,
                Relative(0.05),
                "rFID",
                "rFID (reconstruction FID, unitless)",
                None,
            ),
            MetricKey::Psnr => (
                "psnr",
                HigherIsBetter,
                Absolute(0.1),
                "PSNR",
                "PSNR (dB)",
                None,
            ),
            MetricKey::Ssim => (
                "ssim",
                HigherIsBetter,
                Absolute(0.005),
                "SSIM",
                "SSIM (unitless, at most 1)",
                None,
            ),
            MetricKey::SsimLlamagen => (
                "ssim_llamagen",
                HigherIsBetter,
                Absolute(0.005),
                "SSIM (LlamaGen)",
                "SSIM, LlamaGen's variant (unitless, at most 1)",
                None,
            ),
            MetricKey::CodebookUsage => (
                "codebook_usage",
                HigherIsBetter,
                Absolute(0.01),
                "Codebook usage",
                "Codebook usage (fraction of entries used, 0–1)",
                None,
            ),
            MetricKey::CodebookPerplexity => (
                "codebook_perplexity",
                HigherIsBetter,
                Relative(0.02),
                "Codebook perplexity",
                "Codebook perplexity (effective number of codes)",
                None,
            ),
            MetricKey::FidInf => (
                "fid_inf",
                LowerIsBetter,
                Relative(0.05),
                "FID∞",
                "FID extrapolated to infinitely many samples (unitless)",
                None,
            ),
            MetricKey::FdDinov2 => (
                "fd_dinov2",
                LowerIsBetter,
                Relative(0.05),
                "FD_DINOv2",
                "FD_DINOv2 (Fréchet distance of DINOv2 features, unitless)",
                None,
            ),
            MetricKey::FdDinov2Inf => (
                "fd_dinov2_inf",
                LowerIsBetter,
                Relative(0.05),
                "FD_DINOv2∞",
                "FD_DINOv2 extrapolated to infinitely many samples (unitless)",
                None,
            ),
            MetricKey::Dinov2Precision => (
                "dinov2_precision",
                HigherIsBetter,
                Absolute(0.02),
                "Precision (DINOv2)",
                "Precision on DINOv2 features (fraction of samples, 0–1)",
                None,
            ),
            MetricKey::Dinov2Recall => (
                "dinov2_recall",
                HigherIsBetter,
                Absolute(0.02),
                "Recall (DINOv2)",
                "Recall on DINOv2 features (fraction of reference images, 0–1)",
                None,
            ),
            MetricKey::Dinov2Density => (
                "dinov2_density",
                HigherIsBetter,
                Absolute(0.05),
                "Density (DINOv2)",
                "Density on DINOv2 features (unitless; about 1 for matching sets)",
                None,
            ),
            MetricKey::Dinov2Coverage => (
                "dinov2_coverage",
                HigherIsBetter,
                Absolute(0.02),
                "Coverage (DINOv2)",
                "Coverage on DINOv2 features (fraction of reference images, 0–1)",
                None,
            ),
            MetricKey::Cmmd => (
                "cmmd",
                LowerIsBetter,
                Relative(0.05),
                "CMMD",
                "CMMD (MMD of CLIP embeddings x 1000, unitless)",
                None,
            ),
            MetricKey::ClipScore => (
                "clip_score",
                HigherIsBetter,
                Absolute(0.5),
                "CLIP score",
                "CLIP score (100 x cosine of image and caption, 0–100; whiskers: ± std)",
                Some(MetricKey::ClipScoreStd),
            ),
            MetricKey::ClipScoreStd => (
                "clip_score_std",
                Informational,
                Off,
                "CLIP score std",
                "CLIP score std over samples (0–100)",
                None,
            ),
        };
        Info {
            name,
            direction,
            tolerance,
            short,
            axis,
            std,
        }
    }

    /// The key of `metrics.json` and the column of `metrics.csv` (e.g. `inception_score`).
    pub const fn name(self) -> &'static str {
        self.info().name
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
        self.info().direction
    }

    /// How far `check` lets the metric worsen when neither the baseline nor `--tolerance` says.
    pub const fn default_tolerance(self) -> Tolerance {
        self.info().tolerance
    }

    /// A short label for titles and legends (e.g. `Inception Score`).
    pub const fn short_label(self) -> &'static str {
        self.info().short
    }

    /// A chart axis label with the metric's units (e.g. `PSNR (dB)`).
    pub const fn axis_label(self) -> &'static str {
        self.info().axis
    }

    /// The spread recorded with the metric (`kid_std` for `kid`), drawn as whiskers on its bars.
    pub const fn std_companion(self) -> Option<MetricKey> {
        self.info().std
    }
}

impl std::fmt::Display for MetricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    fn tolerances_parse_and_print() {
        assert_eq!(Tolerance::parse("0.05").unwrap(), Tolerance::Absolute(0.05));
        assert_eq!(Tolerance::parse(" 2% ").unwrap(), Tolerance::Relative(0.02));
        assert_eq!(Tolerance::parse("OFF").unwrap(), Tolerance::Off);
        for bad in ["x", "-1", "1%%", "inf"] {
            assert!(Tolerance::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Tolerance::Relative(0.05).to_string(), "5%");
        assert_eq!(Tolerance::Relative(0.1).allowed(-20.0), 2.0);
        assert_eq!(Tolerance::Off.allowed(1.0), f64::INFINITY);
    }
}
