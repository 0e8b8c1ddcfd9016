//! Face-detection maths for CenterFace (Xu et al., "CenterFace: Joint Face Detection and
//! Alignment Using Face as Point", 2019): letterboxing a packed frame into the detector's input,
//! decoding its four output maps into boxes with 5 landmarks, and non-maximum suppression.
//!
//! Pure functions with no GStreamer or inference types. Coordinates are in pixels of the space
//! named by each function (detector input or frame); [`Face::normalised`] maps frame pixels to
//! [0, 1] for the `detection` structure of a region-of-interest meta.

use ndarray::{ArrayView4, ArrayViewMut3, Axis};

use crate::Error;
use crate::core::image::FrameRef;
use crate::core::resample::area_taps;

/// Pixels of the detector input per cell of its output maps.
pub const OUTPUT_STRIDE: usize = 4;

/// The detector input's width and height must be multiples of this (the backbone downsamples
/// five times by 2).
pub const INPUT_ALIGN: usize = 32;

/// Number of landmarks per face: left eye, right eye, nose tip, left and right mouth corners
/// (left and right as seen in the image).
pub const LANDMARKS: usize = 5;

/// A detected face: a box, its confidence and 5 landmarks (`[x, y]`, order of [`LANDMARKS`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// Left edge.
    pub x_min: f32,
    /// Top edge.
    pub y_min: f32,
    /// Right edge.
    pub x_max: f32,
    /// Bottom edge.
    pub y_max: f32,
    /// Heatmap score of the face centre, in [0, 1].
    pub confidence: f32,
    /// Landmark positions, `[x, y]` each.
    pub landmarks: [[f32; 2]; LANDMARKS],
}

impl Face {
    /// Box width (0 for an inverted box).
    pub fn width(&self) -> f32 {
        (self.x_max - self.x_min).max(0.0)
    }

    /// Box height (0 for an inverted box).
    pub fn height(&self) -> f32 {
        (self.y_max - self.y_min).max(0.0)
    }

    /// Box area.
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Box centre `[x, y]`.
    pub fn centre(&self) -> [f32; 2] {
        [
            (self.x_min + self.x_max) / 2.0,
            (self.y_min + self.y_max) / 2.0,
        ]
    }

