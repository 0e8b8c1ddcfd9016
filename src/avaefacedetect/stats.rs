//! The counters behind `avaefacedetect`'s read-only `stats` property, and why a frame passed
//! without fresh detections.

use crate::tracker::TrackCounts;

/// Name of the structure returned by the `stats` property.
const STATS_NAME: &str = "avaefacedetect-stats";

/// Why a frame passed without fresh detections; each cause is warned about once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Cause {
    /// The frame could not be mapped or its pixels read.
    FrameUnreadable,
    /// The detector returned an error or panicked.
    DetectorFailed,
}

/// Counters behind the read-only `stats` property.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub(super) frames: u64,
    pub(super) inferences: u64,
    pub(super) detections: u64,
    pub(super) rois: u64,
    pub(super) failures: u64,
    pub(super) inference_ms_total: f64,
    /// Frames the detector was due on (failed runs included).
    pub(super) detector_runs: u64,
    /// Frames between detections, whose faces were carried.
    pub(super) carried_frames: u64,
    /// Frames detected before their turn because they differ from the frame before.
    pub(super) scene_cuts: u64,
    /// The tracker's counts (tracks born and ended since start).
    pub(super) tracks: TrackCounts,
}

impl Stats {
    /// The `stats` property's value.
    pub(super) fn to_structure(&self) -> gst::Structure {
        let mean = if self.inferences > 0 {
            self.inference_ms_total / self.inferences as f64
        } else {
            0.0
        };
        gst::Structure::builder(STATS_NAME)
            .field("frames", self.frames)
            .field("inferences", self.inferences)
            .field("detections", self.detections)
            .field("rois", self.rois)
            .field("failures", self.failures)
            .field("mean-inference-ms", mean)
            .field("detector-runs", self.detector_runs)
            .field("carried-frames", self.carried_frames)
            .field("scene-cuts", self.scene_cuts)
            .field("tracks-born", self.tracks.born)
            .field("tracks-ended", self.tracks.ended)
            .build()
    }
}
