//! Face tracks across frames, without GStreamer: persistent object ids for the faces a detector
//! finds, and boxes carried by a constant-velocity motion model on frames where it does not run.
//!
//! Every frame is one call: [`Tracker::observe`] on a frame the detector ran on (its faces,
//! normalised to the frame), [`Tracker::carry`] on a frame it did not. Both first move every
//! track by its velocity (box edges per frame; landmarks follow the box). `observe` then pairs
//! tracks with detections greedily, best pair first: a pair needs an intersection over union
//! of at least [`TrackerParams::min_iou`] between the predicted box and the detection and,
//! when both carry landmarks, a mean landmark displacement of at most [`LANDMARK_GATE`] face
//! sizes per frame since the track's last match; pairs rank by IoU minus [`LANDMARK_WEIGHT`]
//! times that displacement, so landmarks break near-ties between overlapping faces. A pair that
//! overlaps too little may still pair by its centres ([`CENTRE_GATE`] box widths per frame since
//! the last match, boxes of similar width), ranked after every overlapping pair: a face that
//! moved faster than its track predicted (a new track has no velocity yet), most often over
//! frames the detector skipped. A matched track takes the detection's box and
//! landmarks and updates its velocity (exponentially smoothed, [`VELOCITY_SMOOTHING`]); a
//! detection left unmatched is born as a new track with a fresh id; a track left unmatched is
//! hidden until a detection matches it again and ends once it has gone more than
//! [`TrackerParams::max_age`] frames without a match, or when its box has left the frame.
//! `carry` returns the tracks that the last detection run confirmed, at their predicted
//! positions. Ids start at 1 and are never reused by one tracker, not even after [`Tracker::reset`]
//! (until 2^31 - 1 of them have been handed out).

use crate::core::detect::{Face, LANDMARKS};

/// Default [`TrackerParams::min_iou`].
pub const DEFAULT_MIN_IOU: f32 = 0.2;

/// Default [`TrackerParams::max_age`], in frames (0.4 s at 25 frames per second).
pub const DEFAULT_MAX_AGE: u32 = 10;

/// Largest mean landmark displacement, in face widths and heights, between a track's predicted
/// landmarks and a detection's for the two to be paired.
pub const LANDMARK_GATE: f32 = 0.75;

/// Weight of the landmark displacement against IoU when pairs are ranked.
pub const LANDMARK_WEIGHT: f32 = 0.1;

/// Largest distance between a track's predicted box centre and a detection's, in their mean
/// box width, per frame since the track's last match (up to [`MAX_CENTRE_GATE`]), for a pair
/// whose boxes overlap too little for [`TrackerParams::min_iou`]: a face that moved faster
/// than its track's velocity predicted (a new track has none yet), most often across frames
/// the detector skipped.
pub const CENTRE_GATE: f32 = 0.5;

/// Cap of the centre gate, in mean box widths.
pub const MAX_CENTRE_GATE: f32 = 1.5;

/// Largest ratio of the two boxes' widths (either way round) for a pair paired by its centres.
pub const CENTRE_SIZE_RATIO: f32 = 1.5;

/// Weight of the newest velocity measurement in a track's smoothed velocity.
pub const VELOCITY_SMOOTHING: f32 = 0.5;

/// Birth and death rules of the tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerParams {
    /// Least IoU between a track's predicted box and a detection for the two to be paired.
    pub min_iou: f32,
    /// Frames a track survives without a matching detection; it ends at the first detection
    /// run that leaves it unmatched for longer.
    pub max_age: u32,
}

