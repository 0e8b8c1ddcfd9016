//! `backend=kserve` against a real MLServer (PyPI `mlserver`, installed into `.venv` by
//! `scripts/setup.sh`) on the loopback, serving the shipped bundle through the layout the
//! serving export writes: the export itself (Triton configs parsed by Triton's own
//! `ModelConfig` schema), purified faces equal to the local `ort` backend's for a fixed seed,
//! frames in == frames out in a real pipeline on the shipped video, the server killed
//! mid-stream (faces pass with a warning, then purification resumes when it is back), and the
//! errors for a missing server, a missing model and a server serving another graph.
//!
//! Each test starts its own server (a guard kills it, also on failure); they run one at a time.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_check::Harness;
use gst_video::VideoRegionOfInterestMeta;
use gstavaepurify::bundle::Bundle;
use gstavaepurify::engine::kserve::repository::{ServingOptions, write_serving};
use gstavaepurify::engine::kserve::{KserveEngine, Remote};
use gstavaepurify::engine::{Backend, Device};
use gstavaepurify::purifier::{Purifier, PurifyParams};
use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// How long a server may take to load the bundle's three graphs.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// One server at a time: they share two cores with the pipelines they serve.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn shipped_bundle() -> PathBuf {
    common::workspace().join("models/avae-cpu")
}

fn mlserver_binary() -> PathBuf {
    let bin = common::workspace().join(".venv/bin/mlserver");
    assert!(
        bin.is_file(),
        "MLServer is not installed at {}: run scripts/setup.sh (it pip-installs mlserver from \
         scripts/requirements.txt into .venv)",
        bin.display()
    );
    bin
}

/// A fresh folder under the temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("avae-kserve-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Ports nobody listens on right now (held together so that they differ).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound").port())
}

/// The shipped bundle's serving export under a scratch folder; its MLServer folder.
fn export(name: &str) -> PathBuf {
    let bundle = Bundle::load(shipped_bundle()).expect("shipped bundle loads");
    let layout =
        write_serving(&bundle, &scratch(name), &ServingOptions::default()).expect("serving export");
    layout.mlserver
}

/// A running `mlserver start`, killed on drop.
struct MlServer {
    child: Option<Child>,
    folder: PathBuf,
    ports: [u16; 3],
    log: PathBuf,
}

