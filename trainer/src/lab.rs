//! `trainer eval --lab`: the robustness lab, a quick side-by-side comparison of bundles.
//!
//! One row per bundle (plus no defense and the 32x32 down-up baseline), on the first `--pairs`
//! (200) fold-1 pairs, under both threat models of [`crate::threat`]: *image* (the attacker
//! perturbs the photo; the defended system is the element's alignment, the defense, the
//! feathered paste-back and the recognizer's alignment of the pasted photo) and *crop* (the
//! attacker perturbs the `S x S` crop the purifier sees). For each: clean accuracy, grey-box
//! FGSM 8 and PGD 8 (gradient of the undefended system, computed once per threat model and
//! shared by every row), white-box BPDA PGD 8 against each bundle (the defense's backward pass
//! is the identity, the rest of the system is differentiable; K = `--eot` draws, random start,
//! a pair counts as broken if any iterate broke it), PSNR of the defended clean probes
//! against the clean probes (of the crop, or of the whole photo), and milliseconds per face at
//! the lab's M. Thresholds are set per row and threat model at 1% FAR on clean impostor pairs of
//! folds 2-10, as in the full evaluation.
//!
//! The figure that decides between bundles is image-model grey-box PGD 8 at clean accuracy
//! >= 0.95.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use gstavaepurify::bundle::Bundle;
use gstavaepurify::purifier::PurifyParams;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tch::{Kind, Tensor};

use anyhow::ensure;
use gstavaepurify::frame::{Latents, Placement};
use gstavaepurify::purifier::{Chosen, Purified};

use crate::alarm::{self, AlarmFigures};
use crate::attack::{self, Bpda, BreakMonitor, GreyBox, LossGradient, Target, fgsm, pgd};
use crate::chunk;
use crate::data::{progress_bar, write_atomic};
use crate::defense::{AVaeDefense, Defense, quantize};
use crate::eval::{
    EvalOptions, PairSets, TARGET_FAR, mark_broken, mix, scores_of, stream, threshold_at_far,
    verify,
};
use crate::recognizer::{Landmarks, Recognizer};
use crate::threat::{self, PastePipeline, PhotoBpda, ThreatModel};

/// Fold-1 pairs of a lab run.
pub const PAIRS: usize = 200;
/// Calibration impostor pairs of a lab run.
pub const CALIB_PAIRS: usize = 300;
/// A-VAE samples M of a lab run (the element's default).
pub const SAMPLES: usize = 16;

/// What one pass over a threat model measures: the lab's quick set, or the full evaluation's
/// image-model tables ([`crate::eval`]).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Grey-box conditions besides `clean`, by key: `fgsm4`, `fgsm8`, `pgd8`, `cw`.
    pub grey: &'static [&'static str],
    /// White-box (BPDA + EOT) PGD 8 runs on this many pairs, spread evenly over the pairs (half
    /// same-identity, half different); `usize::MAX` for all of them.
    pub whitebox_pairs: usize,
    /// K of the white-box EOT gradient.
    pub eot: usize,
    /// White-box PGD settings.
    pub whitebox_pgd: attack::PgdParams,
    /// Whether every row is also evaluated on the white-box probes made against the first
    /// random (A-VAE) row: the transfer attack (`transfer_pgd8`).
    pub transfer: bool,
    /// Folder where each chunk of white-box probes is kept as it finishes, so that a run that
    /// stops resumes from there (`None`: nothing kept).
    pub cache: Option<PathBuf>,
}

impl Plan {
    /// The lab's: FGSM 8, PGD 8 and BPDA PGD 8 on every pair, nothing kept.
    fn lab(opts: &EvalOptions) -> Self {
        Self {
            grey: &["fgsm8", "pgd8"],
            whitebox_pairs: usize::MAX,
            eot: opts.eot,
            whitebox_pgd: opts.whitebox_pgd,
            transfer: false,
            cache: None,
        }
    }
}

/// One row of the lab table.
#[derive(Debug, Clone, Serialize)]
pub struct LabRow {
    /// What the attacker perturbs (`image` or `crop` in JSON).
    pub threat_model: ThreatModel,
    /// What the row is (`none`, `down-up 32`, or the bundle folder).
    pub defense: String,
    /// Training provenance of the bundle (steps, objective), if any.
    pub provenance: String,
    /// Threshold at 1% FAR.
    pub threshold: f64,
    /// Average accuracy by condition (`clean`, `fgsm8`, `pgd8`, `bpda_pgd8`).
    pub accuracy: BTreeMap<String, f64>,
    /// PSNR (dB) of the defended clean probes against the clean probes.
    pub psnr_db: Option<f64>,
    /// Wall milliseconds per face of the defense on the clean probes.
    pub ms_per_face: Option<f64>,
    /// Pairs the white-box attack ran on (`None`: not run on this row).
    pub whitebox_pairs: Option<usize>,
    /// A-VAE rows: the alarm's figures by score combination and attack (fitted on the clean
    /// calibration faces, negatives the clean probes).
    pub alarm: BTreeMap<String, BTreeMap<String, AlarmFigures>>,
}