impl Default for TrackerParams {
    fn default() -> Self {
        TrackerParams {
            min_iou: DEFAULT_MIN_IOU,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// What a tracked face carries besides its box: written into the `detection` param of its ROI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackInfo {
    /// The track's id, 1 or more, unique for the tracker's lifetime.
    pub object_id: i32,
    /// Frames since the track was born (0 on its first frame).
    pub age: u32,
    /// True when the motion model carried the box (the detector did not run on this frame).
    pub tracked: bool,
}

/// A face of one frame with its track.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackedFace {
    /// The box and landmarks, normalised to the frame.
    pub face: Face,
    /// The face's track.
    pub track: TrackInfo,
}

/// Tracks born and ended since the tracker was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackCounts {
    /// Tracks born (one per detection no track matched).
    pub born: u64,
    /// Tracks ended (unmatched too long, out of the frame, or reset).
    pub ended: u64,
}

/// One face followed over frames.
#[derive(Debug, Clone, Copy)]
struct Track {
    id: i32,
    /// The current estimate: the last detection moved by the motion model.
    face: Face,
    /// The last detection matched to the track.
    observed: Face,
    /// Per-frame motion of `x_min`, `y_min`, `x_max`, `y_max`.
    velocity: [f32; 4],
    /// Frames since birth.
    age: u32,
    /// Frames since the last matched detection.
    since_match: u32,
    /// Detections matched, the one it was born from included.
    matches: u32,
    /// Whether the last detection run matched the track (only these are carried).
    confirmed: bool,
}

impl Track {
    fn info(&self, tracked: bool) -> TrackedFace {
        TrackedFace {
            face: self.face.clamped(1.0, 1.0),
            track: TrackInfo {
                object_id: self.id,
                age: self.age,
                tracked,
            },
        }
    }

    /// Moves the estimate one frame on.
    fn predict(&mut self) {
        self.age = self.age.saturating_add(1);
        self.since_match = self.since_match.saturating_add(1);
        if self.velocity == [0.0; 4] {
            // A still face keeps its box and landmarks bit for bit.
            return;
        }
        let [dx0, dy0, dx1, dy1] = self.velocity;
        let old = self.face;
        let mut new = Face {
            x_min: old.x_min + dx0,
            y_min: old.y_min + dy0,
            x_max: old.x_max + dx1,
            y_max: old.y_max + dy1,
            ..old
        };
        if new.width() <= 0.0 || new.height() <= 0.0 {
            new = old;
        }
        let (sx, sy) = (new.width() / old.width(), new.height() / old.height());
        new.landmarks = old.landmarks.map(|[x, y]| {
            [
                new.x_min + (x - old.x_min) * sx,
                new.y_min + (y - old.y_min) * sy,
            ]
        });
        self.face = new;
    }

    /// Takes `detection` as the track's new observation.
    fn update(&mut self, detection: &Face) {
        let frames = self.since_match.max(1) as f32;
        let edges = |f: &Face| [f.x_min, f.y_min, f.x_max, f.y_max];
        let (new, old) = (edges(detection), edges(&self.observed));
        let alpha = if self.matches == 1 {
            1.0
        } else {
            VELOCITY_SMOOTHING
        };
        for ((v, n), o) in self.velocity.iter_mut().zip(new).zip(old) {
            *v = alpha * (n - o) / frames + (1.0 - alpha) * *v;
        }
        self.face = *detection;
        self.observed = *detection;
        self.since_match = 0;
        self.matches = self.matches.saturating_add(1);
        self.confirmed = true;
    }

    /// Whether the box has left the normalised frame entirely.
    fn out_of_frame(&self) -> bool {
        let f = &self.face;
        f.x_max <= 0.0 || f.y_max <= 0.0 || f.x_min >= 1.0 || f.y_min >= 1.0
    }
}

/// Whether a face carries landmarks (a face read without them has all zeros).
fn has_landmarks(face: &Face) -> bool {
    face.landmarks.iter().flatten().any(|&v| v != 0.0)
}

