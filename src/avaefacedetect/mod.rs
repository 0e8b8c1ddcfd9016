//! The `avaefacedetect` element: finds faces with CenterFace and attaches one
//! `GstVideoRegionOfInterestMeta` per face for `avaepurify` (or any analytics element) to use.
//!
//! It never changes pixels. Each ROI has type `face`, its pixel rectangle, and a `detection`
//! param structure in the DL Streamer layout ([`detection_structure`]):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `x_min`, `y_min`, `x_max`, `y_max` | double | box edges, normalised to [0, 1] of the frame |
//! | `confidence` | double | detector score in [0, 1] |
//! | `label_id` | int | 0 |
//! | `label` | string | `face` |
//! | `landmarks` | array of 10 doubles | `x0, y0, ..., x4, y4`, normalised like the box: left eye, right eye, nose tip, left and right mouth corners (left and right as seen in the image) |
//! | `object_id` | int | with `tracking=true` only: the face's track id (1 or more), also the ROI meta's id |
//! | `track-age` | uint | with `tracking=true` only: frames since the track was born (0 on its first frame) |
//! | `tracked` | bool | with `tracking=true` only: true when the motion model carried the box (no detection on this frame), false when it is this frame's detection |
//!
//! With `tracking=true` (the default) faces are followed by [`crate::tracker::Tracker`]: on the
//! frames between detections (`interval` > 1) the faces of the last detection are moved by
//! their tracks' constant-velocity motion, landmarks with them. Without tracking the meta id
//! stays 0, the three track fields are absent and faces are carried unchanged. A flush (seek)
//! or new caps ends every track.

use gst::glib;
use gst::prelude::*;

mod imp;
mod settings;
mod stats;

pub use crate::detector::{
    CACHE_ENV, Detector, DetectorParams, MODEL_ENV, cache_dir, candidate_limit, create_private_dir,
    default_cache_dir, default_model_path, dynamic_shape_model,
};
pub use crate::element::{
    DETECTION_PARAM, ROI_TYPE, add_track_fields, detection_structure, face_from_detection,
    track_from_detection,
};

glib::wrapper! {
    /// The `avaefacedetect` element (a `GstVideoFilter`), see the module documentation.
    pub struct AvaeFaceDetect(ObjectSubclass<imp::AvaeFaceDetect>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// Registers `avaefacedetect` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    crate::element::mark_as_plugin_api();
    gst::Element::register(
        Some(plugin),
        "avaefacedetect",
        gst::Rank::NONE,
        AvaeFaceDetect::static_type(),
    )
}