/// Mean PSNR in dB of `a` against `b` (both in [-1, 1]).
fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    let mse = ((a - b) / 2.0)
        .square()
        .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
        .clamp_min(1e-10);
    (mse.log10() * -10.0).mean(Kind::Float).double_value(&[])
}

/// One threat model's faces: what the attacker perturbs (crops or photos), how the recognizer
/// aligns them, and, for photos, where the element finds the face.
pub(crate) struct Space {
    model: ThreatModel,
    recognizer: Recognizer,
    /// Gallery, probe, calibration a and b inputs, in [`PairSets::indices`] order.
    inputs: [Tensor; 4],
    /// Their recognizer warps.
    aligns: [Tensor; 4],
    /// Their landmarks (for the element's placements on photos).
    landmarks: [Vec<Option<Landmarks>>; 4],
}

const GALLERY: usize = 0;
const PROBE: usize = 1;
const CALIB_A: usize = 2;
const CALIB_B: usize = 3;

/// A defense of the table and what the image model needs to run it as the element does.
pub(crate) struct LabDefense {
    pub name: String,
    pub provenance: String,
    pub defense: Defense,
    /// The bundle's landmark template (the first bundle's for the baselines).
    pub template: Option<[[f32; 2]; 5]>,
    /// The element's `context` for this row (image threat model).
    pub context: f32,
    /// Samples per face side of the context's low-pass (the bundle's encoder input size).
    pub context_detail: usize,
}

