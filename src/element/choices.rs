//! The `backend` and `device` properties both elements have: their enums (GTypes keep the
//! names they were registered under) and their param specs.

use gst::glib;
use gst::prelude::*;

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

/// The `backend` property (default `auto`, READY only).
pub(crate) fn backend_property() -> glib::ParamSpec {
    glib::ParamSpecEnum::builder_with_default("backend", BackendChoice::Auto)
        .nick("Inference backend")
        .blurb(
            "Inference backend: auto uses ONNX Runtime when its library loads \
             (ORT_DYLIB_PATH) and tract otherwise",
        )
        .mutable_ready()
        .build()
}

/// The `device` property (default `auto`, READY only).
pub(crate) fn device_property() -> glib::ParamSpec {
    glib::ParamSpecEnum::builder_with_default("device", DeviceChoice::Auto)
        .nick("Inference device")
        .blurb(
            "Device for the ort backend: auto tries TensorRT, then CUDA, then CPU \
             (tract always runs on the CPU)",
        )
        .mutable_ready()
        .build()
}

/// Marks the choice enums as plugin API, so that `gst-inspect-1.0` documents them.
pub(crate) fn mark_as_plugin_api() {
    BackendChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    DeviceChoice::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
}

/// The `model`, `backend` and `device` properties of an element, and the model path they fall
/// back to when `model` is set to NULL.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// The `model` property: a bundle folder or an ONNX file.
    pub(crate) model: String,
    /// The `backend` property.
    pub(crate) backend: BackendChoice,
    /// The `device` property.
    pub(crate) device: DeviceChoice,
    /// What `model` returns to when set to NULL.
    default_model: String,
}

impl EngineSettings {
    /// Defaults: `default_model`, `auto`, `auto`.
    pub(crate) fn new(default_model: String) -> Self {
        Self {
            model: default_model.clone(),
            backend: BackendChoice::default(),
            device: DeviceChoice::default(),
            default_model,
        }
    }

    /// Sets `model`, `backend` or `device` (type checked by GObject); `false` for any other
    /// property name.
    pub(crate) fn set(&mut self, name: &str, value: &glib::Value) -> bool {
        let checked = "type checked upstream";
        match name {
            "model" => {
                self.model = value
                    .get::<Option<String>>()
                    .expect(checked)
                    .unwrap_or_else(|| self.default_model.clone());
            }
            "backend" => self.backend = value.get().expect(checked),
            "device" => self.device = value.get().expect(checked),
            _ => return false,
        }
        true
    }

    /// The value of `model`, `backend` or `device`; `None` for any other property name.
    pub(crate) fn get(&self, name: &str) -> Option<glib::Value> {
        match name {
            "model" => Some(self.model.to_value()),
            "backend" => Some(self.backend.to_value()),
            "device" => Some(self.device.to_value()),
            _ => None,
        }
    }
}
