//! Fitting and measuring the attack alarm ([`gstavaepurify::alarm`]).
//!
//! The score's parameters are fitted on clean faces only: each feature is standardised by its
//! clean mean and deviation, the combination's weights are fixed in advance ([`COMBINATIONS`]),
//! and the thresholds are the clean scores' 99th and 95th percentiles (1% and 5% clean false
//! alarms). Which combination ships is chosen by an experiment on one attack family (grey-box
//! FGSM, in the lab) and reported on the others.
//!
//! The native feature (the finest band read from the frame) rises on sharp small faces, so a
//! score that weighs it alone is also fitted by face width ([`fit_sizes`]): the same clean
//! photos are area-downscaled (as a camera further away would see them), rounded to 8 bits and
//! read again, and the thresholds are set so that no width has more than 1% (5%) of its clean
//! faces over them; [`size_check`] measures
//! the clean false alarms at each width on held-out (test-split) photos with and without it.

use gstavaepurify::alarm::{AlarmParams, Feature, NativeBands, SizePoint};
use gstavaepurify::core::image::{FrameRef, PixelLayout, Region};
use gstavaepurify::frame::Placement;
use gstavaepurify::purifier::Purified;
use serde::Serialize;
use tch::{Kind, Tensor};

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
        native_sizes: Vec::new(),
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

/// The photo scales (fractions of each side) at which the native feature is fitted by face
/// width: from LFW's own (a face crop of about 110 px) down to a quarter (about 28 px), a
/// quarter octave apart.
pub const SIZE_FACTORS: [f32; 9] = [1.0, 0.84, 0.71, 0.59, 0.5, 0.42, 0.35, 0.3, 0.25];

/// `placement` in a photo scaled by `k` (each side times `k`).
fn scaled(placement: &Placement, k: f32) -> Placement {
    let region = |r: &Region| Region {
        x: (r.x as f32 * k).round() as usize,
        y: (r.y as f32 * k).round() as usize,
        width: ((r.width as f32 * k).round() as usize).max(1),
        height: ((r.height as f32 * k).round() as usize).max(1),
    };
    match placement {
        Placement::Frame(r) => Placement::Frame(region(r)),
        Placement::Box(r) => Placement::Box(region(r)),
        // Frame point p' = k p maps to the face where p did: a and b shrink by k.
        Placement::Aligned(t) => Placement::Aligned(gstavaepurify::core::align::Similarity {
            a: t.a / k,
            b: t.b / k,
            ..*t
        }),
    }
}

/// `[to, from]` weights of an exact area downscale of `from` samples to `to`: each output
/// sample averages the input samples under its interval, each weighted by its overlap.
fn area_weights(from: i64, to: i64) -> Tensor {
    let k = from as f64 / to as f64;
    let mut w = vec![0f32; (to * from) as usize];
    for o in 0..to {
        let (a, b) = (o as f64 * k, (o + 1) as f64 * k);
        for i in (a.floor() as i64)..(b.ceil() as i64).min(from) {
            let overlap = (b.min((i + 1) as f64) - a.max(i as f64)).max(0.0);
            w[(o * from + i) as usize] = (overlap / k) as f32;
        }
    }
    Tensor::from_slice(&w).view([to, from])
}

/// The native figures ([`gstavaepurify::frame::native_bands`]) of the face `placements[i]` of
/// each photo of `photos` (`[N, 3, H, W]` in [-1, 1]) after the photos are area-downscaled by
/// `factor` (each side), given random-sign noise of `noise` (in [-1, 1] units) where asked,
/// and rounded to 8 bits, as the element would read them in a frame with faces that much
/// smaller; `side` is the bundle's crop side.
pub fn bands_at_scale(
    photos: &Tensor,
    placements: &[Placement],
    side: usize,
    factor: f32,
    noise: Option<f32>,
) -> anyhow::Result<Vec<NativeBands>> {
    let size = photos.size();
    anyhow::ensure!(
        size.len() == 4 && size[1] == 3 && size[0] as usize == placements.len(),
        "{} placements for photos of shape {size:?}",
        placements.len()
    );
    let (h, w) = (size[2], size[3]);
    let (sh, sw) = (
        ((h as f32 * factor).round() as i64).max(8),
        ((w as f32 * factor).round() as i64).max(8),
    );
    let k = sw as f32 / w as f32;
    let small = tch::no_grad(|| {
        let x = photos.to_kind(Kind::Float);
        // Exact area average: rows then columns.
        let x = area_weights(h, sh)
            .matmul(&x)
            .matmul(&area_weights(w, sw).tr());
        match noise {
            Some(eps) => {
                let sign = Tensor::rand_like(&x).ge(0.5).to_kind(Kind::Float) * 2.0 - 1.0;
                (x + sign * f64::from(eps)).clamp(-1.0, 1.0)
            }
            None => x,
        }
    });
    let bytes = crate::threat::rgb_bytes(&small)?;
    let (sh, sw) = (sh as usize, sw as usize);
    bytes
        .chunks(3 * sh * sw)
        .zip(placements)
        .map(|(data, p)| {
            let frame = FrameRef::new(data, sw, sh, 3 * sw, PixelLayout::Rgb)?;
            let placed = scaled(p, k);
            Ok(gstavaepurify::frame::native_bands(&frame, std::iter::once(&placed), side)[0])
        })
        .collect()
}

