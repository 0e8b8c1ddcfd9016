//! The attack alarm's finest-band signal, read at the input's own resolution.
//!
//! Sign-like perturbations such as FGSM's and PGD's fill an image's finest band (the image
//! minus its 3x3 box mean), where natural photos of faces carry little next to the band below
//! it (the box mean minus its own 3x3 box mean). The element reads it from the frame, over the
//! face's region, before its warp to the purifier's side averages that band away; without a
//! frame it is read from the face crop itself.

use ndarray::ArrayView3;

use super::image::{FrameRef, Region};

/// Mean squares `(finest, next)` of the two bands over `region` of a `channels` x `height` x
/// `width` image read through `at(channel, y, x)`, averaged over channels. Each 3x3 box mean
/// averages the neighbours inside the image only (fewer than nine at its edges), as
/// `avg_pool2d` without padding counts them, so the figures over a region equal those of the
/// whole image's bands. An empty region gives `(0, 0)`.
pub fn band_energies(
    channels: usize,
    height: usize,
    width: usize,
    region: Region,
    at: impl Fn(usize, usize, usize) -> f32,
) -> (f32, f32) {
    let y0 = region.y.min(height);
    let x0 = region.x.min(width);
    let y1 = (region.y + region.height).min(height);
    let x1 = (region.x + region.width).min(width);
    if y1 <= y0 || x1 <= x0 || channels == 0 {
        return (0.0, 0.0);
    }
    // The box means are needed on the region and one pixel around it; they read one more.
    let (by0, bx0) = (y0.saturating_sub(1), x0.saturating_sub(1));
    let (by1, bx1) = ((y1 + 1).min(height), (x1 + 1).min(width));
    let (bh, bw) = (by1 - by0, bx1 - bx0);
    let box_mean = |y: usize, x: usize, value: &dyn Fn(usize, usize) -> f32| {
        let (mut sum, mut count) = (0.0f32, 0u32);
        for yy in y.saturating_sub(1)..(y + 2).min(height) {
            for xx in x.saturating_sub(1)..(x + 2).min(width) {
                sum += value(yy, xx);
                count += 1;
            }
        }
        sum / count as f32
    };
    let (mut finest, mut next) = (0.0f64, 0.0f64);
    let mut blurred = vec![0.0f32; bh * bw];
    for c in 0..channels {
        let pixel = |y: usize, x: usize| at(c, y, x);
        for y in by0..by1 {
            for x in bx0..bx1 {
                blurred[(y - by0) * bw + (x - bx0)] = box_mean(y, x, &pixel);
            }
        }
        let blur = |y: usize, x: usize| blurred[(y - by0) * bw + (x - bx0)];
        for y in y0..y1 {
            for x in x0..x1 {
                let b = blur(y, x);
                finest += f64::from(pixel(y, x) - b).powi(2);
                next += f64::from(b - box_mean(y, x, &blur)).powi(2);
            }
        }
    }
    let n = (channels * (y1 - y0) * (x1 - x0)) as f64;
    ((finest / n) as f32, (next / n) as f32)
}

