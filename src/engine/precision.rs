//! Decoder precision: which of a bundle's decoder graphs runs, `decoder.onnx` (fp32) or the
//! optional `decoder-int8.onnx` that `scripts/quantize.py` adds (int8 convolutions in QDQ form,
//! calibrated on training faces; README "Precision").
//!
//! [`choose`] decides from what was asked, what the bundle holds, the engine the fp32 decoder
//! opened on ([`Engine::describe`](super::Engine::describe)) and the CPU's dot-product
//! instructions ([`CpuFeatures::detect`]). `auto` takes int8 only where it was measured faster:
//! ONNX Runtime on the CPU with VNNI (its QLinearConv kernels use VNNI dot products); fp32 on
//! tract (whose int8 decoder was not measurably faster), on GPU providers and on CPUs
//! without VNNI. An explicit `int8` is honoured wherever the
//! bundle has a current int8 decoder; `bf16` always falls back to fp32 (neither engine has bf16
//! convolution kernels on the CPU, and no bundle ships a bf16 graph). Every fallback carries its
//! reason for the caller to log.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::Error;
use crate::bundle::{Bundle, GraphKind};

/// The decoder precision asked for (the `precision` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// int8 where it is faster (ONNX Runtime on a CPU with VNNI and a current int8 decoder in
    /// the bundle), fp32 otherwise.
    #[default]
    Auto,
    /// The bundle's `decoder.onnx`.
    Fp32,
    /// The bundle's `decoder-int8.onnx` (int8 convolutions).
    Int8,
    /// bf16: no engine here runs bf16 convolutions on the CPU; always falls back to fp32.
    Bf16,
}

impl Precision {
    /// The property nick: `auto`, `fp32`, `int8` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "fp32" | "f32" | "float" => Ok(Precision::Fp32),
            "int8" | "i8" => Ok(Precision::Int8),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::InvalidParameter {
                name: "precision",
                value: s.to_string(),
                expected: "one of auto, fp32, int8, bf16",
            }),
        }
    }
}

/// The CPU's low-precision dot-product instructions, as far as the choice needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// int8 dot products: AVX-512 VNNI or AVX-VNNI.
    pub vnni: bool,
    /// bf16 dot products: AVX-512 BF16.
    pub bf16: bool,
}

impl CpuFeatures {
    /// What this CPU has (all false off x86-64).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                vnni: std::arch::is_x86_feature_detected!("avx512vnni")
                    || std::arch::is_x86_feature_detected!("avxvnni"),
                bf16: std::arch::is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }

    fn describe(self) -> String {
        let has = |on: bool| if on { "yes" } else { "no" };
        format!("VNNI {}, AVX-512 BF16 {}", has(self.vnni), has(self.bf16))
    }
}

/// The decoder graph [`choose`] picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderChoice {
    /// What was asked.
    pub requested: Precision,
    /// What runs: [`Precision::Fp32`] or [`Precision::Int8`].
    pub precision: Precision,
    /// The graph file that runs.
    pub graph: PathBuf,
    /// One line saying what runs and why, for an INFO log.
    pub note: String,
    /// Set when an explicit `int8` or `bf16` could not be honoured: why, for a WARNING.
    pub fallback: Option<String>,
}

/// Why the bundle's int8 decoder cannot be used, or its path.
pub fn int8_decoder(bundle: &Bundle) -> Result<PathBuf, String> {
    let Some(path) = bundle.graph_path(GraphKind::DecoderInt8) else {
        return Err(format!(
            "the bundle {} has no int8 decoder (graphs.decoder_int8 in manifest.json; \
             add one with `scripts/quantize.py {}`)",
            bundle.dir.display(),
            bundle.dir.display()
        ));
    };
    let made_from = bundle
        .manifest
        .provenance
        .get("decoder_int8")
        .and_then(|p| p.get("decoder_sha256"))
        .and_then(|v| v.as_str());
    let decoder = &bundle.manifest.graphs.decoder.sha256;
    match made_from {
        Some(sha) if sha.eq_ignore_ascii_case(decoder) => Ok(path),
        Some(sha) => Err(format!(
            "{} was quantized from a decoder with sha256 {sha}, not this bundle's decoder.onnx \
             ({decoder}): stale after retraining, run `scripts/quantize.py {}` again",
            path.display(),
            bundle.dir.display()
        )),
        None => Err(format!(
            "{} has no provenance.decoder_int8.decoder_sha256 in manifest.json, so it cannot be \
             matched to decoder.onnx (run `scripts/quantize.py {}`)",
            path.display(),
            bundle.dir.display()
        )),
    }
}

