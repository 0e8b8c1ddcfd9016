//! The image threat model in the full evaluation, and the report's headline.
//!
//! The attacker perturbs the whole photo (see [`crate::threat`]); every defense runs as the
//! element runs it (alignment onto the bundle's template, the defense, the feathered paste-back,
//! then the recognizer's own alignment of the pasted photo). Per defense: clean, grey-box FGSM
//! 4 / 8, PGD 8 and C&W (gradients of the undefended system), and, on the A-VAE row, the
//! strengthened white-box attack: BPDA through the purifier with EOT over K draws, random start,
//! a pair broken if any iterate broke it, on `whitebox_pairs` pairs spread over the test pairs,
//! resumable (each finished chunk is kept under `<report>/cache/`). Every row is then evaluated
//! on those white-box photos too: the transfer attack. The grey-box rows are the lab's
//! ([`crate::lab::run_space`]) with more conditions and every baseline.

use anyhow::{Context, Result};
use gstavaepurify::bundle::Bundle;
use serde::Serialize;

use super::{Condition, EvalOptions, EvalSummary, PairSets};
use crate::attack::PgdParams;
use crate::defense::{AVaeDefense, Defense};
use crate::lab::{self, LabDefense, LabRow, Plan};
use crate::threat::{PastePipeline, ThreatModel};

/// The image stage's white-box attack: stronger than the crop tables' (issue 10).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ImageOptions {
    /// Test pairs the white-box attack runs on (spread evenly; at most all of them).
    pub whitebox_pairs: usize,
    /// K: purifier draws per EOT gradient.
    pub eot: usize,
    /// White-box PGD (eps 8/255).
    pub whitebox_pgd: PgdParams,
}

/// Conditions of the image stage, by lab key.
const GREY: &[&str] = &["fgsm4", "fgsm8", "pgd8", "cw"];

/// The image threat model's rows: no defense, A-VAE at the shipped defaults, every baseline.
pub(super) fn rows(opts: &EvalOptions) -> Result<Vec<LabRow>> {
    let bundle = Bundle::load(&opts.bundle)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = bundle.manifest.image_size;
    let sets = PairSets::load(opts, size)?;
    let same = sets.same.clone();
    let (crop_spec, [image, _crop]) = lab::spaces(opts, sets)?;
    let template = bundle.manifest.landmark_template;
    let row = |name: String, defense: Defense| LabDefense {
        name,
        provenance: String::new(),
        defense,
        template,
        context: opts.context[0],
        context_detail: opts.context_detail[0].unwrap_or(bundle.manifest.encoder_input_size),
    };
    let avae = Defense::AVae(Box::new(
        AVaeDefense::load(&opts.bundle, opts.backend, opts.purify, opts.passes)?
            .with_selection_block(opts.select_block)?
            .with_suspect_blur(opts.suspect_blur)?,
    ));
    let mut defenses = vec![row("none".into(), Defense::None), row(avae.label(), avae)];
    defenses.extend(Defense::baselines().into_iter().map(|d| row(d.label(), d)));
    let plan = Plan {
        grey: GREY,
        whitebox_pairs: opts.image.whitebox_pairs,
        eot: opts.image.eot,
        whitebox_pgd: opts.image.whitebox_pgd,
        transfer: true,
        cache: Some(opts.report.join("cache")),
    };
    let pipeline = PastePipeline {
        passes: opts.passes,
        ..PastePipeline::new(
            size,
            opts.feather,
            opts.context[0],
            opts.context_detail[0].unwrap_or(bundle.manifest.encoder_input_size),
        )
    };
    lab::run_space(
        &image,
        &mut defenses,
        &same,
        &pipeline,
        &crop_spec,
        opts,
        &plan,
    )
}

/// The figures a reader looks for first: average accuracy over the test pairs, image threat
/// model, at the shipped defaults (issue 10, point 5).
#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    /// No defense, clean photos.
    pub clean_none: f64,
    /// A-VAE, clean photos.
    pub clean_avae: f64,
    /// A-VAE under grey-box FGSM 8/255.
    pub fgsm8: f64,
    /// A-VAE under grey-box PGD 8/255.
    pub pgd8: f64,
    /// A-VAE under grey-box C&W L2.
    pub cw: f64,
    /// A-VAE under white-box BPDA + EOT PGD 8/255 (any iterate), on `whitebox_pairs` pairs.
    pub whitebox_pgd8: Option<f64>,
    /// The best baseline under grey-box PGD 8/255.
    pub best_baseline_pgd8: f64,
    /// Which baseline that is.
    pub best_baseline: String,
    /// A-VAE under grey-box PGD 8/255 in the crop threat model (Table 1).
    pub crop_pgd8: Option<f64>,
    /// M.
    pub samples: usize,
    /// The KL clip tau.
    pub tau: f32,
    /// The element's `passes` (both threat models).
    pub passes: usize,
    /// The element's `context` (image threat model).
    pub context: f32,
    /// The element's `suspect-blur` (image threat model; crop pixels, 0: off).
    pub suspect_blur: f32,
    /// Test pairs of the image rows.
    pub pairs: usize,
    /// Pairs, K and steps of the white-box attack.
    pub whitebox_pairs: Option<usize>,
    /// K of the white-box EOT.
    pub eot: usize,
    /// Steps of the white-box PGD.
    pub whitebox_steps: usize,
}

