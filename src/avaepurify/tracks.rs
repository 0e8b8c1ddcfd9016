//! Video-rate state of `avaepurify`: what each face track keeps between frames (its chosen
//! latent, [`Tracks`]), which path each face of a frame takes ([`Plan`], [`FacePath`]), and
//! the live frame budget with the measured cost of each path ([`Budget`], [`Costs`]).
//!
//! A tracked face (its ROI's `detection` param has an `object_id`) is purified in full on its
//! first frame and then every `refresh-interval` frames; in between, its kept latent is decoded
//! with the frame's own encoder output. Track state is bounded: a track not seen for
//! [`TRACK_TIMEOUT_FRAMES`] frames is forgotten, and at most [`MAX_TRACKS`] are kept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::purifier::{Chosen, Purified};

/// Frames a track's state is kept after it was last seen (2 s at 25 frames per second).
pub(super) const TRACK_TIMEOUT_FRAMES: u64 = 50;
/// Most tracks kept; beyond, the least recently seen are forgotten first.
pub(super) const MAX_TRACKS: usize = 1024;
/// Weight of the newest measurement in each smoothed cost when it is below the estimate.
const COST_SMOOTHING: f64 = 0.25;
/// Weight of the newest measurement when it is above the estimate: costs rise fast and fall
/// slowly, so one slow run (a cold first frame, a busy core) stops the next frame from planning
/// with the old, lower figure (tests/live.rs saw frame 1 late by 67-73 ms on a 40 ms budget
/// while the first frame's slow full run had moved the estimate only a quarter of the way).
const COST_RISE: f64 = 0.75;
/// Time kept free in every live frame for the work that is not the engine (ms), at least.
const BUDGET_RESERVE_MS: f64 = 2.0;
/// Share of the frame budget kept free besides, for timing jitter (tests/live.rs once saw a
/// frame 77 ms late on a 40 ms budget with only the fixed reserve).
const BUDGET_RESERVE_SHARE: f64 = 0.1;
/// Factor on every smoothed cost when planning: a step is granted only when 1.25 times its
/// usual cost fits, since one slower run than usual must not push a frame past its limit.
const COST_MARGIN: f64 = 1.25;

/// What one track keeps between frames.
#[derive(Debug, Clone)]
struct Track {
    chosen: Chosen,
    /// The latents chosen by the further passes of that purification (`passes` > 1), in order.
    later: Vec<Chosen>,
    /// The face's distance to its candidate at the last full purification.
    reference: f32,
    /// Frames since the latent was chosen (0 on the frame of a full purification).
    latent_age: u32,
    /// Frames of this track seen by the element, less one (0 on its first).
    age: u32,
    last_seen: u64,
}

/// Why a face is purified in full on this frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refresh {
    /// The face has no `object_id`: today's path, every frame.
    Untracked,
    /// The track has no latent yet (its first frame, or it was forgotten).
    New,
    /// `refresh-interval` frames have passed since its latent was chosen.
    Interval,
    /// Its reused decoding was too far from the face (`refresh-ratio`).
    Changed,
}

impl Refresh {
    /// The `refresh` field of the face's `avae-purify` param.
    pub(super) fn name(self) -> &'static str {
        match self {
            Refresh::Untracked => "untracked",
            Refresh::New => "new",
            Refresh::Interval => "interval",
            Refresh::Changed => "changed",
        }
    }

    /// Order in which full purifications are granted under a live budget: faces without a
    /// latent first (they would otherwise go out unpurified), then changed faces.
    fn priority(self) -> u8 {
        match self {
            Refresh::Untracked | Refresh::New => 0,
            Refresh::Changed => 1,
            Refresh::Interval => 2,
        }
    }
}

/// What a face of this frame is planned to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// M samples.
    Full(Refresh),
    /// One decoder run of the track's kept latent.
    Reuse,
}

impl Plan {
    /// Whether a full purification is planned.
    pub(super) fn is_full(self) -> bool {
        matches!(self, Plan::Full(_))
    }

