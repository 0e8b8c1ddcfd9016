//! What the element benchmarks share: the synthetic frames with face ROIs and the
//! `avaepurify` harness they are pushed through.
#![allow(dead_code)] // each bench uses its own subset

use gst::prelude::*;
use rand::Rng;
use rand::rngs::StdRng;

/// Width of the synthetic frames.
pub const FRAME_W: u32 = 640;
/// Height of the synthetic frames.
pub const FRAME_H: u32 = 480;

/// A 640x480 RGB frame of random pixels with `faces` 110x110 face ROIs on a 4-wide grid.
pub fn face_frame(rng: &mut StdRng, faces: u32) -> Result<gst::Buffer, String> {
    let data: Vec<u8> = (0..(FRAME_W * FRAME_H * 3)).map(|_| rng.random()).collect();
    let mut buf = gst::Buffer::from_mut_slice(data);
    let b = buf.get_mut().ok_or("buffer not writable")?;
    for i in 0..faces {
        let (x, y) = ((i % 4) * 150 + 10, (i / 4) * 115 + 5);
        gst_video::VideoRegionOfInterestMeta::add(b, "face", (x, y, 110, 110));
    }
    Ok(buf)
}

/// An `avaepurify` set up by `configure` (before it starts: the engine properties and
/// `model-instance-id` are read at start) in a harness with the synthetic frames' caps.
pub fn purify_harness(
    configure: impl FnOnce(&gst::Element) -> Result<(), String>,
) -> Result<gst_check::Harness, String> {
    let el = gst::ElementFactory::make("avaepurify")
        .build()
        .map_err(|e| format!("no avaepurify: {e}"))?;
    configure(&el)?;
    let mut h = gst_check::Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str(&format!(
        "video/x-raw,format=RGB,width={FRAME_W},height={FRAME_H},framerate=25/1"
    ));
    Ok(h)
}

/// The element's `stats` field `field` as a count.
pub fn stat(h: &gst_check::Harness, field: &str) -> Result<u64, String> {
    let stats = stats(h)?;
    stats
        .get::<u64>(field)
        .map_err(|e| format!("stats {field}: {e} in {stats}"))
}

/// The element's `stats`.
pub fn stats(h: &gst_check::Harness) -> Result<gst::Structure, String> {
    Ok(h.element()
        .ok_or("no element in harness")?
        .property::<gst::Structure>("stats"))
}

/// The model path as the `model` property takes it.
pub fn model_str(model: &std::path::Path) -> Result<&str, String> {
    model
        .to_str()
        .ok_or_else(|| format!("model path {} is not UTF-8", model.display()))
}
