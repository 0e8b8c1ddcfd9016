//! `trainer export`: writes a model bundle (docs/CONTRACT.md) from a trained [`AVae`] and checks
//! every graph against tch through both of the plugin's engines.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use gstavaepurify::bundle::{
    Bundle, FORMAT_VERSION, GraphEntry, Graphs, MANIFEST_FILE, Manifest, sha256_file,
};
use gstavaepurify::engine::{Backend, Device, open_graph};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use tch::{Kind, Tensor};

use crate::config::SKIP_SIZE;
use crate::model::{self, AVae};
use crate::onnx::{Dim, Io, OnnxOps, tensor_data};

/// Largest error allowed between tch and an engine: absolute for every output, relative to
/// `max(1, |reference|)` for `distance` (a sum over 3*S*S squared differences).
pub const PARITY_TOLERANCE: f64 = 1e-4;

/// File names of the three graphs.
pub const ENCODER_FILE: &str = "encoder.onnx";
/// Decoder graph file name.
pub const DECODER_FILE: &str = "decoder.onnx";
/// Fused purifier graph file name.
pub const PURIFIER_FILE: &str = "purifier.onnx";

/// What [`export_bundle`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The bundle folder.
    pub dir: PathBuf,
    /// The manifest written to `manifest.json`.
    pub manifest: Manifest,
    /// Scalar parameters of the generator (encoder, mapping, decoder).
    pub num_params: i64,
    /// Size in bytes of each graph file, by file name.
    pub file_bytes: BTreeMap<String, u64>,
}

/// `encoder.onnx`: `face [N,3,S,S]` -> `mu [N,D]`, `logvar [N,D]`, `skip [N,C,16,16]`.
pub fn encoder_graph(model: &AVae) -> Vec<u8> {
    let cfg = model.config();
    let (s, d, c) = (cfg.image_size, cfg.latent_dim(), cfg.skip_channels());
    let n = Dim::Symbol("N");
    let mut o = OnnxOps::new(model.params());
    let face = o.input(Io::f32("face", image_dims(n, s)), 1);
    let e = model::encoder(&mut o, cfg, &face);
    o.finish(
        "avae_encoder",
        &[
            (&e.mu, Io::f32("mu", vec![n, Dim::Fixed(d)])),
            (&e.logvar, Io::f32("logvar", vec![n, Dim::Fixed(d)])),
            (&e.skip, Io::f32("skip", skip_dims(n, c))),
        ],
    )
}

/// `decoder.onnx`: `z [B,D]`, `skip [B,C,16,16]` -> `image [B,3,S,S]`.
pub fn decoder_graph(model: &AVae) -> Vec<u8> {
    let cfg = model.config();
    let (s, d, c) = (cfg.image_size, cfg.latent_dim(), cfg.skip_channels());
    let b = Dim::Symbol("B");
    let mut o = OnnxOps::new(model.params());
    let z = o.input(Io::f32("z", vec![b, Dim::Fixed(d)]), 1);
    let skip = o.input(Io::f32("skip", skip_dims(b, c)), 1);
    let image = model::decoder(&mut o, cfg, &z, &skip);
    o.finish(
        "avae_decoder",
        &[(&image, Io::f32("image", image_dims(b, s)))],
    )
}

/// `purifier.onnx`: `z [B,D]`, `skip [1,C,16,16]`, `face [1,3,S,S]` -> `image [1,3,S,S]`,
/// `distance [1]`, `index [1]` (int64).
pub fn purifier_graph(model: &AVae) -> Vec<u8> {
    let cfg = model.config();
    let (s, d, c) = (cfg.image_size, cfg.latent_dim(), cfg.skip_channels());
    let one = Dim::Fixed(1);
    let mut o = OnnxOps::new(model.params());
    let z = o.input(Io::f32("z", vec![Dim::Symbol("B"), Dim::Fixed(d)]), 1);
    let skip = o.input(Io::f32("skip", skip_dims(one, c)), 1);
    let face = o.input(Io::f32("face", image_dims(one, s)), 1);
    let p = model::purifier(&mut o, cfg, &z, &skip, &face);
    o.finish(
        "avae_purifier",
        &[
            (&p.image, Io::f32("image", image_dims(one, s))),
            (&p.distance, Io::f32("distance", vec![one])),
            (&p.index, Io::i64("index", vec![one])),
        ],
    )
}