/// The row of the bundle in `dir` (faces of side `size`) with the element's `context`, its
/// name ending in `suffix`.
fn bundle_row(
    dir: &std::path::Path,
    size: usize,
    context: f32,
    suffix: &str,
    opts: &EvalOptions,
) -> Result<LabDefense> {
    let bundle =
        Bundle::load(dir).with_context(|| format!("cannot load the bundle '{}'", dir.display()))?;
    ensure!(
        bundle.manifest.image_size == size,
        "the bundle '{}' has image_size {}, the first has {size}: the lab compares bundles \
         of one face size",
        dir.display(),
        bundle.manifest.image_size
    );
    let params = PurifyParams {
        tau: opts.tau_given.unwrap_or(bundle.manifest.tau),
        ..opts.purify
    };
    let prov = &bundle.manifest.provenance;
    let provenance = ["steps", "objective"]
        .iter()
        .filter_map(|k| {
            prov.get(*k)
                .map(|v| format!("{k} {}", v.as_str().map_or(v.to_string(), str::to_owned)))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let avae = AVaeDefense::load(dir, opts.backend, params, opts.passes)?
        .with_selection_block(opts.select_block)?
        .with_suspect_blur(opts.suspect_blur)?;
    let select = if opts.select_block > 1 {
        format!(", chosen at {0}x{0} blocks", opts.select_block)
    } else {
        String::new()
    } + &avae.suspect_note();
    Ok(LabDefense {
        name: format!("{} (tau {:.3}{select}){suffix}", dir.display(), params.tau),
        provenance,
        defense: Defense::AVae(Box::new(avae)),
        template: bundle.manifest.landmark_template,
        context,
        context_detail: bundle.manifest.encoder_input_size,
    })
}

impl Space {
    /// The element's placements of the faces of input set `which` for `template`.
    fn placements(
        &self,
        which: usize,
        template: Option<&[[f32; 2]; 5]>,
        crop: &crate::data::CropSpec,
        side: usize,
    ) -> Result<Vec<Placement>> {
        match self.model {
            ThreatModel::Crop => Ok(Vec::new()),
            ThreatModel::Image => threat::placements(&self.landmarks[which], template, crop, side),
        }
    }

    /// Defends `x` (with its faces at `places` on photos) as this threat model's defended
    /// system does.
    fn defend(
        &self,
        defense: &mut Defense,
        pipeline: &PastePipeline,
        x: &Tensor,
        places: &[Placement],
        seeds: &[u64],
    ) -> Result<Tensor> {
        match self.model {
            ThreatModel::Crop => defense.apply(x, seeds),
            ThreatModel::Image => pipeline.apply(defense, x, places, seeds),
        }
    }

    /// Defended unit embeddings of `x`, a chunk at a time.
    #[allow(clippy::too_many_arguments)]
    fn embeddings(
        &self,
        defense: &mut Defense,
        pipeline: &PastePipeline,
        x: &Tensor,
        align: &Tensor,
        places: &[Placement],
        seeds: &[u64],
        chunk: usize,
    ) -> Result<Tensor> {
        self.embed_chunks(x, align, chunk, |range, rows| {
            let p = if places.is_empty() {
                &[][..]
            } else {
                &places[range.clone()]
            };
            self.defend(defense, pipeline, rows, p, &seeds[range])
        })
    }

    /// Defended unit embeddings of photos `x` on A-VAE's reuse path: each face decoded, pass
    /// by pass, from its latents `kept` (chosen on another photo of it) with this photo's own
    /// encoding, as `avaepurify` decodes a tracked face between refreshes.
    #[allow(clippy::too_many_arguments)]
    fn embeddings_reused(
        &self,
        defense: &mut Defense,
        pipeline: &PastePipeline,
        x: &Tensor,
        align: &Tensor,
        places: &[Placement],
        kept: &[Vec<Chosen>],
        chunk: usize,
    ) -> Result<Tensor> {
        let seeds = vec![0; places.len()];
        self.embed_chunks(x, align, chunk, |range, rows| {
            pipeline.apply_with(
                defense,
                rows,
                &places[range.clone()],
                &seeds[range.clone()],
                Latents::Reuse(&kept[range]),
            )
        })
    }

    /// The recognizer's unit embeddings of `defend(rows, x's rows)`, `chunk` rows at a time
    /// (`align` the rows' alignment).
    fn embed_chunks(
        &self,
        x: &Tensor,
        align: &Tensor,
        chunk: usize,
        mut defend: impl FnMut(std::ops::Range<usize>, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = x.size()[0] as usize;
        let mut parts = Vec::new();
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.min(n - start);
            let rows = |t: &Tensor| t.narrow(0, start as i64, len as i64);
            let defended = defend(start..start + len, &rows(x))?;
            parts.push(
                self.recognizer
                    .embed_all(&defended, &rows(align), len as i64)?,
            );
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

/// A row's accuracy key of condition `cond` on A-VAE's reuse path (`reuse_clean`,
/// `reuse_pgd8`, ...).
pub(crate) fn reuse_key(cond: &str) -> String {
    format!("reuse_{cond}")
}

/// How the tables name the reuse path's line.
pub(crate) const REUSE_ROW: &str =
    "reuse path (latents chosen on the clean probe, decoded with the attacked one's encoding)";

/// Runs the lab and writes `lab.md` and `lab.json` into the report folder.
pub fn run(opts: &EvalOptions) -> Result<()> {
    let start = Instant::now();
    let first = Bundle::load(&opts.bundle)
        .with_context(|| format!("cannot load the bundle '{}'", opts.bundle.display()))?;
    let size = first.manifest.image_size;
    let sets = PairSets::load(opts, size)?;
    let n = sets.same.len();
    println!(
        "lab: {n} fold-1 pairs, {} calibration pairs, M = {}, {} bundle(s), context {:?}, \
         threat models {:?}",
        sets.calib_len,
        opts.purify.samples,
        opts.lab_bundles.len(),
        opts.context,
        opts.lab_threat_models
    );

    let detail = first.manifest.encoder_input_size;
    // The rows of every context value: the image threat model runs them all, the crop threat
    // model (where the element's paste-back plays no part) those of the first.
    let combos: Vec<(f32, Option<usize>)> = opts
        .context
        .iter()
        .flat_map(|&c| opts.context_detail.iter().map(move |&d| (c, d)))
        .collect();
    let several = combos.len() > 1;
    let mut defenses = Vec::new();
    let mut first_context_rows = 0;
    for (k, &(context, given_detail)) in combos.iter().enumerate() {
        let suffix = match (several, given_detail) {
            (false, _) => String::new(),
            (true, None) => format!(", context {context}"),
            (true, Some(d)) => format!(", context {context} at {d}"),
        };
        if k == 0 {
            defenses.push(LabDefense {
                name: "none".into(),
                provenance: String::new(),
                defense: Defense::None,
                template: first.manifest.landmark_template,
                context: 0.0,
                context_detail: detail,
            });
        }
        defenses.push(LabDefense {
            name: format!("down-up 32{suffix}"),
            provenance: String::new(),
            defense: Defense::DownUp { size: 32 },
            template: first.manifest.landmark_template,
            context,
            context_detail: given_detail.unwrap_or(detail),
        });
        for dir in &opts.lab_bundles {
            let mut row = bundle_row(dir, size, context, &suffix, opts)?;
            row.context_detail = given_detail.unwrap_or(row.context_detail);
            defenses.push(row);
        }
        if k == 0 {
            first_context_rows = defenses.len();
        }
    }

    let same = sets.same.clone();
    let calib_len = sets.calib_len;
    let (crop_spec, [image, crop]) = spaces(opts, sets)?;
    let pipeline = PastePipeline {
        passes: opts.passes,
        ..PastePipeline::new(size, opts.feather, 0.0, detail)
    };

    let plan = Plan::lab(opts);
    let mut rows = Vec::new();
    for space in [&image, &crop] {
        if !opts.lab_threat_models.contains(&space.model) {
            continue;
        }
        let take = if space.model == ThreatModel::Image {
            defenses.len()
        } else {
            first_context_rows
        };
        rows.extend(run_space(
            space,
            &mut defenses[..take],
            &same,
            &pipeline,
            &crop_spec,
            opts,
            &plan,
        )?);
    }

    let table = render(&rows, opts);
    println!("{table}");
    fs::create_dir_all(&opts.report)
        .with_context(|| format!("cannot create '{}'", opts.report.display()))?;
    let md: PathBuf = opts.report.join("lab.md");
    write_atomic(&md, table.as_bytes())?;
    let json = serde_json::json!({
        "command": opts.command,
        "pairs": n,
        "calibration_pairs": calib_len,
        "samples": opts.purify.samples,
        "pgd": opts.pgd,
        "whitebox_pgd": opts.whitebox_pgd,
        "eot": opts.eot,
        "feather": opts.feather,
        "context": opts.context,
        "context_detail": opts.context_detail,
        "passes": opts.passes,
        "suspect_blur": opts.suspect_blur,
        "select_block": opts.select_block,
        "threat_models": opts.lab_threat_models,
        "rows": rows,
        "wall_seconds": start.elapsed().as_secs_f64(),
    });
    write_atomic(
        &opts.report.join("lab.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!(
        "wrote {} and lab.json in {:.0} s",
        md.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The image and crop threat models' faces of `sets` (the photos behind the crops, aligned for
/// the recognizer), and the crop cache's crop box.
pub(crate) fn spaces(
    opts: &EvalOptions,
    sets: PairSets,
) -> Result<(crate::data::CropSpec, [Space; 2])> {
    let crop_spec = sets.set.index.crop;
    let photos = sets
        .indices
        .each_ref()
        .map(|idx| threat::load_photos(&sets.set, idx));
    let [pg, pp, pa, pb] = photos;
    let photo_recognizer = threat::photo_recognizer(&opts.recognizer, opts.alignment)?;
    let photo_aligns = sets
        .landmarks
        .each_ref()
        .map(|l| photo_recognizer.align_for(l));
    let [ag, ap, aa, ab] = photo_aligns;
    let image = Space {
        model: ThreatModel::Image,
        recognizer: photo_recognizer,
        inputs: [pg?, pp?, pa?, pb?],
        aligns: [ag?, ap?, aa?, ab?],
        landmarks: sets.landmarks.clone(),
    };
    let crop = Space {
        model: ThreatModel::Crop,
        recognizer: sets.recognizer,
        inputs: [sets.gallery, sets.probe, sets.calib_a, sets.calib_b],
        aligns: [
            sets.align_gallery,
            sets.align_probe,
            sets.align_calib_a,
            sets.align_calib_b,
        ],
        landmarks: sets.landmarks,
    };
    Ok((crop_spec, [image, crop]))
}

/// The grey-box probes of one threat model (gradient of its undefended system; C&W aims at the
/// undefended system's 1% FAR threshold), by condition: `clean` and those of `plan`.
fn grey_box_probes(
    space: &Space,
    same: &[bool],
    opts: &EvalOptions,
    plan: &Plan,
) -> Result<BTreeMap<&'static str, Tensor>> {
    let t = Instant::now();
    let n = same.len();
    let chunk = opts.chunk;
    let (gallery, probe) = (&space.inputs[GALLERY], &space.inputs[PROBE]);
    let clean_gallery =
        space
            .recognizer
            .embed_all(gallery, &space.aligns[GALLERY], chunk as i64)?;
    let wants = |key: &str| plan.grey.contains(&key);
    let undefended_threshold = if wants("cw") {
        let embed = |w: usize| {
            space
                .recognizer
                .embed_all(&space.inputs[w], &space.aligns[w], chunk as i64)
        };
        threshold_at_far(&scores_of(&embed(CALIB_A)?, &embed(CALIB_B)?)?, TARGET_FAR)
    } else {
        0.0
    };
    let mut rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK, space.model as u64]));
    let mut parts: BTreeMap<&str, Vec<Tensor>> = BTreeMap::new();
    let bar = progress_bar(
        n as u64,
        &format!("grey-box attacks ({})", space.model.key()),
    );
    for first_pair in (0..n).step_by(chunk) {
        let len = chunk.min(n - first_pair);
        let rows = |t: &Tensor| t.narrow(0, first_pair as i64, len as i64);
        let x = rows(probe);
        let target = Target::new(
            &rows(&clean_gallery),
            &same[first_pair..first_pair + len],
            &rows(&space.aligns[PROBE]),
        );
        let mut grey = GreyBox {
            recognizer: &space.recognizer,
            target: &target,
        };
        let (_, grad) = grey.loss_and_grad(&x)?;
        for &key in plan.grey {
            let adv = match key {
                "fgsm4" => fgsm(&x, &grad, attack::unit_eps(4.0)),
                "fgsm8" => fgsm(&x, &grad, attack::unit_eps(8.0)),
                "pgd8" => pgd(&x, &opts.pgd, &mut grey, &mut rng)?,
                "cw" => attack::carlini_wagner(
                    &x,
                    &target.sign,
                    undefended_threshold,
                    &opts.cw,
                    &mut grey,
                )?,
                other => anyhow::bail!("internal error: no grey-box attack '{other}'"),
            };
            parts.entry(key).or_default().push(quantize(&adv));
        }
        bar.inc(len as u64);
    }
    bar.finish();
    let mut probes: BTreeMap<&str, Tensor> = parts
        .into_iter()
        .map(|(k, v)| (k, Tensor::cat(&v, 0)))
        .collect();
    probes.insert("clean", probe.shallow_clone());
    println!(
        "grey-box attacks ({}): {:.0} s",
        space.model.key(),
        t.elapsed().as_secs_f64()
    );
    Ok(probes)
}

/// The rows of one threat model.
#[allow(clippy::too_many_lines)]
pub(crate) fn run_space(
    space: &Space,
    defenses: &mut [LabDefense],
    same: &[bool],
    pipeline: &PastePipeline,
    crop_spec: &crate::data::CropSpec,
    opts: &EvalOptions,
    plan: &Plan,
) -> Result<Vec<LabRow>> {
    let n = same.len();
    let chunk = opts.chunk;
    let probes = grey_box_probes(space, same, opts, plan)?;
    let subset = Subset::new(n, plan.whitebox_pairs, same);
    // Per row, what the transfer attack needs: gallery embeddings, threshold, probe placements.
    let mut transfer_inputs: Vec<(Tensor, f64, Vec<Placement>)> = Vec::new();
    let mut transfer_probes: Option<Tensor> = None;
    let seeds = |s: u64, c: u64, count: usize| -> Vec<u64> {
        (0..count as u64)
            .map(|k| mix(opts.seed, &[s, c, k]))
            .collect()
    };
    let side = pipeline.side;
    let mut rows = Vec::new();
    for (d, lab) in defenses.iter_mut().enumerate() {
        let t = Instant::now();
        let row_pipeline = PastePipeline {
            context: lab.context,
            context_detail: lab.context_detail,
            ..*pipeline
        };
        let pipeline = &row_pipeline;
        let template = lab.template;
        let places = [GALLERY, PROBE, CALIB_A, CALIB_B]
            .map(|w| space.placements(w, template.as_ref(), crop_spec, side));
        let [pl_g, pl_p, pl_a, pl_b] = places;
        let (pl_g, pl_p, pl_a, pl_b) = (pl_g?, pl_p?, pl_a?, pl_b?);
        let defense = &mut lab.defense;
        let embed = |defense: &mut Defense,
                     which: usize,
                     x: &Tensor,
                     places: &[Placement],
                     seeds: &[u64]|
         -> Result<Tensor> {
            space.embeddings(
                defense,
                pipeline,
                x,
                &space.aligns[which],
                places,
                seeds,
                chunk,
            )
        };
        take_log(defense);
        let ea = embed(
            defense,
            CALIB_A,
            &space.inputs[CALIB_A],
            &pl_a,
            &seeds(stream::CALIB, 0, space.landmarks[CALIB_A].len()),
        )?;
        let clean_calib = take_log(defense);
        let eb = embed(
            defense,
            CALIB_B,
            &space.inputs[CALIB_B],
            &pl_b,
            &seeds(stream::CALIB, 1, space.landmarks[CALIB_B].len()),
        )?;
        let threshold = threshold_at_far(&scores_of(&ea, &eb)?, TARGET_FAR);
        let g = embed(
            defense,
            GALLERY,
            &space.inputs[GALLERY],
            &pl_g,
            &seeds(stream::GALLERY, 0, n),
        )?;
        let mut accuracy = BTreeMap::new();
        // Per condition: what purification chose for each probe, and whether its pair was
        // verified correctly (the alarm's figures).
        let mut logs: BTreeMap<String, (Vec<Purified>, Vec<bool>)> = BTreeMap::new();
        take_log(defense);
        let conditions = std::iter::once(&"clean").chain(plan.grey);
        for (c, cond) in conditions.enumerate() {
            let e = embed(
                defense,
                PROBE,
                &probes[cond],
                &pl_p,
                &seeds(stream::PROBE, c as u64, n),
            )?;
            let scores = scores_of(&e, &g)?;
            accuracy.insert(cond.to_string(), verify(&scores, same, threshold).average);
            logs.insert(
                cond.to_string(),
                (take_log(defense), correct_pairs(&scores, same, threshold)),
            );
        }
        if space.model == ThreatModel::Image && matches!(defense, Defense::AVae(_)) {
            // The reuse path (a tracked face attacked between refreshes): each probe's latents
            // are chosen on its clean photo (the clean condition's seeds), then decoded with
            // each attacked photo's own encoding.
            let mut kept = vec![Vec::new(); n];
            let clean_seeds = seeds(stream::PROBE, 0, n);
            for start in (0..n).step_by(chunk.max(1)) {
                let len = chunk.min(n - start);
                let range = start..start + len;
                // Only the kept latents are needed here, not the photos.
                let _photos = pipeline.apply_with(
                    defense,
                    &probes["clean"].narrow(0, start as i64, len as i64),
                    &pl_p[range.clone()],
                    &clean_seeds[range.clone()],
                    Latents::Keep(&mut kept[range]),
                )?;
            }
            for cond in std::iter::once(&"clean").chain(plan.grey) {
                let e = space.embeddings_reused(
                    defense,
                    pipeline,
                    &probes[cond],
                    &space.aligns[PROBE],
                    &pl_p,
                    &kept,
                    chunk,
                )?;
                let scores = scores_of(&e, &g)?;
                accuracy.insert(reuse_key(cond), verify(&scores, same, threshold).average);
            }
            take_log(defense);
        }
        let probe = &space.inputs[PROBE];
        let (psnr_db, ms_per_face) = if matches!(defense, Defense::None) {
            (None, None)
        } else {
            let t = Instant::now();
            let out = space.defend(
                defense,
                pipeline,
                probe,
                &pl_p,
                &seeds(stream::PROBE, 50, n),
            )?;
            let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
            (Some(psnr(&out, probe)), Some(ms))
        };
        let mut whitebox_pairs = None;
        if defense.is_random() && plan.whitebox_pgd.steps > 0 {
            let g_sub = subset.rows(&g);
            let pl_sub = subset.places(&pl_p);
            let (adv, broken) = white_box(
                space, defense, pipeline, &g_sub, &subset, &pl_sub, threshold, d, opts, plan,
                &lab.name,
            )?;
            take_log(defense);
            let align = subset.rows(&space.aligns[PROBE]);
            let defended = space.embeddings(
                defense,
                pipeline,
                &adv,
                &align,
                &pl_sub,
                &seeds(stream::PROBE, 60, subset.len()),
                chunk,
            )?;
            let scores = scores_of(&defended, &g_sub)?;
            logs.insert(
                "bpda_pgd8".into(),
                (
                    take_log(defense),
                    correct_pairs(&scores, &subset.same, threshold),
                ),
            );
            accuracy.insert(
                "bpda_pgd8_final".into(),
                verify(&scores, &subset.same, threshold).average,
            );
            let mut marked = scores.clone();
            mark_broken(&mut marked, &subset.same, &broken);
            accuracy.insert(
                "bpda_pgd8".into(),
                verify(&marked, &subset.same, threshold).average,
            );
            whitebox_pairs = Some(subset.len());
            if transfer_probes.is_none() {
                transfer_probes = Some(adv);
            }
        }
        if plan.transfer {
            transfer_inputs.push((g.shallow_clone(), threshold, pl_p.clone()));
        }
        let alarm = alarm_figures(&clean_calib, &logs);
        println!(
            "{} ({}): {:.0} s",
            lab.name,
            space.model.key(),
            t.elapsed().as_secs_f64()
        );
        rows.push(LabRow {
            threat_model: space.model,
            defense: lab.name.clone(),
            provenance: lab.provenance.clone(),
            threshold,
            accuracy,
            psnr_db,
            ms_per_face,
            whitebox_pairs,
            alarm,
        });
    }
    if let Some(adv) = transfer_probes.filter(|_| plan.transfer) {
        let align = subset.rows(&space.aligns[PROBE]);
        for ((lab, row), (g, threshold, pl_p)) in defenses
            .iter_mut()
            .zip(rows.iter_mut())
            .zip(transfer_inputs)
        {
            let places = subset.places(&pl_p);
            let e = space.embeddings(
                &mut lab.defense,
                pipeline,
                &adv,
                &align,
                &places,
                &seeds(stream::PROBE, 70, subset.len()),
                chunk,
            )?;
            take_log(&mut lab.defense);
            let scores = scores_of(&e, &subset.rows(&g))?;
            row.accuracy.insert(
                "transfer_pgd8".into(),
                verify(&scores, &subset.same, threshold).average,
            );
        }
    }
    Ok(rows)
}

/// The pairs a white-box attack runs on: `count` of the `n`, spread evenly (the pairs come
/// same-identity first, so this keeps the half and half split).
struct Subset {
    index: Vec<usize>,
    same: Vec<bool>,
}

impl Subset {
    fn new(n: usize, count: usize, same: &[bool]) -> Self {
        let count = count.min(n);
        let index: Vec<usize> = (0..count).map(|k| k * n / count).collect();
        let same = index.iter().map(|&i| same[i]).collect();
        Self { index, same }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The subset's rows of `t` (first dimension).
    fn rows(&self, t: &Tensor) -> Tensor {
        if self.index.len() == t.size()[0] as usize {
            return t.shallow_clone();
        }
        let idx: Vec<i64> = self.index.iter().map(|&i| i as i64).collect();
        t.index_select(0, &Tensor::from_slice(&idx).to_device(t.device()))
    }

    /// The subset's placements (none for crops).
    fn places(&self, places: &[Placement]) -> Vec<Placement> {
        if places.is_empty() {
            return Vec::new();
        }
        self.index.iter().map(|&i| places[i]).collect()
    }
}

/// What an A-VAE defense purified since the last call (empty for the other defenses).
fn take_log(defense: &mut Defense) -> Vec<Purified> {
    match defense {
        Defense::AVae(a) => a.take_log(),
        _ => Vec::new(),
    }
}

/// Per pair: whether the decision at `threshold` is right.
fn correct_pairs(scores: &[f32], same: &[bool], threshold: f64) -> Vec<bool> {
    scores
        .iter()
        .zip(same)
        .map(|(&s, &is_same)| (f64::from(s) > threshold) == is_same)
        .collect()
}

/// The alarm's figures of every combination on every attacked condition of `logs`, fitted on
/// `clean_calib`; empty when nothing was purified (not an A-VAE row).
fn alarm_figures(
    clean_calib: &[Purified],
    logs: &BTreeMap<String, (Vec<Purified>, Vec<bool>)>,
) -> BTreeMap<String, BTreeMap<String, AlarmFigures>> {
    let mut out = BTreeMap::new();
    let Some((clean, _)) = logs.get("clean") else {
        return out;
    };
    if clean_calib.is_empty() || clean.is_empty() {
        return out;
    }
    for (name, weights) in alarm::COMBINATIONS {
        let params = alarm::fit(
            clean_calib,
            weights,
            "lab calibration impostor faces".into(),
        );
        let per_cond: BTreeMap<String, AlarmFigures> = logs
            .iter()
            .filter(|(cond, _)| cond.as_str() != "clean")
            .map(|(cond, (attacked, correct))| {
                (
                    cond.clone(),
                    alarm::figures(&params, clean, attacked, correct),
                )
            })
            .collect();
        out.insert(name.to_owned(), per_cond);
    }
    out
}

/// White-box BPDA PGD 8 probes against `defense` on the pairs of `subset` (gallery embeddings
/// `g` as defended, placements `places`, both of the subset), and per pair whether any iterate
/// broke the decision at `threshold`. With a `plan.cache`, each finished chunk is kept there
/// and a later run with the same settings picks it up instead of attacking again.
#[allow(clippy::too_many_arguments)]
fn white_box(
    space: &Space,
    defense: &mut Defense,
    pipeline: &PastePipeline,
    g: &Tensor,
    subset: &Subset,
    places: &[Placement],
    threshold: f64,
    d: usize,
    opts: &EvalOptions,
    plan: &Plan,
    name: &str,
) -> Result<(Tensor, Vec<bool>)> {
    let n = subset.len();
    let chunk = opts.chunk;
    let probe = subset.rows(&space.inputs[PROBE]);
    let align = subset.rows(&space.aligns[PROBE]);
    let mut adv = Vec::new();
    let mut broken = Vec::with_capacity(n);
    // Every setting the chunks depend on (the pipeline: passes, context, feather; since
    // 2026-12-07 further passes re-read the pasted frame, a different defense).
    let key = format!(
        "{name}|{}|{n}|{}|{:?}|{}|{threshold}|{pipeline:?}|passes re-read the frame|{}",
        space.model.key(),
        plan.eot,
        plan.whitebox_pgd,
        opts.seed,
        match space.model {
            ThreatModel::Image => "broken pairs stop",
            ThreatModel::Crop => "every pair every step",
        }
    );
    let bar = progress_bar(
        n as u64,
        &format!(
            "white-box BPDA PGD 8, K = {} ({})",
            plan.eot,
            space.model.key()
        ),
    );
    for first_pair in (0..n).step_by(chunk) {
        let len = chunk.min(n - first_pair);
        let kept = plan.cache.as_ref().map(|dir| {
            let stem = format!("whitebox-{}", space.model.key());
            chunk::path(dir, &stem, &key, first_pair)
        });
        let loaded = kept.as_deref().and_then(chunk::load);
        if let Some((out, was_broken)) =
            loaded.and_then(|k| Some((k.tensor("adv")?, k.flags("broken")?)))
        {
            adv.push(out);
            broken.extend(was_broken);
            bar.inc(len as u64);
            continue;
        }
        let rows = |t: &Tensor| t.narrow(0, first_pair as i64, len as i64);
        let chunk_same = &subset.same[first_pair..first_pair + len];
        let target = Target::new(&rows(g), chunk_same, &rows(&align));
        let rng = StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK, first_pair as u64]));
        // Seeded per chunk, so that a resumed run attacks the remaining chunks as a whole run
        // would have.
        let mut attack_rng = StdRng::seed_from_u64(mix(
            opts.seed,
            &[
                stream::ATTACK,
                1000 + d as u64,
                space.model as u64,
                first_pair as u64,
            ],
        ));
        let x = rows(&probe);
        let monitor = Some(BreakMonitor::new(threshold, len));
        let (out, chunk_broken) = match space.model {
            ThreatModel::Crop => {
                let mut bpda = Bpda {
                    recognizer: &space.recognizer,
                    target: &target,
                    defense: &mut *defense,
                    samples: plan.eot,
                    rng,
                    monitor,
                };
                let out = pgd(&x, &plan.whitebox_pgd, &mut bpda, &mut attack_rng)?;
                (out, bpda.monitor.map(|m| m.broken).unwrap_or_default())
            }
            ThreatModel::Image => {
                let mut bpda = PhotoBpda {
                    recognizer: &space.recognizer,
                    target: &target,
                    defense: &mut *defense,
                    pipeline: *pipeline,
                    placements: &places[first_pair..first_pair + len],
                    samples: plan.eot,
                    rng,
                    monitor,
                };
                let out = pgd(&x, &plan.whitebox_pgd, &mut bpda, &mut attack_rng)?;
                (out, bpda.monitor.map(|m| m.broken).unwrap_or_default())
            }
        };
        let out = quantize(&out);
        if let Some(path) = &kept {
            let named = [
                ("adv".to_owned(), out.shallow_clone()),
                ("broken".to_owned(), chunk::flags(&chunk_broken)),
            ];
            chunk::save(path, &named)?;
        }
        adv.push(out);
        broken.extend(chunk_broken);
        bar.inc(len as u64);
    }
    bar.finish();
    Ok((Tensor::cat(&adv, 0), broken))
}

/// The lab tables (image model first) as Markdown.
fn render(rows: &[LabRow], opts: &EvalOptions) -> String {
    let mut out = String::new();
    for model in [ThreatModel::Image, ThreatModel::Crop] {
        out.push_str(&format!(
            "Robustness lab, {}: {} fold-1 pairs, M = {}, {} A-VAE pass(es), grey-box PGD {} \
             steps, BPDA PGD {} steps (K = {}, random start; BPDA counts a pair broken if any iterate broke it, \
             the kept iterate alone in brackets; on the image threat model a broken pair stops at the iterate that broke it)\n\n| defense | provenance | clean | FGSM 8 | PGD 8 \
             | BPDA PGD 8 | PSNR dB | ms/face |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
            model.label(),
            opts.pairs,
            opts.purify.samples,
            opts.passes,
            opts.pgd.steps,
            opts.whitebox_pgd.steps,
            opts.eot
        ));
        let f =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        for r in rows.iter().filter(|r| r.threat_model == model) {
            let a = |k: &str| f(r.accuracy.get(k).copied(), 3);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.defense,
                r.provenance,
                a("clean"),
                a("fgsm8"),
                a("pgd8"),
                match (
                    r.accuracy.get("bpda_pgd8"),
                    r.accuracy.get("bpda_pgd8_final")
                ) {
                    (Some(any), Some(last)) => format!("{any:.3} ({last:.3})"),
                    _ => "-".to_owned(),
                },
                f(r.psnr_db, 2),
                f(r.ms_per_face, 1)
            ));
            if r.accuracy.contains_key(&reuse_key("clean")) {
                let reused = |k: &str| a(&reuse_key(k));
                out.push_str(&format!(
                    "| {}, {REUSE_ROW} | | {} | {} | {} | - | - | - |\n",
                    r.defense,
                    reused("clean"),
                    reused("fgsm8"),
                    reused("pgd8"),
                ));
            }
        }
        out.push('\n');
        out.push_str(&render_alarm(rows, model));
    }
    out
}