    /// Intersection over union of the two boxes (0 when either is empty).
    pub fn iou(&self, other: &Face) -> f32 {
        let w = (self.x_max.min(other.x_max) - self.x_min.max(other.x_min)).max(0.0);
        let h = (self.y_max.min(other.y_max) - self.y_min.max(other.y_min)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The face with every x multiplied by `sx` and every y by `sy` (a change of pixel grid).
    pub fn scaled(&self, sx: f32, sy: f32) -> Face {
        Face {
            x_min: self.x_min * sx,
            y_min: self.y_min * sy,
            x_max: self.x_max * sx,
            y_max: self.y_max * sy,
            confidence: self.confidence,
            landmarks: self.landmarks.map(|[x, y]| [x * sx, y * sy]),
        }
    }

    /// The face with its box clamped to `[0, width] x [0, height]`; landmarks are kept as they
    /// are (a landmark of a face cut by the frame edge may lie outside it).
    pub fn clamped(&self, width: f32, height: f32) -> Face {
        Face {
            x_min: self.x_min.clamp(0.0, width),
            y_min: self.y_min.clamp(0.0, height),
            x_max: self.x_max.clamp(0.0, width),
            y_max: self.y_max.clamp(0.0, height),
            ..*self
        }
    }

    /// The face in a `width x height` frame's coordinates normalised to [0, 1].
    pub fn normalised(&self, width: usize, height: usize) -> Face {
        self.scaled(1.0 / width.max(1) as f32, 1.0 / height.max(1) as f32)
    }

    /// The smallest whole-pixel rectangle `(x, y, w, h)` that holds the box of a face given in
    /// normalised coordinates, inside a `width x height` frame; `None` when it is empty there.
    pub fn pixel_rect(&self, width: usize, height: usize) -> Option<(u32, u32, u32, u32)> {
        // Rounding slack, so that a normalised edge that was a whole pixel maps back to it.
        const SLACK: f32 = 1e-3;
        let (fw, fh) = (width as f32, height as f32);
        let x0 = (self.x_min * fw + SLACK).floor().clamp(0.0, fw);
        let y0 = (self.y_min * fh + SLACK).floor().clamp(0.0, fh);
        let x1 = (self.x_max * fw - SLACK).ceil().clamp(0.0, fw);
        let y1 = (self.y_max * fh - SLACK).ceil().clamp(0.0, fh);
        (x1 > x0 && y1 > y0).then_some((x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32))
    }
}

/// How a frame is placed in the detector input: scaled by the same factor on both axes so that
/// its longer side is `input_size`, at the top-left corner, and padded with black on the right
/// and at the bottom up to multiples of [`INPUT_ALIGN`]. A 1920x1080 frame at input size 640
/// becomes 640x360 inside a 640x384 input; a 250x250 one becomes 640x640.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Letterbox {
    /// Frame width in pixels.
    pub frame_width: usize,
    /// Frame height in pixels.
    pub frame_height: usize,
    /// Width of the scaled frame inside the input.
    pub content_width: usize,
    /// Height of the scaled frame inside the input.
    pub content_height: usize,
    /// Detector input width (a multiple of [`INPUT_ALIGN`]).
    pub input_width: usize,
    /// Detector input height (a multiple of [`INPUT_ALIGN`]).
    pub input_height: usize,
}

impl Letterbox {
    /// The placement of a `frame_width x frame_height` frame for a detector resolution of
    /// `input_size` (the longer side of the scaled frame).
    pub fn fit(frame_width: usize, frame_height: usize, input_size: usize) -> Result<Self, Error> {
        if frame_width == 0 || frame_height == 0 {
            return Err(Error::InvalidParameter {
                name: "frame size",
                value: format!("{frame_width}x{frame_height}"),
                expected: "a non-empty frame",
            });
        }
        if input_size < INPUT_ALIGN {
            return Err(Error::InvalidParameter {
                name: "input-size",
                value: input_size.to_string(),
                expected: "at least 32 pixels",
            });
        }
        let longer = frame_width.max(frame_height) as f64;
        let scale = input_size as f64 / longer;
        let content = |side: usize| ((side as f64 * scale).round() as usize).clamp(1, input_size);
        let (content_width, content_height) = (content(frame_width), content(frame_height));
        let align = |side: usize| side.div_ceil(INPUT_ALIGN) * INPUT_ALIGN;
        Ok(Letterbox {
            frame_width,
            frame_height,
            content_width,
            content_height,
            input_width: align(content_width),
            input_height: align(content_height),
        })
    }

