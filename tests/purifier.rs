//! The purifier on a real (tiny, untrained) exported bundle, through both backends.

use std::path::{Path, PathBuf};

use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::{Purifier, PurifyParams};
use ndarray::Array4;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn tiny_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny")
}

/// Points ONNX Runtime at the project's venv when the caller did not; the ort tests must fail,
/// not skip, when it is missing (run scripts/setup.sh).
fn ensure_ort() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0");
        assert!(
            lib.is_file(),
            "ONNX Runtime not found at {} (run scripts/setup.sh)",
            lib.display()
        );
        // SAFETY: set before any thread of this test binary loads ONNX Runtime.
        unsafe { std::env::set_var("ORT_DYLIB_PATH", lib) };
    }
}

fn faces(n: usize, s: usize, seed: u64) -> Array4<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array4::from_shape_fn((n, 3, s, s), |_| rng.random_range(-1.0..1.0))
}

fn run(
    p: &mut Purifier,
    faces: &Array4<f32>,
    params: PurifyParams,
    seed: u64,
) -> (Array4<f32>, Vec<(f32, usize)>) {
    let mut out = faces.clone();
    let res = p
        .purify(out.view_mut(), &params, &mut StdRng::seed_from_u64(seed))
        .unwrap();
    (out, res.iter().map(|r| (r.distance, r.candidate)).collect())
}

fn params(samples: usize, batch: usize, tau: f32) -> PurifyParams {
    PurifyParams {
        samples,
        batch,
        tau,
    }
}

