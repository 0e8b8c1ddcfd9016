//! What the properties of `avaefacedetect` set: defaults, ranges, param specs, set and get.

use gst::glib;
use gst::prelude::*;

use crate::detector::{DetectorParams, default_model_path};
use crate::element::{EngineSettings, backend_property, device_property, server_properties};
use crate::tracker::{DEFAULT_MAX_AGE, DEFAULT_MIN_IOU, TrackerParams};

const DEFAULT_THRESHOLD: f32 = 0.5;
const DEFAULT_NMS_IOU: f32 = 0.3;
const DEFAULT_MIN_SIZE: u32 = 0;
const DEFAULT_MAX_FACES: u32 = 64;
const DEFAULT_INPUT_SIZE: u32 = 640;
const DEFAULT_INTERVAL: u32 = 1;
const DEFAULT_TRACKING: bool = true;
/// Change between consecutive frames' thumbnails ([`crate::core::scene`]) above which a frame
/// counts as a cut: 3x the most the street video's consecutive frames differ (0.025), about
/// half the least two LFW photos of different people do (0.15).
const DEFAULT_SCENE_CHANGE: f64 = 0.08;

const MAX_MIN_SIZE: u32 = 8192;
const MAX_MAX_FACES: u32 = 1024;
const MIN_INPUT_SIZE: u32 = 32;
const MAX_INPUT_SIZE: u32 = 4096;
const MAX_INTERVAL: u32 = 1000;
const MAX_TRACK_MAX_AGE: u32 = 100_000;

/// What the properties set; read once per frame.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) engine: EngineSettings,
    pub(super) sharing: crate::shared::SharingSettings,
    pub(super) threshold: f32,
    pub(super) nms_iou: f32,
    pub(super) min_size: u32,
    pub(super) max_faces: u32,
    pub(super) input_size: u32,
    pub(super) interval: u32,
    pub(super) scene_change: f64,
    pub(super) tracking: bool,
    pub(super) track_max_age: u32,
    pub(super) track_iou: f32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            engine: EngineSettings::new(default_model_path().to_string_lossy().into_owned()),
            sharing: crate::shared::SharingSettings::default(),
            threshold: DEFAULT_THRESHOLD,
            nms_iou: DEFAULT_NMS_IOU,
            min_size: DEFAULT_MIN_SIZE,
            max_faces: DEFAULT_MAX_FACES,
            input_size: DEFAULT_INPUT_SIZE,
            interval: DEFAULT_INTERVAL,
            scene_change: DEFAULT_SCENE_CHANGE,
            tracking: DEFAULT_TRACKING,
            track_max_age: DEFAULT_MAX_AGE,
            track_iou: DEFAULT_MIN_IOU,
        }
    }
}

impl Settings {
    /// The detector's parameters.
    pub(super) fn params(&self) -> DetectorParams {
        DetectorParams {
            threshold: self.threshold,
            nms_iou: self.nms_iou,
            min_size: self.min_size as f32,
            max_faces: self.max_faces as usize,
            input_size: self.input_size as usize,
        }
    }

    /// The tracker's birth and death rules.
    pub(super) fn tracker_params(&self) -> TrackerParams {
        TrackerParams {
            min_iou: self.track_iou,
            max_age: self.track_max_age,
        }
    }

    /// Sets the property `name` (type checked by GObject).
    pub(super) fn set(&mut self, name: &str, value: &glib::Value) {
        if self.engine.set(name, value) || self.sharing.set(name, value) {
            return;
        }
        let checked = "type checked upstream";
        match name {
            "threshold" => self.threshold = value.get().expect(checked),
            "nms-iou" => self.nms_iou = value.get().expect(checked),
            "min-size" => self.min_size = value.get().expect(checked),
            "max-faces" => self.max_faces = value.get().expect(checked),
            "input-size" => self.input_size = value.get().expect(checked),
            "interval" => self.interval = value.get().expect(checked),
            "scene-change" => self.scene_change = value.get().expect(checked),
            "tracking" => self.tracking = value.get().expect(checked),
            "track-max-age" => self.track_max_age = value.get().expect(checked),
            "track-iou" => self.track_iou = value.get().expect(checked),
            _ => unimplemented!("property {name}"),
        }
    }

