//! The attack alarm: a per-face manifold score from what purification already produces.
//!
//! A-VAE's premise (paper, section 3.1) is that adversarial faces lower the likelihood bound:
//! off-manifold perturbations raise the reconstruction error (the distance of the nearest
//! candidate to the input), on-manifold ones the KL of the posterior. The score is a weighted
//! sum of standardised log features; the bundle's manifest stores the weights, the clean
//! faces' means and deviations, and the thresholds at 1% and 5% clean false-alarm rate, all
//! fitted by `trainer export` on clean training faces only.
//!
//! The finest band of a sharp face grows as the face gets smaller (its detail moves into the
//! band), so the native feature's clean mean and deviation are also stored per face width
//! ([`AlarmParams::native_sizes`], fitted on the same clean photos downscaled), and a face read
//! from a frame is standardised at its own width.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::purifier::Purified;

/// A signal the score can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// `ln` of the nearest candidate's mean squared distance to the input face.
    LogDistance,
    /// `ln` of the posterior mean's KL divergence from the prior (mean per dimension).
    LogKl,
    /// `ln` of the input's detail above the encoder's resolution.
    LogDetail,
    /// `ln` of the chosen candidate's distance to the input at the encoder's resolution.
    LogDistanceCoarse,
    /// `ln` of the input's detail over the chosen candidate's: extra detail the model cannot
    /// explain for this face.
    LogDetailRatio,
    /// `ln` of the input's finest band over the band below it, at the input's own resolution
    /// (the frame over the face's region, [`crate::core::band`]): where sign-like
    /// perturbations live before the warp to the purifier's side averages them away.
    LogNativeDetailRatio,
}

impl Feature {
    /// Every feature, in a fixed order.
    pub const ALL: [Feature; 6] = [
        Feature::LogDistance,
        Feature::LogKl,
        Feature::LogDetail,
        Feature::LogDistanceCoarse,
        Feature::LogDetailRatio,
        Feature::LogNativeDetailRatio,
    ];

    /// The feature's value for one purified face.
    pub fn value(self, p: &Purified) -> f32 {
        match self {
            Feature::LogDistance => p.distance.max(1e-12).ln(),
            Feature::LogKl => p.kl.max(1e-12).ln(),
            Feature::LogDetail => p.detail.max(1e-12).ln(),
            Feature::LogDistanceCoarse => p.distance_coarse.max(1e-12).ln(),
            Feature::LogDetailRatio => log_ratio(p.detail, p.detail_candidate),
            Feature::LogNativeDetailRatio => log_ratio(p.native_fine, p.native_mid),
        }
    }
}

/// `ln(a) - ln(b)`, each floored at 1e-12.
fn log_ratio(a: f32, b: f32) -> f32 {
    a.max(1e-12).ln() - b.max(1e-12).ln()
}

/// The finest-band figures of a face read from its frame ([`crate::frame::native_bands`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NativeBands {
    /// Mean square of the finest band over the face's region.
    pub fine: f32,
    /// Mean square of the band below it.
    pub mid: f32,
    /// Width in frame pixels of the face's `S x S` crop (0: unknown).
    pub width: f32,
}

impl NativeBands {
    /// [`Feature::LogNativeDetailRatio`] of these figures.
    pub fn log_ratio(&self) -> f32 {
        log_ratio(self.fine, self.mid)
    }
}

/// The native feature's clean statistics at one face width.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SizePoint {
    /// Width in frame pixels of the face's `S x S` crop (the median over the faces fitted).
    pub width: f32,
    /// Mean of [`Feature::LogNativeDetailRatio`] over the clean faces at this width.
    pub mean: f32,
    /// Its standard deviation.
    pub std: f32,
}

/// The alarm of a bundle (`manifest.json`, `alarm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmParams {
    /// The features combined.
    pub features: Vec<Feature>,
    /// Their means over the clean calibration faces.
    pub mean: Vec<f32>,
    /// Their standard deviations over the clean calibration faces.
    pub std: Vec<f32>,
    /// Their weights in the score.
    pub weights: Vec<f32>,
    /// Score above which 1% of clean calibration faces raise the alarm.
    pub threshold_1: f32,
    /// Score above which 5% of clean calibration faces raise the alarm.
    pub threshold_5: f32,
    /// How the parameters were fitted (faces, M, tau, seed), for people reading the manifest.
    #[serde(default)]
    pub calibration: String,
    /// The native feature's clean mean and deviation by face width, widths ascending: a face
    /// read from a frame is standardised with the values interpolated at its width (linearly
    /// in the log of the width, held at the ends) instead of `mean` and `std`. Empty (older
    /// bundles, crops without a frame): `mean` and `std` at every size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub native_sizes: Vec<SizePoint>,
}

impl AlarmParams {
    /// Whether the score weighs `feature` (listed with a weight other than zero).
    pub fn uses(&self, feature: Feature) -> bool {
        self.features
            .iter()
            .zip(&self.weights)
            .any(|(f, w)| *f == feature && *w != 0.0)
    }

