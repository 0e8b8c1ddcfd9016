//! The packed 8-bit video frame ([`FrameRef`], [`FrameMut`], validated by one check), and
//! crops, colour conversion and paste-back between such frames and the model's `[3, S, S]` RGB
//! float faces in [-1, 1]. Resampling is [`super::resample`]'s triangle kernel.

use ndarray::{Array3, ArrayView3, ArrayViewMut3};

pub use super::resample::{area_downsample, resize};
use crate::Error;

/// Packed 8-bit pixel layouts the element accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    /// R, G, B.
    Rgb,
    /// B, G, R.
    Bgr,
    /// R, G, B, A.
    Rgba,
    /// B, G, R, A.
    Bgra,
    /// R, G, B, padding.
    Rgbx,
    /// B, G, R, padding.
    Bgrx,
}

impl PixelLayout {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelLayout::Rgb | PixelLayout::Bgr => 3,
            _ => 4,
        }
    }

    /// Byte offsets of R, G and B inside a pixel.
    pub fn rgb_offsets(self) -> [usize; 3] {
        match self {
            PixelLayout::Rgb | PixelLayout::Rgba | PixelLayout::Rgbx => [0, 1, 2],
            PixelLayout::Bgr | PixelLayout::Bgra | PixelLayout::Bgrx => [2, 1, 0],
        }
    }
}

/// A read-only packed frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// Pixel bytes, row after row, `stride` bytes apart.
    pub data: &'a [u8],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next (at least `width * bytes_per_pixel`).
    pub stride: usize,
    /// Pixel layout.
    pub layout: PixelLayout,
}

/// A writable packed frame.
#[derive(Debug)]
pub struct FrameMut<'a> {
    /// Pixel bytes, row after row, `stride` bytes apart.
    pub data: &'a mut [u8],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next (at least `width * bytes_per_pixel`).
    pub stride: usize,
    /// Pixel layout.
    pub layout: PixelLayout,
}

impl<'a> FrameRef<'a> {
    /// The frame over `data`, validated once ([`FrameRef::check`]).
    pub fn new(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        layout: PixelLayout,
    ) -> Result<Self, Error> {
        let frame = FrameRef {
            data,
            width,
            height,
            stride,
            layout,
        };
        frame.check()?;
        Ok(frame)
    }

    /// Checks that the frame is non-empty and `data` holds `height` rows of `stride` bytes, each
    /// with `width` pixels: the one frame validation, done by [`FrameRef::new`] and by every
    /// function that touches pixels.
    pub fn check(&self) -> Result<(), Error> {
        let row = self.width.checked_mul(self.layout.bytes_per_pixel());
        let needed = row.and_then(|row| {
            let rows = self.height.checked_sub(1)?.checked_mul(self.stride)?;
            rows.checked_add(row).filter(|_| self.stride >= row)
        });
        match needed {
            Some(needed) if self.width > 0 && self.data.len() >= needed => Ok(()),
            _ => Err(Error::InvalidParameter {
                name: "frame",
                value: format!(
                    "{}x{}, stride {}, {} bytes, {:?}",
                    self.width,
                    self.height,
                    self.stride,
                    self.data.len(),
                    self.layout
                ),
                expected: "a non-empty frame whose buffer holds height rows of stride bytes",
            }),
        }
    }

    /// [`FrameRef::check`], and that `region` is non-empty and inside the frame.
    pub fn check_region(&self, region: Region) -> Result<(), Error> {
        self.check()?;
        let inside = |start: usize, len: usize, end: usize| {
            len > 0 && start.checked_add(len).is_some_and(|stop| stop <= end)
        };
        if inside(region.x, region.width, self.width)
            && inside(region.y, region.height, self.height)
        {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "frame region",
                value: format!("{region:?} in a {}x{} frame", self.width, self.height),
                expected: "a non-empty region inside the frame",
            })
        }
    }
}

impl<'a> FrameMut<'a> {
    /// The writable frame over `data`, validated once ([`FrameRef::check`]).
    pub fn new(
        data: &'a mut [u8],
        width: usize,
        height: usize,
        stride: usize,
        layout: PixelLayout,
    ) -> Result<Self, Error> {
        let frame = FrameMut {
            data,
            width,
            height,
            stride,
            layout,
        };
        frame.check()?;
        Ok(frame)
    }

