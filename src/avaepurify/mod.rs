//! The `avaepurify` element: an in-place video filter that purifies every face of a frame with
//! A-VAE (paper section 3.4) before the frame reaches a recogniser, encoder or sink.
//!
//! Faces come from upstream `GstVideoRegionOfInterestMeta`s whose type matches the `roi-type`
//! property (or the whole frame with `full-frame=true`); each purified ROI gets an `avae-purify`
//! param structure with `distance`, `candidate` and `samples`.
//!
//! A face whose ROI carries a `detection` param with 5 landmarks (as `avaefacedetect` attaches)
//! is cropped with the similarity transform that puts them on the bundle's landmark template,
//! the geometry the model was trained on (`align`); other faces are cropped as a square box with
//! `margin`. Either way the purified face goes back through the same transform under a mask that
//! fades over the outer `feather` fraction of the crop, so that no seam shows.

use std::sync::{Mutex, MutexGuard};

use gst::glib;
use gst::prelude::*;

use crate::core::image::PixelLayout;

mod imp;

glib::wrapper! {
    /// The `avaepurify` element (a `GstVideoFilter`), see the module documentation.
    pub struct AvaePurify(ObjectSubclass<imp::AvaePurify>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// Inference backend of the `backend` property, mirroring [`crate::engine::Backend`].
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstAvaePurifyBackend")]
pub enum BackendChoice {
    /// ONNX Runtime when its library loads, tract otherwise.
    #[default]
    #[enum_value(
        name = "Auto: ONNX Runtime when its library loads, tract otherwise",
        nick = "auto"
    )]
    Auto = 0,
    /// ONNX Runtime (library from ORT_DYLIB_PATH or the project's venv).
    #[enum_value(
        name = "ONNX Runtime (ORT_DYLIB_PATH or the project's venv)",
        nick = "ort"
    )]
    Ort = 1,
    /// tract, pure Rust, nothing to install.
    #[enum_value(name = "tract (pure Rust, CPU)", nick = "tract")]
    Tract = 2,
}

impl From<BackendChoice> for crate::engine::Backend {
    fn from(choice: BackendChoice) -> Self {
        match choice {
            BackendChoice::Auto => Self::Auto,
            BackendChoice::Ort => Self::Ort,
            BackendChoice::Tract => Self::Tract,
        }
    }
}

/// Execution device of the `device` property, mirroring [`crate::engine::Device`].
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstAvaePurifyDevice")]
pub enum DeviceChoice {
    /// The fastest device that works: TensorRT, then CUDA, then CPU.
    #[default]
    #[enum_value(name = "Auto: TensorRT, then CUDA, then CPU", nick = "auto")]
    Auto = 0,
    /// NVIDIA TensorRT (ort backend only).
    #[enum_value(name = "TensorRT (ort backend, NVIDIA GPU)", nick = "tensorrt")]
    TensorRt = 1,
    /// NVIDIA CUDA (ort backend only).
    #[enum_value(name = "CUDA (ort backend, NVIDIA GPU)", nick = "cuda")]
    Cuda = 2,
    /// The CPU.
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu = 3,
}

impl From<DeviceChoice> for crate::engine::Device {
    fn from(choice: DeviceChoice) -> Self {
        match choice {
            DeviceChoice::Auto => Self::Auto,
            DeviceChoice::TensorRt => Self::TensorRt,
            DeviceChoice::Cuda => Self::Cuda,
            DeviceChoice::Cpu => Self::Cpu,
        }
    }
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

/// The packed 8-bit RGB video formats the elements accept, and their pixel layouts.
const PACKED_RGB: [(gst_video::VideoFormat, PixelLayout); 6] = [
    (gst_video::VideoFormat::Rgb, PixelLayout::Rgb),
    (gst_video::VideoFormat::Bgr, PixelLayout::Bgr),
    (gst_video::VideoFormat::Rgba, PixelLayout::Rgba),
    (gst_video::VideoFormat::Bgra, PixelLayout::Bgra),
    (gst_video::VideoFormat::Rgbx, PixelLayout::Rgbx),
    (gst_video::VideoFormat::Bgrx, PixelLayout::Bgrx),
];

/// The `sink` and `src` pad templates of an in-place filter of packed 8-bit RGB video of any
/// size and frame rate.
pub(crate) fn packed_rgb_pad_templates() -> Vec<gst::PadTemplate> {
    let caps = gst_video::VideoCapsBuilder::new()
        .format_list(PACKED_RGB.map(|(format, _)| format))
        .build();
    [
        ("sink", gst::PadDirection::Sink),
        ("src", gst::PadDirection::Src),
    ]
    .into_iter()
    .map(|(name, direction)| {
        gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
            .expect("static pad template is valid")
    })
    .collect()
}

/// The pixel layout of `format`; `None` for formats outside [`packed_rgb_pad_templates`].
pub(crate) fn pixel_layout(format: gst_video::VideoFormat) -> Option<PixelLayout> {
    PACKED_RGB
        .iter()
        .find(|(f, _)| *f == format)
        .map(|(_, layout)| *layout)
}

/// Locks `mutex`, recovering the data if a panic poisoned it: the values behind the elements'
/// mutexes are consistent between statements, so a panic elsewhere must not stop the stream.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers `avaepurify` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    BackendChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    DeviceChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    OnFailure::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "avaepurify",
        gst::Rank::NONE,
        AvaePurify::static_type(),
    )
}