    /// The score of one purified face: `sum_i w_i (f_i - mean_i) / std_i`, the native
    /// feature's mean and deviation taken at the face's width ([`AlarmParams::native_sizes`]).
    pub fn score(&self, p: &Purified) -> f32 {
        self.standardised_sum(p.native_width, |f| f.value(p))
    }

    /// The native feature's clean `(mean, std)` at face width `width` (frame pixels):
    /// interpolated in [`AlarmParams::native_sizes`], or `fallback` without a table or width.
    fn native_stats(&self, width: f32, fallback: (f32, f32)) -> (f32, f32) {
        let table = &self.native_sizes;
        let (Some(first), Some(last)) = (table.first(), table.last()) else {
            return fallback;
        };
        if !(width > 0.0 && width.is_finite()) {
            return fallback;
        }
        if width <= first.width {
            return (first.mean, first.std);
        }
        if width >= last.width {
            return (last.mean, last.std);
        }
        let i = table.partition_point(|p| p.width <= width);
        let (lo, hi) = (table[i - 1], table[i]);
        let t = (width.ln() - lo.width.ln()) / (hi.width.ln() - lo.width.ln()).max(1e-6);
        (
            lo.mean + t * (hi.mean - lo.mean),
            lo.std + t * (hi.std - lo.std),
        )
    }

    /// Whether the score weighs no feature but the finest band read from the frame, so that a
    /// face can be scored before it is purified ([`AlarmParams::native_score`]).
    pub fn scores_from_the_frame(&self) -> bool {
        Feature::ALL
            .iter()
            .all(|&f| f == Feature::LogNativeDetailRatio || !self.uses(f))
    }

    /// The score of a face from its finest-band figures `(fine, mid)` alone, read before
    /// purification; `None` when the score weighs a feature that purification produces.
    pub fn native_score(&self, bands: NativeBands) -> Option<f32> {
        if !self.scores_from_the_frame() {
            return None;
        }
        let value = bands.log_ratio();
        // The other features' weights are zero: their values do not count.
        Some(self.standardised_sum(bands.width, |f| {
            if f == Feature::LogNativeDetailRatio {
                value
            } else {
                0.0
            }
        }))
    }

    /// `sum_i w_i (value(f_i) - mean_i) / std_i`, the native feature's statistics taken at
    /// face width `width`.
    fn standardised_sum(&self, width: f32, value: impl Fn(Feature) -> f32) -> f32 {
        self.features
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .zip(&self.weights)
            .map(|(((f, &m), &s), w)| {
                let (m, s) = if *f == Feature::LogNativeDetailRatio {
                    self.native_stats(width, (m, s))
                } else {
                    (m, s)
                };
                w * (value(*f) - m) / s.max(1e-6)
            })
            .sum()
    }

