//! Implementation of `avaefacedetect`: settings, streaming state, and the per-frame work.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::subclass::prelude::*;

use super::settings::{self, Settings};
use super::stats::{Cause, Stats};
use crate::core::detect::Face;
use crate::core::scene::Thumbnail;
use crate::detector::{Detector, DetectorParams};
use crate::element::{
    self, DETECTION_PARAM, ROI_TYPE, Warned, add_track_fields, detection_structure, lock,
};
use crate::shared::{DetectorHandle, EngineKey};
use crate::tracker::{TrackCounts, TrackInfo, TrackedFace, Tracker};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "avaefacedetect",
        gst::DebugColorFlags::empty(),
        Some("CenterFace face detector"),
    )
});

/// What exists only between `start()` and `stop()`.
struct State {
    detector: DetectorHandle,
    info: Option<gst_video::VideoInfo>,
    /// Frames seen since start, caps change or flush: detection runs when it is a multiple of
    /// `interval`.
    frame_index: u64,
    /// Faces of the last detection, normalised, attached unchanged to the frames until the
    /// next one when tracking is off.
    carried: Vec<Face>,
    /// The face tracks (tracking on).
    tracker: Tracker,
    /// The last frame's thumbnail, kept with `interval` > 1 and `scene-change` on.
    last_thumbnail: Option<Thumbnail>,
    warned: Warned<Cause>,
}

impl State {
    /// Forgets carried faces, ends every track and restarts the interval count.
    fn reset_tracking(&mut self) {
        self.frame_index = 0;
        self.carried.clear();
        self.tracker.reset();
        self.last_thumbnail = None;
    }
}

/// One frame's detection, as the state lock leaves it.
struct FrameDetection {
    /// The negotiated video info.
    info: gst_video::VideoInfo,
    /// The faces to attach, fresh or carried, normalised, with their tracks when tracking is
    /// on.
    faces: Vec<(Face, Option<TrackInfo>)>,
    /// Whether the detector was due on this frame (it ran, or failed).
    due: bool,
    /// Whether it was due early, the frame differing from the one before (`scene-change`).
    cut: bool,
    /// Tracks born and ended since start.
    tracks: TrackCounts,
    /// The inference time, when the detector ran and succeeded.
    inference_ms: Option<f64>,
    /// Why the detector failed, with the reason the first time the cause is seen.
    failure: Option<(Cause, Option<String>)>,
}

/// The `avaefacedetect` element.
#[derive(Default)]
pub struct AvaeFaceDetect {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
}

impl AvaeFaceDetect {
    /// Runs the detector on `buffer`; faces come back normalised to the frame.
    fn detect(
        detector: &mut Detector,
        params: &DetectorParams,
        buffer: &gst::BufferRef,
        info: &gst_video::VideoInfo,
    ) -> Result<Vec<Face>, (Cause, String)> {
        let unreadable = |reason: String| (Cause::FrameUnreadable, reason);
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
            .map_err(|err| unreadable(format!("cannot map the buffer: {err}")))?;
        let source = element::readable_frame(&frame).map_err(unreadable)?;
        let (width, height) = (source.width, source.height);
        let faces = panic::catch_unwind(AssertUnwindSafe(|| detector.detect(&source, params)))
            .map_err(|_| {
                (
                    Cause::DetectorFailed,
                    "the detector panicked (see the log above)".to_owned(),
                )
            })?
            .map_err(|err| (Cause::DetectorFailed, err.to_string()))?;
        Ok(faces.iter().map(|f| f.normalised(width, height)).collect())
    }