impl MlServer {
    /// Starts MLServer on `folder` with gRPC, HTTP and metrics on `ports` (written into its
    /// `settings.json`, which takes precedence over MLServer's environment variables), and waits
    /// until every graph of the shipped bundle is ready.
    fn start(folder: &Path, ports: [u16; 3]) -> Self {
        let settings_path = folder.join("settings.json");
        let mut settings: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&settings_path).expect("the export's settings.json"),
        )
        .expect("settings.json is JSON");
        settings["grpc_port"] = ports[0].into();
        settings["http_port"] = ports[1].into();
        settings["metrics_port"] = ports[2].into();
        std::fs::write(&settings_path, settings.to_string()).expect("settings.json written");
        let log = folder.with_extension(format!("{}.log", ports[0]));
        let out = std::fs::File::create(&log).expect("server log");
        let child = Command::new(mlserver_binary())
            .arg("start")
            .arg(folder)
            .env("PYTHONUNBUFFERED", "1")
            .env("AVAE_SERVING_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mlserver: {e}"));
        let mut server = Self {
            child: Some(child),
            folder: folder.to_path_buf(),
            ports,
            log,
        };
        server.wait_ready();
        server
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }

    fn remote(&self) -> Remote {
        Remote::new(&self.address(), 10_000).expect("valid address")
    }

    /// Polls until an engine opens (model ready, metadata matching) for every graph.
    fn wait_ready(&mut self) {
        let started = Instant::now();
        let graphs = ["encoder.onnx", "decoder.onnx", "purifier.onnx"];
        let mut last = String::new();
        while started.elapsed() < READY_WITHIN {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "mlserver exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            let remote = Remote::new(&self.address(), 2000).expect("valid address");
            match graphs
                .iter()
                .map(|g| KserveEngine::open(&shipped_bundle().join(g), remote))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(_) => {
                    eprintln!(
                        "mlserver on {} ready after {:.1} s",
                        self.address(),
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "mlserver on {} not ready within {READY_WITHIN:?} (last: {last}); its log:\n{}",
            self.address(),
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            f.read_to_string(&mut text).ok();
        }
        let start = text.len().saturating_sub(4000);
        text[text.floor_char_boundary(start)..].to_owned()
    }

    /// Kills the server and waits until it is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same folder and ports.
    fn restart(&mut self) {
        self.kill();
        let again = Self::start(&self.folder, self.ports);
        *self = again;
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` LFW faces as `[N, 3, 64, 64]` in [-1, 1]: the centre 128 x 128 of each photo.
fn lfw_faces(count: usize) -> Array4<f32> {
    let images = common::lfw_images(count, 97);
    let mut faces = Array4::zeros((count, 3, 64, 64));
    for (n, path) in images.iter().enumerate() {
        let rgb = common::load_rgb(path);
        let crop = image::imageops::crop_imm(&rgb, 61, 61, 128, 128).to_image();
        let small = image::imageops::resize(&crop, 64, 64, image::imageops::FilterType::Triangle);
        for (x, y, px) in small.enumerate_pixels() {
            for c in 0..3 {
                faces[[n, c, y as usize, x as usize]] = f32::from(px[c]) / 127.5 - 1.0;
            }
        }
    }
    faces
}

#[test]
fn serving_export_writes_triton_and_mlserver_layouts() {
    let _serial = serial();
    let bundle = Bundle::load(shipped_bundle()).expect("shipped bundle loads");
    let out = scratch("layout");
    let layout = write_serving(&bundle, &out, &ServingOptions::default()).expect("export");
    assert_eq!(layout.models, ["encoder", "decoder", "purifier"]);
    for model in &layout.models {
        for file in [
            layout.triton.join(model).join("config.pbtxt"),
            layout.triton.join(model).join("1/model.onnx"),
            layout.mlserver.join(model).join("model-settings.json"),
            layout.mlserver.join(model).join("model.onnx"),
            layout.mlserver.join(model).join("avae_runtime.py"),
        ] {
            assert!(file.is_file(), "{} missing", file.display());
        }
    }
    // Triton's own schema (tritonclient, a dependency of mlserver) parses every config.
    let python = common::workspace().join(".venv/bin/python");
    mlserver_binary();
    let script = r#"
import json, sys
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
out = {}
for name in sys.argv[2:]:
    config = model_config_pb2.ModelConfig()
    with open(f"{sys.argv[1]}/{name}/config.pbtxt") as f:
        text_format.Parse(f.read(), config)
    out[name] = {
        "name": config.name, "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "dynamic_batching": config.HasField("dynamic_batching"),
        "inputs": {i.name: [model_config_pb2.DataType.Name(i.data_type), list(i.dims)] for i in config.input},
        "outputs": {o.name: [model_config_pb2.DataType.Name(o.data_type), list(o.dims)] for o in config.output},
        "instances": [[g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)] for g in config.instance_group],
    }
print(json.dumps(out))
"#;
    let run = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&layout.triton)
        .args(&layout.models)
        .output()
        .expect("venv python runs");
    assert!(
        run.status.success(),
        "Triton's ModelConfig refuses a config.pbtxt: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    let m = &bundle.manifest;
    let (s, d, c) = (
        m.image_size as i64,
        m.latent_dim as i64,
        m.skip_channels as i64,
    );
    let encoder = &parsed["encoder"];
    assert_eq!(encoder["backend"], "onnxruntime");
    assert_eq!(encoder["max_batch_size"], 256);
    assert_eq!(encoder["dynamic_batching"], true);
    assert_eq!(
        encoder["inputs"]["face"],
        serde_json::json!(["TYPE_FP32", [3, s, s]])
    );
    assert_eq!(
        encoder["outputs"]["mu"],
        serde_json::json!(["TYPE_FP32", [d]])
    );
    assert_eq!(
        encoder["outputs"]["skip"],
        serde_json::json!(["TYPE_FP32", [c, 16, 16]])
    );
    assert_eq!(encoder["instances"], serde_json::json!([[1, "KIND_GPU"]]));
    let decoder = &parsed["decoder"];
    assert_eq!(
        decoder["max_batch_size"],
        gstavaepurify::purifier::batch_limit(m) as u64
    );
    assert_eq!(decoder["dynamic_batching"], true);
    assert_eq!(
        decoder["inputs"]["z"],
        serde_json::json!(["TYPE_FP32", [d]])
    );
    let purifier = &parsed["purifier"];
    assert_eq!(
        purifier["max_batch_size"], 0,
        "one face per call: no batching"
    );
    assert_eq!(purifier["dynamic_batching"], false);
    assert_eq!(
        purifier["inputs"]["z"],
        serde_json::json!(["TYPE_FP32", [-1, d]])
    );
    assert_eq!(
        purifier["outputs"]["index"],
        serde_json::json!(["TYPE_INT64", [1]])
    );
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(layout.mlserver.join("decoder/model-settings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(settings["name"], "decoder");
    assert_eq!(settings["implementation"], "avae_runtime.OnnxGraph");
    assert_eq!(
        settings["inputs"][1]["shape"],
        serde_json::json!([-1, c, 16, 16])
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn kserve_purifies_the_faces_the_ort_backend_purifies() {
    let _serial = serial();
    common::ensure_ort_library();
    let folder = export("parity");
    let server = MlServer::start(&folder, free_ports());
    let params = PurifyParams {
        samples: 16,
        batch: 16,
        tau: Bundle::load(shipped_bundle()).unwrap().manifest.tau,
    };
    let faces = lfw_faces(8);
    let run = |backend: Backend| {
        let mut purifier = Purifier::load(&shipped_bundle(), backend, Device::Cpu)
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        let mut out = faces.clone();
        let chosen = purifier
            .purify(out.view_mut(), &params, &mut StdRng::seed_from_u64(11))
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
        (purifier.backend_name(), purifier.is_fused(), out, chosen)
    };
    let (ort_name, _, local, local_chosen) = run(Backend::Ort);
    let (name, fused, remote, remote_chosen) = run(Backend::Kserve(server.remote()));
    assert!(
        name.contains("kserve") && name.contains(&server.address()),
        "{name}"
    );
    assert!(
        fused,
        "a remote engine decodes and selects on the server (purifier model)"
    );
    let diff = (&local - &remote)
        .mapv(f32::abs)
        .fold(0.0f32, |a, &b| a.max(b));
    let changed = (&faces - &remote)
        .mapv(f32::abs)
        .fold(0.0f32, |a, &b| a.max(b));
    eprintln!(
        "{ort_name} vs {name}: max |diff| {diff:e} over 8 faces (purification moved pixels by \
         up to {changed:.3})"
    );
    assert!(diff <= 1e-4, "kserve differs from ort by {diff}");
    assert!(changed > 0.05, "the faces were not purified ({changed})");
    for (a, b) in local_chosen.iter().zip(&remote_chosen) {
        assert_eq!(a.candidate, b.candidate);
        assert!((a.distance - b.distance).abs() <= 1e-4 * a.distance.max(1.0));
    }
}

/// What one `avaepurify` branch of [`video_pipeline`] saw: the frames entering it, the frames
/// out (their bytes) and its stats.
struct Branch {
    entered: u64,
    out: Vec<Vec<u8>>,
    stats: gst::Structure,
}

/// Runs the first `frames` frames of the shipped video (960x540) through `avaefacedetect
/// backend=ort` and a `tee` into one `avaepurify <purify>` branch per entry of `branches`, so
/// every branch purifies the same frames with the same face boxes (the detector runs once).
fn video_pipeline(frames: u32, branches: &[&str]) -> Vec<Branch> {
    let video = common::shared().join("media/opera-house-pedestrians.mp4");
    assert!(
        video.is_file(),
        "shipped video missing: {}",
        video.display()
    );
    let mut line = format!(
        "filesrc location={} ! decodebin ! videoconvert ! videoscale \
         ! video/x-raw,format=RGB,width=960,height=540 ! identity eos-after={frames} \
         ! avaefacedetect backend=ort device=cpu ! tee name=split",
        video.display()
    );
    for (i, purify) in branches.iter().enumerate() {
        line.push_str(&format!(
            " split. ! queue ! avaepurify name=purify{i} seed=5 {purify} \
             ! fakesink name=out{i} sync=false"
        ));
    }
    let pipeline = gst::parse::launch(&line)
        .expect("pipeline parses")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let mut probes = Vec::new();
    for i in 0..branches.len() {
        let purify = pipeline.by_name(&format!("purify{i}")).expect("purify");
        let entered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = entered.clone();
        purify.static_pad("sink").expect("sink pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                gst::PadProbeReturn::Ok
            },
        );
        let frames_out = std::sync::Arc::new(Mutex::new(Vec::new()));
        let collected = frames_out.clone();
        pipeline
            .by_name(&format!("out{i}"))
            .expect("fakesink")
            .static_pad("sink")
            .expect("sink pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                    let bytes = buffer.map_readable().expect("readable").to_vec();
                    collected.lock().expect("frames").push(bytes);
                }
                gst::PadProbeReturn::Ok
            });
        probes.push((purify, entered, frames_out));
    }
    pipeline.set_state(gst::State::Playing).expect("plays");
    let end = pipeline.bus().expect("bus").timed_pop_filtered(
        gst::ClockTime::from_seconds(600),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let error = match end.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Error(e)) => Some(format!("{} ({:?})", e.error(), e.debug())),
        Some(_) => None,
        None => Some("no EOS within 600 s".to_owned()),
    };
    let stats: Vec<gst::Structure> = probes
        .iter()
        .map(|(purify, _, _)| purify.property::<gst::Structure>("stats"))
        .collect();
    pipeline.set_state(gst::State::Null).expect("stops");
    assert!(error.is_none(), "{branches:?}: {error:?}");
    probes
        .into_iter()
        .zip(stats)
        .map(|((_, entered, out), stats)| Branch {
            entered: entered.load(std::sync::atomic::Ordering::SeqCst),
            out: std::mem::take(&mut *out.lock().expect("frames")),
            stats,
        })
        .collect()
}

