//! `model-instance-id`: elements of one process sharing one engine, in real pipelines on the
//! shipped bundle. Every test checks that each frame that enters an element leaves it.

mod common;

use std::sync::{Arc, Mutex};

use gst::prelude::*;
use gstavaepurify::shared;

/// The shipped bundle.
fn avae_cpu() -> String {
    let dir = common::workspace().join("models/avae-cpu");
    assert!(
        dir.join("manifest.json").is_file(),
        "shipped bundle missing: {}",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

/// What went through one element: frames in, and the bytes of every frame out.
#[derive(Default)]
struct Seen {
    frames_in: usize,
    frames_out: Vec<Vec<u8>>,
}

fn watch(element: &gst::Element) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = seen.clone();
    element
        .static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            sink.lock().unwrap().frames_in += 1;
            gst::PadProbeReturn::Ok
        })
        .expect("sink probe");
    let src = seen.clone();
    element
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                let map = buffer.map_readable().expect("readable buffer");
                src.lock().unwrap().frames_out.push(map.as_slice().to_vec());
            }
            gst::PadProbeReturn::Ok
        })
        .expect("src probe");
    seen
}

fn launch(description: &str) -> gst::Pipeline {
    common::ensure_ort_library();
    common::init();
    gst::parse::launch(description)
        .unwrap_or_else(|e| panic!("cannot build `{description}`: {e}"))
        .downcast::<gst::Pipeline>()
        .expect("a pipeline")
}

/// Plays `pipeline` to EOS (Ok) or to its first error (Err with the message); leaves it in
/// PLAYING so that its elements still hold their engines.
fn play_to_end(pipeline: &gst::Pipeline) -> Result<(), String> {
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        return Err(first_error(pipeline).unwrap_or_else(|| format!("state change: {e}")));
    }
    let bus = pipeline.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(300)) {
        match msg.view() {
            gst::MessageView::Eos(..) => return Ok(()),
            gst::MessageView::Error(err) => return Err(err.error().to_string()),
            _ => {}
        }
    }
    Err("no EOS within 300 s".to_owned())
}

fn first_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(err) = msg.view() {
            return Some(err.error().to_string());
        }
    }
    None
}

fn stats(pipeline: &gst::Pipeline, name: &str) -> gst::Structure {
    pipeline
        .by_name(name)
        .unwrap_or_else(|| panic!("no element {name}"))
        .property::<gst::Structure>("stats")
}

const CAPS: &str = "video/x-raw,format=RGB,width=96,height=72,framerate=25/1";

fn purify(name: &str, id: &str, extra: &str) -> String {
    format!(
        "avaepurify name={name} model={} backend=tract model-instance-id={id} full-frame=true \
         samples=4 batch=4 seed=7 {extra}",
        avae_cpu()
    )
}

#[test]
fn two_pipelines_share_one_loaded_bundle_and_lose_no_frame() {
    let frames = 8;
    let make = |name: &str, pattern: &str| {
        launch(&format!(
            "videotestsrc num-buffers={frames} pattern={pattern} ! {CAPS} ! {} ! fakesink",
            purify(name, "two", "")
        ))
    };
    let (a, b) = (make("a", "smpte"), make("b", "ball"));
    let (seen_a, seen_b) = (
        watch(&a.by_name("a").unwrap()),
        watch(&b.by_name("b").unwrap()),
    );
    let run_b = {
        let b = b.clone();
        std::thread::spawn(move || play_to_end(&b))
    };
    play_to_end(&a).expect("stream a runs to EOS");
    run_b.join().unwrap().expect("stream b runs to EOS");

    assert_eq!(
        shared::purifier_loads("two"),
        1,
        "the bundle is loaded once"
    );
    for (pipeline, name, seen) in [(&a, "a", &seen_a), (&b, "b", &seen_b)] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.frames_in, frames, "{name}: frames in");
        assert_eq!(
            seen.frames_out.len(),
            frames,
            "{name}: frames in == frames out"
        );
        let s = stats(pipeline, name);
        assert_eq!(s.get::<u32>("shared-streams").unwrap(), 2, "{name}: {s}");
        assert_eq!(
            s.get::<u64>("faces-purified").unwrap(),
            frames as u64,
            "{s}"
        );
        assert_eq!(s.get::<u64>("failures").unwrap(), 0, "{s}");
    }
    for p in [&a, &b] {
        p.set_state(gst::State::Null).unwrap();
    }

    // The last element gone, the instance is dropped: the id is free for another bundle.
    let tiny = launch(&format!(
        "videotestsrc num-buffers=2 ! {CAPS} ! avaepurify name=t model={} backend=tract \
         model-instance-id=two full-frame=true samples=2 ! fakesink",
        common::tiny_bundle()
    ));
    play_to_end(&tiny).expect("the id is free once its elements stopped");
    assert_eq!(shared::purifier_loads("two"), 2);
    tiny.set_state(gst::State::Null).unwrap();
}