fn image_dims(batch: Dim, s: i64) -> Vec<Dim> {
    vec![batch, Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)]
}

fn skip_dims(batch: Dim, c: i64) -> Vec<Dim> {
    vec![
        batch,
        Dim::Fixed(c),
        Dim::Fixed(SKIP_SIZE),
        Dim::Fixed(SKIP_SIZE),
    ]
}

fn usize_of(v: i64, what: &str) -> Result<usize> {
    usize::try_from(v).with_context(|| format!("{what} {v} is negative"))
}

/// What the manifest holds beyond the model itself, known before the bundle is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ManifestExtras {
    /// Default KL clip (see [`crate::calibrate`]); `None` keeps the preset's.
    pub tau: Option<f32>,
    /// Where the 5 landmarks sit in the training crops (measured by `trainer template`); `None`
    /// when the crops are fixed boxes, not aligned to landmarks.
    pub landmark_template: Option<[[f32; 2]; 5]>,
}

/// Writes `encoder.onnx`, `decoder.onnx`, `purifier.onnx` and `manifest.json` (with sha256 of each
/// graph, the decoder FLOPs and `extras`) to `out_dir`, then loads the folder with the plugin's
/// [`Bundle::load`] to validate names and shapes. The alarm, which is fitted on the written
/// graphs, is added afterwards by [`write_alarm`].
pub fn export_bundle(
    model: &AVae,
    out_dir: &Path,
    provenance: BTreeMap<String, serde_json::Value>,
    extras: ManifestExtras,
) -> Result<ExportReport> {
    let cfg = model.config();
    cfg.validate()?;
    fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create bundle folder {}", out_dir.display()))?;
    let graphs = tch::no_grad(|| {
        [
            (ENCODER_FILE, encoder_graph(model)),
            (DECODER_FILE, decoder_graph(model)),
            (PURIFIER_FILE, purifier_graph(model)),
        ]
    });
    let mut file_bytes = BTreeMap::new();
    let mut entries = Vec::new();
    for (file, bytes) in graphs {
        let path = out_dir.join(file);
        fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        file_bytes.insert(file.to_owned(), bytes.len() as u64);
        entries.push(GraphEntry {
            file: file.to_owned(),
            sha256: sha256_file(&path)?,
        });
    }
    let [encoder, decoder, purifier] = <[GraphEntry; 3]>::try_from(entries)
        .map_err(|_| anyhow::anyhow!("expected three graphs"))?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        preset: cfg.name.clone(),
        image_size: usize_of(cfg.image_size, "image_size")?,
        encoder_input_size: usize_of(cfg.input_size, "encoder_input_size")?,
        latent_dim: usize_of(cfg.latent_dim(), "latent_dim")?,
        skip_channels: usize_of(cfg.skip_channels(), "skip_channels")?,
        tau: extras.tau.unwrap_or(cfg.tau as f32),
        value_range: [-1.0, 1.0],
        decoder_flops: u64::try_from(model::decoder_flops(cfg))?,
        graphs: Graphs {
            encoder,
            decoder,
            purifier: Some(purifier),
            decoder_int8: None,
        },
        landmark_template: extras.landmark_template,
        alarm: None,
        provenance,
    };
    let manifest_path = out_dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(&manifest)?;
    fs::write(&manifest_path, json + "\n")
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    Bundle::load(out_dir).context("the exported bundle does not pass the plugin's validation")?;
    Ok(ExportReport {
        dir: out_dir.to_path_buf(),
        manifest,
        num_params: model.num_params(),
        file_bytes,
    })
}

/// Sets the bundle's attack alarm (see [`crate::alarm`]) and re-validates the bundle.
pub fn write_alarm(dir: &Path, alarm: gstavaepurify::alarm::AlarmParams) -> Result<Manifest> {
    update_manifest(dir, |m| m.alarm = Some(alarm))
}

/// Rewrites `manifest.json` of the bundle in `dir` after `edit` (the manifest carries no
/// checksum of itself) and checks the result with the plugin's validation.
fn update_manifest(dir: &Path, edit: impl FnOnce(&mut Manifest)) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let mut manifest = Bundle::load(dir)
        .with_context(|| format!("cannot load the bundle '{}'", dir.display()))?
        .manifest;
    edit(&mut manifest);
    let json = serde_json::to_string_pretty(&manifest)?;
    fs::write(&path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    Bundle::load(dir).context("the edited manifest does not pass the plugin's validation")?;
    Ok(manifest)
}