fn stat(stats: &gst::Structure, name: &str) -> u64 {
    stats
        .get::<u64>(name)
        .unwrap_or_else(|e| panic!("stats.{name}: {e} ({stats})"))
}

#[test]
fn kserve_pipeline_on_the_shipped_video_matches_ort_frame_for_frame() {
    let _serial = serial();
    common::init();
    common::ensure_ort_library();
    let folder = export("video");
    let server = MlServer::start(&folder, free_ports());
    let frames = 12;
    let kserve = format!("backend=kserve server={}", server.address());
    // The server runs the bundle's fp32 graphs; the local engine's `precision=auto` picks the
    // int8 decoder on a CPU with VNNI, so the local side is held to fp32 to compare like with
    // like (with auto, 360536 of 23328000 bytes differed, by up to 49).
    let mut runs =
        video_pipeline(frames, &["backend=ort device=cpu precision=fp32", &kserve]).into_iter();
    let (ort, remote) = (runs.next().expect("ort"), runs.next().expect("kserve"));
    let (ort_in, ort_out, ort_stats) = (ort.entered, ort.out, ort.stats);
    let (kserve_in, kserve_out, kserve_stats) = (remote.entered, remote.out, remote.stats);
    eprintln!("ort: {ort_stats}\nkserve: {kserve_stats}");
    // `identity eos-after=12` lets a few more frames through before its EOS reaches the
    // decoder (15 here); both branches see the same frames.
    assert!(kserve_in >= u64::from(frames), "{kserve_in} frames in");
    assert_eq!(kserve_in, ort_in, "both branches get the same frames");
    assert_eq!(
        kserve_out.len() as u64,
        kserve_in,
        "frames in == frames out"
    );
    assert_eq!(ort_out.len() as u64, ort_in);
    assert_eq!(stat(&kserve_stats, "failures"), 0);
    let purified = stat(&kserve_stats, "faces-purified");
    assert!(purified >= u64::from(frames), "{purified} faces purified");
    assert_eq!(purified, stat(&ort_stats, "faces-purified"));
    // Faces equal within 1e-4 in [-1, 1] can still round to neighbouring 8-bit values.
    let (mut differing, mut worst, mut total) = (0usize, 0u8, 0usize);
    for (a, b) in ort_out.iter().zip(&kserve_out) {
        assert_eq!(a.len(), b.len());
        total += a.len();
        for (x, y) in a.iter().zip(b) {
            let d = x.abs_diff(*y);
            worst = worst.max(d);
            differing += usize::from(d > 0);
        }
    }
    eprintln!(
        "{} frames, {purified} faces: {differing} of {total} bytes differ, by at most {worst}",
        kserve_out.len()
    );
    assert!(worst <= 1, "a byte differs by {worst}");
    assert!(
        differing * 10_000 < total,
        "{differing} of {total} bytes differ"
    );
}

