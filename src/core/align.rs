//! Landmark alignment: a similarity transform from a face's 5 landmarks to the bundle's
//! canonical template, the warp that crops the aligned face, and the inverse warp that pastes
//! the purified face back under a feathered mask so that no seam shows.

use ndarray::{Array3, ArrayView3, ArrayViewMut3, Axis};

use super::image::{FrameMut, FrameRef, Region, to_u8};
use super::resample::bilinear;
use crate::Error;

/// A 2-D similarity transform `q = [[a, -b], [b, a]] p + t` (rotation, uniform scale,
/// translation; no reflection).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale * cos(angle)`.
    pub a: f32,
    /// `scale * sin(angle)`.
    pub b: f32,
    /// Translation x.
    pub tx: f32,
    /// Translation y.
    pub ty: f32,
}

impl Similarity {
    /// Maps a point.
    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [
            self.a * p[0] - self.b * p[1] + self.tx,
            self.b * p[0] + self.a * p[1] + self.ty,
        ]
    }

    /// The uniform scale factor.
    pub fn scale(&self) -> f32 {
        self.a.hypot(self.b)
    }

    /// The inverse transform (`None` for a degenerate, zero-scale one).
    pub fn inverse(&self) -> Option<Similarity> {
        let det = self.a * self.a + self.b * self.b;
        if det.is_nan() || det <= f32::EPSILON || !det.is_finite() {
            return None;
        }
        let (a, b) = (self.a / det, -self.b / det);
        Some(Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }

    /// The transform that maps the square `region` (frame pixels) onto a `size x size` face.
    pub fn from_region(region: Region, size: usize) -> Similarity {
        let a = size as f32 / region.width.max(1) as f32;
        Similarity {
            a,
            b: 0.0,
            tx: -a * region.x as f32,
            ty: -a * region.y as f32,
        }
    }
}

/// Least-squares similarity mapping `src` points onto `dst` points (Umeyama without
/// reflection). `None` when the source points coincide or are not finite.
pub fn estimate_similarity(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Similarity> {
    let n = src.len().min(dst.len());
    if n < 2 {
        return None;
    }
    let mean = |pts: &[[f32; 2]]| {
        let (sx, sy) = pts[..n].iter().fold((0.0f64, 0.0f64), |(x, y), p| {
            (x + f64::from(p[0]), y + f64::from(p[1]))
        });
        (sx / n as f64, sy / n as f64)
    };
    let (px, py) = mean(src);
    let (qx, qy) = mean(dst);
    let (mut num_a, mut num_b, mut den) = (0.0f64, 0.0f64, 0.0f64);
    for (p, q) in src[..n].iter().zip(&dst[..n]) {
        let (ux, uy) = (f64::from(p[0]) - px, f64::from(p[1]) - py);
        let (vx, vy) = (f64::from(q[0]) - qx, f64::from(q[1]) - qy);
        num_a += ux * vx + uy * vy;
        num_b += ux * vy - uy * vx;
        den += ux * ux + uy * uy;
    }
    if den.is_nan() || den <= 1e-9 || !den.is_finite() {
        return None;
    }
    let (a, b) = (num_a / den, num_b / den);
    let tx = qx - (a * px - b * py);
    let ty = qy - (b * px + a * py);
    let s = Similarity {
        a: a as f32,
        b: b as f32,
        tx: tx as f32,
        ty: ty as f32,
    };
    (s.a.is_finite() && s.b.is_finite() && s.tx.is_finite() && s.ty.is_finite()).then_some(s)
}

/// Bilinear RGB sample at frame position (x, y) (pixel centres at +0.5), clamped at the
/// frame's edges; values in [-1, 1].
fn sample_frame(frame: &FrameRef<'_>, x: f32, y: f32) -> [f32; 3] {
    let bpp = frame.layout.bytes_per_pixel();
    let offs = frame.layout.rgb_offsets();
    let (x0, x1, wx) = bilinear(x, frame.width);
    let (y0, y1, wy) = bilinear(y, frame.height);
    let px = |xx: usize, yy: usize, c: usize| {
        f32::from(frame.data[yy * frame.stride + xx * bpp + offs[c]])
    };
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let top = px(x0, y0, c) * (1.0 - wx) + px(x1, y0, c) * wx;
        let bottom = px(x0, y1, c) * (1.0 - wx) + px(x1, y1, c) * wx;
        *o = (top * (1.0 - wy) + bottom * wy) / 127.5 - 1.0;
    }
    out
}

