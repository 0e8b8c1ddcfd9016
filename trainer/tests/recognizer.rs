//! Parity of the recognizer run in tch (the trainer's ONNX interpreter) with the same graph in
//! tract and ONNX Runtime, on real LFW faces aligned to the ArcFace template: the embeddings the
//! attacks differentiate are the ones the reference runtimes compute.

use std::path::{Path, PathBuf};

use avae_trainer::recognizer::{self, Alignment, LFW_MEAN_LANDMARKS, Recognizer};
use gstavaepurify::core::align::{aligned_crop, estimate_similarity};
use gstavaepurify::engine::{Backend, Device, open_graph};
use ndarray::{Array4, Axis};
use tch::{Kind, Tensor};

/// Largest error allowed on any embedding value.
const TOLERANCE: f32 = 1e-4;

/// LFW people whose first image the test embeds.
const PEOPLE: [&str; 6] = [
    "Abel_Pacheco",
    "Akhmed_Zakayev",
    "Amber_Tamblyn",
    "Anders_Fogh_Rasmussen",
    "Angela_Bassett",
    "Ann_Veneman",
];

fn model() -> PathBuf {
    let path = recognizer::default_model_path();
    if let Err(e) = recognizer::check_model(&path) {
        panic!("{e:#}");
    }
    path
}

fn lfw_dir() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/lfw/lfw-deepfunneled");
    assert!(
        dir.is_dir(),
        "the LFW images are expected at {} (the shared dataset copy)",
        dir.display()
    );
    dir
}

/// Real faces warped to the 112 x 112 ArcFace template through the mean LFW landmarks,
/// normalised as the recognizer expects: `[N, 3, 112, 112]`.
fn aligned_inputs() -> Array4<f32> {
    let lfw = lfw_dir();
    let to_face = estimate_similarity(&LFW_MEAN_LANDMARKS, &recognizer::ARCFACE_TEMPLATE).unwrap();
    let mut out = Array4::<f32>::zeros((PEOPLE.len(), 3, 112, 112));
    for (k, person) in PEOPLE.iter().enumerate() {
        let path = lfw.join(person).join(format!("{person}_0001.jpg"));
        let rgb = image::open(&path).unwrap().into_rgb8();
        let face = aligned_crop(&recognizer::rgb_frame(&rgb), &to_face, 112).unwrap();
        // [-1, 1] -> [0, 255] -> (p - 127) / 128.
        out.index_axis_mut(Axis(0), k)
            .assign(&face.mapv(|v| ((v + 1.0) * 127.5 - 127.0) / 128.0));
    }
    out
}

fn to_tensor(a: &Array4<f32>) -> Tensor {
    let (n, c, h, w) = a.dim();
    Tensor::from_slice(a.as_slice().unwrap()).view([n as i64, c as i64, h as i64, w as i64])
}

#[test]
fn tch_matches_tract_and_onnx_runtime_on_aligned_lfw_faces() {
    let path = model();
    let recognizer = Recognizer::load(
        &path,
        Alignment::Template,
        &avae_trainer::data::CropSpec::default(),
        64,
    )
    .unwrap();
    let ops: Vec<&String> = recognizer.graph().op_counts().keys().collect();
    println!("recognizer ops: {:?}", recognizer.graph().op_counts());
    assert_eq!(ops, ["Add", "Conv", "PRelu", "Reshape"]);
    let inputs = aligned_inputs();
    let ours = tch::no_grad(|| recognizer.embed_input(&to_tensor(&inputs))).unwrap();
    assert_eq!(ours.size(), [PEOPLE.len() as i64, 512]);
    let cache = std::env::temp_dir().join("avae-recognizer-parity");
    std::fs::create_dir_all(&cache).unwrap();
    for backend in [Backend::Tract, Backend::Ort] {
        let mut engine = open_graph(&path, backend, Device::Cpu, &cache)
            .unwrap_or_else(|e| panic!("{backend}: cannot open the recognizer: {e}"));
        let mut worst = 0.0f32;
        for (k, face) in inputs.outer_iter().enumerate() {
            let batch = face.insert_axis(Axis(0));
            let reference = engine.run(&[batch.into_dyn()]).unwrap().remove(0);
            let reference = Tensor::from_slice(reference.as_slice().unwrap()).view([1, 512]);
            let err = (ours.get(k as i64).view([1, 512]) - &reference)
                .abs()
                .max()
                .double_value(&[]) as f32;
            worst = worst.max(err);
        }
        println!("{}: max abs embedding error {worst:.2e}", engine.describe());
        assert!(
            worst <= TOLERANCE,
            "{backend}: max abs embedding error {worst} > {TOLERANCE}"
        );
    }
    // Real faces of different people are far apart, the same face is identical.
    let unit = recognizer::normalize(&ours);
    let sims = unit.matmul(&unit.tr());
    let off_diagonal = (&sims
        - Tensor::eye(PEOPLE.len() as i64, (Kind::Float, tch::Device::Cpu)) * 2.0)
        .max()
        .double_value(&[]);
    assert!(off_diagonal < 0.5, "different people score {off_diagonal}");
}

#[test]
fn gradients_reach_the_face_crop() {
    let recognizer = Recognizer::load(
        &model(),
        Alignment::Template,
        &avae_trainer::data::CropSpec::default(),
        64,
    )
    .unwrap();
    let x = (Tensor::rand([2, 3, 64, 64], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0)
        .set_requires_grad(true);
    let e = recognizer
        .embed(&x, &recognizer.default_align(2).unwrap())
        .unwrap();
    let g = Tensor::run_backward(&[e.sum(Kind::Float)], &[&x], false, false).remove(0);
    assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}
