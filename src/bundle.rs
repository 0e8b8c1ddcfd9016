//! Model bundles: a folder with `manifest.json` and the ONNX graphs written by
//! `trainer export` (the contract is in the README's "Model bundle" section).
//!
//! [`Bundle::load`] validates everything once, at load: the folder, the manifest and its
//! version, each graph's presence, sha256 checksum, ONNX encoding, and input/output names and
//! static dimensions. The hot path then trusts the shapes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::pb;

use crate::Error;

/// The manifest format version this build reads and the trainer writes.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a bundle folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Sides a manifest's `encoder_input_size` may have: the area downsample the encoder graph
/// takes the face to (16 is brought back to 32x32 inside the graph).
pub const ENCODER_INPUT_SIZES: [usize; 2] = [16, 32];

/// Environment variable that overrides the default bundle folder.
pub const MODEL_ENV: &str = "AVAE_PURIFY_MODEL";

/// The shipped bundle's folder inside a models folder (see [`crate::paths`]).
pub const SHIPPED_BUNDLE: &str = "avae-cpu";

/// The folder named by `AVAE_PURIFY_MODEL`, else the shipped bundle (`avae-cpu`) where the
/// run-time model search ([`crate::paths`]) finds it.
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os(MODEL_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::paths::shipped_model(SHIPPED_BUNDLE),
    }
}

/// One graph file of the bundle and its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEntry {
    /// File name, relative to the bundle folder.
    pub file: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
}

/// The graphs of a bundle. `purifier` (the fused decode-and-select graph) and `decoder_int8`
/// are optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graphs {
    /// `face [N,3,S,S] -> mu [N,D], logvar [N,D], skip [N,C,16,16]`.
    pub encoder: GraphEntry,
    /// `z [B,D], skip [B,C,16,16] -> image [B,3,S,S]`.
    pub decoder: GraphEntry,
    /// `z [B,D], skip [1,C,16,16], face [1,3,S,S] -> image [1,3,S,S], distance [1], index [1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purifier: Option<GraphEntry>,
    /// The decoder with int8 convolutions (`scripts/quantize.py`), same inputs and outputs as
    /// `decoder`; used by [`crate::engine::precision`] only while
    /// `provenance.decoder_int8.decoder_sha256` is `decoder`'s sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_int8: Option<GraphEntry>,
}

/// `manifest.json` of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Name of the training preset (`cpu`, `paper`, ...).
    pub preset: String,
    /// S: side of the faces the model reads and writes.
    pub image_size: usize,
    /// Side of the downsample the encoder sees (32 in the paper).
    pub encoder_input_size: usize,
    /// D: latent size.
    pub latent_dim: usize,
    /// Channels of the 16x16 skip feature.
    pub skip_channels: usize,
    /// Default KL clip (mean KL per latent dimension).
    pub tau: f32,
    /// Pixel range of faces in and out (always [-1, 1] in format 1).
    pub value_range: [f32; 2],
    /// Floating-point operations to decode one latent.
    pub decoder_flops: u64,
    /// Graph files.
    pub graphs: Graphs,
    /// Where the 5 facial landmarks (eyes, nose tip, mouth corners) sit in the faces the model
    /// was trained on, as fractions of S. When present, faces with landmarks are aligned to it
    /// with a similarity transform; otherwise they are cropped as a square box with margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landmark_template: Option<[[f32; 2]; 5]>,
    /// The attack alarm's score parameters and thresholds ([`crate::alarm`]), fitted on clean
    /// training faces by `trainer export`; bundles without it raise no alarms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<crate::alarm::AlarmParams>,
    /// Where the weights come from (dataset, steps, objective, commit, ...).
    #[serde(default)]
    pub provenance: BTreeMap<String, serde_json::Value>,
}

/// Which graph of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphKind {
    /// The encoder.
    Encoder,
    /// The decoder.
    Decoder,
    /// The fused purifier.
    Purifier,
    /// The optional int8 decoder.
    DecoderInt8,
}