    /// The order in which full purifications are granted (lower first).
    pub(super) fn priority(self) -> u8 {
        match self {
            Plan::Full(refresh) => refresh.priority(),
            Plan::Reuse => u8::MAX,
        }
    }
}

/// The path a face took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FacePath {
    Full(Refresh),
    Reused,
    /// The live budget left no time and the face had no latent: unpurified.
    OverBudget,
}

/// One face's outcome: its path, what purification chose (none when over budget) and its
/// track's ages after this frame.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) path: FacePath,
    pub(super) result: Option<Purified>,
    /// `(track-age, latent-age)` of a tracked face.
    pub(super) ages: Option<(u32, u32)>,
    /// M of this face: the candidates drawn on the full path (fewer than `samples` where the
    /// live budget allowed no more), else the element's `samples`.
    pub(super) samples: usize,
    /// Whether the face was blurred before purification (`suspect-blur`).
    pub(super) blurred: bool,
}

/// The kept latents of the tracks seen recently.
#[derive(Debug, Default)]
pub(super) struct Tracks {
    map: HashMap<i32, Track>,
    frame: u64,
}

impl Tracks {
    /// Forgets every track (flush, caps change).
    pub(super) fn reset(&mut self) {
        self.map.clear();
    }

    /// Tracks held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// The plan of each face of a frame (`ids`: each face's `object_id`, `None` untracked).
    /// An id that occurs twice in one frame is treated as untracked for both faces.
    pub(super) fn plan(&self, ids: &[Option<i32>], interval: u32) -> Vec<Plan> {
        ids.iter()
            .map(|id| {
                let Some(id) = id.filter(|id| ids.iter().filter(|o| **o == Some(*id)).count() == 1)
                else {
                    return Plan::Full(Refresh::Untracked);
                };
                match self.map.get(&id) {
                    None => Plan::Full(Refresh::New),
                    Some(t) if t.latent_age.saturating_add(1) >= interval => {
                        Plan::Full(Refresh::Interval)
                    }
                    Some(_) => Plan::Reuse,
                }
            })
            .collect()
    }

    /// The kept latent of track `id`.
    pub(super) fn chosen(&self, id: i32) -> Option<&Chosen> {
        self.map.get(&id).map(|t| &t.chosen)
    }

    /// The latents the further passes of track `id`'s last full purification chose (empty
    /// with one pass, or for an unknown track).
    pub(super) fn later(&self, id: i32) -> &[Chosen] {
        self.map.get(&id).map_or(&[], |t| t.later.as_slice())
    }

    /// Keeps `later`, the latents of the further passes, for track `id` (just recorded).
    pub(super) fn keep_later(&mut self, id: i32, later: Vec<Chosen>) {
        if let Some(t) = self.map.get_mut(&id) {
            t.later = later;
        }
    }

    /// Whether the reused decoding at `distance` shows that face `id` has changed: more than
    /// `ratio` times its distance at the last full purification.
    pub(super) fn changed(&self, id: i32, distance: f32, ratio: f64) -> bool {
        self.map
            .get(&id)
            .is_some_and(|t| f64::from(distance) > ratio * f64::from(t.reference))
    }