/// A 250x250 LFW photo as an RGB frame with one `face` ROI on its centre.
fn face_frame(info: &gst_video::VideoInfo, rgb: &image::RgbImage, index: u64) -> gst::Buffer {
    let mut buffer = common::frame_buffer(rgb, info, 40 * index);
    VideoRegionOfInterestMeta::add(
        buffer.get_mut().expect("writable"),
        "face",
        (61, 61, 128, 128),
    );
    buffer
}

#[test]
fn kserve_server_killed_mid_stream_passes_faces_then_recovers() {
    let _serial = serial();
    common::init();
    let folder = export("restart");
    let mut server = MlServer::start(&folder, free_ports());
    let element = gst::ElementFactory::make("avaepurify")
        .property_from_str("backend", "kserve")
        .property("server", server.address())
        .property("server-timeout-ms", 3000u32)
        .property("seed", 3u64)
        .build()
        .expect("avaepurify");
    let mut h = Harness::with_element(&element, Some("sink"), Some("src"));
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, 250, 250)
        .fps(gst::Fraction::new(25, 1))
        .build()
        .expect("video info");
    h.set_src_caps(info.to_caps().expect("caps"));
    let rgb = common::load_rgb(&common::lfw_images(1, 1)[0]);
    let mut pushed = 0u64;
    let mut push = |h: &mut Harness| -> bool {
        let input = face_frame(&info, &rgb, pushed);
        pushed += 1;
        let before = input.map_readable().expect("readable").to_vec();
        let output = h
            .push_and_pull(input)
            .expect("a frame comes out for every frame in");
        let after = output.map_readable().expect("readable").to_vec();
        after != before
    };
    for _ in 0..2 {
        assert!(push(&mut h), "purified while the server runs");
    }
    server.kill();
    let killed = Instant::now();
    for _ in 0..4 {
        assert!(
            !push(&mut h),
            "a face passes unchanged while the server is down"
        );
    }
    let down_ms = killed.elapsed().as_millis();
    let warnings: Vec<String> = bus
        .iter()
        .filter_map(|m| match m.view() {
            gst::MessageView::Warning(w) => {
                Some(format!("{} {}", w.error(), w.debug().unwrap_or_default()))
            }
            _ => None,
        })
        .collect();
    eprintln!("4 frames with the server down took {down_ms} ms; warnings: {warnings:?}");
    assert_eq!(warnings.len(), 1, "one warning for the cause: {warnings:?}");
    assert!(
        warnings[0].contains(&server.address()) && warnings[0].contains("encoder"),
        "the warning names the server and the model: {warnings:?}"
    );
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stat(&stats, "failures"), 4, "{stats}");
    server.restart();
    let back = Instant::now();
    let mut recovered = false;
    for _ in 0..40 {
        if push(&mut h) {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "purifying again {} ms after the server was ready",
        back.elapsed().as_millis()
    );
    assert!(recovered, "no purified face after the server came back");
    assert!(push(&mut h), "and the next frame too");
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(
        stat(&stats, "frames"),
        pushed,
        "frames in == frames out: {stats}"
    );
}