/// A validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut file =
        fs::File::open(path).map_err(|e| Error::bundle(path, format!("cannot open: {e}")))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::bundle(path, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A dimension as the contract states it: a fixed size, or any (the batch).
#[derive(Debug, Clone, Copy)]
enum Dim {
    Any,
    Is(usize),
}

impl Bundle {
    /// Loads and validates the bundle in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Bundle, Error> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            let mut reason = String::from(
                "no such folder (expected a model bundle folder holding manifest.json and ONNX graphs)",
            );
            if let Some(note) = crate::paths::not_found_note(&dir, SHIPPED_BUNDLE) {
                reason = format!("{reason}; {note}");
            }
            return Err(Error::bundle(&dir, reason));
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&manifest_path)
            .map_err(|e| Error::bundle(&manifest_path, format!("cannot read: {e}")))?;
        let version: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bundle(&manifest_path, format!("not valid JSON: {e}")))?;
        match version.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(Error::bundle(
                    &manifest_path,
                    format!(
                        "unsupported format_version {v}: this build reads version {FORMAT_VERSION}"
                    ),
                ));
            }
            None => {
                return Err(Error::bundle(
                    &manifest_path,
                    "missing or non-integer format_version",
                ));
            }
        }
        let manifest: Manifest = serde_json::from_value(version)
            .map_err(|e| Error::bundle(&manifest_path, format!("invalid manifest: {e}")))?;
        let bundle = Bundle { dir, manifest };
        bundle.validate()?;
        Ok(bundle)
    }

    /// Path of one graph; `None` for an absent optional purifier graph.
    pub fn graph_path(&self, kind: GraphKind) -> Option<PathBuf> {
        self.entry(kind).map(|e| self.dir.join(&e.file))
    }

    fn entry(&self, kind: GraphKind) -> Option<&GraphEntry> {
        let g = &self.manifest.graphs;
        match kind {
            GraphKind::Encoder => Some(&g.encoder),
            GraphKind::Decoder => Some(&g.decoder),
            GraphKind::Purifier => g.purifier.as_ref(),
            GraphKind::DecoderInt8 => g.decoder_int8.as_ref(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let m = &self.manifest;
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let s = m.image_size;
        if s < 32
            || !s.is_multiple_of(32)
            || !ENCODER_INPUT_SIZES.contains(&m.encoder_input_size)
            || !s.is_multiple_of(m.encoder_input_size)
        {
            return Err(Error::bundle(
                &manifest_path,
                format!(
                    "image_size {s} / encoder_input_size {}: expected a multiple of 32 and 16 \
                     or 32",
                    m.encoder_input_size
                ),
            ));
        }
        if m.latent_dim == 0 || m.skip_channels == 0 || m.tau.is_nan() || m.tau < 0.0 {
            return Err(Error::bundle(
                &manifest_path,
                "latent_dim and skip_channels must be positive and tau >= 0",
            ));
        }
        if let Some(t) = &m.landmark_template
            && !t.iter().flatten().all(|v| (0.0..=1.0).contains(v))
        {
            return Err(Error::bundle(
                &manifest_path,
                format!("landmark_template {t:?}: expected 5 points with coordinates in [0, 1]"),
            ));
        }
        if let Some(alarm) = &m.alarm {
            alarm
                .validate()
                .map_err(|err| Error::bundle(&manifest_path, err.to_string()))?;
        }
        let (d, c) = (m.latent_dim, m.skip_channels);
        use Dim::{Any, Is};
        self.check_graph(
            GraphKind::Encoder,
            &[("face", vec![Any, Is(3), Is(s), Is(s)])],
            &[
                ("mu", vec![Any, Is(d)]),
                ("logvar", vec![Any, Is(d)]),
                ("skip", vec![Any, Is(c), Is(16), Is(16)]),
            ],
        )?;
        for decoder in [GraphKind::Decoder, GraphKind::DecoderInt8] {
            self.check_graph(
                decoder,
                &[
                    ("z", vec![Any, Is(d)]),
                    ("skip", vec![Any, Is(c), Is(16), Is(16)]),
                ],
                &[("image", vec![Any, Is(3), Is(s), Is(s)])],
            )?;
        }
        if m.graphs.purifier.is_some() {
            self.check_graph(
                GraphKind::Purifier,
                &[
                    ("z", vec![Any, Is(d)]),
                    ("skip", vec![Is(1), Is(c), Is(16), Is(16)]),
                    ("face", vec![Is(1), Is(3), Is(s), Is(s)]),
                ],
                &[
                    ("image", vec![Is(1), Is(3), Is(s), Is(s)]),
                    ("distance", vec![Is(1)]),
                    ("index", vec![Is(1)]),
                ],
            )?;
        }
        Ok(())
    }

    fn check_graph(
        &self,
        kind: GraphKind,
        inputs: &[(&str, Vec<Dim>)],
        outputs: &[(&str, Vec<Dim>)],
    ) -> Result<(), Error> {
        let Some(entry) = self.entry(kind) else {
            return Ok(());
        };
        let path = self.dir.join(&entry.file);
        if !path.is_file() {
            return Err(Error::bundle(&path, "graph file is missing"));
        }
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(Error::bundle(
                &path,
                format!(
                    "checksum mismatch: manifest says sha256 {}, file has {actual} (corrupt or replaced graph)",
                    entry.sha256
                ),
            ));
        }
        let bytes =
            fs::read(&path).map_err(|e| Error::bundle(&path, format!("cannot read: {e}")))?;
        let model = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| Error::bundle(&path, format!("not a valid ONNX model: {e}")))?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| Error::bundle(&path, "ONNX model has no graph"))?;
        let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let real_inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(&i.name.as_str()))
            .collect();
        check_values(&path, "input", &real_inputs, inputs)?;
        let outs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
        check_values(&path, "output", &outs, outputs)
    }
}

fn check_values(
    path: &Path,
    what: &str,
    actual: &[&pb::ValueInfoProto],
    expected: &[(&str, Vec<Dim>)],
) -> Result<(), Error> {
    let names: Vec<&str> = actual.iter().map(|v| v.name.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    if names != want {
        return Err(Error::bundle(
            path,
            format!("{what}s are {names:?}, expected {want:?}"),
        ));
    }
    for (value, (name, dims)) in actual.iter().zip(expected) {
        let shape = tensor_dims(value);
        let ok = shape.as_ref().is_some_and(|shape| {
            shape.len() == dims.len()
                && shape.iter().zip(dims).all(|(a, e)| match e {
                    Dim::Any => true,
                    Dim::Is(n) => *a == Some(*n as i64),
                })
        });
        if !ok {
            let want: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    Dim::Any => "N".to_string(),
                    Dim::Is(n) => n.to_string(),
                })
                .collect();
            let got = match shape {
                Some(s) => format!(
                    "[{}]",
                    s.iter()
                        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                None => "no tensor shape".to_string(),
            };
            return Err(Error::bundle(
                path,
                format!(
                    "{what} `{name}` has shape {got}, expected [{}]",
                    want.join(",")
                ),
            ));
        }
    }
    Ok(())
}

/// Static dims of a tensor value (`None` for symbolic ones), or `None` without a shape.
pub(crate) fn tensor_dims(value: &pb::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use pb::tensor_shape_proto::dimension::Value as D;
    let Some(pb::type_proto::Value::TensorType(t)) = value.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(D::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect(),
    )
}