    /// The same pixels, read-only.
    pub fn as_frame_ref(&self) -> FrameRef<'_> {
        FrameRef {
            data: self.data,
            width: self.width,
            height: self.height,
            stride: self.stride,
            layout: self.layout,
        }
    }

    /// See [`FrameRef::check`].
    pub fn check(&self) -> Result<(), Error> {
        self.as_frame_ref().check()
    }

    /// See [`FrameRef::check_region`].
    pub fn check_region(&self, region: Region) -> Result<(), Error> {
        self.as_frame_ref().check_region(region)
    }
}

/// A square region of a frame, in pixels, entirely inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquareBox {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Side length (at least 1).
    pub side: usize,
}

/// A rectangular region of a frame, in pixels, entirely inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width (at least 1).
    pub width: usize,
    /// Height (at least 1).
    pub height: usize,
}

impl From<SquareBox> for Region {
    fn from(b: SquareBox) -> Self {
        Region {
            x: b.x,
            y: b.y,
            width: b.side,
            height: b.side,
        }
    }
}

impl Region {
    /// The whole frame.
    pub fn full(width: usize, height: usize) -> Self {
        Region {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// The square crop around an ROI: centred on it, of side `max(w, h) * (1 + margin)`, no larger
/// than the frame, and shifted (not shrunk) to lie inside the frame. `None` when the ROI is empty
/// or does not intersect the frame.
pub fn square_box(
    roi_x: i64,
    roi_y: i64,
    roi_w: u32,
    roi_h: u32,
    margin: f32,
    frame_w: usize,
    frame_h: usize,
) -> Option<SquareBox> {
    if roi_w == 0 || roi_h == 0 || frame_w == 0 || frame_h == 0 {
        return None;
    }
    let (fw, fh) = (frame_w as i64, frame_h as i64);
    let (x1, y1) = (
        roi_x.saturating_add(i64::from(roi_w)),
        roi_y.saturating_add(i64::from(roi_h)),
    );
    if x1 <= 0 || y1 <= 0 || roi_x >= fw || roi_y >= fh {
        return None;
    }
    let margin = if margin.is_finite() {
        margin.max(0.0)
    } else {
        0.0
    };
    let want = (f64::from(roi_w.max(roi_h)) * (1.0 + f64::from(margin))).round() as i64;
    let side = want.clamp(1, fw.min(fh));
    let cx = roi_x as f64 + f64::from(roi_w) / 2.0;
    let cy = roi_y as f64 + f64::from(roi_h) / 2.0;
    let x = ((cx - side as f64 / 2.0).round() as i64).clamp(0, fw - side);
    let y = ((cy - side as f64 / 2.0).round() as i64).clamp(0, fh - side);
    Some(SquareBox {
        x: x as usize,
        y: y as usize,
        side: side as usize,
    })
}

/// Reads `region` of `frame` into `out` (`[3, S, S]` or any `[3, H, W]`), resampled, as RGB in
/// [-1, 1].
pub fn read_region(
    frame: &FrameRef<'_>,
    region: Region,
    mut out: ArrayViewMut3<'_, f32>,
) -> Result<(), Error> {
    frame.check_region(region)?;
    let bpp = frame.layout.bytes_per_pixel();
    let offsets = frame.layout.rgb_offsets();
    let mut crop = Array3::<f32>::zeros((3, region.height, region.width));
    for y in 0..region.height {
        let row = (region.y + y) * frame.stride + region.x * bpp;
        for x in 0..region.width {
            let px = row + x * bpp;
            for (c, off) in offsets.iter().enumerate() {
                crop[[c, y, x]] = f32::from(frame.data[px + off]) / 127.5 - 1.0;
            }
        }
    }
    let (_, oh, ow) = out.dim();
    if (oh, ow) == (region.height, region.width) {
        out.assign(&crop);
    } else {
        out.assign(&resize(crop.view(), oh, ow));
    }
    Ok(())
}

/// Reads the square `b` of `frame` into `out` (`[3, S, S]`), RGB in [-1, 1].
pub fn read_face(
    frame: &FrameRef<'_>,
    b: &SquareBox,
    out: ArrayViewMut3<'_, f32>,
) -> Result<(), Error> {
    read_region(frame, (*b).into(), out)
}

/// Resamples `face` (`[3, H, W]`, RGB in [-1, 1]) to `region` and writes it into `frame`,
/// leaving alpha or padding bytes untouched.
pub fn write_region(
    frame: &mut FrameMut<'_>,
    region: Region,
    face: ArrayView3<'_, f32>,
) -> Result<(), Error> {
    frame.check_region(region)?;
    let (_, fh, fw) = face.dim();
    let resized;
    let src = if (fh, fw) == (region.height, region.width) {
        face
    } else {
        resized = resize(face, region.height, region.width);
        resized.view()
    };
    let bpp = frame.layout.bytes_per_pixel();
    let offsets = frame.layout.rgb_offsets();
    for y in 0..region.height {
        let row = (region.y + y) * frame.stride + region.x * bpp;
        for x in 0..region.width {
            let px = row + x * bpp;
            for (c, off) in offsets.iter().enumerate() {
                frame.data[px + off] = to_u8(src[[c, y, x]]);
            }
        }
    }
    Ok(())
}

/// Conceals `region` of `frame` by pixelating it into blocks of `block` x `block` pixels, each
/// filled with its mean colour, leaving alpha or padding bytes untouched. With `block` a
/// quarter of the face or more, no identity survives (the `conceal` failure policy).
pub fn pixelate(frame: &mut FrameMut<'_>, region: Region, block: usize) -> Result<(), Error> {
    frame.check_region(region)?;
    let block = block.max(1);
    let bpp = frame.layout.bytes_per_pixel();
    let offsets = frame.layout.rgb_offsets();
    let (x_end, y_end) = (region.x + region.width, region.y + region.height);
    for by in (region.y..y_end).step_by(block) {
        for bx in (region.x..x_end).step_by(block) {
            let (ys, xs) = (by..(by + block).min(y_end), bx..(bx + block).min(x_end));
            let mut sum = [0u64; 3];
            let mut count = 0u64;
            for y in ys.clone() {
                for x in xs.clone() {
                    let px = y * frame.stride + x * bpp;
                    for (c, off) in offsets.iter().enumerate() {
                        sum[c] += u64::from(frame.data[px + off]);
                    }
                    count += 1;
                }
            }
            let mean = sum.map(|v| (v / count.max(1)) as u8);
            for y in ys.clone() {
                for x in xs.clone() {
                    let px = y * frame.stride + x * bpp;
                    for (c, off) in offsets.iter().enumerate() {
                        frame.data[px + off] = mean[c];
                    }
                }
            }
        }
    }
    Ok(())
}

/// Gaussian taps of standard deviation `sigma`, radius `ceil(3 sigma)`, summing to 1.
pub fn gaussian_taps(sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(0.0) as i64;
    let taps: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = taps.iter().sum();
    taps.into_iter().map(|t| t / sum).collect()
}

/// Blurs `region` of `frame` with a separable Gaussian of `sigma` frame pixels (radius
/// `ceil(3 sigma)`), reading the frame around the region (replicated at the frame's edges) and
/// writing the region only; alpha or padding bytes stay. A `sigma` of 0 (or below) does
/// nothing.
pub fn gaussian_blur_region(
    frame: &mut FrameMut<'_>,
    region: Region,
    sigma: f32,
) -> Result<(), Error> {
    frame.check_region(region)?;
    if sigma.is_nan() || sigma <= 0.0 {
        return Ok(());
    }
    let taps = gaussian_taps(sigma);
    let r = taps.len() / 2;
    let bpp = frame.layout.bytes_per_pixel();
    let offsets = frame.layout.rgb_offsets();
    let (w, h) = (frame.width, frame.height);
    // Rows read: the region and r more on each side (clamped); columns likewise.
    let y0 = region.y.saturating_sub(r);
    let y1 = (region.y + region.height + r).min(h);
    let (rw, rh) = (region.width, region.height);
    let clamp_x = |x: i64| x.clamp(0, w as i64 - 1) as usize;
    let clamp_y = |y: i64| y.clamp(0, h as i64 - 1) as usize;
    // Horizontal pass over rows y0..y1, the region's columns only.
    let mut across = vec![0.0f32; 3 * (y1 - y0) * rw];
    for y in y0..y1 {
        for x in 0..rw {
            let cx = (region.x + x) as i64;
            let mut sum = [0.0f32; 3];
            for (k, t) in taps.iter().enumerate() {
                let px = y * frame.stride + clamp_x(cx + k as i64 - r as i64) * bpp;
                for (c, off) in offsets.iter().enumerate() {
                    sum[c] += t * f32::from(frame.data[px + off]);
                }
            }
            for (c, v) in sum.into_iter().enumerate() {
                across[(c * (y1 - y0) + (y - y0)) * rw + x] = v;
            }
        }
    }
    // Vertical pass into the region.
    for y in 0..rh {
        let cy = (region.y + y) as i64;
        for x in 0..rw {
            let mut sum = [0.0f32; 3];
            for (k, t) in taps.iter().enumerate() {
                let row = clamp_y(cy + k as i64 - r as i64) - y0;
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += t * across[(c * (y1 - y0) + row) * rw + x];
                }
            }
            let px = (region.y + y) * frame.stride + (region.x + x) * bpp;
            for (c, off) in offsets.iter().enumerate() {
                frame.data[px + off] = sum[c].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(())
}

/// Writes `face` into the square `b` of `frame` (see [`write_region`]).
pub fn write_face(
    frame: &mut FrameMut<'_>,
    b: &SquareBox,
    face: ArrayView3<'_, f32>,
) -> Result<(), Error> {
    write_region(frame, (*b).into(), face)
}

/// A [-1, 1] value to an 8-bit sample, rounded and clamped (NaN becomes 0).
pub fn to_u8(v: f32) -> u8 {
    let s = ((v + 1.0) * 127.5).round();
    if s.is_nan() {
        0
    } else {
        s.clamp(0.0, 255.0) as u8
    }
}

/// Converts a `[3, H, W]` RGB image in [-1, 1] to packed RGB bytes, row after row.
pub fn to_rgb8(face: ArrayView3<'_, f32>) -> Vec<u8> {
    let (_, h, w) = face.dim();
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                out.push(to_u8(face[[c, y, x]]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn gaussian_blur_keeps_constants_spreads_a_spike_and_stays_in_its_region() {
        // 12 x 10 BGRx frame, grey 100, one white pixel at (5, 4) in the red channel.
        let (w, h) = (12usize, 10usize);
        let mut data = vec![100u8; w * h * 4];
        data[4 * w * 4 + 5 * 4 + 2] = 255;
        let region = Region {
            x: 2,
            y: 1,
            width: 8,
            height: 7,
        };
        let before = data.clone();
        let mut frame = FrameMut::new(&mut data, w, h, w * 4, PixelLayout::Bgrx).unwrap();
        gaussian_blur_region(&mut frame, region, 1.0).unwrap();
        let at = |d: &[u8], x: usize, y: usize, c: usize| d[y * w * 4 + x * 4 + c];
        // The spike spread: lower at its centre, raised at its neighbours, mass kept.
        assert!(at(&data, 5, 4, 2) < 160 && at(&data, 5, 4, 2) > 100);
        assert!(at(&data, 6, 4, 2) > 100 && at(&data, 5, 5, 2) > 100);
        let excess: i32 = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| i32::from(at(&data, x, y, 2)) - 100)
            .sum();
        assert!((excess - 155).abs() <= 6, "mass {excess}");
        // Grey channels stay grey; padding bytes and pixels outside the region untouched.
        for y in 0..h {
            for x in 0..w {
                assert_eq!(at(&data, x, y, 0), 100);
                assert_eq!(at(&data, x, y, 3), at(&before, x, y, 3));
                let inside = (2..10).contains(&x) && (1..8).contains(&y);
                if !inside {
                    assert_eq!(at(&data, x, y, 2), at(&before, x, y, 2));
                }
            }
        }
        // sigma 0 does nothing; a region outside the frame is an error.
        let copy = data.clone();
        let mut frame = FrameMut::new(&mut data, w, h, w * 4, PixelLayout::Bgrx).unwrap();
        gaussian_blur_region(&mut frame, region, 0.0).unwrap();
        let outside = Region {
            x: 10,
            y: 0,
            width: 5,
            height: 2,
        };
        assert!(gaussian_blur_region(&mut frame, outside, 1.0).is_err());
        assert_eq!(data, copy);
    }

    #[test]
    fn gaussian_taps_sum_to_one() {
        for sigma in [0.3f32, 1.0, 2.5] {
            let taps = gaussian_taps(sigma);
            assert_eq!(taps.len(), 2 * (3.0 * sigma).ceil() as usize + 1);
            assert!((taps.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(taps[taps.len() / 2] >= *taps.first().unwrap());
        }
    }

    #[test]
    fn square_box_inside_is_centred_with_margin() {
        // 20x10 ROI at (40, 30), margin 0.5: side 30, centred on (50, 35).
        let b = square_box(40, 30, 20, 10, 0.5, 200, 100).unwrap();
        assert_eq!(
            b,
            SquareBox {
                x: 35,
                y: 20,
                side: 30
            }
        );
    }

    #[test]
    fn square_box_at_edges_is_shifted_inside() {
        let b = square_box(-10, -10, 30, 30, 0.0, 100, 50).unwrap();
        assert_eq!(
            b,
            SquareBox {
                x: 0,
                y: 0,
                side: 30
            }
        );
        let b = square_box(90, 40, 30, 30, 0.0, 100, 50).unwrap();
        assert_eq!(
            b,
            SquareBox {
                x: 70,
                y: 20,
                side: 30
            }
        );
        // Larger than the frame: clamped to the frame's short side.
        let b = square_box(0, 0, 500, 500, 0.2, 100, 50).unwrap();
        assert_eq!(b.side, 50);
    }

    #[test]
    fn square_box_rejects_empty_and_outside() {
        assert_eq!(square_box(0, 0, 0, 10, 0.2, 100, 100), None);
        assert_eq!(square_box(100, 0, 10, 10, 0.2, 100, 100), None);
        assert_eq!(square_box(-20, 0, 20, 10, 0.2, 100, 100), None);
    }

    #[test]
    fn read_converts_layout_and_range() {
        // One BGRx pixel (B=0, G=255, R=51) and stride padding.
        let data = [0u8, 255, 51, 9, 77, 77];
        let frame = FrameRef {
            data: &data,
            width: 1,
            height: 1,
            stride: 6,
            layout: PixelLayout::Bgrx,
        };
        let mut out = Array3::<f32>::zeros((3, 1, 1));
        read_region(&frame, Region::full(1, 1), out.view_mut()).unwrap();
        assert!((out[[0, 0, 0]] - (51.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!((out[[1, 0, 0]] - 1.0).abs() < 1e-6);
        assert!((out[[2, 0, 0]] + 1.0).abs() < 1e-6);
    }

    #[test]
    fn write_then_read_round_trips_and_keeps_padding() {
        let (w, h, stride) = (5usize, 3usize, 24usize);
        let mut data = vec![7u8; stride * h];
        let face = Array3::from_shape_fn((3, 2, 2), |(c, y, x)| {
            (c as f32 - 1.0) * 0.5 + 0.1 * (y + x) as f32
        });
        let region = Region {
            x: 2,
            y: 1,
            width: 2,
            height: 2,
        };
        let mut frame = FrameMut {
            data: &mut data,
            width: w,
            height: h,
            stride,
            layout: PixelLayout::Rgbx,
        };
        write_region(&mut frame, region, face.view()).unwrap();
        // Padding byte of a written pixel and a pixel outside the region are untouched.
        assert_eq!(data[stride + 2 * 4 + 3], 7);
        assert_eq!(data[0], 7);
        let frame = FrameRef {
            data: &data,
            width: w,
            height: h,
            stride,
            layout: PixelLayout::Rgbx,
        };
        let mut back = Array3::<f32>::zeros((3, 2, 2));
        read_region(&frame, region, back.view_mut()).unwrap();
        for (a, b) in back.iter().zip(face.iter()) {
            assert!((a - b).abs() <= 1.0 / 127.5, "{a} vs {b}");
        }
    }

    #[test]
    fn short_buffer_is_an_error_not_a_panic() {
        let data = [0u8; 10];
        let frame = FrameRef {
            data: &data,
            width: 4,
            height: 4,
            stride: 12,
            layout: PixelLayout::Rgb,
        };
        let mut out = Array3::<f32>::zeros((3, 2, 2));
        let err = read_region(&frame, Region::full(4, 4), out.view_mut()).unwrap_err();
        assert!(err.to_string().contains("invalid frame"), "{err}");
        assert!(FrameRef::new(&data, 4, 4, 12, PixelLayout::Rgb).is_err());
        assert!(FrameRef::new(&data, 3, 1, 9, PixelLayout::Rgb).is_ok());
        assert!(FrameRef::new(&data, 0, 1, 9, PixelLayout::Rgb).is_err());
        assert!(FrameRef::new(&data, 4, 1, 9, PixelLayout::Rgb).is_err());
    }

    #[test]
    fn a_region_outside_the_frame_is_an_error() {
        let data = [0u8; 12];
        let frame = FrameRef::new(&data, 2, 2, 6, PixelLayout::Rgb).unwrap();
        let mut out = Array3::<f32>::zeros((3, 1, 1));
        let region = Region {
            x: 1,
            y: 0,
            width: 2,
            height: 1,
        };
        let err = read_region(&frame, region, out.view_mut()).unwrap_err();
        assert!(err.to_string().contains("frame region"), "{err}");
        let empty = Region { width: 0, ..region };
        assert!(frame.check_region(empty).is_err());
    }

    #[test]
    fn to_u8_rounds_and_clamps() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
        assert_eq!(to_u8(0.0), 128);
    }
}