/// Distance between the box centres of `a` and `b` in their mean width (each axis in its own
/// mean size, as [`landmark_distance`] measures), `None` when their widths differ by more than
/// [`CENTRE_SIZE_RATIO`] either way.
fn centre_distance(a: &Face, b: &Face) -> Option<f32> {
    let (wa, wb) = (a.width().max(f32::EPSILON), b.width().max(f32::EPSILON));
    if wa.max(wb) / wa.min(wb) > CENTRE_SIZE_RATIO {
        return None;
    }
    let centre = |f: &Face| [(f.x_min + f.x_max) / 2.0, (f.y_min + f.y_max) / 2.0];
    Some(scaled_distance(centre(a), centre(b), mean_size(a, b)))
}

/// Mean displacement between the landmarks of `a` and `b`, each axis in units of the two
/// boxes' mean width or height (so a frame's aspect ratio does not weigh in).
pub fn landmark_distance(a: &Face, b: &Face) -> f32 {
    let size = mean_size(a, b);
    let total: f32 = a
        .landmarks
        .iter()
        .zip(&b.landmarks)
        .map(|(&p, &q)| scaled_distance(p, q, size))
        .sum();
    total / LANDMARKS as f32
}

/// The mean width and height of boxes `a` and `b` (at least `f32::EPSILON`).
fn mean_size(a: &Face, b: &Face) -> [f32; 2] {
    [
        ((a.width() + b.width()) / 2.0).max(f32::EPSILON),
        ((a.height() + b.height()) / 2.0).max(f32::EPSILON),
    ]
}

/// Distance from `p` to `q`, each axis in units of `[width, height]`.
fn scaled_distance(p: [f32; 2], q: [f32; 2], [w, h]: [f32; 2]) -> f32 {
    ((p[0] - q[0]) / w).hypot((p[1] - q[1]) / h)
}

/// Face tracks: ids, motion and the birth and death rules, see the module documentation.
#[derive(Debug, Clone)]
pub struct Tracker {
    params: TrackerParams,
    tracks: Vec<Track>,
    next_id: i32,
    counts: TrackCounts,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(TrackerParams::default())
    }
}

impl Tracker {
    /// A tracker with no tracks.
    pub fn new(params: TrackerParams) -> Self {
        Tracker {
            params,
            tracks: Vec::new(),
            next_id: 1,
            counts: TrackCounts::default(),
        }
    }

    /// Changes the birth and death rules; live tracks are kept.
    pub fn set_params(&mut self, params: TrackerParams) {
        self.params = params;
    }

    /// Tracks born and ended so far.
    pub fn counts(&self) -> TrackCounts {
        self.counts
    }

    /// Tracks alive now, hidden ones included.
    pub fn live(&self) -> usize {
        self.tracks.len()
    }

    /// Ends every track (flush, seek, new caps); ids go on from where they were.
    pub fn reset(&mut self) {
        self.counts.ended += self.tracks.len() as u64;
        self.tracks.clear();
    }

    /// A frame the detector ran on, with its `detections` (normalised): each comes back in
    /// order with its track, `tracked` false.
    pub fn observe(&mut self, detections: &[Face]) -> Vec<TrackedFace> {
        self.predict();
        let mut matched = vec![false; self.tracks.len()];
        let mut out = vec![None; detections.len()];
        for (t, d) in self.associate(detections) {
            self.tracks[t].update(&detections[d]);
            matched[t] = true;
            out[d] = Some(self.tracks[t].info(false));
        }
        for (track, _) in self.tracks.iter_mut().zip(&matched).filter(|(_, m)| !**m) {
            track.confirmed = false;
        }
        let max_age = self.params.max_age;
        let before = self.tracks.len();
        self.tracks
            .retain(|track| track.confirmed || track.since_match <= max_age);
        self.counts.ended += (before - self.tracks.len()) as u64;
        detections
            .iter()
            .zip(out)
            .map(|(detection, known)| known.unwrap_or_else(|| self.birth(detection).info(false)))
            .collect()
    }

    /// A frame the detector did not run on: the tracks the last detection run confirmed, moved
    /// by their velocity, `tracked` true.
    pub fn carry(&mut self) -> Vec<TrackedFace> {
        self.predict();
        self.tracks
            .iter()
            .filter(|t| t.confirmed)
            .map(|t| t.info(true))
            .collect()
    }

