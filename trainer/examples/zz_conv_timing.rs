use tch::{Kind, Tensor};
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn main() {
    tch::set_num_threads(1);
    println!("mkldnn? {}", tch::utils::has_mkldnn());
    let o = (Kind::Float, tch::Device::Cpu);
    let x = Tensor::rand([20, 64, 56, 56], o);
    let wd = Tensor::rand([64, 1, 3, 3], o);
    let w1 = Tensor::rand([128, 64, 1, 1], o);
    let w3 = Tensor::rand([64, 3, 3, 3], o);
    let xin = Tensor::rand([20, 3, 112, 112], o);
    for (name, f) in [
        (
            "depthwise 3x3 64ch 56x56",
            Box::new(|| x.conv2d(&wd, None::<Tensor>, [1, 1], [1, 1], [1, 1], 64))
                as Box<dyn Fn() -> Tensor>,
        ),
        (
            "pointwise 64->128 56x56",
            Box::new(|| x.conv2d(&w1, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)),
        ),
        (
            "first conv 3->64 s2",
            Box::new(|| xin.conv2d(&w3, None::<Tensor>, [2, 2], [1, 1], [1, 1], 1)),
        ),
        ("prelu-ish", Box::new(|| x.relu() + x.clamp_max(0.0) * 0.25)),
    ] {
        let _ = f();
        let c = cpu();
        for _ in 0..5 {
            let _ = f();
        }
        println!(
            "{name}: {:.2} ms cpu per image",
            (cpu() - c) * 1000.0 / 100.0
        );
    }
}