/// The alarm table of one threat model: each combination's AUC on the family it is chosen on,
/// then the chosen one's figures on every attack.
fn render_alarm(rows: &[LabRow], model: ThreatModel) -> String {
    let rows: Vec<&LabRow> = rows
        .iter()
        .filter(|r| r.threat_model == model && !r.alarm.is_empty())
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "Attack alarm, {}: score fitted on clean calibration faces, chosen on {} AUC; AUC / \
         detection at 1% clean false alarms / flagged-or-correct\n\n| defense | {} | chosen \
         | FGSM 8 | PGD 8 | BPDA PGD 8 |\n|---|{}---|---:|---:|---:|\n",
        model.key(),
        alarm::CHOSEN_ON,
        alarm::COMBINATIONS
            .iter()
            .map(|(name, _)| format!("AUC {} {name}", alarm::CHOSEN_ON))
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(alarm::COMBINATIONS.len()),
    );
    for r in rows {
        let auc_on = |combo: &str| {
            r.alarm
                .get(combo)
                .and_then(|c| c.get(alarm::CHOSEN_ON))
                .map_or(f64::NAN, |f| f.auc)
        };
        let chosen = alarm::COMBINATIONS
            .iter()
            .map(|(name, _)| *name)
            .max_by(|a, b| auc_on(a).total_cmp(&auc_on(b)))
            .unwrap_or("distance");
        let cell = |cond: &str| {
            r.alarm
                .get(chosen)
                .and_then(|c| c.get(cond))
                .map_or("-".to_owned(), |f| {
                    format!("{:.3} / {:.2} / {:.2}", f.auc, f.tpr_1, f.combined)
                })
        };
        out.push_str(&format!(
            "| {} | {} | {chosen} | {} | {} | {} |\n",
            r.defense,
            alarm::COMBINATIONS
                .iter()
                .map(|(name, _)| format!("{:.3}", auc_on(name)))
                .collect::<Vec<_>>()
                .join(" | "),
            cell("fgsm8"),
            cell("pgd8"),
            cell("bpda_pgd8"),
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_broken_by_an_earlier_iterate_counts_as_broken() {
        // Two same pairs (0.9) and two different pairs (0.1) at threshold 0.5: all right.
        let same = [true, true, false, false];
        let mut scores = vec![0.9, 0.9, 0.1, 0.1];
        assert_eq!(verify(&scores, &same, 0.5).average, 1.0);
        // One same and one different pair broken on the way: half right.
        mark_broken(&mut scores, &same, &[true, false, true, false]);
        assert_eq!(verify(&scores, &same, 0.5).average, 0.5);
        assert_eq!(
            correct_pairs(&scores, &same, 0.5),
            vec![false, true, false, true]
        );
    }

    #[test]
    fn the_monitor_flags_wrong_decisions_only() {
        let target = Target::new(
            &Tensor::ones([3, 4], (Kind::Float, tch::Device::Cpu)),
            &[true, false, true],
            &Tensor::zeros([3, 2, 3], (Kind::Float, tch::Device::Cpu)),
        );
        let mut m = BreakMonitor::new(0.5, 3);
        // Cosines 0.8 (same: accepted, right), 0.7 (different: accepted, wrong), 0.2 (same:
        // rejected, wrong); the loss is cosine times sign.
        let loss = Tensor::from_slice(&[0.8f32, -0.7, 0.2]);
        m.observe(&target, &loss).unwrap();
        assert_eq!(m.broken, vec![false, true, true]);
        // Later right decisions do not un-break a pair.
        m.observe(&target, &Tensor::from_slice(&[0.9f32, -0.1, 0.9]))
            .unwrap();
        assert_eq!(m.broken, vec![false, true, true]);
    }
}