    /// Maps a face from detector-input pixels to frame pixels, its box clamped to the frame.
    pub fn to_frame(&self, face: &Face) -> Face {
        let sx = self.frame_width as f32 / self.content_width as f32;
        let sy = self.frame_height as f32 / self.content_height as f32;
        face.scaled(sx, sy)
            .clamped(self.frame_width as f32, self.frame_height as f32)
    }
}

/// Writes `frame` letterboxed (see [`Letterbox`]) into `out`, `[3, input_height, input_width]`,
/// RGB in [0, 255] as CenterFace expects, the padding black.
pub fn letterbox_frame(
    frame: &FrameRef<'_>,
    placement: &Letterbox,
    mut out: ArrayViewMut3<'_, f32>,
) -> Result<(), Error> {
    frame.check()?;
    let bpp = frame.layout.bytes_per_pixel();
    let row_bytes = frame.width * bpp;
    let fits = frame.width == placement.frame_width
        && frame.height == placement.frame_height
        && out.dim() == (3, placement.input_height, placement.input_width);
    if !fits {
        return Err(Error::InvalidParameter {
            name: "letterbox",
            value: format!(
                "{}x{} frame into {:?} for {placement:?}",
                frame.width,
                frame.height,
                out.dim()
            ),
            expected: "a frame of the letterbox's size and an output of its input size",
        });
    }
    out.fill(0.0);
    let offsets = frame.layout.rgb_offsets();
    let rows = area_taps(frame.height, placement.content_height);
    let cols = area_taps(frame.width, placement.content_width);
    // One output row at a time: blend the source rows it covers, then resample horizontally.
    let mut blended = vec![0.0f32; frame.width * 3];
    for (oy, (first_row, row_weights)) in rows.iter().enumerate() {
        blended.fill(0.0);
        for (k, w) in row_weights.iter().enumerate() {
            let row = &frame.data[(first_row + k) * frame.stride..][..row_bytes];
            for (px, acc) in row.chunks_exact(bpp).zip(blended.chunks_exact_mut(3)) {
                for (c, off) in offsets.iter().enumerate() {
                    acc[c] += w * f32::from(px[*off]);
                }
            }
        }
        for c in 0..3 {
            let mut plane = out.index_axis_mut(Axis(0), c);
            let mut line = plane.index_axis_mut(Axis(0), oy);
            for (ox, (first_col, col_weights)) in cols.iter().enumerate() {
                line[ox] = col_weights
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * blended[(first_col + k) * 3 + c])
                    .sum();
            }
        }
    }
    Ok(())
}

/// CenterFace's four output maps for one image, as `[1, C, h, w]` views: `heatmap` (C = 1, face
/// centre score), `scale` (C = 2, log of box height and width over [`OUTPUT_STRIDE`]), `offset`
/// (C = 2, sub-cell y and x of the centre) and `landmarks` (C = 10, y and x of each landmark
/// relative to the box's top-left corner, in box heights and widths).
#[derive(Debug, Clone, Copy)]
pub struct CenterFaceMaps<'a> {
    /// Face-centre score per cell.
    pub heatmap: ArrayView4<'a, f32>,
    /// Log box size per cell: channel 0 height, channel 1 width.
    pub scale: ArrayView4<'a, f32>,
    /// Centre offset per cell: channel 0 y, channel 1 x.
    pub offset: ArrayView4<'a, f32>,
    /// Landmarks per cell: channel 2k the y of landmark k, 2k + 1 its x.
    pub landmarks: ArrayView4<'a, f32>,
}

impl CenterFaceMaps<'_> {
    /// Checks that the maps describe one image with the channel counts above and one grid size.
    fn check(&self) -> Result<(usize, usize), Error> {
        let grid = &self.heatmap.shape()[2..];
        let ok = [
            (&self.heatmap, 1),
            (&self.scale, 2),
            (&self.offset, 2),
            (&self.landmarks, 2 * LANDMARKS),
        ]
        .iter()
        .all(|(map, channels)| {
            let s = map.shape();
            s[0] == 1 && s[1] == *channels && &s[2..] == grid
        });
        if ok {
            Ok((grid[0], grid[1]))
        } else {
            Err(Error::InvalidParameter {
                name: "CenterFace outputs",
                value: format!(
                    "heatmap {:?}, scale {:?}, offset {:?}, landmarks {:?}",
                    self.heatmap.shape(),
                    self.scale.shape(),
                    self.offset.shape(),
                    self.landmarks.shape()
                ),
                expected: "[1,1,h,w], [1,2,h,w], [1,2,h,w] and [1,10,h,w]",
            })
        }
    }
}

