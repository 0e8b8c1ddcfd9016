//! Helpers shared by the element, pipeline, detector, alarm and inspect tests.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::sync::Once;

/// Initialises GStreamer and registers the plugin from this build (not from GST_PLUGIN_PATH).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstavaepurify::plugin_register_static().expect("avaepurify plugin registers");
    });
}

/// The workspace root.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny untrained bundle the tests run (`tests/data/bundle-tiny`).
pub fn tiny_bundle() -> String {
    let dir = workspace().join("tests/data/bundle-tiny");
    assert!(
        dir.join("manifest.json").is_file(),
        "test bundle missing: {} (export it with the trainer)",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

/// The shared folder beside the workspace (`../shared`).
pub fn shared() -> PathBuf {
    workspace().join("../shared")
}

/// Points `ORT_DYLIB_PATH` at the project's venv ONNX Runtime unless it is already set, and
/// fails the test with a clear message when the library is missing. Call it first in a test.
pub fn ensure_ort_library() {
    static SET: Once = Once::new();
    SET.call_once(set_ort_library);
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "ONNX Runtime library not found at '{}' (ORT_DYLIB_PATH): run scripts/setup.sh or set \
         ORT_DYLIB_PATH to libonnxruntime.so",
        path.display()
    );
}

fn set_ort_library() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none_or(|p| p.is_empty()) {
        let venv_library = workspace()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0");
        // SAFETY: runs once, before any test of this process has started GStreamer or an
        // engine: the other tests wait on the `Once` in `ensure_ort_library`.
        unsafe { std::env::set_var("ORT_DYLIB_PATH", venv_library) };
    }
}

/// Deterministic bytes with smooth structure and some noise, like a small camera frame.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..len)
        .map(|i| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let noise = (state >> 24) as u8 & 0x1f;
            ((i / 7 % 200) as u8).wrapping_add(noise)
        })
        .collect()
}

/// LFW deep-funneled images are 250x250 with the funneled face in the middle.
pub const LFW_SIDE: u32 = 250;

/// The fixed LFW selection: the first image of every `step`-th person (sorted by name).
pub fn lfw_images(count: usize, step: usize) -> Vec<PathBuf> {
    let root = shared().join("datasets/lfw/lfw-deepfunneled");
    let mut people: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("LFW missing at {}: {e}", root.display()))
        .map(|entry| entry.expect("readable LFW folder").path())
        .collect();
    people.sort();
    people
        .iter()
        .step_by(step)
        .take(count)
        .map(|person| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(person)
                .expect("readable person folder")
                .map(|entry| entry.expect("readable entry").path())
                .collect();
            files.sort();
            files.into_iter().next().expect("a person has an image")
        })
        .collect()
}

/// The RGB pixels of the image file at `path`.
pub fn load_rgb(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("cannot decode {}: {e}", path.display()))
        .to_rgb8()
}

/// A buffer of `format` at the stride GStreamer gives that format and width, holding `rgb`.
pub fn frame_buffer(
    rgb: &image::RgbImage,
    info: &gst_video::VideoInfo,
    pts_ms: u64,
) -> gst::Buffer {
    let mut buffer = gst::Buffer::with_size(info.size()).expect("buffer");
    {
        let buffer = buffer.get_mut().expect("new buffer is writable");
        buffer.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        let stride = info.stride()[0] as usize;
        let bpp = info.format_info().pixel_stride()[0] as usize;
        let offsets: [usize; 3] = match info.format() {
            gst_video::VideoFormat::Bgr
            | gst_video::VideoFormat::Bgra
            | gst_video::VideoFormat::Bgrx => [2, 1, 0],
            _ => [0, 1, 2],
        };
        let mut map = buffer.map_writable().expect("writable map");
        map.fill(0x5a); // padding and alpha bytes must not matter
        for (x, y, px) in rgb.enumerate_pixels() {
            let at = y as usize * stride + x as usize * bpp;
            for (c, off) in offsets.iter().enumerate() {
                map[at + off] = px[c];
            }
        }
    }
    buffer
}

/// The `PIPELINE="..."` line of `pipelines/<script>`, with `$NAME` / `${NAME}` replaced by
/// `vars`; panics naming the script when the line is missing or a variable is left.
pub fn shipped_pipeline(script: &str, vars: &[(&str, &str)]) -> String {
    let path = workspace().join("pipelines").join(script);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut description = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("PIPELINE=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{} has no PIPELINE=\"...\" line", path.display()))
        .to_owned();
    for (name, value) in vars {
        description = description
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(
        !description.contains('$'),
        "unreplaced variable in {}: {description}",
        path.display()
    );
    description
}

/// The first element made by `factory` in `pipeline`, in bins too.
pub fn element_of(pipeline: &gst::Pipeline, factory: &str) -> Option<gst::Element> {
    use gst::prelude::*;
    pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .find(|e| e.factory().is_some_and(|f| f.name() == factory))
}
