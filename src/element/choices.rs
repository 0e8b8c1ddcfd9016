//! The `backend`, `device`, `server` and `server-timeout-ms` properties both elements have:
//! their enums (GTypes keep the names they were registered under) and their param specs.

use gst::glib;
use gst::prelude::*;

use crate::engine::{Backend, kserve};

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
    /// A remote Open Inference Protocol (KServe v2) gRPC server at the `server` property.
    #[enum_value(
        name = "Open Inference Protocol (KServe v2) gRPC server at the 'server' property",
        nick = "kserve"
    )]
    Kserve = 3,
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
             (ORT_DYLIB_PATH) and tract otherwise; kserve runs the graphs on the \
             Open Inference Protocol server at 'server'",
        )
        .mutable_ready()
        .build()
}

/// The `server` and `server-timeout-ms` properties (READY only), used by `backend=kserve`.
pub(crate) fn server_properties() -> [glib::ParamSpec; 2] {
    [
        glib::ParamSpecString::builder("server")
            .nick("Inference server")
            .blurb(
                "host:port of the Open Inference Protocol (KServe v2) gRPC server for \
                 backend=kserve (Triton, MLServer); each graph of the model is the server's \
                 model of the same name (encoder, decoder, purifier), its metadata checked \
                 at start",
            )
            .default_value(Some(kserve::DEFAULT_SERVER))
            .mutable_ready()
            .build(),
        glib::ParamSpecUInt::builder("server-timeout-ms")
            .nick("Inference server timeout")
            .blurb(
                "backend=kserve: bound in milliseconds on connecting and on each call; a \
                 failed call passes the faces on (see on-failure) and the server is retried \
                 after a back-off of 0.2 s doubling to 2 s",
            )
            .minimum(1)
            .maximum(600_000)
            .default_value(kserve::DEFAULT_TIMEOUT_MS)
            .mutable_ready()
            .build(),
    ]
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

/// The `model`, `backend`, `device`, `server` and `server-timeout-ms` properties of an
/// element, and the model path they fall back to when `model` is set to NULL.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    /// The `model` property: a bundle folder or an ONNX file.
    pub(crate) model: String,
    /// The `backend` property.
    pub(crate) backend: BackendChoice,
    /// The `device` property.
    pub(crate) device: DeviceChoice,
    /// The `server` property (`host:port`, checked at start).
    pub(crate) server: String,
    /// The `server-timeout-ms` property.
    pub(crate) server_timeout_ms: u32,
    /// What `model` returns to when set to NULL.
    default_model: String,
}

impl EngineSettings {
    /// Defaults: `default_model`, `auto`, `auto`, [`kserve::DEFAULT_SERVER`],
    /// [`kserve::DEFAULT_TIMEOUT_MS`].
    pub(crate) fn new(default_model: String) -> Self {
        Self {
            model: default_model.clone(),
            backend: BackendChoice::default(),
            device: DeviceChoice::default(),
            server: kserve::DEFAULT_SERVER.to_owned(),
            server_timeout_ms: kserve::DEFAULT_TIMEOUT_MS,
            default_model,
        }
    }

    /// The engine backend the properties ask for; for `kserve`, an error naming the `server`
    /// property when its value is not a `host:port`.
    pub(crate) fn backend(&self) -> Result<Backend, gst::ErrorMessage> {
        Ok(match self.backend {
            BackendChoice::Auto => Backend::Auto,
            BackendChoice::Ort => Backend::Ort,
            BackendChoice::Tract => Backend::Tract,
            BackendChoice::Kserve => Backend::Kserve(
                kserve::Remote::new(&self.server, self.server_timeout_ms).map_err(|err| {
                    gst::error_msg!(
                        gst::LibraryError::Settings,
                        ("backend=kserve: {} (property 'server')", err)
                    )
                })?,
            ),
        })
    }

    /// Sets `model`, `backend`, `device`, `server` or `server-timeout-ms` (type checked by
    /// GObject); `false` for any other property name.
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
            "server" => {
                self.server = value
                    .get::<Option<String>>()
                    .expect(checked)
                    .unwrap_or_else(|| kserve::DEFAULT_SERVER.to_owned());
            }
            "server-timeout-ms" => self.server_timeout_ms = value.get().expect(checked),
            _ => return false,
        }
        true
    }

    /// The value of `model`, `backend`, `device`, `server` or `server-timeout-ms`; `None`
    /// for any other property name.
    pub(crate) fn get(&self, name: &str) -> Option<glib::Value> {
        match name {
            "model" => Some(self.model.to_value()),
            "backend" => Some(self.backend.to_value()),
            "device" => Some(self.device.to_value()),
            "server" => Some(self.server.to_value()),
            "server-timeout-ms" => Some(self.server_timeout_ms.to_value()),
            _ => None,
        }
    }
}