/// Decodes every cell whose heatmap score is above `threshold` into a face in detector-input
/// pixels, boxes clamped to `[0, bounds.0] x [0, bounds.1]` (the letterbox content).
///
/// For the cell at row `i`, column `j`: the box is `h = 4 exp(scale[0])` high and
/// `w = 4 exp(scale[1])` wide, centred at `x = 4 (j + offset[1] + 0.5)`,
/// `y = 4 (i + offset[0] + 0.5)`; landmark k is at `x_min + landmarks[2k + 1] w`,
/// `y_min + landmarks[2k] h` with the unclamped top-left corner. Faces come in raster order of
/// their cells; apply [`non_max_suppression`] next.
pub fn decode_centerface(
    maps: &CenterFaceMaps<'_>,
    threshold: f32,
    bounds: (f32, f32),
) -> Result<Vec<Face>, Error> {
    let (rows, cols) = maps.check()?;
    let stride = OUTPUT_STRIDE as f32;
    let mut faces = Vec::new();
    for i in 0..rows {
        for j in 0..cols {
            let confidence = maps.heatmap[[0, 0, i, j]];
            if confidence.is_nan() || confidence <= threshold {
                continue;
            }
            let h = stride * maps.scale[[0, 0, i, j]].exp();
            let w = stride * maps.scale[[0, 1, i, j]].exp();
            let cy = stride * (i as f32 + maps.offset[[0, 0, i, j]] + 0.5);
            let cx = stride * (j as f32 + maps.offset[[0, 1, i, j]] + 0.5);
            let (x0, y0) = (cx - w / 2.0, cy - h / 2.0);
            let mut landmarks = [[0.0; 2]; LANDMARKS];
            for (k, point) in landmarks.iter_mut().enumerate() {
                *point = [
                    x0 + maps.landmarks[[0, 2 * k + 1, i, j]] * w,
                    y0 + maps.landmarks[[0, 2 * k, i, j]] * h,
                ];
            }
            let face = Face {
                x_min: x0,
                y_min: y0,
                x_max: x0 + w,
                y_max: y0 + h,
                confidence,
                landmarks,
            };
            faces.push(face.clamped(bounds.0, bounds.1));
        }
    }
    Ok(faces)
}

/// Keeps the `limit` most confident of `faces` (ties keep their order), sorted by decreasing
/// confidence as [`non_max_suppression`] would sort them; a no-op below the limit.
pub fn keep_most_confident(faces: &mut Vec<Face>, limit: usize) {
    if faces.len() > limit {
        faces.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        faces.truncate(limit);
    }
}

/// Greedy non-maximum suppression: faces by decreasing confidence (ties keep their order), each
/// kept unless its IoU with a face already kept is at least `iou_threshold`.
pub fn non_max_suppression(mut faces: Vec<Face>, iou_threshold: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut kept: Vec<Face> = Vec::with_capacity(faces.len());
    for face in faces {
        if kept.iter().all(|k| k.iou(&face) < iou_threshold) {
            kept.push(face);
        }
    }
    kept
}