#[test]
fn four_streams_are_batched_together_with_their_solo_results() {
    let frames = 5;
    // Four shared branches and one with its own engine, all fed the same frames with the
    // same seed: batching must not change a face's result. batch = samples, so that every
    // decoder call has 4 latents alone and together (an engine may round differently with
    // the size of a call).
    let branch = |name: &str, id: &str| {
        let element = if id.is_empty() {
            format!(
                "avaepurify name={name} model={} backend=tract full-frame=true samples=4 \
                 batch=4 seed=7",
                avae_cpu()
            )
        } else {
            purify(name, id, "shared-timeout-ms=5000")
        };
        format!("t. ! queue ! {element} ! fakesink ")
    };
    let mut description =
        format!("videotestsrc num-buffers={frames} pattern=smpte ! {CAPS} ! tee name=t ");
    for i in 0..4 {
        description += &branch(&format!("p{i}"), "four");
    }
    description += &branch("solo", "");
    let pipeline = launch(&description);
    let names = ["p0", "p1", "p2", "p3", "solo"];
    let seen: Vec<_> = names
        .iter()
        .map(|n| watch(&pipeline.by_name(n).unwrap()))
        .collect();
    play_to_end(&pipeline).expect("runs to EOS");

    assert_eq!(
        shared::purifier_loads("four"),
        1,
        "the bundle is loaded once"
    );
    let solo = seen[4].lock().unwrap();
    assert_eq!(solo.frames_out.len(), frames);
    for (name, seen) in names.iter().zip(&seen).take(4) {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.frames_in, frames, "{name}: frames in");
        assert_eq!(
            seen.frames_out.len(),
            frames,
            "{name}: frames in == frames out"
        );
        for (k, (ours, theirs)) in seen.frames_out.iter().zip(&solo.frames_out).enumerate() {
            assert!(
                ours == theirs,
                "{name}: frame {k} differs from the solo element's"
            );
        }
        let s = stats(&pipeline, name);
        assert_eq!(s.get::<u32>("shared-streams").unwrap(), 4, "{s}");
        // Every stream waits for the others (timeout 5 s), so every call holds 4 faces.
        let mean = s.get::<f64>("shared-mean-batch-faces").unwrap();
        assert!(
            (mean - 4.0).abs() < 1e-9,
            "{name}: mean faces per call {mean}"
        );
    }
    let s = stats(&pipeline, "solo");
    assert_eq!(s.get::<u32>("shared-streams").unwrap(), 0, "{s}");
    // Not all frames alike: purification really ran (the outputs are not the inputs).
    assert_ne!(solo.frames_out[0], solo.frames_out[frames - 1]);
    pipeline.set_state(gst::State::Null).unwrap();
}

