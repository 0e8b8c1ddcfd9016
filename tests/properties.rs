//! Property tests of the geometry and the manifest parser: thousands of generated inputs, with
//! NaN, infinities, huge and negative numbers mixed in, must give an error, `None` or a clamped
//! crop inside the frame, never a panic. (A small seeded generator stands in for `proptest`,
//! which this build cannot fetch; each failure prints the seed of its case.)

use gstavaepurify::core::align::{self, Similarity};
use gstavaepurify::core::image::{FrameMut, FrameRef, PixelLayout, Region, square_box};
use ndarray::Array3;

/// xorshift64*: deterministic, seedable, no dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An f32 that is often special: NaN, infinities, zero, huge, tiny, negative.
    fn f32(&mut self) -> f32 {
        match self.below(10) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 0.0,
            4 => f32::MAX * if self.below(2) == 0 { 1.0 } else { -1.0 },
            5 => f32::MIN_POSITIVE,
            6 => -(self.below(1000) as f32),
            _ => (self.next() as i64 as f32) / (1u64 << self.below(63)) as f32,
        }
    }

    fn i64(&mut self) -> i64 {
        match self.below(6) {
            0 => i64::MAX - self.below(3) as i64,
            1 => i64::MIN + self.below(3) as i64,
            2 => -(self.below(500) as i64),
            _ => self.below(500) as i64,
        }
    }

    fn u32(&mut self) -> u32 {
        match self.below(5) {
            0 => u32::MAX - self.below(3) as u32,
            1 => 0,
            _ => self.below(400) as u32,
        }
    }
}

fn cases(count: u64, mut check: impl FnMut(u64, &mut Gen)) {
    for seed in 1..=count {
        let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        check(seed, &mut g);
    }
}

#[test]
fn square_box_is_none_or_inside_the_frame() {
    cases(50_000, |seed, g| {
        let (x, y, w, h, margin) = (g.i64(), g.i64(), g.u32(), g.u32(), g.f32());
        let (fw, fh) = (g.below(300) as usize, g.below(300) as usize);
        if let Some(b) = square_box(x, y, w, h, margin, fw, fh) {
            assert!(b.side >= 1, "seed {seed}: {b:?}");
            assert!(
                b.x + b.side <= fw && b.y + b.side <= fh,
                "seed {seed}: {b:?} outside {fw}x{fh} for ({x}, {y}, {w}, {h}, {margin})"
            );
        }
    });
}

#[test]
fn alignment_of_any_landmarks_is_none_or_a_usable_crop() {
    let (width, height) = (48usize, 40usize);
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let template: [[f32; 2]; 5] = [
        [0.35, 0.40],
        [0.65, 0.40],
        [0.50, 0.55],
        [0.38, 0.72],
        [0.62, 0.72],
    ];
    let side = 16usize;
    let dst = template.map(|[u, v]| [u * side as f32, v * side as f32]);
    cases(5_000, |seed, g| {
        let src: [[f32; 2]; 5] = std::array::from_fn(|_| {
            if g.below(3) == 0 {
                [g.f32(), g.f32()]
            } else {
                [g.below(width as u64) as f32, g.below(height as u64) as f32]
            }
        });
        let Some(to_face) = align::estimate_similarity(&src, &dst) else {
            return;
        };
        let frame = FrameRef {
            data: &pixels,
            width,
            height,
            stride: width * 3,
            layout: PixelLayout::Rgb,
        };
        let mut face = Array3::<f32>::zeros((3, side, side));
        // An error is fine; a panic is not, and a crop stays in range.
        if align::warp_face(&frame, &to_face, face.view_mut()).is_ok() {
            assert!(
                face.iter().all(|v| (-1.0..=1.0).contains(v)),
                "seed {seed}: crop out of range for {src:?}"
            );
        }
        let mut out = pixels.clone();
        let mut dest = FrameMut {
            data: &mut out,
            width,
            height,
            stride: width * 3,
            layout: PixelLayout::Rgb,
        };
        let _ = align::paste_face(&mut dest, &to_face, face.view(), 0.15);
    });
}

#[test]
fn any_similarity_warps_and_pastes_without_panicking() {
    let (width, height) = (20usize, 12usize);
    let pixels = vec![128u8; width * height * 4];
    cases(5_000, |_, g| {
        let t = Similarity {
            a: g.f32(),
            b: g.f32(),
            tx: g.f32(),
            ty: g.f32(),
        };
        let frame = FrameRef {
            data: &pixels,
            width,
            height,
            stride: width * 4,
            layout: PixelLayout::Rgba,
        };
        let mut face = Array3::<f32>::zeros((3, 8, 8));
        let _ = align::warp_face(&frame, &t, face.view_mut());
        let mut out = pixels.clone();
        let mut dest = FrameMut {
            data: &mut out,
            width,
            height,
            stride: width * 4,
            layout: PixelLayout::Rgba,
        };
        let _ = align::paste_face(&mut dest, &t, face.view(), g.f32());
        let region = Region {
            x: g.below(width as u64 + 3) as usize,
            y: g.below(height as u64 + 3) as usize,
            width: g.below(width as u64 + 3) as usize,
            height: g.below(height as u64 + 3) as usize,
        };
        // Out-of-frame or empty regions are errors, never a panic.
        let _ = gstavaepurify::core::image::pixelate(&mut dest, region, g.below(40) as usize);
    });
}

/// A copy of the tiny bundle's manifest with `field` set to `value`, loaded.
fn load_with(dir: &std::path::Path, field: &str, value: serde_json::Value) -> String {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("manifest.json")).unwrap()).unwrap();
    manifest[field] = value;
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    match gstavaepurify::bundle::Bundle::load(dir) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn manifest_fields_with_any_value_load_or_fail_naming_the_manifest() {
    let dir = std::env::temp_dir().join(format!("avae-properties-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny");
    for graph in ["encoder.onnx", "decoder.onnx", "purifier.onnx"] {
        std::fs::copy(source.join(graph), dir.join(graph)).unwrap();
    }
    let fields = [
        "format_version",
        "image_size",
        "encoder_input_size",
        "latent_dim",
        "skip_channels",
        "tau",
        "value_range",
        "decoder_flops",
        "landmark_template",
        "graphs",
        "preset",
    ];
    let mut g = Gen(0x5eed);
    for case in 0..600u64 {
        let field = fields[g.below(fields.len() as u64) as usize];
        let value = match g.below(9) {
            0 => serde_json::json!(-1),
            1 => serde_json::json!(u64::MAX),
            2 => serde_json::json!(1e300),
            3 => serde_json::json!("64"),
            4 => serde_json::Value::Null,
            5 => serde_json::to_value([[0.5f32, 0.5]; 5]).unwrap(),
            6 => serde_json::to_value([[-1.0f32, 2.0]; 5]).unwrap(),
            7 => serde_json::json!(g.below(200)),
            _ => serde_json::json!({"file": "../../etc/passwd", "sha256": "00"}),
        };
        let err = load_with(&dir, field, value.clone());
        if !err.is_empty() {
            assert!(
                err.contains("manifest.json") || err.contains(".onnx") || err.contains("passwd"),
                "case {case}: {field} = {value}: the error names no file: {err}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