    /// Records one frame: each tracked face's path, and for the full ones the latent chosen.
    /// Returns each face's `(track-age, latent-age)` after this frame; then forgets tracks not
    /// seen for [`TRACK_TIMEOUT_FRAMES`] and the oldest beyond [`MAX_TRACKS`].
    pub(super) fn record(
        &mut self,
        ids: &[Option<i32>],
        plans: &[Plan],
        paths: &[FacePath],
        mut chosen: Vec<Option<(Chosen, f32)>>,
    ) -> Vec<Option<(u32, u32)>> {
        let frame = self.frame;
        self.frame += 1;
        let mut ages = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let Some(id) = *id else {
                ages.push(None);
                continue;
            };
            if plans[i] == Plan::Full(Refresh::Untracked) {
                ages.push(None);
                continue;
            }
            let age = self.map.get(&id).map_or(0, |t| t.age.saturating_add(1));
            match (paths[i], chosen[i].take()) {
                (FacePath::Full(_), Some((chosen, reference))) => {
                    let track = Track {
                        chosen,
                        later: Vec::new(),
                        reference,
                        latent_age: 0,
                        age,
                        last_seen: frame,
                    };
                    self.map.insert(id, track);
                }
                _ => {
                    if let Some(t) = self.map.get_mut(&id) {
                        t.latent_age = t.latent_age.saturating_add(1);
                        t.age = age;
                        t.last_seen = frame;
                    }
                }
            }
            ages.push(self.map.get(&id).map(|t| (t.age, t.latent_age)));
        }
        self.forget(frame);
        ages
    }

    fn forget(&mut self, frame: u64) {
        self.map
            .retain(|_, t| frame.saturating_sub(t.last_seen) < TRACK_TIMEOUT_FRAMES);
        if self.map.len() > MAX_TRACKS {
            let mut seen: Vec<u64> = self.map.values().map(|t| t.last_seen).collect();
            seen.sort_unstable_by(|a, b| b.cmp(a));
            let oldest_kept = seen[MAX_TRACKS - 1];
            self.map.retain(|_, t| t.last_seen >= oldest_kept);
            // Ties at the boundary: drop arbitrary ones of the oldest frame until the bound holds.
            let excess = self.map.len().saturating_sub(MAX_TRACKS);
            let drop: Vec<i32> = self
                .map
                .iter()
                .filter(|(_, t)| t.last_seen == oldest_kept)
                .map(|(id, _)| *id)
                .take(excess)
                .collect();
            for id in drop {
                self.map.remove(&id);
            }
        }
    }
}

/// A smoothed cost in milliseconds, unknown until first measured.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Cost(Option<f64>);

impl Cost {
    /// Folds in a measurement of `total` over `count` units.
    pub(super) fn update(&mut self, total: Duration, count: usize) {
        if count == 0 {
            return;
        }
        let ms = total.as_secs_f64() * 1000.0 / count as f64;
        self.0 = Some(match self.0 {
            Some(old) if ms > old => old + COST_RISE * (ms - old),
            Some(old) => old + COST_SMOOTHING * (ms - old),
            None => ms,
        });
    }

    /// The smoothed cost (0 when never measured).
    pub(super) fn ms(self) -> f64 {
        self.0.unwrap_or(0.0)
    }
}

/// The measured cost of each step of a frame, per unit, for planning under a live budget.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Costs {
    /// Encoder, per face.
    pub(super) encode: Cost,
    /// Decoder per latent on the full path (chunks of `batch`).
    pub(super) sample: Cost,
    /// The reuse path's decoder run, per face.
    pub(super) reuse: Cost,
    /// Reading a face out of the frame, per face.
    pub(super) copy: Cost,
    /// Pasting a purified face back (its context included) and, before a further pass,
    /// reading it again: per face and pass.
    pub(super) paste: Cost,
}

/// The time left to a live frame: `limit` from when the element received it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) start: Instant,
    pub(super) limit: Duration,
}

impl Budget {
    /// How many of `wanted` steps of `cost_ms` each still fit, keeping `after_ms` and a reserve
    /// free for the rest of the frame; costs are counted with a margin ([`COST_MARGIN`]).
    pub(super) fn fitting(&self, wanted: usize, cost_ms: f64, after_ms: f64) -> usize {
        let limit_ms = self.limit.as_secs_f64() * 1000.0;
        let reserve = BUDGET_RESERVE_MS.max(BUDGET_RESERVE_SHARE * limit_ms);
        let left = limit_ms
            - self.start.elapsed().as_secs_f64() * 1000.0
            - after_ms * COST_MARGIN
            - reserve;
        if left <= 0.0 {
            return 0;
        }
        if cost_ms <= 0.0 {
            return wanted;
        }
        ((left / (cost_ms * COST_MARGIN)).floor() as usize).min(wanted)
    }