#[test]
fn the_same_id_with_another_bundle_or_backend_is_refused() {
    let first = launch(&format!(
        "videotestsrc num-buffers=400 ! {CAPS} ! {} ! fakesink",
        purify("first", "mismatch", "")
    ));
    first
        .set_state(gst::State::Paused)
        .expect("first element starts");
    first
        .state(gst::ClockTime::from_seconds(120))
        .0
        .expect("first element prerolls");

    let other = launch(&format!(
        "videotestsrc num-buffers=2 ! {CAPS} ! avaepurify name=other model={} backend=tract \
         model-instance-id=mismatch full-frame=true ! fakesink",
        common::tiny_bundle()
    ));
    let err = play_to_end(&other).expect_err("another bundle under the same id is refused");
    assert!(
        err.contains("model-instance-id 'mismatch'") && err.contains("bundle-tiny"),
        "{err}"
    );
    other.set_state(gst::State::Null).unwrap();

    let other_backend = launch(&format!(
        "videotestsrc num-buffers=2 ! {CAPS} ! avaepurify name=other model={} backend=ort \
         device=cpu model-instance-id=mismatch full-frame=true ! fakesink",
        avae_cpu()
    ));
    let err = play_to_end(&other_backend).expect_err("another backend is refused");
    assert!(
        err.contains("model-instance-id 'mismatch'") && err.contains("Ort"),
        "{err}"
    );
    other_backend.set_state(gst::State::Null).unwrap();
    assert_eq!(shared::purifier_loads("mismatch"), 1);
    first.set_state(gst::State::Null).unwrap();
}

#[test]
fn a_failing_stream_does_not_stop_the_others() {
    let frames = 10;
    let good = launch(&format!(
        "videotestsrc num-buffers={frames} ! {CAPS} ! {} ! fakesink",
        purify("good", "failing", "")
    ));
    let seen = watch(&good.by_name("good").unwrap());
    // The bad stream sends frames shorter than its caps say, and stops on the first
    // (on-failure=error).
    let bad = launch(&format!(
        "appsrc name=src caps={CAPS} format=time ! {} ! fakesink",
        purify("bad", "failing", "on-failure=error")
    ));
    let run_good = {
        let good = good.clone();
        std::thread::spawn(move || play_to_end(&good))
    };
    bad.set_state(gst::State::Playing)
        .expect("bad stream starts");
    let src = bad.by_name("src").unwrap();
    for i in 0..3u64 {
        let mut buffer = gst::Buffer::from_mut_slice(vec![0u8; 100]);
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(40 * i));
        // Once the element has failed, pushing fails too: that is the point.
        let _ = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let err = play_to_end(&bad).expect_err("the bad stream fails");
    assert!(!err.is_empty());
    bad.set_state(gst::State::Null).unwrap();

    run_good
        .join()
        .unwrap()
        .expect("the good stream runs to EOS");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.frames_in, frames);
    assert_eq!(seen.frames_out.len(), frames, "frames in == frames out");
    let s = stats(&good, "good");
    assert_eq!(
        s.get::<u64>("faces-purified").unwrap(),
        frames as u64,
        "{s}"
    );
    assert_eq!(s.get::<u64>("failures").unwrap(), 0, "{s}");
    good.set_state(gst::State::Null).unwrap();
}

#[test]
fn detectors_share_one_engine() {
    let frames = 6;
    let detect = |name: &str, backend: &str| {
        format!(
            "videotestsrc num-buffers={frames} ! video/x-raw,format=RGB,width=160,height=120 \
             ! avaefacedetect name={name} backend={backend} model-instance-id=det ! fakesink"
        )
    };
    let (a, b) = (
        launch(&detect("da", "tract")),
        launch(&detect("db", "tract")),
    );
    let (seen_a, seen_b) = (
        watch(&a.by_name("da").unwrap()),
        watch(&b.by_name("db").unwrap()),
    );
    let run_b = {
        let b = b.clone();
        std::thread::spawn(move || play_to_end(&b))
    };
    play_to_end(&a).expect("detector a runs to EOS");
    run_b.join().unwrap().expect("detector b runs to EOS");
    assert_eq!(
        shared::detector_loads("det"),
        1,
        "the detector is loaded once"
    );
    for (p, name, seen) in [(&a, "da", &seen_a), (&b, "db", &seen_b)] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.frames_in, frames, "{name}");
        assert_eq!(
            seen.frames_out.len(),
            frames,
            "{name}: frames in == frames out"
        );
        let s = stats(p, name);
        assert_eq!(s.get::<u64>("failures").unwrap(), 0, "{s}");
    }
    let other = launch(&detect("dc", "ort"));
    let err = play_to_end(&other).expect_err("another backend is refused");
    assert!(err.contains("model-instance-id 'det'"), "{err}");
    for p in [&a, &b, &other] {
        p.set_state(gst::State::Null).unwrap();
    }
}