#[test]
fn result_does_not_depend_on_batch() {
    let mut p = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let x = faces(3, p.image_size(), 1);
    let (a, ra) = run(&mut p, &x, params(10, 1, 1.0), 5);
    let (b, rb) = run(&mut p, &x, params(10, 7, 1.0), 5);
    let (c, rc) = run(&mut p, &x, params(10, 64, 1.0), 5);
    assert_eq!(
        ra.iter().map(|r| r.1).collect::<Vec<_>>(),
        rb.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert_eq!(
        ra.iter().map(|r| r.1).collect::<Vec<_>>(),
        rc.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert!((&a - &b).iter().all(|v| v.abs() < 1e-4));
    assert!((&a - &c).iter().all(|v| v.abs() < 1e-4));
}

#[test]
fn more_samples_never_increase_the_distance() {
    // One face: the first 16 latents of a 64-sample run are the 16 of a 16-sample run.
    let mut p = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let x = faces(1, p.image_size(), 2);
    let (_, r16) = run(&mut p, &x, params(16, 16, 1.0), 9);
    let (_, r64) = run(&mut p, &x, params(64, 16, 1.0), 9);
    assert!(r64[0].0 <= r16[0].0, "{r64:?} vs {r16:?}");
}

#[test]
fn tau_zero_is_deterministic_whatever_the_seed() {
    let mut p = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let x = faces(2, p.image_size(), 3);
    let (a, ra) = run(&mut p, &x, params(8, 8, 0.0), 1);
    let (b, rb) = run(&mut p, &x, params(8, 8, 0.0), 2);
    assert_eq!(a, b);
    // Every candidate is the same image: the first one wins the tie.
    assert!(ra.iter().chain(&rb).all(|r| r.1 == 0), "{ra:?}");
}

#[test]
fn purified_faces_are_in_range_and_distance_is_exact() {
    let mut p = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let x = faces(2, p.image_size(), 4);
    let (out, r) = run(&mut p, &x, params(4, 4, 0.03), 1);
    assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    for (i, (dist, _)) in r.iter().enumerate() {
        let d: f32 = (&out.index_axis(ndarray::Axis(0), i) - &x.index_axis(ndarray::Axis(0), i))
            .iter()
            .map(|v| v * v)
            .sum();
        assert!((d - dist).abs() <= 1e-3 * d.max(1.0), "{d} vs {dist}");
    }
}

#[test]
fn fused_graph_chooses_what_the_plain_path_chooses() {
    let mut p = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let x = faces(2, p.image_size(), 5);
    let (a, ra) = run(&mut p, &x, params(12, 5, 1.0), 7);
    p.use_fused(true, Backend::Tract, Device::Cpu).unwrap();
    assert!(p.is_fused());
    let (b, rb) = run(&mut p, &x, params(12, 5, 1.0), 7);
    assert_eq!(
        ra.iter().map(|r| r.1).collect::<Vec<_>>(),
        rb.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert!((&a - &b).iter().all(|v| v.abs() < 1e-4));
}

#[test]
fn ort_and_tract_agree() {
    ensure_ort();
    let mut t = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let mut o = Purifier::load(&tiny_bundle(), Backend::Ort, Device::Cpu).unwrap();
    assert_eq!(o.backend_name(), "ort (CPU)");
    let x = faces(2, t.image_size(), 6);
    let (a, ra) = run(&mut t, &x, params(8, 8, 1.0), 3);
    let (b, rb) = run(&mut o, &x, params(8, 8, 1.0), 3);
    assert_eq!(
        ra.iter().map(|r| r.1).collect::<Vec<_>>(),
        rb.iter().map(|r| r.1).collect::<Vec<_>>()
    );
    assert!((&a - &b).iter().all(|v| v.abs() < 1e-4));
}

#[test]
fn auto_backend_on_a_bad_ort_path_falls_back_to_tract_with_a_reason() {
    // Checked in a child process: the ONNX Runtime library is loaded once per process.
    if std::env::var_os("AVAE_TEST_CHILD").is_some() {
        let p = Purifier::load(&tiny_bundle(), Backend::Auto, Device::Auto).unwrap();
        assert_eq!(p.backend_name(), "tract (CPU)");
        let why = p.fallbacks().join("; ");
        assert!(why.contains("/nonexistent/libonnxruntime.so"), "{why}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            "auto_backend_on_a_bad_ort_path_falls_back_to_tract_with_a_reason",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AVAE_TEST_CHILD", "1")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert_child_ran_one_test(&stdout);
}

/// Asserts that a child test run's output shows exactly one test run and passed, so that a
/// renamed test cannot make the `--exact` filter match nothing and pass vacuously.
fn assert_child_ran_one_test(stdout: &str) {
    assert!(
        stdout.lines().any(|l| l.trim() == "running 1 test"),
        "the child did not run exactly one test:\n{stdout}"
    );
    assert!(
        stdout.contains("test result: ok. 1 passed;"),
        "the child did not pass exactly one test:\n{stdout}"
    );
}

#[test]
fn the_child_check_rejects_a_run_of_no_test() {
    let vacuous = "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored\n";
    let caught = std::panic::catch_unwind(|| assert_child_ran_one_test(vacuous));
    assert!(caught.is_err(), "a run of zero tests was accepted");
    assert_child_ran_one_test(
        "\nrunning 1 test\ntest x ... ok\n\ntest result: ok. 1 passed; 0 failed\n",
    );
}

#[test]
fn bad_parameters_are_errors() {
    let mut p = Purifier::load(&tiny_bundle(), Backend::Tract, Device::Cpu).unwrap();
    let mut x = faces(1, p.image_size(), 7);
    let mut rng = StdRng::seed_from_u64(0);
    for (bad, name) in [
        (params(0, 4, 0.1), "samples"),
        (params(4, 0, 0.1), "batch"),
        (params(4, 4, -1.0), "tau"),
    ] {
        let err = p
            .purify(x.view_mut(), &bad, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
    }
    let mut wrong = Array4::<f32>::zeros((1, 3, 7, 7));
    let err = p
        .purify(wrong.view_mut(), &params(4, 4, 0.1), &mut rng)
        .unwrap_err()
        .to_string();
    assert!(err.contains("faces"), "{err}");
}