/// Sets `alarm`'s native size table from the clean figures `by_scale` (one list of faces per
/// photo scale; each scale becomes a point at its faces' median width) and takes the
/// thresholds again so that no scale has more than 1% (5%) of its clean faces over them. Only for an alarm that scores from
/// the frame alone ([`AlarmParams::scores_from_the_frame`]); otherwise nothing changes and
/// `false` is returned.
pub fn fit_sizes(alarm: &mut AlarmParams, by_scale: &[Vec<NativeBands>]) -> bool {
    if !alarm.scores_from_the_frame() || by_scale.iter().all(Vec::is_empty) {
        return false;
    }
    let mut points: Vec<SizePoint> = by_scale
        .iter()
        .filter(|faces| !faces.is_empty())
        .map(|faces| {
            let values: Vec<f32> = faces.iter().map(NativeBands::log_ratio).collect();
            let (mean, std) = mean_std(&values);
            SizePoint {
                width: median_width(faces),
                mean,
                std,
            }
        })
        .collect();
    points.sort_by(|a, b| a.width.total_cmp(&b.width));
    points.dedup_by(|a, b| a.width <= b.width);
    alarm.native_sizes = points;
    // Each threshold is the highest of the scales' own quantiles: at most 1% (5%) of the clean
    // faces of every width over it, not 1% of all of them together.
    let at = |q: f64| {
        by_scale
            .iter()
            .filter(|faces| !faces.is_empty())
            .map(|faces| quantile(&native_scores(alarm, faces), q))
            .fold(f32::NEG_INFINITY, f32::max)
    };
    (alarm.threshold_1, alarm.threshold_5) = (at(0.99), at(0.95));
    true
}

/// `alarm`'s scores of `faces` read from their frames (none for an alarm that needs
/// purification's signals).
fn native_scores(alarm: &AlarmParams, faces: &[NativeBands]) -> Vec<f32> {
    faces
        .iter()
        .filter_map(|b| alarm.native_score(*b))
        .collect()
}

/// The median face crop width of `faces` (0 when there are none).
fn median_width(faces: &[NativeBands]) -> f32 {
    let mut widths: Vec<f32> = faces.iter().map(|b| b.width).collect();
    widths.sort_by(f32::total_cmp);
    widths.get(widths.len() / 2).copied().unwrap_or(0.0)
}

/// Clean false alarms at one photo scale, by [`size_check`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeCheck {
    /// The photo scale.
    pub factor: f32,
    /// Median face crop width in pixels at that scale.
    pub width: f32,
    /// Fraction of the faces over `threshold_1` without the size table.
    pub flat_1: f64,
    /// Fraction over `threshold_1` with it.
    pub sized_1: f64,
    /// Fraction over `threshold_5` with it.
    pub sized_5: f64,
    /// Fraction of the same faces with random-sign noise of 8/255 flagged at `threshold_1`
    /// with the table (not an attack: what an FGSM-like pattern does to the finest band).
    pub noise_1: f64,
}

/// The clean false-alarm rates of `flat` (the alarm without its size table) and `sized` (with
/// it) at each scale of `by_scale` (faces read by [`bands_at_scale`] at `factors`), and the
/// detection rate of `sized` on `noisy` (the same faces with random-sign noise).
pub fn size_check(
    flat: &AlarmParams,
    sized: &AlarmParams,
    factors: &[f32],
    by_scale: &[Vec<NativeBands>],
    noisy: &[Vec<NativeBands>],
) -> Vec<SizeCheck> {
    factors
        .iter()
        .zip(by_scale)
        .zip(noisy)
        .map(|((&factor, faces), noisy)| {
            let (f, s) = (native_scores(flat, faces), native_scores(sized, faces));
            SizeCheck {
                factor,
                width: median_width(faces),
                flat_1: rate_above(&f, flat.threshold_1),
                sized_1: rate_above(&s, sized.threshold_1),
                sized_5: rate_above(&s, sized.threshold_5),
                noise_1: rate_above(&native_scores(sized, noisy), sized.threshold_1),
            }
        })
        .collect()
}

