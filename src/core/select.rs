//! Nearest-candidate selection (paper section 3.4): among the decoded candidates of a face,
//! keep the one with the smallest pixel L2 distance to the input, without ever holding more
//! than one decoder chunk of candidates in memory.

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

/// Running nearest candidate for each of N faces.
#[derive(Debug)]
pub struct NearestTracker {
    best: Vec<Option<Nearest>>,
    images: Array4<f32>,
}

impl NearestTracker {
    /// A tracker for `faces` faces of shape `[3, size, size]`.
    pub fn new(faces: usize, size: usize) -> Self {
        Self {
            best: vec![None; faces],
            images: Array4::zeros((faces, 3, size, size)),
        }
    }

    /// Offers sample `candidate` of face `face`; keeps it if it is nearer to `target` than the
    /// best so far (ties keep the earlier sample).
    pub fn offer(
        &mut self,
        face: usize,
        candidate: usize,
        image: ArrayView3<'_, f32>,
        target: ArrayView3<'_, f32>,
    ) {
        let distance = squared_distance(image, target);
        let better = match self.best[face] {
            None => true,
            Some(b) => distance < b.distance,
        };
        if better {
            self.best[face] = Some(Nearest {
                distance,
                candidate,
            });
            self.images.index_axis_mut(Axis(0), face).assign(&image);
        }
    }

    /// The chosen images `[N, 3, S, S]` and their selections; `None` for a face never offered.
    pub fn finish(self) -> (Array4<f32>, Vec<Option<Nearest>>) {
        (self.images, self.best)
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
}