/// Crops the aligned face: `out[:, v, u]` is the frame at `to_face^-1(u + 0.5, v + 0.5)`,
/// supersampled (up to 4x4 per pixel) where the face is shrunk, so large faces do not alias.
pub fn warp_face(
    frame: &FrameRef<'_>,
    to_face: &Similarity,
    out: ArrayViewMut3<'_, f32>,
) -> Result<(), Error> {
    warp_face_split(frame, to_face, out, None)
}

/// [`warp_face`] with `rows` output rows per worker (`None`: [`rows_per_worker`]).
fn warp_face_split(
    frame: &FrameRef<'_>,
    to_face: &Similarity,
    mut out: ArrayViewMut3<'_, f32>,
    rows: Option<usize>,
) -> Result<(), Error> {
    frame.check()?;
    let inv = to_face.inverse().ok_or(Error::InvalidParameter {
        name: "alignment",
        value: format!("{to_face:?}"),
        expected: "a non-degenerate similarity transform",
    })?;
    let k = (1.0 / to_face.scale()).ceil().clamp(1.0, 4.0) as usize;
    let (_, h, w) = out.dim();
    let per = rows.unwrap_or_else(|| rows_per_worker(h, w * k * k)).max(1);
    if per >= h {
        warp_rows(frame, &inv, k, out, 0);
    } else {
        std::thread::scope(|scope| {
            for (i, rows) in out.axis_chunks_iter_mut(Axis(1), per).enumerate() {
                let inv = &inv;
                scope.spawn(move || warp_rows(frame, inv, k, rows, i * per));
            }
        });
    }
    Ok(())
}

/// Rows `first..` of [`warp_face`]'s output, `k` x `k` samples per pixel.
fn warp_rows(
    frame: &FrameRef<'_>,
    inv: &Similarity,
    k: usize,
    mut out: ArrayViewMut3<'_, f32>,
    first: usize,
) {
    let (_, h, w) = out.dim();
    let norm = 1.0 / (k * k) as f32;
    for r in 0..h {
        let v = first + r;
        for u in 0..w {
            let mut acc = [0.0f32; 3];
            for sy in 0..k {
                for sx in 0..k {
                    let fu = u as f32 + (sx as f32 + 0.5) / k as f32;
                    let fv = v as f32 + (sy as f32 + 0.5) / k as f32;
                    let p = inv.apply([fu, fv]);
                    let s = sample_frame(frame, p[0], p[1]);
                    acc.iter_mut().zip(s).for_each(|(a, s)| *a += s);
                }
            }
            for c in 0..3 {
                out[[c, r, u]] = acc[c] * norm;
            }
        }
    }
}

/// Below this many pixel samples a warp or paste runs on the calling thread alone.
const PARALLEL_SAMPLES: usize = 32 * 1024;

