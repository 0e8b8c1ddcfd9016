//! Every resampling kernel of the crate, in one place: separable taps (triangle for faces,
//! area for the detector's letterbox), the `[C, H, W]` resize and block average built on them,
//! and the clamped bilinear lookup of the alignment warps.
//!
//! Taps give, for each output sample, the first input index and the weights of the inputs that
//! follow it.

use ndarray::{Array3, ArrayView3};

/// Resampling taps along one axis: `(first input index, weights)` per output sample.
pub type Taps = Vec<(usize, Vec<f32>)>;

/// Triangle (bilinear) taps from `src` samples to `dst` whose support widens with the downscale
/// factor, so a large face shrunk to S pixels is averaged rather than aliased, and a small one
/// enlarged is plain bilinear with half-pixel centres.
pub fn triangle_taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    let support = scale.max(1.0);
    (0..dst)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(src);
            let mut w: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 + 0.5 - centre) / support).abs()).max(0.0))
                .collect();
            let total: f64 = w.iter().sum();
            if total > 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            } else {
                // Unreachable for src >= 1, kept so that no weight set is ever empty of mass.
                w = vec![1.0];
            }
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Area taps from `src` samples to `dst`: shrinking averages the input samples each output
/// covers, enlarging interpolates linearly between the two nearest input centres (half-pixel
/// centres, edges repeated). The detector's letterbox uses them.
pub fn area_taps(src: usize, dst: usize) -> Taps {
    let ratio = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            if ratio > 1.0 {
                let (start, end) = (o as f64 * ratio, (o as f64 + 1.0) * ratio);
                let first = start.floor() as usize;
                let last = (end.ceil() as usize).min(src);
                let weights = (first..last)
                    .map(|i| {
                        let covered = (end.min(i as f64 + 1.0) - start.max(i as f64)).max(0.0);
                        (covered / ratio) as f32
                    })
                    .collect();
                (first, weights)
            } else {
                let centre = ((o as f64 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f64);
                let first = (centre.floor() as usize).min(src.saturating_sub(2));
                let t = (centre - first as f64) as f32;
                if src == 1 {
                    (0, vec![1.0])
                } else {
                    (first, vec![1.0 - t, t])
                }
            }
        })
        .collect()
}

/// Resamples a `[C, H, W]` image to `[C, out_h, out_w]` with [`triangle_taps`].
pub fn resize(src: ArrayView3<'_, f32>, out_h: usize, out_w: usize) -> Array3<f32> {
    let (c, h, w) = src.dim();
    let wx = triangle_taps(w, out_w);
    let wy = triangle_taps(h, out_h);
    let mut tmp = Array3::<f32>::zeros((c, h, out_w));
    for ch in 0..c {
        for y in 0..h {
            for (ox, (lo, ws)) in wx.iter().enumerate() {
                tmp[[ch, y, ox]] = ws
                    .iter()
                    .enumerate()
                    .map(|(k, wt)| wt * src[[ch, y, lo + k]])
                    .sum();
            }
        }
    }
    let mut out = Array3::<f32>::zeros((c, out_h, out_w));
    for ch in 0..c {
        for (oy, (lo, ws)) in wy.iter().enumerate() {
            for x in 0..out_w {
                out[[ch, oy, x]] = ws
                    .iter()
                    .enumerate()
                    .map(|(k, wt)| wt * tmp[[ch, lo + k, x]])
                    .sum();
            }
        }
    }
    out
}

/// Averages `k x k` blocks of a `[C, H, W]` image (H and W multiples of `k`): the area
/// downsample the encoder graph applies before it sees a face (AveragePool).
pub fn area_downsample(src: ArrayView3<'_, f32>, k: usize) -> Array3<f32> {
    let (c, h, w) = src.dim();
    let k = k.max(1);
    let mut out = Array3::<f32>::zeros((c, h / k, w / k));
    let norm = 1.0 / (k * k) as f32;
    for ((ch, y, x), v) in out.indexed_iter_mut() {
        let block = src.slice(ndarray::s![ch, y * k..(y + 1) * k, x * k..(x + 1) * k]);
        *v = block.sum() * norm;
    }
    out
}

/// The two samples around position `pos` (pixel centres at +0.5) of an axis of `len >= 1`
/// samples, clamped at its ends, and the weight of the second: a bilinear lookup is
/// `a * (1 - t) + b * t`.
pub fn bilinear(pos: f32, len: usize) -> (usize, usize, f32) {
    let f = (pos - 0.5).clamp(0.0, (len - 1) as f32);
    let i0 = f.floor() as usize;
    (i0, (i0 + 1).min(len - 1), f - i0 as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    #[test]
    fn upscale_two_to_four_by_hand() {
        // Half-pixel centres: outputs sit at input coordinates -0.25, 0.25, 0.75, 1.25 (x2 = 0.5
        // steps); edges clamp, inner samples interpolate 0.75/0.25.
        let src = array![[[0.0f32, 1.0]]];
        let out = resize(src.view(), 1, 4);
        let want = [0.0, 0.25, 0.75, 1.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn downscale_averages_with_triangle_weights() {
        // 4 -> 2: output 0 centred at input 1.0 with support 2 takes pixels 0, 1, 2 with
        // weights 0.75, 0.75, 0.25 (normalised by 1.75).
        let src = array![[[1.0f32, 2.0, 3.0, 4.0]]];
        let out = resize(src.view(), 1, 2);
        let o0 = (0.75 * 1.0 + 0.75 * 2.0 + 0.25 * 3.0) / 1.75;
        let o1 = (0.25 * 2.0 + 0.75 * 3.0 + 0.75 * 4.0) / 1.75;
        assert!((out[[0, 0, 0]] - o0).abs() < 1e-6);
        assert!((out[[0, 0, 1]] - o1).abs() < 1e-6);
    }

    #[test]
    fn area_taps_average_when_shrinking_and_interpolate_when_enlarging() {
        // 3 -> 2: each output covers 1.5 inputs.
        let shrink = area_taps(3, 2);
        let want = [(0, [2.0 / 3.0, 1.0 / 3.0]), (1, [1.0 / 3.0, 2.0 / 3.0])];
        for ((first, weights), (want_first, want_weights)) in shrink.iter().zip(want) {
            assert_eq!(*first, want_first);
            for (w, v) in weights.iter().zip(want_weights) {
                assert!((w - v).abs() < 1e-6, "{shrink:?}");
            }
        }
        // 2 -> 4: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        assert_eq!(
            area_taps(2, 4),
            vec![
                (0, vec![1.0, 0.0]),
                (0, vec![0.75, 0.25]),
                (0, vec![0.25, 0.75]),
                (0, vec![0.0, 1.0])
            ]
        );
    }

    #[test]
    fn bilinear_clamps_at_both_ends() {
        assert_eq!(bilinear(0.0, 4), (0, 1, 0.0));
        assert_eq!(bilinear(1.75, 4), (1, 2, 0.25));
        assert_eq!(bilinear(9.0, 4), (3, 3, 0.0));
        assert_eq!(bilinear(0.7, 1), (0, 0, 0.0));
    }

    #[test]
    fn area_downsample_by_hand() {
        let src = Array3::from_shape_fn((1, 2, 4), |(_, y, x)| (y * 4 + x) as f32);
        let out = area_downsample(src.view(), 2);
        assert_eq!(out, array![[[2.5f32, 4.5]]]);
    }
}
