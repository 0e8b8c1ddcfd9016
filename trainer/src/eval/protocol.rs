//! The evaluation protocol: which pairs (fold 1 to test, folds 2-10 to calibrate), their crops,
//! landmarks and recognizer warps, per-pair seeds, defended embeddings, thresholds at a target
//! FAR and the verification that turns scores into a [`Cell`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use tch::{Kind, Tensor};

use super::{Cell, EvalOptions};
use crate::data::{FaceSet, progress_bar, to_unit_range, write_atomic};
use crate::defense::Defense;
use crate::recognizer::{Alignment, Landmarks, Recognizer, cosine, detect_landmarks};

/// False-accept rate at which every threshold is set.
pub const TARGET_FAR: f64 = 0.01;

/// A 64-bit mix of a seed and a few integers (splitmix64 steps), for per-face seeds that do not
/// depend on batching.
pub(crate) fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut x = seed;
    for &p in parts {
        x ^= p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

/// An image of `pairs.txt`: person name and image number.
type ImageRef = (String, usize);

/// Different-identity pairs of folds 2 to 10 of `pairs.txt`, one list per fold.
fn impostor_pairs_after_fold1(path: &Path) -> Result<Vec<Vec<[ImageRef; 2]>>> {
    Ok(crate::data::parse_pairs(path, usize::MAX)?
        .into_iter()
        .skip(1)
        .map(|fold| {
            fold.into_iter()
                .filter(|p| !p.same)
                .map(|p| [p.a, p.b])
                .collect()
        })
        .collect())
}

/// `count` indices spread evenly over `0..len`.
pub(super) fn spread(len: usize, count: usize) -> Vec<usize> {
    let count = count.min(len);
    (0..count).map(|k| k * len / count).collect()
}

/// The evaluation pairs: `(gallery index, probe index, same)`.
pub(crate) fn test_pairs(set: &FaceSet, count: usize) -> Result<Vec<(i64, i64, bool)>> {
    let all = &set.index.pairs;
    ensure!(
        !all.is_empty(),
        "the crop cache has no fold-1 pairs (prepare it from an LFW folder with pairs.txt)"
    );
    let same: Vec<_> = all.iter().filter(|p| p.same).collect();
    let diff: Vec<_> = all.iter().filter(|p| !p.same).collect();
    let n_same = count.div_ceil(2).min(same.len());
    let n_diff = (count - count.div_ceil(2)).min(diff.len());
    let mut out: Vec<(i64, i64, bool)> = spread(same.len(), n_same)
        .into_iter()
        .map(|k| (same[k].a as i64, same[k].b as i64, true))
        .collect();
    out.extend(
        spread(diff.len(), n_diff)
            .into_iter()
            .map(|k| (diff[k].a as i64, diff[k].b as i64, false)),
    );
    Ok(out)
}

/// Calibration impostor pairs `(a, b)` as cache indices, spread over folds 2 to 10.
pub(crate) fn calibration_pairs(
    set: &FaceSet,
    pairs_file: &Path,
    count: usize,
) -> Result<Vec<(i64, i64)>> {
    let by_file: BTreeMap<&str, i64> = set
        .index
        .images
        .iter()
        .enumerate()
        .map(|(k, e)| (e.file.as_str(), k as i64))
        .collect();
    let lookup = |(name, n): &(String, usize)| {
        by_file
            .get(format!("{name}/{name}_{n:04}.jpg").as_str())
            .copied()
    };
    let folds = impostor_pairs_after_fold1(pairs_file)?;
    let per_fold = count.div_ceil(folds.len().max(1));
    let mut out = Vec::new();
    for fold in &folds {
        for k in spread(fold.len(), per_fold) {
            if let (Some(a), Some(b)) = (lookup(&fold[k][0]), lookup(&fold[k][1])) {
                out.push((a, b));
            }
        }
    }
    out.truncate(count);
    ensure!(
        !out.is_empty(),
        "no calibration pair of folds 2-10 of '{}' is in the crop cache",
        pairs_file.display()
    );
    Ok(out)
}

/// Threshold at [`TARGET_FAR`]: accepting scores strictly above it accepts at most 1% of
/// `impostors`.
pub fn threshold_at_far(impostors: &[f32], far: f64) -> f64 {
    let mut sorted: Vec<f32> = impostors.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (far * sorted.len() as f64).floor() as usize;
    sorted.get(k).map_or(1.0, |&v| f64::from(v))
}

/// Accuracy of `scores` against `same` at `threshold`.
pub fn verify(scores: &[f32], same: &[bool], threshold: f64) -> Cell {
    let (mut ok_same, mut n_same, mut ok_diff, mut n_diff) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &is_same) in scores.iter().zip(same) {
        let accepted = f64::from(s) > threshold;
        if is_same {
            n_same += 1;
            ok_same += usize::from(accepted);
        } else {
            n_diff += 1;
            ok_diff += usize::from(!accepted);
        }
    }
    let frac = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    Cell {
        same: frac(ok_same, n_same),
        different: frac(ok_diff, n_diff),
        average: frac(ok_same + ok_diff, n_same + n_diff),
        scores: scores.to_vec(),
    }
}

