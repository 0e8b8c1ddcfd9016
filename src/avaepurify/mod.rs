//! The `avaepurify` element: an in-place video filter that purifies every face of a frame with
//! A-VAE (paper section 3.4) before the frame reaches a recogniser, encoder or sink.
//!
//! Faces come from upstream `GstVideoRegionOfInterestMeta`s whose type matches the `roi-type`
//! property (or the whole frame with `full-frame=true`); each purified ROI gets an `avae-purify`
//! param structure with `distance`, `candidate` and `samples`, and, when the bundle has an
//! attack alarm (`alarm`), the face's `score` and whether it is `suspicious`; a suspicious face
//! also posts an `avae-purify-alarm` element message (rate-limited, see [`alarms`]).
//!
//! A face whose ROI carries a `detection` param with 5 landmarks (as `avaefacedetect` attaches)
//! is cropped with the similarity transform that puts them on the bundle's landmark template,
//! the geometry the model was trained on (`align`); other faces are cropped as a square box with
//! `margin`. Either way the purified face goes back through the same transform under a mask that
//! fades over the outer `feather` fraction of the crop, so that no seam shows.

use gst::glib;
use gst::prelude::*;

mod alarms;
mod faces;
mod imp;
mod live;
mod precision;
mod report;
mod settings;
mod targets;
mod tracks;

pub use crate::element::{BackendChoice, DeviceChoice};
pub use precision::PrecisionChoice;

glib::wrapper! {
    /// The `avaepurify` element (a `GstVideoFilter`), see the module documentation.
    pub struct AvaePurify(ObjectSubclass<imp::AvaePurify>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// What `avaepurify` does with a face it could not purify (the `on-failure` property): the
/// engine failed, the frame could not be mapped, or the face is beyond `max-faces`.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstAvaePurifyOnFailure")]
pub enum OnFailure {
    /// The unpurified face goes on as it came (the behaviour before this property existed).
    #[default]
    #[enum_value(name = "Pass: the unpurified face goes on unchanged", nick = "pass")]
    Pass = 0,
    /// As `pass`, and each ROI's `avae-purify` param says `purified=false` (purified ones
    /// `purified=true`).
    #[enum_value(
        name = "Mark: the face goes on, its ROI's avae-purify param says purified=false",
        nick = "mark"
    )]
    Mark = 1,
    /// Fail closed: the face region is pixelated beyond recognition (a frame that cannot be
    /// mapped is dropped).
    #[enum_value(
        name = "Conceal: pixelate the unpurified face (drop a frame that cannot be mapped)",
        nick = "conceal"
    )]
    Conceal = 2,
    /// Post an element error and stop the stream with a flow error.
    #[enum_value(name = "Error: post an error and stop the stream", nick = "error")]
    Error = 3,
}

/// Registers `avaepurify` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    crate::element::mark_as_plugin_api();
    OnFailure::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    precision::PrecisionChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "avaepurify",
        gst::Rank::NONE,
        AvaePurify::static_type(),
    )
}