    /// Checks lengths and values; the error names the manifest field.
    pub fn validate(&self) -> Result<(), Error> {
        let n = self.features.len();
        let bad = |value: String, expected: &'static str| Error::InvalidParameter {
            name: "alarm",
            value,
            expected,
        };
        if n == 0 || self.mean.len() != n || self.std.len() != n || self.weights.len() != n {
            return Err(bad(
                format!(
                    "{n} features, {} means, {} deviations, {} weights",
                    self.mean.len(),
                    self.std.len(),
                    self.weights.len()
                ),
                "at least one feature, with one mean, deviation and weight each",
            ));
        }
        let values = self
            .mean
            .iter()
            .chain(&self.weights)
            .chain([&self.threshold_1, &self.threshold_5]);
        if values.clone().any(|v| !v.is_finite())
            || self.std.iter().any(|s| s.is_nan() || *s <= 0.0)
        {
            return Err(bad(
                format!("{self:?}"),
                "finite means, weights and thresholds, and positive deviations",
            ));
        }
        let sizes = &self.native_sizes;
        let finite_positive = |v: f32| v > 0.0 && v.is_finite();
        if sizes
            .iter()
            .any(|p| !(finite_positive(p.width) && p.mean.is_finite() && finite_positive(p.std)))
            || sizes.windows(2).any(|w| w[0].width >= w[1].width)
        {
            return Err(Error::InvalidParameter {
                name: "alarm.native_sizes",
                value: format!("{sizes:?}"),
                expected: "points of positive finite width, strictly ascending, each with a \
                           finite mean and a positive finite deviation",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(distance: f32, kl: f32) -> Purified {
        Purified {
            distance,
            candidate: 0,
            clipped: false,
            kl,
            detail: 1e-3,
            distance_coarse: 1e-3,
            detail_candidate: 1e-3,
            native_fine: 1e-3,
            native_mid: 1e-3,
            native_width: 0.0,
        }
    }

    fn params() -> AlarmParams {
        AlarmParams {
            features: vec![Feature::LogDistance, Feature::LogKl],
            mean: vec![(0.01f32).ln(), 1.0f32.ln()],
            std: vec![0.5, 0.25],
            weights: vec![1.0, 0.5],
            threshold_1: 2.3,
            threshold_5: 1.6,
            calibration: String::new(),
            native_sizes: Vec::new(),
        }
    }

    #[test]
    fn the_score_standardises_and_weighs_the_log_features() {
        let p = params();
        assert!(p.score(&face(0.01, 1.0)).abs() < 1e-6);
        // Distance e times the mean: +1 / 0.5 = 2; KL at the mean: 0.
        let s = p.score(&face(0.01 * std::f32::consts::E, 1.0));
        assert!((s - 2.0).abs() < 1e-4, "{s}");
        // A larger reconstruction error scores higher.
        assert!(p.score(&face(0.05, 1.0)) > p.score(&face(0.02, 1.0)));
        // Zero and NaN-free at the extremes.
        assert!(p.score(&face(0.0, 0.0)).is_finite());
    }

    #[test]
    fn a_feature_is_used_when_listed_with_a_weight() {
        let mut p = params();
        assert!(p.uses(Feature::LogDistance) && p.uses(Feature::LogKl));
        assert!(!p.uses(Feature::LogNativeDetailRatio));
        p.weights[1] = 0.0;
        assert!(!p.uses(Feature::LogKl));
    }

    #[test]
    fn the_native_score_needs_only_the_finest_band() {
        // An alarm that weighs purification's own signals cannot score before purification.
        let bands = |fine, mid| NativeBands {
            fine,
            mid,
            width: 0.0,
        };
        assert_eq!(params().native_score(bands(1e-3, 1e-3)), None);
        let mut p = params();
        p.features.push(Feature::LogNativeDetailRatio);
        p.mean.push(1.0);
        p.std.push(0.5);
        p.weights.push(2.0);
        assert_eq!(p.native_score(bands(1e-3, 1e-3)), None);
        p.weights[0] = 0.0;
        p.weights[1] = 0.0;
        // ln(e^2 x / x) = 2: (2 - 1) / 0.5 * 2 = 4, as the full score says.
        let (fine, mid) = (2f32.exp() * 1e-3, 1e-3);
        let pre = p.native_score(bands(fine, mid)).unwrap();
        assert!((pre - 4.0).abs() < 1e-4, "{pre}");
        let mut full = face(0.02, 3.0);
        full.set_native_bands(bands(fine, mid));
        assert!((p.score(&full) - pre).abs() < 1e-4);
    }

    /// The native-only alarm with a size table: mean 1 (std 0.5) at 100 px and over, mean 2
    /// (std 1) at 25 px and under.
    fn sized() -> AlarmParams {
        AlarmParams {
            features: vec![Feature::LogNativeDetailRatio],
            mean: vec![1.0],
            std: vec![0.5],
            weights: vec![1.0],
            threshold_1: 2.0,
            threshold_5: 1.0,
            calibration: String::new(),
            native_sizes: vec![
                SizePoint {
                    width: 25.0,
                    mean: 2.0,
                    std: 1.0,
                },
                SizePoint {
                    width: 100.0,
                    mean: 1.0,
                    std: 0.5,
                },
            ],
        }
    }

    #[test]
    fn a_face_is_standardised_at_its_width() {
        let p = sized();
        // ln ratio 2 = e^2 fine over mid.
        let at = |width| {
            p.native_score(NativeBands {
                fine: 2f32.exp(),
                mid: 1.0,
                width,
            })
            .unwrap()
        };
        // At and above the largest width: (2 - 1) / 0.5.
        assert!((at(100.0) - 2.0).abs() < 1e-4, "{}", at(100.0));
        assert!((at(400.0) - 2.0).abs() < 1e-4);
        // At and below the smallest: (2 - 2) / 1.
        assert!(at(25.0).abs() < 1e-4 && at(10.0).abs() < 1e-4);
        // Halfway in log width (50 px): mean 1.5, std 0.75.
        assert!((at(50.0) - 0.5 / 0.75).abs() < 1e-4, "{}", at(50.0));
        // Unknown width (a crop without its frame): the flat mean and deviation.
        assert!((at(0.0) - 2.0).abs() < 1e-4);
        // The full score agrees.
        let mut full = face(0.02, 3.0);
        full.set_native_bands(NativeBands {
            fine: 2f32.exp(),
            mid: 1.0,
            width: 50.0,
        });
        assert!((p.score(&full) - at(50.0)).abs() < 1e-5);
        // A smaller face needs more detail to score as high.
        assert!(at(30.0) < at(60.0) && at(60.0) < at(90.0));
    }

    #[test]
    fn a_bundle_without_a_size_table_still_loads() {
        let mut p = sized();
        p.native_sizes.clear();
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("native_sizes"), "{json}");
        let back: AlarmParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        let json = serde_json::to_string(&sized()).unwrap();
        assert_eq!(serde_json::from_str::<AlarmParams>(&json).unwrap(), sized());
    }

    #[test]
    fn bad_parameters_name_the_field() {
        let mut p = params();
        p.weights.pop();
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("alarm"), "{err}");
        let mut p = params();
        p.std[0] = 0.0;
        assert!(p.validate().is_err());
        assert!(params().validate().is_ok());
        assert!(sized().validate().is_ok());
        let mut p = sized();
        p.native_sizes.reverse();
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("alarm.native_sizes"), "{err}");
        let mut p = sized();
        p.native_sizes[0].std = 0.0;
        assert!(p.validate().is_err());
    }
}