/// [`band_energies`] of a face crop (`[3, S, S]`, values in [-1, 1]), over the whole crop.
pub fn crop_bands(face: ArrayView3<'_, f32>) -> (f32, f32) {
    let (c, h, w) = face.dim();
    let whole = Region {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    band_energies(c, h, w, whole, |ch, y, x| face[[ch, y, x]])
}

/// [`band_energies`] of the RGB frame over `region`, in the crops' units ([-1, 1]).
pub fn frame_bands(frame: &FrameRef<'_>, region: Region) -> (f32, f32) {
    let bpp = frame.layout.bytes_per_pixel();
    let offs = frame.layout.rgb_offsets();
    band_energies(3, frame.height, frame.width, region, |c, y, x| {
        f32::from(frame.data[y * frame.stride + x * bpp + offs[c]]) / 127.5
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image::PixelLayout;
    use ndarray::Array3;

    /// A smooth 3 x 20 x 24 image.
    fn smooth() -> Array3<f32> {
        Array3::from_shape_fn((3, 20, 24), |(c, y, x)| {
            ((x as f32 * 0.21 + c as f32).sin() + (y as f32 * 0.17).cos()) * 0.4
        })
    }

    #[test]
    fn sign_noise_fills_the_finest_band_of_a_smooth_face() {
        let face = smooth();
        let (fine, next) = crop_bands(face.view());
        assert!(fine < 1e-3 && next < 1e-3, "{fine} {next}");
        let noisy = Array3::from_shape_fn(face.dim(), |(c, y, x)| {
            let sign = if (c * 7 + y * 13 + x * 5) % 3 == 0 {
                1.0
            } else {
                -1.0
            };
            face[[c, y, x]] + sign * 8.0 / 127.5
        });
        let (nfine, nnext) = crop_bands(noisy.view());
        assert!(
            nfine / nnext > 4.0 * fine / next,
            "{nfine} {nnext} vs {fine} {next}"
        );
    }

    #[test]
    fn a_region_reads_the_bands_the_whole_image_has_there() {
        // By hand, on a tiny image: the bands of a region equal the whole image's bands at
        // those pixels (its box means see the neighbours outside the region).
        let img = Array3::from_shape_fn((1, 6, 7), |(_, y, x)| ((y * 7 + x) % 5) as f32);
        let at = |_: usize, y: usize, x: usize| img[[0, y, x]];
        let mean = |f: &dyn Fn(usize, usize) -> f32, y: usize, x: usize| {
            let (mut s, mut n) = (0.0, 0.0);
            for yy in y.saturating_sub(1)..(y + 2).min(6) {
                for xx in x.saturating_sub(1)..(x + 2).min(7) {
                    s += f(yy, xx);
                    n += 1.0;
                }
            }
            s / n
        };
        let px = |y: usize, x: usize| img[[0, y, x]];
        let b1 = |y: usize, x: usize| mean(&px, y, x);
        let region = Region {
            x: 2,
            y: 1,
            width: 3,
            height: 4,
        };
        let (mut fine, mut next) = (0.0, 0.0);
        for y in 1..5 {
            for x in 2..5 {
                fine += (px(y, x) - b1(y, x)).powi(2);
                next += (b1(y, x) - mean(&b1, y, x)).powi(2);
            }
        }
        let (f, n) = band_energies(1, 6, 7, region, at);
        assert!((f - fine / 12.0).abs() < 1e-5, "{f} {}", fine / 12.0);
        assert!((n - next / 12.0).abs() < 1e-5, "{n} {}", next / 12.0);
        // An empty region reads nothing.
        let empty = Region { width: 0, ..region };
        assert_eq!(band_energies(1, 6, 7, empty, at), (0.0, 0.0));
    }

    #[test]
    fn the_frame_reads_as_its_crop_would() {
        let face = smooth();
        let (_, h, w) = face.dim();
        let mut data = vec![0u8; h * w * 4];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data[(y * w + x) * 4 + c] = ((face[[c, y, x]] + 1.0) * 127.5).round() as u8;
                }
            }
        }
        let frame = FrameRef {
            data: &data,
            width: w,
            height: h,
            stride: w * 4,
            layout: PixelLayout::Rgbx,
        };
        let whole = Region {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        let quantized = Array3::from_shape_fn(face.dim(), |(c, y, x)| {
            f32::from(data[(y * w + x) * 4 + c]) / 127.5 - 1.0
        });
        let (a, b) = frame_bands(&frame, whole);
        let (qa, qb) = crop_bands(quantized.view());
        assert!(
            (a - qa).abs() < 1e-6 && (b - qb).abs() < 1e-6,
            "{a} {b} {qa} {qb}"
        );
    }
}
