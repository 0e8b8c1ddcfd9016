//! The purification core: pure functions on `ndarray`, with no GStreamer or inference types.

pub mod align;
pub mod band;
pub mod detect;
pub mod image;
pub mod latent;
pub mod resample;
pub mod scene;
pub mod select;
