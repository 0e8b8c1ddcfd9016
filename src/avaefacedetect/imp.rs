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
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;

use super::{DETECTION_PARAM, Detector, DetectorParams, ROI_TYPE, detection_structure};
use crate::avaepurify::{BackendChoice, DeviceChoice};
use crate::core::detect::Face;
use crate::core::image::FrameRef;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "avaefacedetect",
        gst::DebugColorFlags::empty(),
        Some("CenterFace face detector"),
    )
});

/// Name of the structure returned by the `stats` property.
const STATS_NAME: &str = "avaefacedetect-stats";

const DEFAULT_BACKEND: BackendChoice = BackendChoice::Auto;
const DEFAULT_DEVICE: DeviceChoice = DeviceChoice::Auto;
const DEFAULT_THRESHOLD: f32 = 0.5;
const DEFAULT_NMS_IOU: f32 = 0.3;
const DEFAULT_MIN_SIZE: u32 = 0;
const DEFAULT_MAX_FACES: u32 = 64;
const DEFAULT_INPUT_SIZE: u32 = 640;
const DEFAULT_INTERVAL: u32 = 1;

const MAX_MIN_SIZE: u32 = 8192;
const MAX_MAX_FACES: u32 = 1024;
const MIN_INPUT_SIZE: u32 = 32;
const MAX_INPUT_SIZE: u32 = 4096;
const MAX_INTERVAL: u32 = 1000;

/// What the properties set; read once per frame.
#[derive(Debug, Clone)]
struct Settings {
    model: String,
    backend: BackendChoice,
    device: DeviceChoice,
    threshold: f32,
    nms_iou: f32,
    min_size: u32,
    max_faces: u32,
    input_size: u32,
    interval: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: super::default_model_path().to_string_lossy().into_owned(),
            backend: DEFAULT_BACKEND,
            device: DEFAULT_DEVICE,
            threshold: DEFAULT_THRESHOLD,
            nms_iou: DEFAULT_NMS_IOU,
            min_size: DEFAULT_MIN_SIZE,
            max_faces: DEFAULT_MAX_FACES,
            input_size: DEFAULT_INPUT_SIZE,
            interval: DEFAULT_INTERVAL,
        }
    }
}

impl Settings {
    fn params(&self) -> DetectorParams {
        DetectorParams {
            threshold: self.threshold,
            nms_iou: self.nms_iou,
            min_size: self.min_size as f32,
            max_faces: self.max_faces as usize,
            input_size: self.input_size as usize,
        }
    }
}

/// Why a frame passed without fresh detections; each cause is warned about once per run.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// The frame could not be mapped or its pixels read.
    FrameUnreadable,
    /// The detector returned an error or panicked.
    DetectorFailed,
}

/// What exists only between `start()` and `stop()`.
struct State {
    detector: Detector,
    info: Option<gst_video::VideoInfo>,
    /// Frames seen since start, caps change or flush: detection runs when it is a multiple of
    /// `interval`.
    frame_index: u64,
    /// Faces of the last detection, normalised, attached to frames until the next one.
    carried: Vec<Face>,
    /// Causes already warned about.
    warned: [bool; 2],
}

/// Counters behind the read-only `stats` property.
#[derive(Debug, Default, Clone)]
struct Stats {
    frames: u64,
    inferences: u64,
    detections: u64,
    rois: u64,
    failures: u64,
    inference_ms_total: f64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
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
            .build()
    }
}

/// The `avaefacedetect` element.
#[derive(Default)]
pub struct AvaeFaceDetect {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
}

