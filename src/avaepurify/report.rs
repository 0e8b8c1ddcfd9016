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
    /// A live stream's frame budget (`max-latency-ms`) left no time to purify a face that has
    /// no kept latent yet.
    OverBudget,
    /// A live stream whose frame rate is unknown and `max-latency-ms=0`: no budget applies.
    NoBudget,
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
            Cause::OverBudget => "latency-budget",
            Cause::NoBudget => "no-budget",
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
    /// Faces purified in full (M samples), and of them those refreshed early because the face
    /// had changed.
    pub(super) full: u64,
    pub(super) changed: u64,
    /// Faces decoded from their track's kept latent (one decoder call).
    pub(super) reused: u64,
    /// Faces blurred before purification (`suspect-blur`).
    pub(super) blurred: u64,
    /// Engine time of the full and the reuse path (the encoder's share included).
    pub(super) full_ms: f64,
    pub(super) reuse_ms: f64,
    /// Faces left unpurified by a live stream's frame budget.
    pub(super) over_budget: u64,
    /// The frame was held longer than its live budget.
    pub(super) late: bool,
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
    faces_full: u64,
    faces_changed: u64,
    faces_reused: u64,
    faces_blurred: u64,
    full_ms_total: f64,
    reuse_ms_total: f64,
    faces_over_budget: u64,
    late_frames: u64,
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
        self.faces_full += report.full;
        self.faces_changed += report.changed;
        self.faces_reused += report.reused;
        self.faces_blurred += report.blurred;
        self.full_ms_total += report.full_ms;
        self.reuse_ms_total += report.reuse_ms;
        self.faces_over_budget += report.over_budget;
        self.late_frames += u64::from(report.late);
    }

    /// The `stats` property's value.
    pub(super) fn to_structure(&self) -> gst::Structure {
        let mean = |total: f64, count: u64| {
            if count > 0 { total / count as f64 } else { 0.0 }
        };
        let per_face = |total: f64| mean(total, self.faces_purified);
        gst::Structure::builder(STATS_NAME)
            .field("frames", self.frames)
            .field("faces-purified", self.faces_purified)
            .field("faces-aligned", self.faces_aligned)
            .field("faces-skipped", self.faces_skipped)
            .field("failures", self.failures)
            .field("alarms", self.alarms)
            .field("mean-latency-ms", per_face(self.latency_ms_total))
            .field("mean-engine-ms", per_face(self.engine_ms_total))
            .field("faces-full", self.faces_full)
            .field("faces-reused", self.faces_reused)
            .field("faces-suspect-blurred", self.faces_blurred)
            .field("faces-refreshed-early", self.faces_changed)
            .field("faces-over-budget", self.faces_over_budget)
            .field("late-frames", self.late_frames)
            .field("mean-full-ms", mean(self.full_ms_total, self.faces_full))
            .field(
                "mean-reuse-ms",
                mean(self.reuse_ms_total, self.faces_reused),
            )
            .build()
    }
}