    /// The thumbnail of `buffer` ([`Thumbnail`]); `None` when it cannot be read (the detector
    /// then says why, if it runs).
    fn thumbnail(buffer: &gst::BufferRef, info: &gst_video::VideoInfo) -> Option<Thumbnail> {
        let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info).ok()?;
        element::readable_frame(&frame)
            .ok()
            .map(|source| Thumbnail::of(&source))
    }

    /// Under the state lock: runs the detector when this frame is due (every `interval`th,
    /// or at once on a cut, `scene-change`), and tracks or carries the faces.
    fn detect_due(
        &self,
        buf: &gst::BufferRef,
        settings: &Settings,
    ) -> Result<FrameDetection, gst::FlowError> {
        let mut state_guard = lock(&self.state);
        let state = state_guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or(gst::FlowError::NotNegotiated)?;
        let interval = u64::from(settings.interval.max(1));
        let mut due = state.frame_index % interval == 0;
        let mut cut = false;
        if interval > 1 && settings.scene_change > 0.0 {
            let thumbnail = Self::thumbnail(buf, &info);
            if let (false, Some(now), Some(last)) = (due, &thumbnail, &state.last_thumbnail) {
                let change = now.change(last);
                if f64::from(change) > settings.scene_change {
                    gst::debug!(
                        CAT,
                        imp = self,
                        "Scene cut (change {change:.3}): detecting now"
                    );
                    (due, cut) = (true, true);
                    // The count starts again from the cut; the last scene's tracks end.
                    state.frame_index = 0;
                    state.tracker.reset();
                }
            }
            state.last_thumbnail = thumbnail;
        } else {
            state.last_thumbnail = None;
        }
        state.frame_index += 1;
        state.tracker.set_params(settings.tracker_params());
        if !settings.tracking {
            state.tracker.reset();
        }
        let (mut inference_ms, mut failure) = (None, None);
        if due {
            let started = Instant::now();
            let params = settings.params();
            let detected = (state.detector).with(|d| Self::detect(d, &params, buf, &info));
            match detected {
                Ok(faces) => {
                    inference_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    state.carried = faces;
                }
                Err((cause, reason)) => {
                    gst::debug!(CAT, imp = self, "Frame passed without detection: {reason}");
                    state.carried.clear();
                    failure = Some((cause, state.warned.first(cause).then_some(reason)));
                }
            }
        }
        let tracked =
            |faces: Vec<TrackedFace>| faces.into_iter().map(|f| (f.face, Some(f.track))).collect();
        let faces = match (settings.tracking, due) {
            (true, true) => tracked(state.tracker.observe(&state.carried)),
            (true, false) => tracked(state.tracker.carry()),
            (false, _) => state.carried.iter().map(|f| (*f, None)).collect(),
        };
        Ok(FrameDetection {
            info,
            faces,
            due,
            cut,
            tracks: state.tracker.counts(),
            inference_ms,
            failure,
        })
    }

    /// Posts the one-time warning about a frame that passed without detection.
    fn warn_failure(&self, settings: &Settings, cause: Cause, reason: &str) {
        let message = format!(
            "Face detection failed, frames pass through without face metas (model '{}'): \
             {reason}",
            settings.engine.model
        );
        gst::warning!(CAT, imp = self, "{message}");
        match cause {
            Cause::DetectorFailed => {
                gst::element_imp_warning!(self, gst::LibraryError::Failed, ("{}", message));
            }
            Cause::FrameUnreadable => {
                gst::element_imp_warning!(self, element::FRAME_UNREADABLE, ("{}", message));
            }
        }
    }

    /// Forgets carried faces, ends every track and restarts the interval count (new caps,
    /// flush).
    fn reset_tracking(&self) {
        if let Some(state) = lock(&self.state).as_mut() {
            state.reset_tracking();
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for AvaeFaceDetect {
    const NAME: &'static str = "GstAvaeFaceDetect";
    type Type = super::AvaeFaceDetect;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for AvaeFaceDetect {
    fn constructed(&self) {
        self.parent_constructed();
        // Every frame goes out: never drop a late frame on a QoS event (a leaky queue in front
        // is the way to shed load on a live source, see pipelines/).
        self.obj().set_qos(false);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(settings::properties);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        lock(&self.settings).set(name, value);
        gst::debug!(CAT, imp = self, "Set {name} to {value:?}");
        if matches!(name, "model" | "backend" | "device") && lock(&self.state).is_some() {
            gst::warning!(
                CAT,
                imp = self,
                "{name} changed while running: it takes effect at the next start"
            );
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return lock(&self.stats).to_structure().to_value();
        }
        lock(&self.settings).get(pspec.name())
    }
}

impl GstObjectImpl for AvaeFaceDetect {}

impl ElementImpl for AvaeFaceDetect {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CenterFace face detector",
                "Filter/Analyzer/Video",
                "Detects faces with CenterFace and attaches one region-of-interest meta of \
                 type 'face' per face, with a 'detection' structure (normalised box, \
                 confidence, 5 landmarks); pixels are left untouched",
                "avae-purify developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(element::packed_rgb_pad_templates);
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for AvaeFaceDetect {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let load = || {
            Detector::open(
                Path::new(&settings.engine.model),
                settings.engine.backend()?,
                settings.engine.device.into(),
            )
            .map_err(|err| element::load_error("face detector", &settings.engine.model, &err))
        };
        let key = EngineKey::of(&settings.engine, "");
        let detector = DetectorHandle::open(&settings.sharing.id, &key, load)?;
        gst::info!(
            CAT,
            imp = self,
            "Loaded face detector '{}' on backend {}",
            settings.engine.model,
            detector.describe(),
        );
        element::report_engine(
            self,
            *CAT,
            settings.engine.device,
            &detector.describe(),
            &detector.fallbacks(),
        );
        *lock(&self.state) = Some(State {
            detector,
            info: None,
            frame_index: 0,
            carried: Vec::new(),
            tracker: Tracker::new(settings.tracker_params()),
            last_thumbnail: None,
            warned: Warned::default(),
        });
        *lock(&self.stats) = Stats::default();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        lock(&self.state).take();
        gst::info!(
            CAT,
            imp = self,
            "Stopped: {}",
            lock(&self.stats).to_structure()
        );
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view() {
            self.reset_tracking();
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = lock(&self.settings).clone();
        let FrameDetection {
            info,
            faces,
            due,
            cut,
            tracks,
            inference_ms,
            failure,
        } = self.detect_due(buf, &settings)?;
        let (width, height) = (info.width() as usize, info.height() as usize);
        let mut attached = 0;
        for (face, track) in &faces {
            let Some(rect) = face.pixel_rect(width, height) else {
                continue;
            };
            let mut meta = gst_video::VideoRegionOfInterestMeta::add(buf, ROI_TYPE, rect);
            let mut param = detection_structure(face);
            if let Some(track) = track {
                meta.set_id(track.object_id);
                add_track_fields(&mut param, track);
            }
            meta.add_param(param);
            attached += 1;
        }
        gst::trace!(
            CAT,
            imp = self,
            "{attached} '{ROI_TYPE}' ROIs with '{DETECTION_PARAM}' attached"
        );

        {
            let mut stats = lock(&self.stats);
            stats.frames += 1;
            stats.rois += attached;
            if let Some(ms) = inference_ms {
                stats.inferences += 1;
                stats.detections += faces.len() as u64;
                stats.inference_ms_total += ms;
            }
            stats.failures += u64::from(failure.is_some());
            stats.detector_runs += u64::from(due);
            stats.carried_frames += u64::from(!due);
            stats.scene_cuts += u64::from(cut);
            stats.tracks = tracks;
        }
        if let Some((cause, Some(reason))) = failure {
            self.warn_failure(&settings, cause, &reason);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}

impl VideoFilterImpl for AvaeFaceDetect {
    fn set_info(
        &self,
        incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        _outcaps: &gst::Caps,
        _out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        let mut state = lock(&self.state);
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "Caps set before the element started"))?;
        gst::debug!(CAT, imp = self, "Configured for caps {incaps}");
        state.info = Some(in_info.clone());
        state.reset_tracking();
        Ok(())
    }
}