    /// Whether the frame was held past its limit.
    pub(super) fn exceeded(&self) -> bool {
        self.start.elapsed() > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    fn chosen(v: f32) -> Chosen {
        Chosen {
            latent: Array1::from_elem(4, v),
            candidate: 1,
            clipped: false,
        }
    }

    /// Records one frame in which every face of `ids` took its plan (full ones choose `v`).
    fn frame(tracks: &mut Tracks, ids: &[Option<i32>], interval: u32) -> Vec<Plan> {
        let plans = tracks.plan(ids, interval);
        let paths: Vec<FacePath> = plans
            .iter()
            .map(|p| match p {
                Plan::Full(r) => FacePath::Full(*r),
                Plan::Reuse => FacePath::Reused,
            })
            .collect();
        let chosen = plans
            .iter()
            .map(|p| p.is_full().then(|| (chosen(1.0), 10.0)))
            .collect();
        tracks.record(ids, &plans, &paths, chosen);
        plans
    }

    #[test]
    fn a_track_is_refreshed_every_interval_frames() {
        let mut tracks = Tracks::default();
        let ids = [Some(3), None];
        let mut full_frames = Vec::new();
        for f in 0..17 {
            let plans = frame(&mut tracks, &ids, 8);
            assert_eq!(plans[1], Plan::Full(Refresh::Untracked));
            if plans[0].is_full() {
                full_frames.push(f);
            }
        }
        assert_eq!(full_frames, [0, 8, 16]);
        // Interval 1: every frame in full.
        let mut tracks = Tracks::default();
        for _ in 0..3 {
            assert!(frame(&mut tracks, &[Some(1)], 1)[0].is_full());
        }
    }

    #[test]
    fn repeated_ids_are_untracked_and_change_is_relative() {
        let mut tracks = Tracks::default();
        let plans = frame(&mut tracks, &[Some(2), Some(2), Some(5)], 4);
        assert_eq!(plans[0], Plan::Full(Refresh::Untracked));
        assert_eq!(plans[1], Plan::Full(Refresh::Untracked));
        assert_eq!(plans[2], Plan::Full(Refresh::New));
        assert!(tracks.chosen(2).is_none());
        assert!(!tracks.changed(5, 14.9, 1.5));
        assert!(tracks.changed(5, 15.1, 1.5));
    }

    #[test]
    fn state_is_bounded() {
        let mut tracks = Tracks::default();
        frame(&mut tracks, &[Some(1)], 8);
        for _ in 0..TRACK_TIMEOUT_FRAMES {
            frame(&mut tracks, &[Some(2)], 8);
        }
        assert!(
            tracks.chosen(1).is_none(),
            "a track unseen for the timeout is forgotten"
        );
        assert!(tracks.chosen(2).is_some());
        let many: Vec<Option<i32>> = (10..10 + MAX_TRACKS as i32 + 50).map(Some).collect();
        frame(&mut tracks, &many, 8);
        assert!(tracks.len() <= MAX_TRACKS);
    }

    #[test]
    fn the_budget_counts_what_fits() {
        let budget = Budget {
            start: Instant::now(),
            limit: Duration::from_millis(40),
        };
        // 40 ms less a 4 ms reserve leaves 36 ms: two steps of 10 ms with the 1.25 margin.
        assert_eq!(budget.fitting(10, 10.0, 0.0), 2);
        assert_eq!(budget.fitting(2, 10.0, 0.0), 2);
        assert_eq!(budget.fitting(10, 8.0, 0.0), 3);
        assert_eq!(budget.fitting(10, 10.0, 40.0), 0);
        let mut cost = Cost::default();
        cost.update(Duration::from_millis(30), 3);
        assert!((cost.ms() - 10.0).abs() < 1e-9);
        cost.update(Duration::from_millis(20), 1);
        assert!((cost.ms() - 17.5).abs() < 1e-9, "rises by 0.75 of the gap");
        cost.update(Duration::from_millis(9), 1);
        assert!(
            (cost.ms() - 15.375).abs() < 1e-9,
            "falls by 0.25 of the gap"
        );
    }
}
