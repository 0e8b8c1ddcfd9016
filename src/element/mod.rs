//! What the two elements share, so that neither imports the other: the `backend` / `device`
//! properties, packed-RGB caps and frame mapping, the `detection` ROI param, the warn-once
//! record, the error domain of an unreadable frame, and the engine report at start.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

use gst::prelude::*;
use gst::subclass::prelude::*;

mod choices;
mod detection;
mod video;

pub use choices::{BackendChoice, DeviceChoice};
pub(crate) use choices::{
    EngineSettings, backend_property, device_property, mark_as_plugin_api, server_properties,
};
pub use detection::{
    DETECTION_PARAM, ROI_TYPE, add_track_fields, detection_structure, face_from_detection,
    track_from_detection,
};
pub(crate) use video::{packed_rgb_pad_templates, readable_frame, writable_frame};

/// The error domain of the warning (or error) about a frame that could not be mapped or read,
/// in both elements.
pub(crate) const FRAME_UNREADABLE: gst::StreamError = gst::StreamError::Format;

/// Locks `mutex`, recovering the data if a panic poisoned it: the values behind the elements'
/// mutexes are consistent between statements, so a panic elsewhere must not stop the stream.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The causes of a warning already posted in this run: each is warned about once per run.
#[derive(Debug)]
pub(crate) struct Warned<C>(HashSet<C>);

impl<C> Default for Warned<C> {
    fn default() -> Self {
        Warned(HashSet::new())
    }
}

impl<C: Eq + Hash> Warned<C> {
    /// True the first time `cause` is seen.
    pub(crate) fn first(&mut self, cause: C) -> bool {
        self.0.insert(cause)
    }
}

/// The error `start()` fails with when the model file of the `model` property, `what`, cannot
/// be loaded.
pub(crate) fn load_error(what: &str, model: &str, err: &crate::Error) -> gst::ErrorMessage {
    gst::error_msg!(
        gst::ResourceError::OpenRead,
        (
            "Cannot load the {} '{}' (property 'model'): {}",
            what,
            model,
            err
        )
    )
}

/// Logs how the engines loaded at start run: each fallback taken (INFO), and, when an
/// explicitly chosen `device` is unavailable, a WARNING in the log and on the bus naming it,
/// where the model runs instead and why.
pub(crate) fn report_engine<T>(
    imp: &T,
    cat: gst::DebugCategory,
    device: DeviceChoice,
    backend: &str,
    fallbacks: &[String],
) where
    T: ObjectSubclass,
    T::Type: IsA<gst::Element>,
{
    for fallback in fallbacks {
        gst::info!(cat, imp = imp, "Engine fallback: {fallback}");
    }
    if let Some(message) =
        crate::engine::explicit_device_unavailable(device.into(), backend, fallbacks)
    {
        gst::warning!(cat, imp = imp, "{message}");
        gst::element_imp_warning!(imp, gst::LibraryError::Init, ("{}", message));
    }
}
