//! What happened to the frames of `avaepurify`: why a face went on unpurified ([`Cause`]), one
//! frame's outcome ([`FrameReport`]) and the counters behind the `stats` property ([`Stats`]).

use crate::element::Warned;

/// Name of the structure returned by the `stats` property.
const STATS_NAME: &str = "avaepurify-stats";

/// Why a face or a frame was passed through unpurified; each cause is warned about once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Cause {
    /// An ROI was empty or did not intersect the frame.
    RoiOutsideFrame,
    /// A frame had more matching ROIs than `max-faces`.
    TooManyFaces,
    /// The frame could not be mapped or its pixels read.
    FrameUnreadable,
    /// The purifier returned an error or panicked.
    EngineFailed,
    /// `batch` was above the bundle's memory bound and was clamped.
    BatchClamped,
    /// A frame had ROI metas, but none of `roi-type`.
    NoMatchingRoi,
}

impl Cause {
    /// The `reason` of a `purified=false` mark.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Cause::RoiOutsideFrame => "roi-outside-frame",
            Cause::TooManyFaces => "max-faces",
            Cause::FrameUnreadable => "frame-unreadable",
            Cause::EngineFailed => "engine-failed",
            Cause::BatchClamped => "batch",
            Cause::NoMatchingRoi => "roi-type",
        }
    }
}

/// What happened to one frame, folded into [`Stats`] and warnings once the state lock is gone.
#[derive(Default)]
pub(super) struct FrameReport {
    pub(super) purified: u64,
    pub(super) aligned: u64,
    pub(super) skipped: u64,
    pub(super) failed: bool,
    pub(super) latency_ms: f64,
    pub(super) engine_ms: f64,
    /// Suspicious faces (score above the alarm threshold).
    pub(super) alarms: u64,
    /// The `avae-purify-alarm` messages to post, rate limit applied.
    pub(super) alarm_messages: Vec<gst::Structure>,
    pub(super) warnings: Vec<(Cause, String)>,
    /// `on-failure=error`: the message of the element error to post; the frame fails.
    pub(super) error: Option<String>,
    /// `on-failure=conceal` on a frame that could not be concealed: drop it.
    pub(super) drop: bool,
}

impl FrameReport {
    /// Queues the warning about `cause` the first time it is seen in this run.
    pub(super) fn note(
        &mut self,
        warned: &mut Warned<Cause>,
        cause: Cause,
        message: impl FnOnce() -> String,
    ) {
        if warned.first(cause) {
            self.warnings.push((cause, message()));
        }
    }
}

/// Counters behind the read-only `stats` property.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    frames: u64,
    faces_purified: u64,
    faces_aligned: u64,
    faces_skipped: u64,
    failures: u64,
    alarms: u64,
    latency_ms_total: f64,
    engine_ms_total: f64,
}

impl Stats {
    /// Counts one frame.
    pub(super) fn add(&mut self, report: &FrameReport) {
        self.frames += 1;
        self.faces_purified += report.purified;
        self.faces_aligned += report.aligned;
        self.faces_skipped += report.skipped;
        self.failures += u64::from(report.failed);
        self.alarms += report.alarms;
        self.latency_ms_total += report.latency_ms;
        self.engine_ms_total += report.engine_ms;
    }

    /// The `stats` property's value.
    pub(super) fn to_structure(&self) -> gst::Structure {
        let per_face = |total: f64| {
            if self.faces_purified > 0 {
                total / self.faces_purified as f64
            } else {
                0.0
            }
        };
        gst::Structure::builder(STATS_NAME)
            .field("frames", self.frames)
            .field("faces-purified", self.faces_purified)
            .field("faces-aligned", self.faces_aligned)
            .field("faces-skipped", self.faces_skipped)
            .field("failures", self.failures)
            .field("alarms", self.alarms)
            .field("mean-latency-ms", per_face(self.latency_ms_total))
            .field("mean-engine-ms", per_face(self.engine_ms_total))
            .build()
    }
}