/// Largest difference between tch and one engine for one graph output.
#[derive(Debug, Clone)]
pub struct ParityEntry {
    /// `encoder`, `decoder` or `purifier`.
    pub graph: &'static str,
    /// `tract` or `ort`.
    pub backend: &'static str,
    /// Output name.
    pub output: &'static str,
    /// Largest absolute error (relative for `distance`, see [`PARITY_TOLERANCE`]).
    pub max_error: f64,
}

/// Every comparison [`check_parity`] made.
#[derive(Debug, Clone, Default)]
pub struct ParityReport {
    /// One entry per graph, backend and output.
    pub entries: Vec<ParityEntry>,
}

impl ParityReport {
    /// The largest error over all entries.
    pub fn max_error(&self) -> f64 {
        self.entries.iter().map(|e| e.max_error).fold(0.0, f64::max)
    }
}

fn to_array(t: &Tensor) -> Result<ArrayD<f32>> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), tensor_data(t)?)?)
}

/// One graph's test case: inputs and the tch reference outputs, by output name.
struct Case {
    graph: &'static str,
    file: &'static str,
    inputs: Vec<ArrayD<f32>>,
    expected: Vec<(&'static str, ArrayD<f32>)>,
}

fn parity_cases(model: &AVae, faces: Option<&Tensor>) -> Result<Vec<Case>> {
    let cfg = model.config();
    let (s, d, c) = (cfg.image_size, cfg.latent_dim(), cfg.skip_channels());
    let opts = (Kind::Float, tch::Device::Cpu);
    let random_faces = Tensor::rand([2, 3, s, s], opts) * 2.0 - 1.0;
    let faces = match faces {
        Some(f) => {
            ensure!(
                f.size()[1..] == [3, s, s],
                "parity faces have shape {:?}, expected [N, 3, {s}, {s}]",
                f.size()
            );
            Tensor::cat(
                &[
                    &f.to_device(tch::Device::Cpu).to_kind(Kind::Float),
                    &random_faces,
                ],
                0,
            )
        }
        None => random_faces,
    };
    tch::no_grad(|| {
        let (mu, logvar, skip) = model.encode(&faces);
        let z = Tensor::cat(&[&Tensor::randn([3, d], opts), &mu], 0);
        let skips = Tensor::cat(
            &[&Tensor::randn([3, c, SKIP_SIZE, SKIP_SIZE], opts), &skip],
            0,
        );
        let image = model.decode(&z, &skips);
        let face0 = faces.narrow(0, 0, 1);
        let skip0 = skip.narrow(0, 0, 1);
        let candidates = Tensor::cat(&[&Tensor::randn([5, d], opts), &mu.narrow(0, 0, 1)], 0);
        let (best, distance, index) = model.purify(&candidates, &skip0, &face0);
        Ok(vec![
            Case {
                graph: "encoder",
                file: ENCODER_FILE,
                inputs: vec![to_array(&faces)?],
                expected: vec![
                    ("mu", to_array(&mu)?),
                    ("logvar", to_array(&logvar)?),
                    ("skip", to_array(&skip)?),
                ],
            },
            Case {
                graph: "decoder",
                file: DECODER_FILE,
                inputs: vec![to_array(&z)?, to_array(&skips)?],
                expected: vec![("image", to_array(&image)?)],
            },
            Case {
                graph: "purifier",
                file: PURIFIER_FILE,
                inputs: vec![to_array(&candidates)?, to_array(&skip0)?, to_array(&face0)?],
                expected: vec![
                    ("image", to_array(&best)?),
                    ("distance", to_array(&distance)?),
                    ("index", to_array(&index)?),
                ],
            },
        ])
    })
}

/// Runs every graph of the bundle in `dir` through tract and ONNX Runtime (CPU; the library from
/// `ORT_DYLIB_PATH`) on `faces` `[N,3,S,S]` (optional real faces) plus random faces, random
/// latents and skip features, and compares with `model` in tch. Fails naming the graph, backend,
/// output and error when any error exceeds [`PARITY_TOLERANCE`], or when a backend cannot run.
pub fn check_parity(model: &AVae, dir: &Path, faces: Option<&Tensor>) -> Result<ParityReport> {
    let cases = parity_cases(model, faces)?;
    let mut report = ParityReport::default();
    for backend in [Backend::Tract, Backend::Ort] {
        let backend_name = backend.as_str();
        for case in &cases {
            let path = dir.join(case.file);
            let mut engine = open_graph(&path, backend, Device::Cpu, &std::env::temp_dir())
                .with_context(|| {
                    format!("parity: {backend_name} cannot open {}", path.display())
                })?;
            let views: Vec<ArrayViewD<f32>> = case.inputs.iter().map(|a| a.view()).collect();
            let outputs = engine
                .run(&views)
                .with_context(|| format!("parity: {backend_name} failed to run {}", case.graph))?;
            ensure!(
                outputs.len() == case.expected.len(),
                "parity: {} {backend_name} returned {} outputs, expected {}",
                case.graph,
                outputs.len(),
                case.expected.len()
            );
            for (actual, (name, expected)) in outputs.iter().zip(&case.expected) {
                if actual.shape() != expected.shape() {
                    bail!(
                        "parity: {} {backend_name} output {name} has shape {:?}, tch gives {:?}",
                        case.graph,
                        actual.shape(),
                        expected.shape()
                    );
                }
                let max_error = actual
                    .iter()
                    .zip(expected.iter())
                    .map(|(&a, &e)| {
                        let err = f64::from((a - e).abs());
                        match (err.is_nan(), *name) {
                            (true, _) => f64::INFINITY,
                            (false, "distance") => err / f64::from(e.abs()).max(1.0),
                            (false, _) => err,
                        }
                    })
                    .fold(0.0, f64::max);
                if max_error > PARITY_TOLERANCE {
                    bail!(
                        "parity: {} output {name} differs between tch and {backend_name} by {max_error:e} (tolerance {PARITY_TOLERANCE:e})",
                        case.graph
                    );
                }
                report.entries.push(ParityEntry {
                    graph: case.graph,
                    backend: backend_name,
                    output: name,
                    max_error,
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tch::nn;

    // ONNX Runtime comes from ORT_DYLIB_PATH or the project venv (found by the plugin's engine);
    // when neither loads, check_parity fails, and so do these tests.

    #[test]
    fn tiny_bundle_exports_and_matches_tch_on_both_backends() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = AVae::new(&vs.root(), &Config::tiny());
        let dir = std::env::temp_dir().join(format!("avae-export-test-{}", std::process::id()));
        let provenance = BTreeMap::from([("dataset".to_owned(), "none (untrained)".into())]);
        let template = [
            [0.34, 0.45],
            [0.66, 0.45],
            [0.5, 0.6],
            [0.37, 0.75],
            [0.63, 0.75],
        ];
        let extras = ManifestExtras {
            tau: Some(0.25),
            landmark_template: Some(template),
        };
        let report = export_bundle(&model, &dir, provenance, extras).expect("export");
        let m = &report.manifest;
        assert_eq!((m.image_size, m.latent_dim, m.skip_channels), (64, 64, 8));
        let written = Bundle::load(&dir).expect("bundle").manifest;
        assert_eq!(
            (written.tau, written.landmark_template),
            (0.25, Some(template))
        );
        assert_eq!(m.decoder_flops, model::decoder_flops(model.config()) as u64);
        assert!(m.graphs.purifier.is_some());
        let faces = Tensor::rand([3, 3, 64, 64], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let parity = check_parity(&model, &dir, Some(&faces)).expect("parity");
        for backend in ["tract", "ort"] {
            for graph in ["encoder", "decoder", "purifier"] {
                assert!(
                    parity
                        .entries
                        .iter()
                        .any(|e| e.backend == backend && e.graph == graph),
                    "{backend} {graph} not checked"
                );
            }
        }
        assert!(parity.max_error() <= PARITY_TOLERANCE);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn parity_fails_on_a_tampered_graph() {
        tch::manual_seed(8);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = AVae::new(&vs.root(), &Config::tiny());
        let other_vs = nn::VarStore::new(tch::Device::Cpu);
        let other = AVae::new(&other_vs.root(), &Config::tiny());
        let dir = std::env::temp_dir().join(format!("avae-tamper-test-{}", std::process::id()));
        export_bundle(&other, &dir, BTreeMap::new(), ManifestExtras::default()).expect("export");
        let err = check_parity(&model, &dir, None).unwrap_err().to_string();
        assert!(err.contains("encoder") && err.contains("tract"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