/// `checks` as a markdown table.
pub fn size_check_markdown(checks: &[SizeCheck]) -> String {
    let mut out = String::from(
        "| photo scale | face crop width (px) | clean over the 1% threshold, flat | with the size \
         table | clean over the 5% threshold, with it | +-8/255 random-sign noise flagged at 1%, \
         with it |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in checks {
        out.push_str(&format!(
            "| {:.2} | {:.0} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
            c.factor,
            c.width,
            100.0 * c.flat_1,
            100.0 * c.sized_1,
            100.0 * c.sized_5,
            100.0 * c.noise_1
        ));
    }
    out
}

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
    Ok(spread(&train, faces))
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
    let side = bundle.manifest.image_size;
    let mut sized_on = None;
    let how = match photos {
        Some(photos) => {
            let placements = photo_placements(set, &chosen, template.as_ref(), side)?;
            // What is pasted back plays no part here: the score reads the crop only.
            let pipeline = crate::threat::PastePipeline {
                passes: 1,
                ..crate::threat::PastePipeline::new(
                    side,
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
            sized_on = Some((photos, placements));
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
    let mut alarm = fit(
        &clean,
        weights,
        format!(
            "score '{score}' fitted on {} clean training faces ({how}), M = {samples}, tau = {}, \
             seed {seed}",
            clean.len(),
            params.tau
        ),
    );
    if let Some((photos, placements)) = sized_on.filter(|_| alarm.scores_from_the_frame()) {
        let flat = alarm.clone();
        let train = scaled_bands(&photos, &placements, side, None, "fit by face width")?;
        fit_sizes(&mut alarm, &train);
        if let (Some(small), Some(large)) = (alarm.native_sizes.first(), alarm.native_sizes.last())
        {
            alarm.calibration.push_str(&format!(
                "; the native feature fitted at {} face widths ({:.0} to {:.0} px, the same \
                 photos area-downscaled), thresholds at 1% and 5% of every width",
                alarm.native_sizes.len(),
                small.width,
                large.width
            ));
        }
        // Held out: test-split photos, never seen above.
        let test = spread(&set.indices(crate::data::Split::Test), faces);
        let test_photos = crate::threat::load_photos(set, &test)?;
        let test_placements = photo_placements(set, &test, template.as_ref(), side)?;
        let held = scaled_bands(&test_photos, &test_placements, side, None, "held-out check")?;
        tch::manual_seed(seed as i64);
        let noisy = scaled_bands(
            &test_photos,
            &test_placements,
            side,
            Some(8.0 / 127.5),
            "held-out check, noise",
        )?;
        let checks = size_check(&flat, &alarm, &SIZE_FACTORS, &held, &noisy);
        println!(
            "clean false alarms by face width, {} held-out (test-split) photos:\n{}",
            test.len(),
            size_check_markdown(&checks)
        );
    }
    crate::export::write_alarm(dir, alarm.clone())?;
    Ok(alarm)
}

/// Up to `n` of `indices`, evenly spread.
fn spread(indices: &[i64], n: usize) -> Vec<i64> {
    let step = (indices.len() / n.max(1)).max(1);
    indices.iter().step_by(step).take(n).copied().collect()
}

/// Where the element places the faces of photos `chosen` of `set` (their detected landmarks
/// onto `template`), for crops of side `side`.
fn photo_placements(
    set: &crate::data::FaceSet,
    chosen: &[i64],
    template: Option<&[[f32; 2]; 5]>,
    side: usize,
) -> anyhow::Result<Vec<Placement>> {
    let root = std::path::Path::new(&set.index.source);
    let paths: Vec<std::path::PathBuf> = chosen
        .iter()
        .map(|&k| root.join(&set.index.images[k as usize].file))
        .collect();
    let landmarks = crate::recognizer::detect_landmarks(&paths)?;
    crate::threat::placements(&landmarks, template, &set.index.crop, side)
}

/// [`bands_at_scale`] at every scale of [`SIZE_FACTORS`], with a progress bar named `what`.
fn scaled_bands(
    photos: &Tensor,
    placements: &[Placement],
    side: usize,
    noise: Option<f32>,
    what: &str,
) -> anyhow::Result<Vec<Vec<NativeBands>>> {
    let bar = crate::data::progress_bar(SIZE_FACTORS.len() as u64, what);
    let out = SIZE_FACTORS
        .iter()
        .map(|&f| {
            let bands = bands_at_scale(photos, placements, side, f, noise);
            bar.inc(1);
            bands
        })
        .collect();
    bar.finish();
    out
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

    #[test]
    fn the_area_downscale_averages_each_output_over_its_interval() {
        let w = Vec::<f32>::try_from(&area_weights(5, 2).view([-1])).unwrap();
        // 2.5 inputs per output: 1, 1, 0.5 | 0.5, 1, 1 (over 2.5).
        let want = [0.4, 0.4, 0.2, 0.0, 0.0, 0.0, 0.0, 0.2, 0.4, 0.4];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let rows = area_weights(250, 61).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        assert!(rows.allclose(
            &Tensor::ones([61], (Kind::Float, tch::Device::Cpu)),
            1e-5,
            1e-5,
            false
        ));
    }

    #[test]
    fn a_scaled_placement_covers_the_same_part_of_the_scaled_photo() {
        let t = gstavaepurify::core::align::Similarity {
            a: 0.5,
            b: 0.1,
            tx: -20.0,
            ty: -30.0,
        };
        let p = Placement::Aligned(t);
        let q = scaled(&p, 0.5);
        let Placement::Aligned(u) = q else {
            panic!("{q:?}")
        };
        // A point of the photo and its image in the half-size photo land on the same face pixel.
        let a = t.apply([100.0, 80.0]);
        let b = u.apply([50.0, 40.0]);
        assert!((a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4);
        let width = |p: &Placement| gstavaepurify::frame::frame_pixels_per_crop_pixel(p, 64) * 64.0;
        assert!((width(&q) - 0.5 * width(&p)).abs() < 1e-3);
    }

    #[test]
    fn photos_at_their_own_scale_read_as_the_element_reads_them() {
        let photos = Tensor::rand([2, 3, 40, 40], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let placements = [
            Placement::Box(Region {
                x: 4,
                y: 6,
                width: 24,
                height: 24,
            }),
            Placement::Box(Region {
                x: 10,
                y: 10,
                width: 20,
                height: 20,
            }),
        ];
        let got = bands_at_scale(&photos, &placements, 16, 1.0, None).unwrap();
        let bytes = crate::threat::rgb_bytes(&photos).unwrap();
        for (i, p) in placements.iter().enumerate() {
            let frame = FrameRef::new(
                &bytes[i * 4800..(i + 1) * 4800],
                40,
                40,
                120,
                PixelLayout::Rgb,
            )
            .unwrap();
            let want = gstavaepurify::frame::native_bands(&frame, std::iter::once(p), 16)[0];
            assert!((got[i].fine - want.fine).abs() < 1e-6 * want.fine.max(1.0));
            assert!((got[i].mid - want.mid).abs() < 1e-6 * want.mid.max(1.0));
            assert_eq!(got[i].width, want.width);
        }
        // Half the size: half the width.
        let half = bands_at_scale(&photos, &placements, 16, 0.5, None).unwrap();
        assert_eq!(half[0].width, 12.0);
    }

    #[test]
    fn the_size_table_brings_small_faces_back_to_the_clean_rate() {
        let bands = |width: f32, ln_ratio: f32| NativeBands {
            fine: ln_ratio.exp(),
            mid: 1.0,
            width,
        };
        // Clean faces: ln ratio about 1 at 100 px, about 2 at 40 px (spread 0.1).
        let spread = |i: usize| (i as f32 * 0.618).fract() * 0.35 - 0.175;
        let large: Vec<NativeBands> = (0..400).map(|i| bands(100.0, 1.0 + spread(i))).collect();
        let small: Vec<NativeBands> = (0..400).map(|i| bands(40.0, 2.0 + spread(i))).collect();
        let purified: Vec<Purified> = large
            .iter()
            .map(|b| {
                let mut p = face(1e-3, 0.5);
                p.set_native_bands(*b);
                p
            })
            .collect();
        let mut alarm = fit(&purified, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], String::new());
        let flat = alarm.clone();
        let over = |a: &AlarmParams, faces: &[NativeBands]| {
            rate_above(&native_scores(a, faces), a.threshold_1)
        };
        assert_eq!(over(&flat, &small), 1.0);
        let by_scale = vec![large.clone(), small.clone()];
        assert!(fit_sizes(&mut alarm, &by_scale));
        assert_eq!(alarm.native_sizes.len(), 2);
        assert_eq!(alarm.native_sizes[0].width, 40.0);
        assert!(alarm.validate().is_ok());
        assert!(over(&alarm, &small) <= 0.02 && over(&alarm, &large) <= 0.02);
        // A noisy small face still scores far over the threshold.
        assert!(alarm.native_score(bands(40.0, 3.0)).unwrap() > alarm.threshold_1);
        let checks = size_check(&flat, &alarm, &[1.0, 0.4], &by_scale, &by_scale);
        assert_eq!(checks[1].flat_1, 1.0);
        assert!(checks[1].sized_1 <= 0.02);
        assert!(size_check_markdown(&checks).contains("| 0.40 | 40 | 100.0% |"));
        // An alarm that needs purification's signals gets no table.
        let mut other = fit(&purified, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0], String::new());
        assert!(!fit_sizes(&mut other, &by_scale));
        assert!(other.native_sizes.is_empty());
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