/// Chooses the decoder graph for `requested` on the engine `running` (an
/// [`Engine::describe`](super::Engine::describe) of the fp32 decoder, e.g. `ort (CPU)`) with the
/// CPU's `cpu` features. Never fails: what cannot be honoured falls back to fp32 with a reason.
pub fn choose(
    bundle: &Bundle,
    requested: Precision,
    running: &str,
    cpu: CpuFeatures,
) -> DecoderChoice {
    let fp32 = bundle
        .graph_path(GraphKind::Decoder)
        .unwrap_or_else(|| bundle.dir.join("decoder.onnx"));
    let on_ort_cpu = running.starts_with("ort") && running.contains("CPU");
    let int8 = int8_decoder(bundle);
    let choice = |precision: Precision, graph: PathBuf, why: String, fallback: Option<String>| {
        DecoderChoice {
            requested,
            precision,
            note: format!(
                "precision={requested}: decoder {} ({precision}) on {running}; {why}",
                graph.display()
            ),
            graph,
            fallback,
        }
    };
    match requested {
        Precision::Fp32 => choice(Precision::Fp32, fp32, "as asked".into(), None),
        Precision::Int8 => match int8 {
            Ok(path) => {
                let why = if cpu.vnni {
                    "as asked".to_string()
                } else {
                    format!(
                        "as asked, but this CPU has no VNNI ({}): int8 may be slower than fp32",
                        cpu.describe()
                    )
                };
                choice(Precision::Int8, path, why, None)
            }
            Err(reason) => {
                let why = format!("precision=int8 unavailable, using fp32: {reason}");
                choice(Precision::Fp32, fp32, why.clone(), Some(why))
            }
        },
        Precision::Bf16 => {
            let why = format!(
                "precision=bf16 unavailable, using fp32: neither ONNX Runtime's nor tract's CPU \
                 kernels run bf16 convolutions and bundles hold no bf16 decoder (CPU: {})",
                cpu.describe()
            );
            choice(Precision::Fp32, fp32, why.clone(), Some(why))
        }
        Precision::Auto => match int8 {
            Ok(path) if on_ort_cpu && cpu.vnni => choice(
                Precision::Int8,
                path,
                format!(
                    "auto: ONNX Runtime on a CPU with int8 dot products ({})",
                    cpu.describe()
                ),
                None,
            ),
            Ok(_) if !on_ort_cpu => choice(
                Precision::Fp32,
                fp32,
                "auto: the int8 decoder is used only by ONNX Runtime on the CPU (on tract it \
                 was not measurably faster than fp32; GPU providers run the fp32 graphs)"
                    .into(),
                None,
            ),
            Ok(_) => choice(
                Precision::Fp32,
                fp32,
                format!(
                    "auto: this CPU has no int8 dot products ({})",
                    cpu.describe()
                ),
                None,
            ),
            Err(reason) => choice(Precision::Fp32, fp32, format!("auto: {reason}"), None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VNNI: CpuFeatures = CpuFeatures {
        vnni: true,
        bf16: true,
    };
    const PLAIN: CpuFeatures = CpuFeatures {
        vnni: false,
        bf16: false,
    };

    fn shipped() -> Bundle {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/avae-cpu");
        Bundle::load(&dir).expect("the shipped bundle loads")
    }

    fn tiny() -> Bundle {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny");
        Bundle::load(&dir).expect("the tiny bundle loads")
    }

    #[test]
    fn parses_property_values() {
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("bfloat16".parse::<Precision>().unwrap(), Precision::Bf16);
        let err = "fp8".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("precision") && err.contains("fp8"), "{err}");
    }

    #[test]
    fn auto_takes_int8_only_on_ort_cpu_with_vnni() {
        let b = shipped();
        let int8 = |running: &str, cpu| choose(&b, Precision::Auto, running, cpu).precision;
        assert_eq!(int8("ort (CPU)", VNNI), Precision::Int8);
        assert_eq!(int8("ort (CPU)", PLAIN), Precision::Fp32);
        assert_eq!(int8("tract (CPU)", VNNI), Precision::Fp32);
        assert_eq!(int8("ort (CUDA)", VNNI), Precision::Fp32);
        let c = choose(&b, Precision::Auto, "ort (CPU)", VNNI);
        assert!(c.graph.ends_with("decoder-int8.onnx") && c.fallback.is_none());
        assert!(c.note.contains("VNNI yes"), "{}", c.note);
    }

    #[test]
    fn explicit_choices_and_their_fallbacks() {
        let b = shipped();
        let c = choose(&b, Precision::Int8, "tract (CPU)", PLAIN);
        assert_eq!((c.precision, c.fallback.is_none()), (Precision::Int8, true));
        assert!(c.note.contains("may be slower"), "{}", c.note);
        let c = choose(&b, Precision::Fp32, "ort (CPU)", VNNI);
        assert!(c.graph.ends_with("decoder.onnx") && c.fallback.is_none());
        let c = choose(&b, Precision::Bf16, "ort (CPU)", VNNI);
        assert_eq!(c.precision, Precision::Fp32);
        assert!(c.fallback.as_deref().unwrap().contains("bf16"), "{c:?}");
    }

    #[test]
    fn a_bundle_without_int8_falls_back_to_fp32() {
        let b = tiny();
        let c = choose(&b, Precision::Auto, "ort (CPU)", VNNI);
        assert_eq!((c.precision, c.fallback), (Precision::Fp32, None));
        let c = choose(&b, Precision::Int8, "ort (CPU)", VNNI);
        assert_eq!(c.precision, Precision::Fp32);
        let why = c.fallback.unwrap();
        assert!(
            why.contains("no int8 decoder") && why.contains("quantize.py"),
            "{why}"
        );
    }

    #[test]
    fn a_stale_int8_decoder_is_refused() {
        let mut b = shipped();
        b.manifest.graphs.decoder.sha256 = "0".repeat(64);
        let why = int8_decoder(&b).unwrap_err();
        assert!(
            why.contains("stale") && why.contains("decoder-int8.onnx"),
            "{why}"
        );
        b.manifest.provenance.remove("decoder_int8");
        let why = int8_decoder(&b).unwrap_err();
        assert!(why.contains("decoder_sha256"), "{why}");
    }
}