    /// The value of the property `name` (all but `stats`).
    pub(super) fn get(&self, name: &str) -> glib::Value {
        if let Some(value) = self.engine.get(name).or_else(|| self.sharing.get(name)) {
            return value;
        }
        match name {
            "threshold" => self.threshold.to_value(),
            "nms-iou" => self.nms_iou.to_value(),
            "min-size" => self.min_size.to_value(),
            "max-faces" => self.max_faces.to_value(),
            "input-size" => self.input_size.to_value(),
            "interval" => self.interval.to_value(),
            "scene-change" => self.scene_change.to_value(),
            "tracking" => self.tracking.to_value(),
            "track-max-age" => self.track_max_age.to_value(),
            "track-iou" => self.track_iou.to_value(),
            name => unimplemented!("property {name}"),
        }
    }
}

/// The element's properties, `stats` last.
pub(super) fn properties() -> Vec<glib::ParamSpec> {
    let default_model = Settings::default().engine.model;
    let mut specs = vec![
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
        backend_property(),
        device_property(),
    ];
    specs.extend(server_properties());
    specs.extend(crate::shared::sharing_properties(false));
    specs.extend(detection_properties());
    specs.extend(tracking_properties());
    specs.push(
        glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
            .nick("Statistics")
            .blurb(
                "Counters since start (avaefacedetect-stats): frames, inferences, \
                 detections (faces found by inferences), rois (face metas attached, \
                 carried ones included), failures (frames passed through after a \
                 detector error), mean-inference-ms, detector-runs (frames the detector \
                 was due on, failed ones included), carried-frames (frames between \
                 detections), scene-cuts (frames detected early because they differ \
                 from the one before, scene-change), tracks-born, tracks-ended",
            )
            .read_only()
            .build(),
    );
    specs
}

/// The properties of [`DetectorParams`], `interval` and `scene-change`.
fn detection_properties() -> Vec<glib::ParamSpec> {
    vec![
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
                "Detect on every Nth frame; on the frames in between, the faces of the \
                 last detection are carried: moved by their tracks' motion with \
                 tracking=true, unchanged without",
            )
            .minimum(1)
            .maximum(MAX_INTERVAL)
            .default_value(DEFAULT_INTERVAL)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("scene-change")
            .nick("Scene change")
            .blurb(
                "With interval > 1: a frame whose 16x16 grid of luma means differs from the \
                 previous frame's by more than this (mean absolute difference, 0 to 1) is a \
                 cut: the detector runs on it at once, every track ends, and the interval \
                 count starts again from it (a new scene, or a stream of unrelated images, \
                 never gets the last scene's boxes); 0 = off",
            )
            .minimum(0.0)
            .maximum(1.0)
            .default_value(DEFAULT_SCENE_CHANGE)
            .mutable_playing()
            .build(),
    ]
}

/// The tracker's properties.
fn tracking_properties() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecBoolean::builder("tracking")
            .nick("Face tracking")
            .blurb(
                "Give faces persistent ids across frames: each face ROI gets the track's \
                 id as its meta id and as object_id in its detection param (with \
                 track-age and tracked), and faces are carried between detections by a \
                 constant-velocity motion model",
            )
            .default_value(DEFAULT_TRACKING)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("track-max-age")
            .nick("Track maximum age")
            .blurb(
                "Frames a track survives without a matching detection (hidden meanwhile); \
                 it ends at the first detection that leaves it unmatched for longer, and \
                 a face seen again after that gets a new id",
            )
            .maximum(MAX_TRACK_MAX_AGE)
            .default_value(DEFAULT_MAX_AGE)
            .mutable_playing()
            .build(),
        glib::ParamSpecFloat::builder("track-iou")
            .nick("Track IoU")
            .blurb(
                "Least intersection over union between a track's predicted box and a \
                 detection for the detection to continue the track (landmarks must also \
                 lie within 0.75 face sizes); an unmatched detection starts a new track",
            )
            .minimum(0.01)
            .maximum(1.0)
            .default_value(DEFAULT_MIN_IOU)
            .mutable_playing()
            .build(),
    ]
}