#[test]
fn kserve_errors_name_the_server_and_the_model() {
    let _serial = serial();
    common::init();
    // No server at all: the element does not start, and says where it looked.
    let [port] = free_ports();
    let line = format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 \
         ! avaepurify backend=kserve server=127.0.0.1:{port} server-timeout-ms=1000 ! fakesink"
    );
    let pipeline = gst::parse::launch(&line).expect("parses");
    pipeline.set_state(gst::State::Playing).ok();
    let error = pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Error])
        .map(|m| match m.view() {
            gst::MessageView::Error(e) => format!("{} {:?}", e.error(), e.debug()),
            _ => unreachable!(),
        })
        .expect("an error when no server listens");
    pipeline.set_state(gst::State::Null).ok();
    eprintln!("no server: {error}");
    assert!(
        error.contains(&format!("127.0.0.1:{port}")) && error.contains("'encoder'"),
        "{error}"
    );
    // A server address that is not host:port.
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=64,height=64 \
         ! avaepurify backend=kserve server=nowhere ! fakesink",
    )
    .expect("parses");
    pipeline.set_state(gst::State::Playing).ok();
    let error = pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(gst::ClockTime::from_seconds(20), &[gst::MessageType::Error])
        .map(|m| match m.view() {
            gst::MessageView::Error(e) => e.error().to_string(),
            _ => unreachable!(),
        })
        .expect("an error for a bad address");
    pipeline.set_state(gst::State::Null).ok();
    assert!(
        error.contains("server") && error.contains("nowhere"),
        "{error}"
    );

    let folder = export("errors");
    let server = MlServer::start(&folder, free_ports());
    // A graph the server does not serve.
    let stray = scratch("stray").join("detector.onnx");
    std::fs::copy(shipped_bundle().join("encoder.onnx"), &stray).unwrap();
    let err = KserveEngine::open(&stray, server.remote())
        .err()
        .expect("no model 'detector' on the server")
        .to_string();
    eprintln!("missing model: {err}");
    assert!(
        err.contains(&server.address()) && err.contains("'detector'") && err.contains("ready"),
        "{err}"
    );
    // A bundle whose graphs have the served names but other shapes (the tiny test bundle).
    let err = Purifier::load(
        Path::new(&common::tiny_bundle()),
        Backend::Kserve(server.remote()),
        Device::Cpu,
    )
    .err()
    .expect("the tiny bundle is not what the server serves")
    .to_string();
    eprintln!("other graph: {err}");
    assert!(
        err.contains(&server.address())
            && err.contains("'encoder'")
            && err.contains("serves another graph"),
        "{err}"
    );
}