/// The headline from the image rows (none first, A-VAE second, then the baselines) and the crop
/// tables of `summary`.
pub(super) fn headline(rows: &[LabRow], summary: &EvalSummary) -> Option<Headline> {
    let opts = &summary.options;
    let none = rows.first()?;
    let avae = rows.get(1)?;
    let acc = |r: &LabRow, k: &str| r.accuracy.get(k).copied().unwrap_or(f64::NAN);
    let best = rows[2..]
        .iter()
        .max_by(|a, b| acc(a, "pgd8").total_cmp(&acc(b, "pgd8")))?;
    let crop_pgd8 = summary
        .tables
        .first()
        .and_then(|t| t.rows.iter().find(|r| r.key == "avae"))
        .and_then(|r| r.cells.get(&Condition::Pgd8))
        .map(|c| c.average);
    Some(Headline {
        clean_none: acc(none, "clean"),
        clean_avae: acc(avae, "clean"),
        fgsm8: acc(avae, "fgsm8"),
        pgd8: acc(avae, "pgd8"),
        cw: acc(avae, "cw"),
        whitebox_pgd8: avae.accuracy.get("bpda_pgd8").copied(),
        best_baseline_pgd8: acc(best, "pgd8"),
        best_baseline: best.defense.clone(),
        crop_pgd8,
        samples: opts.purify.samples,
        tau: opts.purify.tau,
        passes: opts.passes,
        context: opts.context[0],
        suspect_blur: opts.suspect_blur,
        pairs: opts.pairs,
        whitebox_pairs: avae.whitebox_pairs,
        eot: opts.image.eot,
        whitebox_steps: opts.image.whitebox_pgd.steps,
    })
}

/// The image threat model's table and the headline, as Markdown for the report.
pub(crate) fn markdown(summary: &EvalSummary) -> String {
    let opts = &summary.options;
    let mut out = String::new();
    if let Some(h) = &summary.headline {
        out.push_str(&format!(
            "**Headline** (image threat model, {} test pairs, M = {}, tau = {}, {} pass(es), \
             context {}, suspect blur {}): no defense \
             {:.3} clean; A-VAE {:.3} clean, FGSM 8 {:.3}, PGD 8 {:.3}, C&W {:.3}, white-box \
             BPDA + EOT PGD 8 {} ({} pairs, K = {}, {} steps); best baseline under PGD 8: {} \
             {:.3}; crop threat model PGD 8 {}.\n\n",
            h.pairs,
            h.samples,
            h.tau,
            h.passes,
            h.context,
            h.suspect_blur,
            h.clean_none,
            h.clean_avae,
            h.fgsm8,
            h.pgd8,
            h.cw,
            h.whitebox_pgd8
                .map_or("not run".to_owned(), |v| format!("{v:.3}")),
            h.whitebox_pairs.unwrap_or(0),
            h.eot,
            h.whitebox_steps,
            h.best_baseline,
            h.best_baseline_pgd8,
            h.crop_pgd8.map_or("-".to_owned(), |v| format!("{v:.3}")),
        ));
    }
    if summary.image.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{}: every defense runs as the element does (alignment, defense, feathered paste-back, \
         then the recognizer's alignment). Grey-box attacks use \
         the undefended system's gradient; white-box is BPDA + EOT (K = {}, {} steps of PGD 8, \
         random start, a pair broken if any iterate broke it; the kept iterate in brackets: a broken pair stops at the iterate that broke it) on {} \
         pairs; transfer: every defense on those white-box photos.\n\n| defense | clean | FGSM 4 \
         | FGSM 8 | PGD 8 | C&W L2 | white-box PGD 8 | transfer | PSNR dB | ms/face |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ThreatModel::Image.label(),
        opts.image.eot,
        opts.image.whitebox_pgd.steps,
        summary
            .image
            .iter()
            .find_map(|r| r.whitebox_pairs)
            .unwrap_or(0)
    ));
    let f = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for r in &summary.image {
        let a = |k: &str| f(r.accuracy.get(k).copied(), 3);
        let white = match (
            r.accuracy.get("bpda_pgd8"),
            r.accuracy.get("bpda_pgd8_final"),
        ) {
            (Some(any), Some(last)) => format!("{any:.3} ({last:.3})"),
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {white} | {} | {} | {} |\n",
            r.defense,
            a("clean"),
            a("fgsm4"),
            a("fgsm8"),
            a("pgd8"),
            a("cw"),
            a("transfer_pgd8"),
            f(r.psnr_db, 2),
            f(r.ms_per_face, 1)
        ));
        if r.accuracy.contains_key(&lab::reuse_key("clean")) {
            let reused = |k: &str| a(&lab::reuse_key(k));
            out.push_str(&format!(
                "| {}, {} | {} | {} | {} | {} | {} | - | - | - | - |\n",
                r.defense,
                lab::REUSE_ROW,
                reused("clean"),
                reused("fgsm4"),
                reused("fgsm8"),
                reused("pgd8"),
                reused("cw"),
            ));
        }
    }
    out.push('\n');
    out
}