use crate::avaepurify::{lock, packed_rgb_pad_templates, pixel_layout};

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
        let layout = pixel_layout(frame.format())
            .ok_or_else(|| unreadable(format!("unsupported format {}", frame.format())))?;
        let stride = usize::try_from(frame.plane_stride()[0])
            .map_err(|_| unreadable("negative stride".to_owned()))?;
        let data = frame
            .plane_data(0)
            .map_err(|err| unreadable(format!("cannot access plane 0: {err}")))?;
        let (width, height) = (frame.width() as usize, frame.height() as usize);
        let source = FrameRef {
            data,
            width,
            height,
            stride,
            layout,
        };
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

    /// Forgets carried faces and restarts the interval count (new caps, flush).
    fn reset_tracking(&self) {
        if let Some(state) = lock(&self.state).as_mut() {
            state.frame_index = 0;
            state.carried.clear();
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
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let default_model = Settings::default().model;
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Detector model")
                    .blurb(
                        "CenterFace ONNX graph (default: AVAE_DETECT_MODEL, else \
                         centerface/centerface.onnx in the first models folder that has it: \
                         AVAE_PURIFY_MODELS, then avae-purify/models in the plugin's \
                         <prefix>/share, $XDG_DATA_HOME or ~/.local/share, /usr/local/share, \
                         /usr/share, then the source tree); loaded when the element starts",
                    )
                    .default_value(Some(default_model.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("backend", DEFAULT_BACKEND)
                    .nick("Inference backend")
                    .blurb(
                        "Inference backend: auto uses ONNX Runtime when its library loads \
                         (ORT_DYLIB_PATH) and tract otherwise",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("device", DEFAULT_DEVICE)
                    .nick("Inference device")
                    .blurb(
                        "Device for the ort backend: auto tries TensorRT, then CUDA, then CPU \
                         (tract always runs on the CPU)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecFloat::builder("threshold")
                    .nick("Score threshold")
                    .blurb("Minimum detector score of a face (heatmap peak, 0 to 1)")
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("nms-iou")
                    .nick("NMS IoU")
                    .blurb(
                        "Non-maximum suppression: of two boxes overlapping by this \
                         intersection-over-union or more, only the more confident is kept",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_NMS_IOU)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("min-size")
                    .nick("Minimum face size")
                    .blurb("Faces narrower or lower than this many frame pixels are dropped")
                    .maximum(MAX_MIN_SIZE)
                    .default_value(DEFAULT_MIN_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-faces")
                    .nick("Maximum faces")
                    .blurb("Most faces attached per frame (the most confident)")
                    .minimum(1)
                    .maximum(MAX_MAX_FACES)
                    .default_value(DEFAULT_MAX_FACES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("input-size")
                    .nick("Detector resolution")
                    .blurb(
                        "Longer side, in pixels, of the frame as the detector sees it: frames \
                         of any size are scaled keeping their aspect ratio and padded to \
                         multiples of 32 (smaller is faster and misses small faces)",
                    )
                    .minimum(MIN_INPUT_SIZE)
                    .maximum(MAX_INPUT_SIZE)
                    .default_value(DEFAULT_INPUT_SIZE)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("interval")
                    .nick("Detection interval")
                    .blurb(
                        "Detect on every Nth frame; the frames in between carry the last \
                         detection's faces",
                    )
                    .minimum(1)
                    .maximum(MAX_INTERVAL)
                    .default_value(DEFAULT_INTERVAL)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since start (avaefacedetect-stats): frames, inferences, \
                         detections (faces found by inferences), rois (face metas attached, \
                         carried ones included), failures (frames passed through after a \
                         detector error), mean-inference-ms",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        let name = pspec.name();
        match name {
            "model" => {
                settings.model = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| Settings::default().model);
            }
            "backend" => settings.backend = value.get().expect("type checked upstream"),
            "device" => settings.device = value.get().expect("type checked upstream"),
            "threshold" => settings.threshold = value.get().expect("type checked upstream"),
            "nms-iou" => settings.nms_iou = value.get().expect("type checked upstream"),
            "min-size" => settings.min_size = value.get().expect("type checked upstream"),
            "max-faces" => settings.max_faces = value.get().expect("type checked upstream"),
            "input-size" => settings.input_size = value.get().expect("type checked upstream"),
            "interval" => settings.interval = value.get().expect("type checked upstream"),
            _ => unimplemented!("property {name}"),
        }
        drop(settings);
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
        let settings = lock(&self.settings);
        match pspec.name() {
            "model" => settings.model.to_value(),
            "backend" => settings.backend.to_value(),
            "device" => settings.device.to_value(),
            "threshold" => settings.threshold.to_value(),
            "nms-iou" => settings.nms_iou.to_value(),
            "min-size" => settings.min_size.to_value(),
            "max-faces" => settings.max_faces.to_value(),
            "input-size" => settings.input_size.to_value(),
            "interval" => settings.interval.to_value(),
            name => unimplemented!("property {name}"),
        }
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
            LazyLock::new(packed_rgb_pad_templates);
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
        let detector = Detector::open(
            Path::new(&settings.model),
            settings.backend.into(),
            settings.device.into(),
        )
        .map_err(|err| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "Cannot load the face detector '{}' (property 'model'): {err}",
                    settings.model
                )
            )
        })?;
        gst::info!(
            CAT,
            imp = self,
            "Loaded face detector '{}' on backend {}",
            settings.model,
            detector.describe(),
        );
        for fallback in detector.fallbacks() {
            gst::info!(CAT, imp = self, "Engine fallback: {fallback}");
        }
        if let Some(message) = crate::engine::explicit_device_unavailable(
            settings.device.into(),
            &detector.describe(),
            detector.fallbacks(),
        ) {
            gst::warning!(CAT, imp = self, "{message}");
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{}", message));
        }
        *lock(&self.state) = Some(State {
            detector,
            info: None,
            frame_index: 0,
            carried: Vec::new(),
            warned: [false; 2],
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
        let mut state_guard = lock(&self.state);
        let state = state_guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or(gst::FlowError::NotNegotiated)?;

        let due = state.frame_index % u64::from(settings.interval.max(1)) == 0;
        state.frame_index += 1;
        let mut inference_ms = None;
        let mut failure = None;
        if due {
            let started = Instant::now();
            match Self::detect(&mut state.detector, &settings.params(), buf, &info) {
                Ok(faces) => {
                    inference_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    state.carried = faces;
                }
                Err((cause, reason)) => {
                    gst::debug!(CAT, imp = self, "Frame passed without detection: {reason}");
                    state.carried.clear();
                    let warned = &mut state.warned[cause as usize];
                    failure = Some((cause, (!*warned).then_some(reason)));
                    *warned = true;
                }
            }
        }
        let faces = state.carried.clone();
        drop(state_guard);

        let (width, height) = (info.width() as usize, info.height() as usize);
        let mut attached = 0;
        for face in &faces {
            let Some(rect) = face.pixel_rect(width, height) else {
                continue;
            };
            let mut meta = gst_video::VideoRegionOfInterestMeta::add(buf, ROI_TYPE, rect);
            meta.add_param(detection_structure(face));
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
        }
        if let Some((cause, Some(reason))) = failure {
            let message = format!(
                "Face detection failed, frames pass through without face metas (model '{}'): \
                 {reason}",
                settings.model
            );
            gst::warning!(CAT, imp = self, "{message}");
            match cause {
                Cause::DetectorFailed => {
                    gst::element_imp_warning!(self, gst::LibraryError::Failed, ("{}", message));
                }
                Cause::FrameUnreadable => {
                    gst::element_imp_warning!(self, gst::StreamError::Format, ("{}", message));
                }
            }
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
        state.frame_index = 0;
        state.carried.clear();
        Ok(())
    }
}
