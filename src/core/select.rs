//! Nearest-candidate selection (paper section 3.4): among the decoded candidates of a face,
//! keep the one with the smallest pixel L2 distance to the input, without ever holding more
//! than one decoder chunk of candidates in memory. Optionally the distance that chooses is
//! measured between `k x k` block means ([`block_distance`]), so that detail finer than the
//! blocks (where an L-inf perturbation puts most of its energy) cannot steer the choice; the
//! distance reported stays the pixel one.

use ndarray::{Array4, ArrayView3, Axis, Zip};

/// The candidate chosen for one face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearest {
    /// Squared L2 distance to the input, summed over all `3*S*S` values in [-1, 1] units.
    pub distance: f32,
    /// Index of the chosen sample among the face's `M` samples.
    pub candidate: usize,
}

/// Squared L2 distance between two equally shaped images.
pub fn squared_distance(a: ArrayView3<'_, f32>, b: ArrayView3<'_, f32>) -> f32 {
    let mut sum = 0.0f32;
    Zip::from(&a).and(&b).for_each(|&x, &y| {
        let d = x - y;
        sum += d * d;
    });
    sum
}

/// Squared L2 distance between the `k x k` block means of two equally shaped images, times
/// `k * k` (so that it is on the scale of [`squared_distance`], which it equals for `k = 1`).
/// Rows and columns beyond the last whole block are ignored.
pub fn block_distance(a: ArrayView3<'_, f32>, b: ArrayView3<'_, f32>, k: usize) -> f32 {
    if k <= 1 {
        return squared_distance(a, b);
    }
    let (c, h, w) = a.dim();
    let area = (k * k) as f32;
    let mut sum = 0.0f32;
    for ch in 0..c {
        for by in 0..h / k {
            for bx in 0..w / k {
                let mut d = 0.0f32;
                for y in by * k..(by + 1) * k {
                    for x in bx * k..(bx + 1) * k {
                        d += a[[ch, y, x]] - b[[ch, y, x]];
                    }
                }
                let mean = d / area;
                sum += mean * mean;
            }
        }
    }
    sum * area
}

/// Running nearest candidate for each of N faces.
#[derive(Debug)]
pub struct NearestTracker {
    /// Per face: the choosing distance of the best candidate, and that candidate.
    best: Vec<Option<(f32, Nearest)>>,
    images: Array4<f32>,
    block: usize,
}

impl NearestTracker {
    /// A tracker for `faces` faces of shape `[3, size, size]`, choosing by pixel distance.
    pub fn new(faces: usize, size: usize) -> Self {
        Self {
            best: vec![None; faces],
            images: Array4::zeros((faces, 3, size, size)),
            block: 1,
        }
    }

    /// Chooses by the distance between `block x block` means ([`block_distance`]; 1: pixels).
    pub fn with_block(mut self, block: usize) -> Self {
        self.block = block.max(1);
        self
    }

    /// Offers sample `candidate` of face `face`; keeps it if it is nearer to `target` than the
    /// best so far (ties keep the earlier sample). Returns whether it was kept.
    pub fn offer(
        &mut self,
        face: usize,
        candidate: usize,
        image: ArrayView3<'_, f32>,
        target: ArrayView3<'_, f32>,
    ) -> bool {
        let distance = squared_distance(image, target);
        let choosing = if self.block > 1 {
            block_distance(image, target, self.block)
        } else {
            distance
        };
        let better = match self.best[face] {
            None => true,
            Some((b, _)) => choosing < b,
        };
        if better {
            self.best[face] = Some((
                choosing,
                Nearest {
                    distance,
                    candidate,
                },
            ));
            self.images.index_axis_mut(Axis(0), face).assign(&image);
        }
        better
    }

    /// The chosen images `[N, 3, S, S]` and their selections (with their pixel distance);
    /// `None` for a face never offered.
    pub fn finish(self) -> (Array4<f32>, Vec<Option<Nearest>>) {
        (
            self.images,
            self.best.into_iter().map(|b| b.map(|(_, n)| n)).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn distance_by_hand() {
        let a = Array3::from_elem((3, 2, 2), 0.5f32);
        let b = Array3::from_elem((3, 2, 2), -0.5f32);
        assert_eq!(squared_distance(a.view(), b.view()), 12.0);
    }

    #[test]
    fn keeps_the_nearest_and_the_first_of_ties() {
        let target = Array3::<f32>::zeros((3, 1, 1));
        let mut t = NearestTracker::new(2, 1);
        let far = Array3::from_elem((3, 1, 1), 1.0f32);
        let near = Array3::from_elem((3, 1, 1), 0.1f32);
        let tie = Array3::from_elem((3, 1, 1), -0.1f32);
        t.offer(0, 0, far.view(), target.view());
        t.offer(0, 1, near.view(), target.view());
        t.offer(0, 2, tie.view(), target.view());
        let (images, best) = t.finish();
        let b = best[0].unwrap();
        assert_eq!(b.candidate, 1);
        assert!((b.distance - 0.03).abs() < 1e-6);
        assert!((images[[0, 2, 0, 0]] - 0.1).abs() < 1e-6);
        assert_eq!(best[1], None);
    }

    #[test]
    fn block_selection_ignores_detail_finer_than_the_blocks() {
        // The target is flat 0; candidate a has a +-0.5 checkerboard (no coarse error, large
        // pixel error), candidate b is flat 0.2 (small pixel error, all of it coarse).
        let target = Array3::<f32>::zeros((1, 4, 4));
        let a = Array3::from_shape_fn(
            (1, 4, 4),
            |(_, y, x)| if (x + y) % 2 == 0 { 0.5 } else { -0.5 },
        );
        let b = Array3::from_elem((1, 4, 4), 0.2f32);
        assert!(block_distance(a.view(), target.view(), 2) < 1e-9);
        assert!((block_distance(b.view(), target.view(), 2) - 0.64).abs() < 1e-5);
        assert_eq!(
            block_distance(b.view(), target.view(), 1),
            squared_distance(b.view(), target.view())
        );

        let mut pixel = NearestTracker::new(1, 4);
        pixel.offer(0, 0, a.view(), target.view());
        assert!(pixel.offer(0, 1, b.view(), target.view()));
        assert_eq!(pixel.finish().1[0].unwrap().candidate, 1);

        let mut coarse = NearestTracker::new(1, 4).with_block(2);
        coarse.offer(0, 0, a.view(), target.view());
        assert!(!coarse.offer(0, 1, b.view(), target.view()));
        let chosen = coarse.finish().1[0].unwrap();
        // Chosen by block means, reported by pixels.
        assert_eq!(chosen.candidate, 0);
        assert!((chosen.distance - 4.0).abs() < 1e-5);
    }
}
