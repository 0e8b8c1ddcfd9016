// Temporary timing probe (not part of the project).
use avae_trainer::defense::{AVaeDefense, Defense};
use avae_trainer::recognizer::{Alignment, Recognizer};
use gstavaepurify::engine::Backend;
use gstavaepurify::purifier::PurifyParams;
use tch::{Kind, Tensor};

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let threads: i32 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1);
    tch::set_num_threads(threads);
    let rec = Recognizer::load(
        &avae_trainer::recognizer::default_model_path(),
        Alignment::Template,
        &Default::default(),
        64,
    )
    .unwrap();
    let x = Tensor::rand([20, 3, 64, 64], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
    let _ = rec.embed_all(&x, 20).unwrap();
    let (c, w) = (cpu(), std::time::Instant::now());
    for _ in 0..3 {
        let _ = rec.embed_all(&x, 20).unwrap();
    }
    println!(
        "recognizer forward: {:.1} ms cpu/img, {:.1} ms wall/img",
        (cpu() - c) * 1000.0 / 60.0,
        w.elapsed().as_secs_f64() * 1000.0 / 60.0
    );
    let (c, w) = (cpu(), std::time::Instant::now());
    for _ in 0..3 {
        let xv = x.detach().set_requires_grad(true);
        let e = rec.embed(&xv).unwrap();
        let _g = Tensor::run_backward(&[e.sum(Kind::Float)], &[&xv], false, false);
    }
    println!(
        "recognizer fwd+bwd: {:.1} ms cpu/img, {:.1} ms wall/img",
        (cpu() - c) * 1000.0 / 60.0,
        w.elapsed().as_secs_f64() * 1000.0 / 60.0
    );
    let bundle = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    for backend in [Backend::Ort, Backend::Tract] {
        let m = 64;
        let mut d = Defense::AVae(Box::new(
            AVaeDefense::load(
                &bundle,
                backend,
                PurifyParams {
                    samples: m,
                    batch: 64,
                    tau: 0.03,
                },
            )
            .unwrap(),
        ));
        let faces = x.narrow(0, 0, 4);
        let _ = d.apply(&faces.narrow(0, 0, 1), &[0]).unwrap();
        let (c, w) = (cpu(), std::time::Instant::now());
        let _ = d.apply(&faces, &[1, 2, 3, 4]).unwrap();
        println!(
            "{backend}: purify M={m}: {:.2} ms cpu/decode, {:.2} ms wall/decode",
            (cpu() - c) * 1000.0 / (4.0 * m as f64),
            w.elapsed().as_secs_f64() * 1000.0 / (4.0 * m as f64)
        );
    }
}
