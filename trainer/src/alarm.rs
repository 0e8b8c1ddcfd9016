//! Fitting and measuring the attack alarm ([`gstavaepurify::alarm`]).
//!
//! The score's parameters are fitted on clean faces only: each feature is standardised by its
//! clean mean and deviation, the combination's weights are fixed in advance ([`COMBINATIONS`]),
//! and the thresholds are the clean scores' 99th and 95th percentiles (1% and 5% clean false
//! alarms). Which combination ships is chosen by an experiment on one attack family (grey-box
//! FGSM, in the lab) and reported on the others.

use gstavaepurify::alarm::{AlarmParams, Feature};
use gstavaepurify::purifier::Purified;
use serde::Serialize;

/// The combinations compared: name and weights over [`Feature::ALL`].
pub const COMBINATIONS: [(&str, [f32; 6]); 13] = [
    ("distance", [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    ("kl", [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
    ("detail", [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
    ("coarse", [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    ("detail-ratio", [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
    ("distance+detail", [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
    ("detail+coarse", [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
    ("detail-ratio+coarse", [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]),
    ("detail-ratio+kl", [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
    ("detail-ratio+distance", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
    ("native", [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    ("native+detail-ratio", [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]),
    ("all", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
];

/// The attack family the combination is chosen on.
pub const CHOSEN_ON: &str = "fgsm8";

/// Mean and (population) standard deviation of `values`.
fn mean_std(values: &[f32]) -> (f32, f32) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, var.sqrt().max(1e-6) as f32)
}

/// The `q`-quantile (0 to 1) of `values` (nearest rank).
fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f32::INFINITY;
    }
    v.sort_by(f32::total_cmp);
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[k]
}

/// The alarm for `weights`, fitted on the clean faces `clean`; `calibration` says how.
pub fn fit(clean: &[Purified], weights: [f32; 6], calibration: String) -> AlarmParams {
    let mut params = AlarmParams {
        features: Feature::ALL.to_vec(),
        mean: Vec::new(),
        std: Vec::new(),
        weights: weights.to_vec(),
        threshold_1: 0.0,
        threshold_5: 0.0,
        calibration,
    };
    for f in Feature::ALL {
        let values: Vec<f32> = clean.iter().map(|p| f.value(p)).collect();
        let (m, s) = mean_std(&values);
        params.mean.push(m);
        params.std.push(s);
    }
    let scores: Vec<f32> = clean.iter().map(|p| params.score(p)).collect();
    params.threshold_1 = quantile(&scores, 0.99);
    params.threshold_5 = quantile(&scores, 0.95);
    params
}

/// Area under the ROC curve of `positives` (attacked) against `negatives` (clean) scores: the
/// probability that an attacked face scores above a clean one, ties counting half.
pub fn auc(negatives: &[f32], positives: &[f32]) -> f64 {
    if negatives.is_empty() || positives.is_empty() {
        return f64::NAN;
    }
    let mut neg: Vec<f32> = negatives.to_vec();
    neg.sort_by(f32::total_cmp);
    let mut total = 0.0;
    for &p in positives {
        let below = neg.partition_point(|&n| n < p);
        let not_above = neg.partition_point(|&n| n <= p);
        total += below as f64 + 0.5 * (not_above - below) as f64;
    }
    total / (neg.len() as f64 * positives.len() as f64)
}

/// Fraction of `scores` above `threshold`.
pub fn rate_above(scores: &[f32], threshold: f32) -> f64 {
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len().max(1) as f64
}

/// Alarm figures of one attack for one combination.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmFigures {
    /// ROC AUC, attacked probes against clean probes.
    pub auc: f64,
    /// Detection rate at the 1% clean false-alarm threshold.
    pub tpr_1: f64,
    /// Detection rate at the 5% clean false-alarm threshold.
    pub tpr_5: f64,
    /// Fraction of attacked pairs flagged at the 1% threshold or verified correctly after
    /// purification.
    pub combined: f64,
}

/// The figures of attacked probes `attacked` (with per-pair correctness `correct` after
/// purification) against the clean probes `clean`, for `params`.
pub fn figures(
    params: &AlarmParams,
    clean: &[Purified],
    attacked: &[Purified],
    correct: &[bool],
) -> AlarmFigures {
    let neg: Vec<f32> = clean.iter().map(|p| params.score(p)).collect();
    let pos: Vec<f32> = attacked.iter().map(|p| params.score(p)).collect();
    let combined = pos
        .iter()
        .zip(correct)
        .filter(|(s, c)| **s > params.threshold_1 || **c)
        .count() as f64
        / pos.len().max(1) as f64;
    AlarmFigures {
        auc: auc(&neg, &pos),
        tpr_1: rate_above(&pos, params.threshold_1),
        tpr_5: rate_above(&pos, params.threshold_5),
        combined,
    }
}

/// The finest-band figures `(fine, mid)` `[N]` of images `x` (`[N, C, H, W]`) over the whole
/// image, in tch and differentiable, as [`gstavaepurify::core::band::crop_bands`] reads a crop:
/// the mean square of the image minus its 3x3 box mean, and of that mean minus its own 3x3 box
/// mean (box means over the neighbours inside the image).
pub fn native_bands(x: &tch::Tensor) -> (tch::Tensor, tch::Tensor) {
    let blur = |t: &tch::Tensor| t.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>);
    let dims = [1i64, 2, 3];
    let b = blur(x);
    let fine = (x - &b)
        .square()
        .mean_dim(dims.as_slice(), false, tch::Kind::Float);
    let mid = (&b - blur(&b))
        .square()
        .mean_dim(dims.as_slice(), false, tch::Kind::Float);
    (fine, mid)
}

/// Clean training faces the alarm is calibrated on.
pub const CALIBRATION_FACES: usize = 512;

/// The combination `trainer export` and `trainer alarm` fit by default (chosen on FGSM 8 in
/// the lab, see the README's alarm section).
pub const DEFAULT_COMBINATION: &str = "native";

/// The weights of the combination `name`; the error lists the known ones.
pub fn combination(name: &str) -> anyhow::Result<[f32; 6]> {
    COMBINATIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown alarm score '{name}': expected one of {}",
                COMBINATIONS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Up to `faces` training faces of `set`, evenly spread: the only faces the alarm is
/// calibrated on.
pub fn training_indices(set: &crate::data::FaceSet, faces: usize) -> anyhow::Result<Vec<i64>> {
    let train = set.indices(crate::data::Split::Train);
    anyhow::ensure!(!train.is_empty(), "the crop cache has no training faces");
    let step = (train.len() / faces.max(1)).max(1);
    Ok(train.iter().step_by(step).take(faces).copied().collect())
}

/// Fits the alarm of the bundle in `dir` on up to `faces` clean training faces of `set`
/// (evenly spread), purified by the plugin's own code at `samples` candidates and the
/// bundle's tau, each face seeded from `seed`; and writes it into the bundle's manifest.
///
/// When the bundle has a landmark template and the faces' photos are LFW's 250 x 250 images,
/// the faces are cut out of their photos as the element cuts them (CenterFace landmarks onto
/// the template, [`gstavaepurify::frame::purify_faces`]), because the score depends on how the
/// crop was resampled; otherwise the cache's crops are purified as they are.
pub fn calibrate_bundle(
    dir: &std::path::Path,
    set: &crate::data::FaceSet,
    faces: usize,
    samples: usize,
    score: &str,
    seed: u64,
) -> anyhow::Result<AlarmParams> {
    use anyhow::Context;
    use gstavaepurify::engine::Backend;
    use gstavaepurify::purifier::PurifyParams;

    use crate::defense::{AVaeDefense, Defense};

    let weights = combination(score)?;
    let bundle = gstavaepurify::bundle::Bundle::load(dir)
        .with_context(|| format!("cannot load the bundle '{}'", dir.display()))?;
    let chosen = training_indices(set, faces)?;
    let params = PurifyParams {
        samples,
        batch: 64,
        tau: bundle.manifest.tau,
    };
    let mut defense = Defense::AVae(Box::new(AVaeDefense::load(dir, Backend::Auto, params, 1)?));
    let seeds: Vec<u64> = (0..chosen.len() as u64)
        .map(|i| seed.wrapping_add(i))
        .collect();
    let template = bundle.manifest.landmark_template;
    let photos = match template {
        Some(_) => crate::threat::load_photos(set, &chosen).ok(),
        None => None,
    };
    let how = match photos {
        Some(photos) => {
            let root = std::path::Path::new(&set.index.source);
            let paths: Vec<std::path::PathBuf> = chosen
                .iter()
                .map(|&k| root.join(&set.index.images[k as usize].file))
                .collect();
            let landmarks = crate::recognizer::detect_landmarks(&paths)?;
            let placements = crate::threat::placements(
                &landmarks,
                template.as_ref(),
                &set.index.crop,
                bundle.manifest.image_size,
            )?;
            // What is pasted back plays no part here: the score reads the crop only.
            let pipeline = crate::threat::PastePipeline {
                passes: 1,
                ..crate::threat::PastePipeline::new(
                    bundle.manifest.image_size,
                    0.15,
                    0.0,
                    bundle.manifest.encoder_input_size,
                )
            };
            let bar = crate::data::progress_bar(chosen.len() as u64, "alarm calibration");
            for start in (0..chosen.len()).step_by(16) {
                let len = 16.min(chosen.len() - start);
                // Only the log of what purification chose is needed, not the photos.
                let _photos = pipeline.apply(
                    &mut defense,
                    &photos.narrow(0, start as i64, len as i64),
                    &placements[start..start + len],
                    &seeds[start..start + len],
                )?;
                bar.inc(len as u64);
            }
            bar.finish();
            "aligned out of their photos as the element aligns them"
        }
        None => {
            let pixels = crate::data::to_unit_range(&set.select(&chosen));
            let _faces = defense.apply(&pixels, &seeds)?;
            "as the cache's crops"
        }
    };
    let clean = match &mut defense {
        Defense::AVae(avae) => avae.take_log(),
        _ => Vec::new(),
    };
    anyhow::ensure!(
        clean.len() == chosen.len(),
        "purified {} of {} calibration faces",
        clean.len(),
        chosen.len()
    );
    let alarm = fit(
        &clean,
        weights,
        format!(
            "score '{score}' fitted on {} clean training faces ({how}), M = {samples}, tau = {}, \
             seed {seed}",
            clean.len(),
            params.tau
        ),
    );
    crate::export::write_alarm(dir, alarm.clone())?;
    Ok(alarm)
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
        }
    }

    #[test]
    fn auc_is_one_for_separated_scores_and_half_for_identical_ones() {
        assert_eq!(auc(&[0.0, 1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(auc(&[1.0, 1.0], &[1.0, 1.0]), 0.5);
        assert_eq!(auc(&[3.0, 4.0], &[0.0, 1.0]), 0.0);
        // The report's ROC curve serves the alarm too: attacked faces are the positives.
        let curve = crate::report::roc(&[0.0, 1.0, 2.0, 3.0], &[false, false, true, true]);
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
        assert!(curve.contains(&(0.0, 1.0)));
    }

    #[test]
    fn the_fitted_thresholds_flag_about_one_and_five_percent_of_clean_faces() {
        let clean: Vec<Purified> = (0..1000)
            .map(|i| face(0.001 * (1.0 + (i as f32 * 0.618).fract()), 0.5))
            .collect();
        let p = fit(&clean, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0], "test".into());
        let scores: Vec<f32> = clean.iter().map(|c| p.score(c)).collect();
        let r1 = rate_above(&scores, p.threshold_1);
        let r5 = rate_above(&scores, p.threshold_5);
        assert!(r1 <= 0.011 && (0.04..=0.051).contains(&r5), "{r1} {r5}");
        // Faces with a much larger reconstruction error are flagged.
        let attacked = vec![face(0.01, 0.5); 10];
        let f = figures(&p, &clean, &attacked, &[false; 10]);
        assert_eq!((f.auc, f.tpr_1, f.combined), (1.0, 1.0, 1.0));
        assert!(p.validate().is_ok());
    }
}
