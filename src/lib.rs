//! avae-purify: A-VAE adversarial purification of faces in live video.
//!
//! The crate is both the GStreamer plugin (`avaepurify`) and a library: the purification
//! core ([`core`]), model bundles ([`bundle`]) and where the shipped ones are found
//! ([`paths`]), inference engines ([`engine`]), the [`purifier::Purifier`] that ties them
//! together, the frame purifier ([`frame`]) and the face detector ([`detector`]) are used by
//! the trainer and the benchmarks, so evaluation measures exactly the code that ships. The
//! elements share a private layer (`element`) and never import each other.

pub mod alarm;
pub mod avaefacedetect;
pub mod avaepurify;
pub mod bundle;
pub mod core;
pub mod detector;
mod element;
pub mod engine;
mod error;
pub mod frame;
pub mod paths;
pub mod purifier;
pub mod shared;
pub mod tracker;

pub use error::Error;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    avaefacedetect::register(plugin)?;
    avaepurify::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    avaepurify,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_REPOSITORY"),
    env!("BUILD_REL_DATE")
);