    /// Moves every track one frame on and ends those that left the frame.
    fn predict(&mut self) {
        for track in &mut self.tracks {
            track.predict();
        }
        let before = self.tracks.len();
        self.tracks.retain(|t| !t.out_of_frame());
        self.counts.ended += (before - self.tracks.len()) as u64;
    }

    /// Greedy pairing of tracks with detections, best pair first: `(track, detection)`.
    fn associate(&self, detections: &[Face]) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            // Frames since the track's last match: the landmark and centre gates widen with
            // them, since the face may have moved that much further.
            let frames = track.since_match.max(1) as f32;
            for (d, detection) in detections.iter().enumerate() {
                let iou = track.face.iou(detection);
                let shift = if has_landmarks(&track.face) && has_landmarks(detection) {
                    landmark_distance(&track.face, detection)
                } else {
                    0.0
                };
                if shift > LANDMARK_GATE * frames {
                    continue;
                }
                if iou >= self.params.min_iou && iou > 0.0 {
                    pairs.push((iou - LANDMARK_WEIGHT * shift, t, d));
                } else if let Some(distance) = centre_distance(&track.face, detection) {
                    // Ranked after every overlapping pair (their scores are above
                    // min_iou - LANDMARK_WEIGHT * gate > -1).
                    if distance <= (CENTRE_GATE * frames).min(MAX_CENTRE_GATE) {
                        pairs.push((-1.0 - distance - LANDMARK_WEIGHT * shift, t, d));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut track_used, mut detection_used) = (
            vec![false; self.tracks.len()],
            vec![false; detections.len()],
        );
        let mut chosen = Vec::new();
        for (_, t, d) in pairs {
            if !track_used[t] && !detection_used[d] {
                track_used[t] = true;
                detection_used[d] = true;
                chosen.push((t, d));
            }
        }
        chosen
    }

    /// A new track for an unmatched detection.
    fn birth(&mut self, detection: &Face) -> Track {
        let track = Track {
            id: self.next_id,
            face: *detection,
            observed: *detection,
            velocity: [0.0; 4],
            age: 0,
            since_match: 0,
            matches: 1,
            confirmed: true,
        };
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.counts.born += 1;
        self.tracks.push(track);
        track
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A face of size `w x h` centred on `(cx, cy)`, landmarks where a frontal face has them.
    fn face(cx: f32, cy: f32, w: f32, h: f32) -> Face {
        let at = |fx: f32, fy: f32| [cx + (fx - 0.5) * w, cy + (fy - 0.5) * h];
        Face {
            x_min: cx - w / 2.0,
            y_min: cy - h / 2.0,
            x_max: cx + w / 2.0,
            y_max: cy + h / 2.0,
            confidence: 0.9,
            landmarks: [
                at(0.3, 0.4),
                at(0.7, 0.4),
                at(0.5, 0.6),
                at(0.35, 0.8),
                at(0.65, 0.8),
            ],
        }
    }

    fn ids(faces: &[TrackedFace]) -> Vec<i32> {
        faces.iter().map(|f| f.track.object_id).collect()
    }

    #[test]
    fn a_fast_face_keeps_its_id_across_skipped_frames_by_its_centre() {
        // 0.35 widths a frame: after two frames without a detection the new track (no velocity
        // yet) overlaps the face by IoU 0.18, under min_iou; its centre is 0.7 widths away.
        let w = 0.05;
        let mut tracker = Tracker::default();
        let first = ids(&tracker.observe(&[face(0.3, 0.5, w, 0.08)]));
        tracker.carry();
        let moved = face(0.3 + 0.7 * w, 0.5, w, 0.08);
        assert!(moved.iou(&face(0.3, 0.5, w, 0.08)) < DEFAULT_MIN_IOU);
        assert_eq!(ids(&tracker.observe(&[moved])), first);
        // One frame on (predicted 0.35 widths further), 0.8 widths beyond the prediction is
        // past the gate of one frame: a new face.
        let far = face(0.3 + 1.05 * w + 0.8 * w, 0.5, w, 0.08);
        assert_ne!(ids(&tracker.observe(&[far])), first);
        // A box of another size at that distance is another face too.
        let mut tracker = Tracker::default();
        let first = ids(&tracker.observe(&[face(0.3, 0.5, w, 0.08)]));
        tracker.carry();
        let bigger = face(0.3 + 0.7 * w, 0.5, 2.2 * w, 0.18);
        assert_ne!(ids(&tracker.observe(&[bigger])), first);
    }

    #[test]
    fn overlapping_pairs_win_over_pairs_by_centre() {
        // Two faces side by side, 1.2 widths apart; each detection overlaps its own track only.
        let w = 0.05;
        let mut tracker = Tracker::default();
        let start =
            ids(&tracker.observe(&[face(0.3, 0.5, w, 0.08), face(0.3 + 1.2 * w, 0.5, w, 0.08)]));
        tracker.carry();
        let shifted = [
            face(0.3 + 0.2 * w, 0.5, w, 0.08),
            face(0.3 + 1.4 * w, 0.5, w, 0.08),
        ];
        assert_eq!(ids(&tracker.observe(&shifted)), start);
        // Given in the other order, each still keeps its own id.
        let swapped = [shifted[1], shifted[0]];
        assert_eq!(ids(&tracker.observe(&swapped)), vec![start[1], start[0]]);
    }

    #[test]
    fn constant_motion_keeps_ids_and_predicts_carried_boxes() {
        for interval in [1, 2, 4, 8] {
            let mut tracker = Tracker::default();
            let truth = |frame: usize| {
                let t = frame as f32;
                vec![
                    face(0.2 + 0.004 * t, 0.3, 0.06, 0.1),
                    face(0.5, 0.2 + 0.003 * t, 0.05, 0.09),
                    face(0.8 - 0.002 * t, 0.7 - 0.002 * t, 0.08 + 0.0005 * t, 0.12),
                ]
            };
            let mut first_ids = None;
            for frame in 0..60 {
                let faces = if frame % interval == 0 {
                    tracker.observe(&truth(frame))
                } else {
                    tracker.carry()
                };
                assert_eq!(faces.len(), 3, "interval {interval}, frame {frame}");
                let frame_ids = ids(&faces);
                let first = first_ids.get_or_insert_with(|| frame_ids.clone());
                assert_eq!(&frame_ids, first, "interval {interval}, frame {frame}");
                for (tracked, true_face) in faces.iter().zip(truth(frame)) {
                    assert_eq!(tracked.track.age, frame as u32);
                    assert_eq!(tracked.track.tracked, frame % interval != 0);
                    // The velocity is known after the second detection: from then on carried
                    // boxes follow the motion.
                    if frame > interval {
                        let iou = tracked.face.iou(&true_face);
                        assert!(iou > 0.95, "interval {interval}, frame {frame}: IoU {iou}");
                        assert!(landmark_distance(&tracked.face, &true_face) < 0.02);
                    }
                }
            }
            assert_eq!(first_ids, Some(vec![1, 2, 3]));
            assert_eq!(tracker.counts(), TrackCounts { born: 3, ended: 0 });
        }
    }

    /// One face of a random scene: a lifetime, a start and a constant velocity, in a cell of
    /// its own (so that faces never overlap and each cell hosts one face in a run).
    struct Actor {
        born: usize,
        dies: usize,
        start: [f32; 2],
        velocity: [f32; 2],
        size: [f32; 2],
        /// Detection runs (by frame) on which the detector misses it.
        missed: HashSet<usize>,
    }

    fn random_actors(rng: &mut StdRng, frames: usize, interval: usize) -> Vec<Actor> {
        let mut actors = Vec::new();
        for cell in 0..16 {
            if rng.random_bool(0.3) {
                continue;
            }
            let (cx, cy) = (
                (cell % 4) as f32 * 0.25 + 0.125,
                (cell / 4) as f32 * 0.25 + 0.125,
            );
            let born = rng.random_range(0..frames / 2);
            let dies = rng.random_range(born + 1..=frames);
            let mut missed = HashSet::new();
            // Misses, never on two detection runs in a row (so no track outlives max_age).
            let mut last_missed = false;
            for run in (born + 1..dies).filter(|f| f % interval == 0) {
                last_missed = !last_missed && rng.random_bool(0.15);
                if last_missed {
                    missed.insert(run);
                }
            }
            actors.push(Actor {
                born,
                dies,
                start: [cx, cy],
                velocity: [
                    rng.random_range(-0.0015..0.0015),
                    rng.random_range(-0.0015..0.0015),
                ],
                size: [rng.random_range(0.05..0.1), rng.random_range(0.05..0.1)],
                missed,
            });
        }
        actors
    }

    #[test]
    fn ids_never_repeat_and_each_face_keeps_its_id_in_random_scenes() {
        let mut rng = StdRng::seed_from_u64(13);
        let frames = 80;
        for scene in 0..200 {
            let interval = rng.random_range(1..=5);
            let actors = random_actors(&mut rng, frames, interval);
            let mut tracker = Tracker::new(TrackerParams {
                min_iou: DEFAULT_MIN_IOU,
                max_age: 2 * interval as u32,
            });
            let mut id_of_actor: HashMap<usize, i32> = HashMap::new();
            let mut actor_of_id: HashMap<i32, usize> = HashMap::new();
            for frame in 0..frames {
                let alive: Vec<usize> = (0..actors.len())
                    .filter(|&a| (actors[a].born..actors[a].dies).contains(&frame))
                    .collect();
                let at = |a: usize| {
                    let actor = &actors[a];
                    let t = frame as f32;
                    let [cx, cy] = actor.start;
                    let [vx, vy] = actor.velocity;
                    face(cx + vx * t, cy + vy * t, actor.size[0], actor.size[1])
                };
                let out = if frame % interval == 0 {
                    let seen: Vec<usize> = alive
                        .iter()
                        .copied()
                        .filter(|&a| !actors[a].missed.contains(&frame))
                        .collect();
                    let detections: Vec<Face> = seen.iter().map(|&a| at(a)).collect();
                    let out = tracker.observe(&detections);
                    seen.into_iter().zip(out).collect::<Vec<_>>()
                } else {
                    // Carried faces are attributed to the actor they overlap.
                    tracker
                        .carry()
                        .into_iter()
                        .map(|f| {
                            let best = (0..actors.len())
                                .max_by(|&a, &b| f.face.iou(&at(a)).total_cmp(&f.face.iou(&at(b))))
                                .expect("an actor");
                            (best, f)
                        })
                        .collect()
                };
                let frame_ids: HashSet<i32> = out.iter().map(|(_, f)| f.track.object_id).collect();
                assert_eq!(
                    frame_ids.len(),
                    out.len(),
                    "scene {scene} frame {frame}: ids repeat"
                );
                for (actor, f) in out {
                    let id = f.track.object_id;
                    assert!(id >= 1);
                    assert_eq!(
                        *id_of_actor.entry(actor).or_insert(id),
                        id,
                        "scene {scene} frame {frame}: actor {actor} changed id"
                    );
                    assert_eq!(
                        *actor_of_id.entry(id).or_insert(actor),
                        actor,
                        "scene {scene} frame {frame}: id {id} moved to another face"
                    );
                }
            }
            let born = tracker.counts().born as usize;
            assert_eq!(born, id_of_actor.len(), "scene {scene}: one track per face");
        }
    }

    #[test]
    fn unmatched_track_ends_after_max_age() {
        let mut tracker = Tracker::new(TrackerParams {
            min_iou: 0.2,
            max_age: 3,
        });
        let f = face(0.5, 0.5, 0.1, 0.1);
        assert_eq!(ids(&tracker.observe(&[f])), [1]);
        // Unmatched for up to 3 frames: hidden (not carried), still alive.
        assert!(tracker.observe(&[]).is_empty());
        assert!(tracker.carry().is_empty());
        assert!(tracker.observe(&[]).is_empty());
        assert_eq!(tracker.live(), 1);
        // The fourth unmatched frame ends it.
        tracker.observe(&[]);
        assert_eq!(tracker.live(), 0);
        assert_eq!(tracker.counts(), TrackCounts { born: 1, ended: 1 });
        // A face seen again within max_age frames of its last match keeps its id.
        let mut tracker = Tracker::new(TrackerParams {
            min_iou: 0.2,
            max_age: 3,
        });
        tracker.observe(&[f]);
        tracker.observe(&[]);
        tracker.observe(&[]);
        assert_eq!(ids(&tracker.observe(&[f])), [1], "back within max_age");
        for _ in 0..4 {
            tracker.observe(&[]);
        }
        assert_eq!(tracker.live(), 0, "ended after 4 unmatched frames");
        assert_eq!(tracker.counts(), TrackCounts { born: 1, ended: 1 });
        assert_eq!(ids(&tracker.observe(&[f])), [2], "a new id, never 1 again");
    }

    #[test]
    fn reset_ends_every_track_and_ids_go_on() {
        let mut tracker = Tracker::default();
        let faces = [face(0.2, 0.2, 0.1, 0.1), face(0.7, 0.7, 0.1, 0.1)];
        assert_eq!(ids(&tracker.observe(&faces)), [1, 2]);
        tracker.reset();
        assert!(tracker.carry().is_empty());
        assert_eq!(tracker.counts(), TrackCounts { born: 2, ended: 2 });
        let again = tracker.observe(&faces);
        assert_eq!(ids(&again), [3, 4]);
        assert!(again.iter().all(|f| f.track.age == 0 && !f.track.tracked));
    }

    #[test]
    fn landmarks_break_ties_and_gate_pairs() {
        let mut tracker = Tracker::default();
        let original = face(0.5, 0.5, 0.1, 0.1);
        tracker.observe(&[original]);
        // Two detections with the same box: the one whose landmarks moved least keeps the id.
        let mut shifted = original;
        for point in &mut shifted.landmarks {
            point[0] += 0.03;
        }
        let out = tracker.observe(&[shifted, original]);
        assert_eq!(ids(&out), [2, 1]);
        // Landmarks a whole face away are refused even on the same box.
        let mut far = original;
        for point in &mut far.landmarks {
            point[1] += 0.1;
        }
        assert!(landmark_distance(&far, &original) > LANDMARK_GATE);
        let out = tracker.observe(&[far]);
        assert_eq!(ids(&out), [3]);
    }

    #[test]
    fn carried_landmarks_move_with_the_box_and_boxes_leaving_the_frame_end() {
        let mut tracker = Tracker::default();
        tracker.observe(&[face(0.5, 0.5, 0.1, 0.1)]);
        tracker.observe(&[face(0.53, 0.5, 0.11, 0.1)]);
        let carried = tracker.carry()[0];
        let expected = face(0.56, 0.5, 0.12, 0.1);
        assert_eq!(carried.track.object_id, 1);
        assert!(carried.track.tracked);
        assert!(carried.face.iou(&expected) > 0.99, "{carried:?}");
        assert!(landmark_distance(&carried.face, &expected) < 1e-4);
        // x_min moves 0.025 a frame from 0.5: the box has left after 20 more frames.
        for _ in 0..25 {
            tracker.carry();
        }
        assert_eq!(tracker.live(), 0, "the box has left the frame");
        assert_eq!(tracker.counts().ended, 1);
    }
}