/// Drops faces whose box is narrower or lower than `min_size` pixels, then keeps the
/// `max_faces` most confident (input sorted by decreasing confidence, as NMS leaves it).
pub fn keep_faces(faces: Vec<Face>, min_size: f32, max_faces: usize) -> Vec<Face> {
    faces
        .into_iter()
        .filter(|f| f.width() >= min_size && f.height() >= min_size)
        .take(max_faces)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image::PixelLayout;
    use ndarray::{Array3, Array4};

    fn face(x0: f32, y0: f32, x1: f32, y1: f32, confidence: f32) -> Face {
        Face {
            x_min: x0,
            y_min: y0,
            x_max: x1,
            y_max: y1,
            confidence,
            landmarks: [[0.0; 2]; LANDMARKS],
        }
    }

    #[test]
    fn letterbox_keeps_aspect_and_aligns_to_32() {
        let hd = Letterbox::fit(1920, 1080, 640).unwrap();
        assert_eq!((hd.content_width, hd.content_height), (640, 360));
        assert_eq!((hd.input_width, hd.input_height), (640, 384));
        let portrait = Letterbox::fit(250, 500, 100).unwrap();
        assert_eq!((portrait.content_width, portrait.content_height), (50, 100));
        assert_eq!((portrait.input_width, portrait.input_height), (64, 128));
        let square = Letterbox::fit(250, 250, 640).unwrap();
        assert_eq!((square.input_width, square.input_height), (640, 640));
        assert!(Letterbox::fit(0, 10, 640).is_err());
        assert!(Letterbox::fit(10, 10, 16).is_err());
    }

    #[test]
    fn letterbox_maps_back_to_frame_pixels() {
        // 1920x1080 -> 640x360: factor 3 on both axes.
        let lb = Letterbox::fit(1920, 1080, 640).unwrap();
        let mut f = face(10.0, 20.0, 30.0, 50.0, 0.9);
        f.landmarks[2] = [20.0, 35.0];
        let back = lb.to_frame(&f);
        assert_eq!(
            (back.x_min, back.y_min, back.x_max, back.y_max),
            (30.0, 60.0, 90.0, 150.0)
        );
        assert_eq!(back.landmarks[2], [60.0, 105.0]);
        // A box reaching into the padding is clamped to the frame.
        let edge = lb.to_frame(&face(600.0, 350.0, 700.0, 380.0, 0.5));
        assert_eq!((edge.x_max, edge.y_max), (1920.0, 1080.0));
    }

    #[test]
    fn letterbox_frame_averages_when_shrinking_and_pads_black() {
        // 4x2 BGRx frame, shrunk to 2x1 content inside a 32x32 input (input size 2 is too
        // small for `fit`, so build the placement by hand).
        let placement = Letterbox {
            frame_width: 4,
            frame_height: 2,
            content_width: 2,
            content_height: 1,
            input_width: 32,
            input_height: 32,
        };
        #[rustfmt::skip]
        let data: Vec<u8> = vec![
            // row 0: B G R x for 4 pixels, then 4 bytes of stride padding
            0, 0, 10, 0,  0, 0, 20, 0,  0, 0, 30, 0,  0, 0, 40, 0,  9, 9, 9, 9,
            0, 100, 50, 0,  0, 100, 60, 0,  0, 100, 70, 0,  0, 100, 80, 0,  9, 9, 9, 9,
        ];
        let frame = FrameRef {
            data: &data,
            width: 4,
            height: 2,
            stride: 20,
            layout: PixelLayout::Bgrx,
        };
        let mut out = Array3::<f32>::from_elem((3, 32, 32), 7.0);
        letterbox_frame(&frame, &placement, out.view_mut()).unwrap();
        // Red of the left output pixel: mean of 10, 20, 50, 60; right: 30, 40, 70, 80.
        assert!((out[[0, 0, 0]] - 35.0).abs() < 1e-4);
        assert!((out[[0, 0, 1]] - 55.0).abs() < 1e-4);
        assert!((out[[1, 0, 0]] - 50.0).abs() < 1e-4);
        assert_eq!(out[[2, 0, 0]], 0.0);
        // Padding is black.
        assert_eq!(out[[0, 0, 2]], 0.0);
        assert_eq!(out[[0, 1, 0]], 0.0);
        assert_eq!(out[[1, 31, 31]], 0.0);
    }

    #[test]
    fn letterbox_frame_interpolates_when_enlarging() {
        // 2x1 RGB frame to 4x1: output pixel centres 0.5, 1.5, 2.5, 3.5 fall at source
        // positions -0.25 (clamped to 0), 0.25, 0.75 and 1.25 (clamped to 1).
        let placement = Letterbox {
            frame_width: 2,
            frame_height: 1,
            content_width: 4,
            content_height: 1,
            input_width: 32,
            input_height: 32,
        };
        let data = [0u8, 0, 0, 200, 0, 0];
        let frame = FrameRef {
            data: &data,
            width: 2,
            height: 1,
            stride: 6,
            layout: PixelLayout::Rgb,
        };
        let mut out = Array3::<f32>::zeros((3, 32, 32));
        letterbox_frame(&frame, &placement, out.view_mut()).unwrap();
        let red: Vec<f32> = (0..4).map(|x| out[[0, 0, x]]).collect();
        assert_eq!(red, vec![0.0, 50.0, 150.0, 200.0]);
    }

    #[test]
    fn letterbox_frame_rejects_a_short_buffer() {
        let placement = Letterbox::fit(64, 64, 64).unwrap();
        let data = vec![0u8; 64 * 3 * 63];
        let frame = FrameRef {
            data: &data,
            width: 64,
            height: 64,
            stride: 64 * 3,
            layout: PixelLayout::Rgb,
        };
        let mut out = Array3::<f32>::zeros((3, 64, 64));
        let err = letterbox_frame(&frame, &placement, out.view_mut()).unwrap_err();
        assert!(err.to_string().contains("invalid frame"), "{err}");
        let mut small = Array3::<f32>::zeros((3, 32, 32));
        let data = vec![0u8; 64 * 3 * 64];
        let frame = FrameRef {
            data: &data,
            ..frame
        };
        let err = letterbox_frame(&frame, &placement, small.view_mut()).unwrap_err();
        assert!(err.to_string().contains("letterbox"), "{err}");
    }

    /// Maps for a 4x4 grid (a 16x16 input) with one hot cell at row 1, column 2.
    fn one_face_maps() -> (Array4<f32>, Array4<f32>, Array4<f32>, Array4<f32>) {
        let mut heatmap = Array4::<f32>::zeros((1, 1, 4, 4));
        let mut scale = Array4::<f32>::zeros((1, 2, 4, 4));
        let mut offset = Array4::<f32>::zeros((1, 2, 4, 4));
        let mut landmarks = Array4::<f32>::zeros((1, 10, 4, 4));
        heatmap[[0, 0, 1, 2]] = 0.8;
        heatmap[[0, 0, 3, 3]] = 0.4; // below the threshold
        scale[[0, 0, 1, 2]] = 2.0f32.ln(); // height 8
        scale[[0, 1, 1, 2]] = 1.5f32.ln(); // width 6
        offset[[0, 0, 1, 2]] = 0.25; // y
        offset[[0, 1, 1, 2]] = -0.5; // x
        // Landmark 0 at (0.5 w, 0.25 h), landmark 4 at (1.0 w, 1.0 h) from the top-left.
        landmarks[[0, 1, 1, 2]] = 0.5;
        landmarks[[0, 0, 1, 2]] = 0.25;
        landmarks[[0, 9, 1, 2]] = 1.0;
        landmarks[[0, 8, 1, 2]] = 1.0;
        (heatmap, scale, offset, landmarks)
    }

    #[test]
    fn decodes_one_cell_by_hand() {
        let (heatmap, scale, offset, landmarks) = one_face_maps();
        let maps = CenterFaceMaps {
            heatmap: heatmap.view(),
            scale: scale.view(),
            offset: offset.view(),
            landmarks: landmarks.view(),
        };
        let faces = decode_centerface(&maps, 0.5, (16.0, 16.0)).unwrap();
        assert_eq!(faces.len(), 1);
        let f = faces[0];
        // centre x = 4 (2 - 0.5 + 0.5) = 8, y = 4 (1 + 0.25 + 0.5) = 7; w 6, h 8.
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        assert!(close(f.x_min, 5.0) && close(f.x_max, 11.0), "{f:?}");
        assert!(close(f.y_min, 3.0) && close(f.y_max, 11.0), "{f:?}");
        assert!(close(f.confidence, 0.8));
        assert!(
            close(f.landmarks[0][0], 8.0) && close(f.landmarks[0][1], 5.0),
            "{f:?}"
        );
        assert!(
            close(f.landmarks[4][0], 11.0) && close(f.landmarks[4][1], 11.0),
            "{f:?}"
        );
        // An all-zero landmark is the top-left corner.
        assert!(
            close(f.landmarks[1][0], 5.0) && close(f.landmarks[1][1], 3.0),
            "{f:?}"
        );

        // Clamped to tighter bounds; a higher threshold finds nothing.
        let clamped = decode_centerface(&maps, 0.5, (10.0, 9.0)).unwrap();
        assert!(close(clamped[0].x_max, 10.0) && close(clamped[0].y_max, 9.0));
        assert!(
            decode_centerface(&maps, 0.8, (16.0, 16.0))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            decode_centerface(&maps, 0.3, (16.0, 16.0)).unwrap().len(),
            2
        );
    }

    #[test]
    fn decode_rejects_mismatched_maps() {
        let (heatmap, scale, offset, _) = one_face_maps();
        let landmarks = Array4::<f32>::zeros((1, 10, 4, 5));
        let maps = CenterFaceMaps {
            heatmap: heatmap.view(),
            scale: scale.view(),
            offset: offset.view(),
            landmarks: landmarks.view(),
        };
        let err = decode_centerface(&maps, 0.5, (16.0, 16.0)).unwrap_err();
        assert!(err.to_string().contains("[1,10,h,w]"), "{err}");
    }

    #[test]
    fn iou_by_hand() {
        let a = face(0.0, 0.0, 10.0, 10.0, 1.0);
        let b = face(5.0, 0.0, 15.0, 10.0, 1.0);
        // intersection 50, union 150
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.iou(&face(20.0, 20.0, 30.0, 30.0, 1.0)), 0.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&face(3.0, 3.0, 3.0, 9.0, 1.0)), 0.0);
    }

    #[test]
    fn nms_keeps_the_most_confident_of_each_cluster() {
        let faces = vec![
            face(0.0, 0.0, 10.0, 10.0, 0.6),
            face(1.0, 0.0, 11.0, 10.0, 0.9), // IoU 0.82 with the first
            face(5.0, 0.0, 15.0, 10.0, 0.7), // IoU 0.43 with the second, 1/3 with the first
            face(50.0, 50.0, 60.0, 60.0, 0.5),
        ];
        let kept = non_max_suppression(faces.clone(), 0.3);
        let conf: Vec<f32> = kept.iter().map(|f| f.confidence).collect();
        assert_eq!(conf, vec![0.9, 0.5]);
        // A looser threshold keeps the partly overlapping one too (0.43 < 0.5).
        let conf: Vec<f32> = non_max_suppression(faces, 0.5)
            .iter()
            .map(|f| f.confidence)
            .collect();
        assert_eq!(conf, vec![0.9, 0.7, 0.5]);
    }

    #[test]
    fn keep_faces_filters_size_then_count() {
        let faces = vec![
            face(0.0, 0.0, 40.0, 50.0, 0.9),
            face(0.0, 0.0, 8.0, 50.0, 0.8), // too narrow
            face(0.0, 0.0, 20.0, 20.0, 0.7),
            face(0.0, 0.0, 30.0, 30.0, 0.6),
        ];
        let kept = keep_faces(faces.clone(), 10.0, 2);
        let conf: Vec<f32> = kept.iter().map(|f| f.confidence).collect();
        assert_eq!(conf, vec![0.9, 0.7]);
        assert_eq!(keep_faces(faces, 0.0, 10).len(), 4);
    }

    #[test]
    fn normalised_and_pixel_rect_round_trip() {
        let f = face(10.2, 20.0, 29.5, 60.0, 0.9).normalised(100, 200);
        assert!((f.x_min - 0.102).abs() < 1e-6 && (f.y_max - 0.3).abs() < 1e-6);
        assert_eq!(f.pixel_rect(100, 200), Some((10, 20, 20, 40)));
        // Outside the frame, or empty: no rectangle.
        assert_eq!(face(1.2, 0.0, 1.5, 0.5, 0.9).pixel_rect(100, 100), None);
        assert_eq!(face(0.5, 0.5, 0.5, 0.6, 0.9).pixel_rect(100, 100), None);
    }
}
