//! The `avaepurify` element: an in-place video filter that purifies every face of a frame with
//! A-VAE (paper section 3.4) before the frame reaches a recogniser, encoder or sink.
//!
//! Faces come from upstream `GstVideoRegionOfInterestMeta`s whose type matches the `roi-type`
//! property (or the whole frame with `full-frame=true`); each purified ROI gets an `avae-purify`
//! param structure with `distance`, `candidate` and `samples`.

use gst::glib;
use gst::prelude::*;

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

/// Registers `avaepurify` with `plugin`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    BackendChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    DeviceChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    gst::Element::register(
        Some(plugin),
        "avaepurify",
        gst::Rank::NONE,
        AvaePurify::static_type(),
    )
}