/// Moves the score of every pair broken by some attack iterate to the wrong side of any
/// threshold (cosines lie in [-1, 1]), so that [`verify`] counts it as broken.
pub(crate) fn mark_broken(scores: &mut [f32], same: &[bool], broken: &[bool]) {
    for ((s, &same), &b) in scores.iter_mut().zip(same).zip(broken) {
        if b {
            *s = if same { -2.0 } else { 2.0 };
        }
    }
}

/// Seed streams of the evaluation (mixed with the pair index).
pub(crate) mod stream {
    pub const GALLERY: u64 = 1;
    pub const PROBE: u64 = 2;
    pub const CALIB: u64 = 3;
    pub const ATTACK: u64 = 4;
}

/// Defended unit embeddings of `faces`, a chunk at a time; `seeds[i]` seeds face i.
pub(crate) fn defended_embeddings(
    recognizer: &Recognizer,
    defense: &mut Defense,
    faces: &Tensor,
    align: &Tensor,
    seeds: &[u64],
    chunk: usize,
) -> Result<Tensor> {
    let n = faces.size()[0] as usize;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let defended = defense.apply(
            &faces.narrow(0, start as i64, len as i64),
            &seeds[start..start + len],
        )?;
        let warp = align.narrow(0, start as i64, len as i64);
        parts.push(recognizer.embed_all(&defended, &warp, len as i64)?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Per-pair cosine similarities as a vector.
pub(crate) fn scores_of(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(&cosine(a, b).to_kind(Kind::Float))?)
}

/// Landmarks (in image pixels) of the cached images `indices`, for [`Alignment::Landmarks`]:
/// read from `<data>/<name>-landmarks.json`, detected (and added to that file) where missing.
/// Every entry is `None` for the other alignments.
fn image_landmarks(
    set: &FaceSet,
    opts: &EvalOptions,
    indices: &[i64],
) -> Result<Vec<Option<Landmarks>>> {
    if opts.alignment != Alignment::Landmarks {
        return Ok(vec![None; indices.len()]);
    }
    let path = opts.data.join(format!("{}-landmarks.json", opts.data_name));
    let mut known: BTreeMap<String, Option<Landmarks>> = match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("'{}' is not a landmark cache (delete it)", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let file_of = |k: i64| -> Result<&str> {
        usize::try_from(k)
            .ok()
            .and_then(|k| set.index.images.get(k))
            .map(|e| e.file.as_str())
            .with_context(|| format!("image index {k} is not in the crop cache"))
    };
    let mut missing: Vec<String> = Vec::new();
    for &k in indices {
        let file = file_of(k)?;
        if !known.contains_key(file) && !missing.iter().any(|m| m == file) {
            missing.push(file.to_owned());
        }
    }
    if !missing.is_empty() {
        let root = Path::new(&set.index.source);
        let paths: Vec<PathBuf> = missing.iter().map(|f| root.join(f)).collect();
        let found = detect_landmarks(&paths)?;
        let lost = found.iter().filter(|l| l.is_none()).count();
        if lost > 0 {
            println!(
                "no face found in {lost} of {} images: they use the mean landmarks",
                paths.len()
            );
        }
        known.extend(missing.into_iter().zip(found));
        write_atomic(&path, serde_json::to_string(&known)?.as_bytes())?;
    }
    indices
        .iter()
        .map(|&k| Ok(known.get(file_of(k)?).copied().flatten()))
        .collect()
}

/// The fold-1 test pairs and the calibration impostor pairs of folds 2-10 as crops in [-1, 1]
/// with their recognizer warps, and the recognizer: what the full evaluation and the lab share.
pub(crate) struct PairSets {
    pub recognizer: Recognizer,
    /// Pair kinds, in pair order.
    pub same: Vec<bool>,
    pub gallery: Tensor,
    pub probe: Tensor,
    pub align_gallery: Tensor,
    pub align_probe: Tensor,
    pub calib_a: Tensor,
    pub calib_b: Tensor,
    pub align_calib_a: Tensor,
    pub align_calib_b: Tensor,
    /// Calibration pairs actually found in the crop cache.
    pub calib_len: usize,
    /// Cache indices of the gallery, probe, calibration a and b images, in that order.
    pub indices: [Vec<i64>; 4],
    /// Their landmarks (all `None` unless the alignment is `landmarks`), in the same order.
    pub landmarks: [Vec<Option<Landmarks>>; 4],
    /// The crop cache (for the photos behind the crops).
    pub set: FaceSet,
}

impl PairSets {
    /// Loads the crop cache of side `size`, the recognizer, the pairs and their warps.
    pub(crate) fn load(opts: &EvalOptions, size: usize) -> Result<Self> {
        let set = FaceSet::load(&opts.data, &opts.data_name, size)?;
        let recognizer = Recognizer::load(
            &opts.recognizer,
            opts.alignment,
            &set.index.crop,
            size as i64,
        )?;
        let pairs = test_pairs(&set, opts.pairs)?;
        let calib = calibration_pairs(&set, &opts.pairs_file, opts.calib_pairs)?;
        let indices: [Vec<i64>; 4] = [
            pairs.iter().map(|p| p.0).collect(),
            pairs.iter().map(|p| p.1).collect(),
            calib.iter().map(|p| p.0).collect(),
            calib.iter().map(|p| p.1).collect(),
        ];
        let landmarks = indices
            .each_ref()
            .map(|idx| image_landmarks(&set, opts, idx));
        let [lg, lp, la, lb] = landmarks;
        let landmarks = [lg?, lp?, la?, lb?];
        let aligns = landmarks.each_ref().map(|l| recognizer.align_for(l));
        let [align_gallery, align_probe, align_calib_a, align_calib_b] = aligns;
        let crops = |idx: &[i64]| to_unit_range(&set.select(idx));
        Ok(Self {
            same: pairs.iter().map(|p| p.2).collect(),
            gallery: crops(&indices[0]),
            probe: crops(&indices[1]),
            calib_a: crops(&indices[2]),
            calib_b: crops(&indices[3]),
            align_gallery: align_gallery?,
            align_probe: align_probe?,
            align_calib_a: align_calib_a?,
            align_calib_b: align_calib_b?,
            calib_len: calib.len(),
            recognizer,
            indices,
            landmarks,
            set,
        })
    }
}

/// The faces and settings every stage of one evaluation shares.
pub(super) struct Evaluation<'a> {
    pub opts: &'a EvalOptions,
    pub recognizer: Recognizer,
    /// Pair kinds, in pair order.
    pub same: Vec<bool>,
    /// Clean gallery and probe crops `[N, 3, S, S]`, and their recognizer warps `[N, 2, 3]`.
    pub gallery: Tensor,
    pub probe: Tensor,
    pub align_gallery: Tensor,
    pub align_probe: Tensor,
    /// Pairs shown in the image grids.
    pub grid_rows: Vec<i64>,
}

impl Evaluation<'_> {
    pub(super) fn n(&self) -> usize {
        self.same.len()
    }

    /// Seeds of the evaluation's defense draws for every pair, for one stream and condition.
    pub(super) fn pair_seeds(&self, stream: u64, cond: u64) -> Vec<u64> {
        (0..self.n() as u64)
            .map(|k| mix(self.opts.seed, &[stream, cond, k]))
            .collect()
    }

    /// The entries of `seeds` of the grid rows.
    pub(super) fn grid_seeds(&self, seeds: &[u64]) -> Vec<u64> {
        self.grid_rows.iter().map(|&k| seeds[k as usize]).collect()
    }

    pub(super) fn grid_index(&self) -> Tensor {
        Tensor::from_slice(&self.grid_rows)
    }

    /// Pairs `first..first + len` of a per-pair tensor.
    pub(super) fn rows(t: &Tensor, first: usize, len: usize) -> Tensor {
        t.narrow(0, first as i64, len as i64)
    }

    /// Each defense's threshold at 1% FAR on the calibration impostor pairs `(a, b)` (crops and
    /// warps), the defense applied to both images.
    pub(super) fn thresholds(
        &self,
        defenses: &mut [Defense],
        a: (&Tensor, &Tensor),
        b: (&Tensor, &Tensor),
    ) -> Result<Vec<f64>> {
        let count = a.0.size()[0] as usize;
        let seeds = |side: u64| -> Vec<u64> {
            (0..count as u64)
                .map(|k| mix(self.opts.seed, &[stream::CALIB, side, k]))
                .collect()
        };
        let bar = progress_bar((defenses.len() * count) as u64, "thresholds");
        let mut thresholds = Vec::with_capacity(defenses.len());
        for d in defenses.iter_mut() {
            let chunk = self.opts.chunk;
            let ea = defended_embeddings(&self.recognizer, d, a.0, a.1, &seeds(0), chunk)?;
            let eb = defended_embeddings(&self.recognizer, d, b.0, b.1, &seeds(1), chunk)?;
            thresholds.push(threshold_at_far(&scores_of(&ea, &eb)?, TARGET_FAR));
            bar.inc(count as u64);
        }
        bar.finish();
        Ok(thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_accepts_at_most_one_percent() {
        let impostors: Vec<f32> = (0..200).map(|k| k as f32 / 200.0).collect();
        let t = threshold_at_far(&impostors, 0.01);
        let accepted = impostors.iter().filter(|&&s| f64::from(s) > t).count();
        assert_eq!(accepted, 2);
        // Fewer than 100 impostors: nothing may be accepted.
        let t = threshold_at_far(&impostors[..50], 0.01);
        assert!(impostors[..50].iter().all(|&s| f64::from(s) <= t));
    }

    #[test]
    fn verify_counts_both_kinds() {
        let cell = verify(&[0.9, 0.1, 0.8, 0.2], &[true, true, false, false], 0.5);
        assert_eq!((cell.same, cell.different, cell.average), (0.5, 0.5, 0.5));
        let cell = verify(&[0.9, 0.6, 0.1, 0.2], &[true, true, false, false], 0.5);
        assert_eq!(cell.average, 1.0);
    }

    #[test]
    fn spread_is_even_and_bounded() {
        assert_eq!(spread(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(spread(3, 5), vec![0, 1, 2]);
    }

    #[test]
    fn seeds_differ_by_stream_and_pair() {
        assert_ne!(mix(0, &[1, 0]), mix(0, &[1, 1]));
        assert_ne!(mix(0, &[1, 0]), mix(0, &[2, 0]));
        assert_eq!(mix(5, &[3, 4]), mix(5, &[3, 4]));
    }
}
