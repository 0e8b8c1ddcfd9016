//! The `precision` property of `avaepurify`: which decoder graph of the bundle runs
//! ([`crate::engine::precision`] decides and says why).

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::engine::precision::Precision;

/// Decoder precision of the `precision` property, mirroring [`Precision`].
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstAvaePurifyPrecision")]
pub enum PrecisionChoice {
    /// int8 on ONNX Runtime (CPU) where the CPU has VNNI and the bundle a current int8 decoder,
    /// fp32 otherwise.
    #[default]
    #[enum_value(
        name = "Auto: int8 on ONNX Runtime (CPU) with VNNI when the bundle has it, else fp32",
        nick = "auto"
    )]
    Auto = 0,
    /// The bundle's fp32 `decoder.onnx`.
    #[enum_value(name = "fp32: the bundle's decoder.onnx", nick = "fp32")]
    Fp32 = 1,
    /// The bundle's `decoder-int8.onnx` (fp32 with a logged warning when it has none).
    #[enum_value(name = "int8: the bundle's decoder-int8.onnx", nick = "int8")]
    Int8 = 2,
    /// bf16: not available on these engines; runs fp32 with a logged warning.
    #[enum_value(name = "bf16: not available here, falls back to fp32", nick = "bf16")]
    Bf16 = 3,
}

impl From<PrecisionChoice> for Precision {
    fn from(choice: PrecisionChoice) -> Self {
        match choice {
            PrecisionChoice::Auto => Self::Auto,
            PrecisionChoice::Fp32 => Self::Fp32,
            PrecisionChoice::Int8 => Self::Int8,
            PrecisionChoice::Bf16 => Self::Bf16,
        }
    }
}

/// The `precision` property (default `auto`, READY only).
pub(super) fn precision_property() -> glib::ParamSpec {
    glib::ParamSpecEnum::builder_with_default("precision", PrecisionChoice::Auto)
        .nick("Decoder precision")
        .blurb(
            "Precision of the decoder: auto runs the bundle's int8 decoder on ONNX Runtime \
             (CPU) when the CPU has VNNI dot products and fp32 elsewhere; int8 runs it on any \
             engine; fp32 the plain decoder; bf16 is not available on these engines. What \
             cannot be honoured falls back to fp32 with a warning",
        )
        .mutable_ready()
        .build()
}

/// Switches `purifier` to the decoder the `precision` property calls for, logging the choice
/// (INFO) and, when an explicit `int8` or `bf16` cannot be honoured, a WARNING on the bus that
/// names the property, the value and why.
pub(super) fn apply(
    imp: &super::imp::AvaePurify,
    cat: gst::DebugCategory,
    mut purifier: crate::purifier::Purifier,
    settings: &super::settings::Settings,
) -> Result<crate::purifier::Purifier, gst::ErrorMessage> {
    let choice = purifier
        .set_precision(
            settings.precision.into(),
            settings.engine.backend()?,
            settings.engine.device.into(),
        )
        .map_err(|err| crate::element::load_error("int8 decoder", &settings.engine.model, &err))?;
    gst::info!(cat, imp = imp, "{}", choice.note);
    if let Some(why) = choice.fallback {
        gst::warning!(cat, imp = imp, "{why}");
        gst::element_imp_warning!(imp, gst::LibraryError::Settings, ("{}", why));
    }
    Ok(purifier)
}