/// Rows each worker takes of `rows` rows of `per_row` samples: all of them when the work is
/// small, else an equal share for each core (at most 4). The split never changes a result:
/// every output pixel is computed from the same inputs in the same order.
fn rows_per_worker(rows: usize, per_row: usize) -> usize {
    if rows == 0 || rows * per_row < PARALLEL_SAMPLES {
        return rows.max(1);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    rows.div_ceil(workers).max(1)
}

/// Weight of the face at face position (u, v): 1 inside, falling smoothly to 0 over the outer
/// `feather` fraction of the face towards its edges.
fn feather_weight(u: f32, v: f32, size: f32, feather: f32) -> f32 {
    let edge = u.min(v).min(size - u).min(size - v);
    if edge <= 0.0 {
        return 0.0;
    }
    let ramp = feather * size;
    if ramp <= 0.0 {
        return 1.0;
    }
    let t = (edge / ramp).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Pastes `face` (`[3, S, S]`, RGB in [-1, 1]) back through the inverse of `to_face`, blending
/// it with the frame under a mask that fades over the outer `feather` fraction of the face.
pub fn paste_face(
    frame: &mut FrameMut<'_>,
    to_face: &Similarity,
    face: ArrayView3<'_, f32>,
    feather: f32,
) -> Result<(), Error> {
    paste_face_split(frame, to_face, face, feather, None)
}

/// [`paste_face`] with `rows` frame rows per worker (`None`: [`rows_per_worker`]).
fn paste_face_split(
    frame: &mut FrameMut<'_>,
    to_face: &Similarity,
    face: ArrayView3<'_, f32>,
    feather: f32,
    rows: Option<usize>,
) -> Result<(), Error> {
    frame.check()?;
    let inv = to_face.inverse().ok_or(Error::InvalidParameter {
        name: "alignment",
        value: format!("{to_face:?}"),
        expected: "a non-degenerate similarity transform",
    })?;
    let (_, h, w) = face.dim();
    let size = w.min(h) as f32;
    let corners = [
        [0.0, 0.0],
        [w as f32, 0.0],
        [0.0, h as f32],
        [w as f32, h as f32],
    ]
    .map(|c| inv.apply(c));
    let min_x = corners
        .iter()
        .map(|c| c[0])
        .fold(f32::INFINITY, f32::min)
        .floor()
        .max(0.0) as usize;
    let min_y = corners
        .iter()
        .map(|c| c[1])
        .fold(f32::INFINITY, f32::min)
        .floor()
        .max(0.0) as usize;
    let max_x = (corners
        .iter()
        .map(|c| c[0])
        .fold(f32::NEG_INFINITY, f32::max)
        .ceil()
        .max(0.0) as usize)
        .min(frame.width);
    let max_y = (corners
        .iter()
        .map(|c| c[1])
        .fold(f32::NEG_INFINITY, f32::max)
        .ceil()
        .max(0.0) as usize)
        .min(frame.height);
    if max_y <= min_y || max_x <= min_x {
        return Ok(());
    }
    let bpp = frame.layout.bytes_per_pixel();
    let offs = frame.layout.rgb_offsets();
    let stride = frame.stride;
    let face_at = |u: f32, v: f32, c: usize| {
        let (u0, u1, wu) = bilinear(u, w);
        let (v0, v1, wv) = bilinear(v, h);
        let top = face[[c, v0, u0]] * (1.0 - wu) + face[[c, v0, u1]] * wu;
        let bottom = face[[c, v1, u0]] * (1.0 - wu) + face[[c, v1, u1]] * wu;
        top * (1.0 - wv) + bottom * wv
    };
    // Frame rows `first..` in `rows` (whole rows of `stride` bytes, the last one maybe short).
    let paste_rows = |rows: &mut [u8], first: usize| {
        for (r, row) in rows.chunks_mut(stride).enumerate() {
            let y = first + r;
            for x in min_x..max_x {
                let [u, v] = to_face.apply([x as f32 + 0.5, y as f32 + 0.5]);
                let alpha = feather_weight(u, v, size, feather);
                if alpha <= 0.0 {
                    continue;
                }
                let px = x * bpp;
                for (c, off) in offs.iter().enumerate() {
                    let old = f32::from(row[px + off]) / 127.5 - 1.0;
                    let new = face_at(u, v, c);
                    row[px + off] = to_u8(alpha * new + (1.0 - alpha) * old);
                }
            }
        }
    };
    let end = (max_y * stride).min(frame.data.len());
    let region = &mut frame.data[min_y * stride..end];
    let per = rows
        .unwrap_or_else(|| rows_per_worker(max_y - min_y, max_x - min_x))
        .max(1);
    if per >= max_y - min_y {
        paste_rows(region, min_y);
    } else {
        std::thread::scope(|scope| {
            for (i, rows) in region.chunks_mut(per * stride).enumerate() {
                let paste_rows = &paste_rows;
                scope.spawn(move || paste_rows(rows, min_y + i * per));
            }
        });
    }
    Ok(())
}

/// A `[3, S, S]` crop through [`warp_face`] as a new array.
pub fn aligned_crop(
    frame: &FrameRef<'_>,
    to_face: &Similarity,
    size: usize,
) -> Result<Array3<f32>, Error> {
    let mut out = Array3::zeros((3, size, size));
    warp_face(frame, to_face, out.view_mut())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image::PixelLayout;

    #[test]
    fn warps_and_pastes_split_over_workers_equal_one_worker() {
        let (w, h) = (300, 260);
        let stride = w * 3 + 5;
        let start: Vec<u8> = (0..stride * h).map(|i| ((i * 7) % 251) as u8).collect();
        // A turned face of about 200 frame pixels, shrunk 3x into 64 samples.
        let to_face = Similarity {
            a: 0.3,
            b: 0.1,
            tx: -20.0,
            ty: -10.0,
        };
        let frame = FrameRef::new(&start, w, h, stride, PixelLayout::Rgb).unwrap();
        let mut one = Array3::<f32>::zeros((3, 64, 64));
        let mut split = Array3::<f32>::zeros((3, 64, 64));
        warp_face_split(&frame, &to_face, one.view_mut(), Some(usize::MAX)).unwrap();
        warp_face_split(&frame, &to_face, split.view_mut(), Some(7)).unwrap();
        assert_eq!(one, split);
        assert!(
            rows_per_worker(64, 64 * 16) <= 64,
            "a warp this size may split"
        );

        let paste = |rows| {
            let mut data = start.clone();
            let mut frame = FrameMut::new(&mut data, w, h, stride, PixelLayout::Rgb).unwrap();
            paste_face_split(&mut frame, &to_face, one.view(), 0.15, rows).unwrap();
            data
        };
        let whole = paste(Some(usize::MAX));
        assert_ne!(whole, start, "the paste wrote the frame");
        assert_eq!(whole, paste(Some(13)));
        assert_eq!(whole, paste(None));
    }

    #[test]
    fn recovers_a_known_similarity() {
        // Rotate 90 degrees, scale 2, translate (10, 5): (x, y) -> (-2y + 10, 2x + 5).
        let truth = Similarity {
            a: 0.0,
            b: 2.0,
            tx: 10.0,
            ty: 5.0,
        };
        let src = [[1.0, 2.0], [3.0, 1.0], [2.0, 4.0], [0.0, 0.0], [5.0, 5.0]];
        let dst: Vec<[f32; 2]> = src.iter().map(|&p| truth.apply(p)).collect();
        assert_eq!(truth.apply([1.0, 2.0]), [6.0, 7.0]);
        let est = estimate_similarity(&src, &dst).unwrap();
        for (x, y) in [(est.a, 0.0), (est.b, 2.0), (est.tx, 10.0), (est.ty, 5.0)] {
            assert!((x - y).abs() < 1e-4, "{est:?}");
        }
        let back = est.inverse().unwrap().apply(est.apply([7.0, -3.0]));
        assert!((back[0] - 7.0).abs() < 1e-4 && (back[1] + 3.0).abs() < 1e-4);
    }

    #[test]
    fn degenerate_points_give_none() {
        let p = [[1.0, 1.0]; 5];
        assert_eq!(estimate_similarity(&p, &p), None);
        let zero = Similarity {
            a: 0.0,
            b: 0.0,
            tx: 1.0,
            ty: 1.0,
        };
        assert_eq!(zero.inverse(), None);
    }

    #[test]
    fn region_transform_matches_crop_coordinates() {
        let t = Similarity::from_region(
            Region {
                x: 10,
                y: 20,
                width: 32,
                height: 32,
            },
            64,
        );
        assert_eq!(t.apply([10.0, 20.0]), [0.0, 0.0]);
        assert_eq!(t.apply([42.0, 52.0]), [64.0, 64.0]);
    }

    #[test]
    fn warp_then_paste_of_the_same_face_changes_nothing_inside() {
        // A horizontal ramp frame; crop with identity scale, paste the crop back unchanged.
        let (w, h) = (16usize, 12usize);
        let mut data: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).flat_map(|x| [(x * 16) as u8; 3]))
            .collect();
        let orig = data.clone();
        let t = Similarity::from_region(
            Region {
                x: 4,
                y: 2,
                width: 8,
                height: 8,
            },
            8,
        );
        let frame = FrameRef {
            data: &data,
            width: w,
            height: h,
            stride: w * 3,
            layout: PixelLayout::Rgb,
        };
        let face = aligned_crop(&frame, &t, 8).unwrap();
        assert!((face[[0, 0, 0]] - (64.0 / 127.5 - 1.0)).abs() < 1e-5);
        let mut fm = FrameMut {
            data: &mut data,
            width: w,
            height: h,
            stride: w * 3,
            layout: PixelLayout::Rgb,
        };
        paste_face(&mut fm, &t, face.view(), 0.25).unwrap();
        assert_eq!(data, orig);
    }

    #[test]
    fn paste_blends_with_a_feathered_edge() {
        let (w, h) = (20usize, 20usize);
        let mut data = vec![0u8; w * h * 3];
        let t = Similarity::from_region(
            Region {
                x: 0,
                y: 0,
                width: 20,
                height: 20,
            },
            20,
        );
        let white = Array3::from_elem((3, 20, 20), 1.0f32);
        let mut fm = FrameMut {
            data: &mut data,
            width: w,
            height: h,
            stride: w * 3,
            layout: PixelLayout::Rgb,
        };
        paste_face(&mut fm, &t, white.view(), 0.25).unwrap();
        // Centre fully replaced; the outermost pixel (0.5 px from the edge of a 5 px ramp)
        // only slightly: smoothstep(0.1) = 0.028 -> 7/255.
        assert_eq!(data[(10 * w + 10) * 3], 255);
        assert_eq!(data[(10 * w) * 3], 7);
        // Monotone towards the centre.
        let row: Vec<u8> = (0..10).map(|x| data[(10 * w + x) * 3]).collect();
        assert!(row.windows(2).all(|p| p[0] <= p[1]), "{row:?}");
    }
}
