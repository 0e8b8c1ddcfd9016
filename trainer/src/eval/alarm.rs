//! The attack alarm's evaluation in `trainer eval` (issue 12 point 3), on the crop threat model
//! of the full evaluation.
//!
//! - Calibration: the score's means, deviations and thresholds are fitted on
//!   [`alarm::CALIBRATION_FACES`] clean *training* faces (the cache's crops, purified by the
//!   plugin's `Purifier` as the evaluation purifies), never on the test fold.
//! - Which combination of [`alarm::COMBINATIONS`] is scored is chosen on grey-box FGSM 8 alone
//!   (its AUC) and reported on every other attack.
//! - Negatives are the clean fold-1 probes, positives the attacked probes of one attack, with
//!   the purifier draws of the evaluation itself (same seeds), so each attacked pair's alarm and
//!   its verification after purification are of the same purified face. Per attack: the ROC
//!   curve and its AUC, the detection rates at the 1% and 5% thresholds of the clean training
//!   faces, and the combined figure: the fraction of attacked pairs flagged at the 1% threshold
//!   or verified correctly after purification.
//! - Adaptive attack: PGD on `L = sign * cos(f(D(x)), f(gallery)) + w * score(x)` for each
//!   weight `w` of [`ADAPTIVE_WEIGHTS`], through the bundle's own generator rebuilt in tch: per
//!   step the attacker's copy of the defense draws the M latents as the plugin does, keeps the
//!   nearest candidate's latent fixed (the selection is not differentiable: BPDA), and
//!   differentiates the candidate through the encoder's skip path, the score through the input
//!   and the candidate, and the recognizer. Per pair the attack keeps the last iterate that both
//!   broke the decision and stayed under the 1% threshold in the attacker's copy (else its final
//!   iterate); the evaluation then purifies it with its own draws. Weight 0 is the white-box
//!   attack that ignores the alarm; `auc_adaptive` and `combined_adaptive` are those of the
//!   weight with the lowest combined figure (the attacker's best).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use gstavaepurify::alarm::{AlarmParams, Feature};
use gstavaepurify::core::latent::sample_latents;
use gstavaepurify::purifier::{Purified, PurifyParams};
use ndarray::{Array1, Array2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tch::{Kind, Tensor};

use super::Condition;
use super::attacks::{GREY_ATTACKS, Probes};
use super::defenses::DefenseResults;
use super::protocol::{Evaluation, defended_embeddings, mix, scores_of, stream};
use crate::alarm::{self, AlarmFigures};
use crate::attack::{LossGradient, Target, pgd};
use crate::chunk;
use crate::data::{FaceSet, progress_bar, to_unit_range};
use crate::defense::{Defense, quantize};
use crate::model::AVae;
use crate::plot::{RocCurve, roc_curves};
use crate::recognizer::Recognizer;
use crate::threat::ThreatModel;

/// Weights of the score penalty swept by the adaptive attack (0: the white-box attack that
/// ignores the alarm).
pub const ADAPTIVE_WEIGHTS: [f64; 5] = [0.0, 0.1, 0.3, 1.0, 3.0];

/// Seed stream of the alarm's calibration faces and of the adaptive attacker's draws.
const STREAM_ALARM: u64 = 5;

/// The alarm's figures on one attack.
#[derive(Debug, Clone, Serialize)]
pub struct AttackAlarm {
    /// Identifier (`fgsm8`, `adaptive-w0.3`, ...).
    pub key: String,
    /// Label shown in the report.
    pub label: String,
    /// AUC, detection at 1% and 5%, combined.
    #[serde(flatten)]
    pub figures: AlarmFigures,
    /// Attacked pairs verified correctly after purification (without the alarm).
    pub accuracy: f64,
    /// Mean score of the attacked probes.
    pub mean_score: f64,
    /// The ROC curve (clean false-alarm rate, detection rate); in the PNG, not the JSON.
    #[serde(skip)]
    pub roc: Vec<(f64, f64)>,
}

/// The `alarm` object of `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmSummary {
    /// What the attacker perturbed.
    pub threat_model: ThreatModel,
    /// The combination scored (chosen on `chosen_on`).
    pub score: String,
    /// The attack the combination was chosen on.
    pub chosen_on: String,
    /// AUC on `chosen_on` of every combination.
    pub combinations: BTreeMap<String, f64>,
    /// How the score was fitted.
    pub calibration: String,
    /// Score threshold at 1% false alarms on the clean training faces.
    pub threshold_1: f32,
    /// Score threshold at 5% false alarms on the clean training faces.
    pub threshold_5: f32,
    /// Clean test probes (the negatives).
    pub negatives: usize,
    /// False-alarm rates of the clean test probes at the two thresholds.
    pub clean_false_alarms: [f64; 2],
    /// Grey-box and on-manifold attacks.
    pub attacks: Vec<AttackAlarm>,
    /// The adaptive attack, one entry per weight of [`ADAPTIVE_WEIGHTS`].
    pub adaptive: Vec<AttackAlarm>,
    /// The weight of the adaptive entry with the lowest combined figure.
    pub adaptive_weight: f64,
    /// AUC on grey-box FGSM 8.
    pub auc_fgsm8: f64,
    /// AUC on grey-box PGD 8.
    pub auc_pgd8: f64,
    /// AUC on grey-box C&W.
    pub auc_cw: f64,
    /// AUC of the adaptive attack at `adaptive_weight`.
    pub auc_adaptive: f64,
    /// Combined figure on grey-box PGD 8.
    pub combined_pgd8: f64,
    /// Combined figure of the adaptive attack at `adaptive_weight`.
    pub combined_adaptive: f64,
}

/// The alarm's features of faces `x`, their chosen candidates `cand` and posteriors, in tch
/// and differentiable, as [`Feature::value`] computes them from a [`Purified`] (`k` the side
/// of the encoder's pixel blocks).
fn feature_values(
    feature: Feature,
    x: &Tensor,
    cand: &Tensor,
    mu: &Tensor,
    logvar: &Tensor,
    k: i64,
) -> Tensor {
    let s = x.size()[2];
    let pool = |t: &Tensor| t.avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>);
    let detail = |t: &Tensor| {
        (t - pool(t).upsample_nearest2d([s, s], None, None))
            .square()
            .mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
    };
    let ln = |t: Tensor| t.clamp_min(1e-12).log();
    match feature {
        Feature::LogDistance => {
            ln((cand - x)
                .square()
                .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float))
        }
        Feature::LogKl => {
            let lv = logvar.clamp(-30.0, 30.0);
            let d = mu.size()[1] as f64;
            ln((lv.exp() + mu.square() - 1.0 - &lv).sum_dim_intlist(
                [1i64].as_slice(),
                false,
                Kind::Float,
            ) / (2.0 * d))
        }
        Feature::LogDetail => ln(detail(x)),
        Feature::LogDistanceCoarse => ln((pool(x) - pool(cand)).square().mean_dim(
            [1i64, 2, 3].as_slice(),
            false,
            Kind::Float,
        )),
        Feature::LogDetailRatio => ln(detail(x)) - ln(detail(cand)),
        Feature::LogNativeDetailRatio => {
            let (fine, mid) = alarm::native_bands(x);
            ln(fine) - ln(mid)
        }
    }
}

/// The alarm score `[N]` of `params` for faces `x` and their candidates, differentiable.
fn score_tensor(
    params: &AlarmParams,
    x: &Tensor,
    cand: &Tensor,
    mu: &Tensor,
    logvar: &Tensor,
    k: i64,
) -> Tensor {
    let mut score = Tensor::zeros([x.size()[0]], (Kind::Float, x.device()));
    for (((f, m), s), w) in params
        .features
        .iter()
        .zip(&params.mean)
        .zip(&params.std)
        .zip(&params.weights)
    {
        if *w != 0.0 {
            let v = feature_values(*f, x, cand, mu, logvar, k);
            score += (v - f64::from(*m)) * (f64::from(*w) / f64::from(s.max(1e-6)));
        }
    }
    score
}

/// The adaptive attacker: the defended system's loss plus `weight` times the alarm score,
/// through the bundle's generator with the nearest candidate's latent held fixed.
struct Adaptive<'a> {
    generator: &'a AVae,
    recognizer: &'a Recognizer,
    target: &'a Target,
    score: &'a AlarmParams,
    weight: f64,
    purify: PurifyParams,
    /// Side of the encoder's pixel blocks.
    block: i64,
    /// Verification threshold of the defended system.
    threshold: f64,
    /// Source of the attacker's purifier draws.
    rng: StdRng,
    /// Per pair: the last iterate that broke the decision unflagged.
    evading: Vec<Option<Tensor>>,
}

impl Adaptive<'_> {
    /// Per face, the latent of the candidate nearest to it (pixel L2) among M drawn as the
    /// plugin draws them (KL-clipped, `tau`), from `mu`, `logvar` and the skip feature.
    fn chosen_latents(
        &mut self,
        x: &Tensor,
        mu: &Tensor,
        logvar: &Tensor,
        skip: &Tensor,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let (n, d) = (mu.size()[0], mu.size()[1]);
        let m = self.purify.samples.max(1);
        let mus = Vec::<f32>::try_from(&mu.contiguous().view([-1]))?;
        let lvs = Vec::<f32>::try_from(&logvar.contiguous().view([-1]))?;
        let mut chosen = Vec::with_capacity(n as usize);
        for i in 0..n {
            let row =
                |v: &[f32]| Array1::from(v[(i * d) as usize..((i + 1) * d) as usize].to_vec());
            let (mu_i, lv_i) = (row(&mus), row(&lvs));
            let mut z = Array2::<f32>::zeros((m, d as usize));
            let mut rng = StdRng::seed_from_u64(self.rng.random());
            sample_latents(
                mu_i.view(),
                lv_i.view(),
                self.purify.tau,
                &mut rng,
                z.view_mut(),
            );
            let z = Tensor::from_slice(z.as_slice().context("latent layout")?).view([m as i64, d]);
            let s = skip
                .get(i)
                .unsqueeze(0)
                .expand([m as i64, -1, -1, -1], false);
            let cands = self.generator.decode(&z, &s);
            let dist = (cands - x.get(i).unsqueeze(0)).square().sum_dim_intlist(
                [1i64, 2, 3].as_slice(),
                false,
                Kind::Float,
            );
            chosen.push(z.get(dist.argmin(0, false).int64_value(&[])));
        }
        Ok(Tensor::stack(&chosen, 0))
    }
}

impl LossGradient for Adaptive<'_> {
    fn loss_and_grad(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let xr = x.detach().set_requires_grad(true);
        let (mu, logvar, skip) = self.generator.encode(&xr);
        let z =
            self.chosen_latents(&xr.detach(), &mu.detach(), &logvar.detach(), &skip.detach())?;
        let cand = self.generator.decode(&z, &skip);
        // The element writes 8-bit faces: rounded forward, straight through backward.
        let out = &cand + (quantize(&cand) - &cand).detach();
        let rec = self
            .target
            .loss(&self.recognizer.embed(&out, &self.target.align)?);
        let score = score_tensor(self.score, &xr, &cand, &mu, &logvar, self.block);
        let loss = &rec + &score * self.weight;
        let grad = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&xr], false, false)
            .pop()
            .context("no gradient reached the probe")?;
        let cos = Vec::<f32>::try_from(&(rec.detach() * &self.target.sign))?;
        let sign = Vec::<f32>::try_from(&self.target.sign)?;
        let scores = Vec::<f32>::try_from(&score.detach())?;
        for (i, slot) in self.evading.iter_mut().enumerate() {
            let broken = (f64::from(cos[i]) > self.threshold) != (sign[i] > 0.0);
            if broken && scores[i] <= self.score.threshold_1 {
                *slot = Some(x.get(i as i64).detach().copy());
            }
        }
        Ok((loss.detach(), grad))
    }
}

/// Per pair: whether `scores` verify it correctly at `threshold`.
fn correct_pairs(scores: &[f32], same: &[bool], threshold: f64) -> Vec<bool> {
    scores
        .iter()
        .zip(same)
        .map(|(&s, &is_same)| (f64::from(s) > threshold) == is_same)
        .collect()
}

/// The figures of `attacked` (its pairs' correctness `correct`) against `clean` for `params`.
fn attack_alarm(
    key: String,
    label: String,
    params: &AlarmParams,
    clean: &[Purified],
    attacked: &[Purified],
    correct: &[bool],
) -> AttackAlarm {
    let neg: Vec<f32> = clean.iter().map(|p| params.score(p)).collect();
    let pos: Vec<f32> = attacked.iter().map(|p| params.score(p)).collect();
    let mut scores = neg.clone();
    scores.extend(&pos);
    let labels: Vec<bool> = (0..scores.len()).map(|i| i >= neg.len()).collect();
    AttackAlarm {
        key,
        label,
        figures: alarm::figures(params, clean, attacked, correct),
        accuracy: correct.iter().filter(|&&c| c).count() as f64 / correct.len().max(1) as f64,
        mean_score: pos.iter().map(|&s| f64::from(s)).sum::<f64>() / pos.len().max(1) as f64,
        roc: crate::report::roc(&scores, &labels),
    }
}

impl Evaluation<'_> {
    /// Purifies `faces` with `seeds` through `defense` (an A-VAE) and returns what it chose for
    /// each face, with the defended embeddings.
    fn purified(
        &self,
        defense: &mut Defense,
        faces: &Tensor,
        seeds: &[u64],
    ) -> Result<(Vec<Purified>, Tensor)> {
        let Defense::AVae(avae) = defense else {
            anyhow::bail!("internal error: the alarm is evaluated on the A-VAE defense only");
        };
        avae.take_log();
        let e = defended_embeddings(
            &self.recognizer,
            defense,
            faces,
            &self.align_probe,
            seeds,
            self.opts.chunk,
        )?;
        let log = match defense {
            Defense::AVae(avae) => avae.take_log(),
            _ => Vec::new(),
        };
        ensure!(
            log.len() == seeds.len(),
            "purified {} of {} faces",
            log.len(),
            seeds.len()
        );
        Ok((log, e))
    }

    /// The alarm stage: calibration on clean training faces of `set`, the grey-box and
    /// on-manifold attacks' figures (`probes`, verified as in `results`), and the adaptive
    /// weight sweep against the A-VAE defense number `d` (threshold `threshold`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn alarm(
        &self,
        defense: &mut Defense,
        d: usize,
        threshold: f64,
        generator: &AVae,
        set: &FaceSet,
        probes: &Probes,
        results: &DefenseResults,
    ) -> Result<AlarmSummary> {
        let opts = self.opts;
        let indices = alarm::training_indices(set, alarm::CALIBRATION_FACES)?;
        let calib_seeds: Vec<u64> = (0..indices.len() as u64)
            .map(|k| mix(opts.seed, &[STREAM_ALARM, 0, k]))
            .collect();
        let calib_faces = to_unit_range(&set.select(&indices));
        let Defense::AVae(avae) = &mut *defense else {
            anyhow::bail!("internal error: the alarm is evaluated on the A-VAE defense only");
        };
        avae.take_log();
        for start in (0..indices.len()).step_by(opts.chunk.max(1)) {
            let len = opts.chunk.min(indices.len() - start);
            // Only the log of what purification chose is needed, not the faces.
            let _faces = defense.apply(
                &calib_faces.narrow(0, start as i64, len as i64),
                &calib_seeds[start..start + len],
            )?;
        }
        let calib = match &mut *defense {
            Defense::AVae(avae) => avae.take_log(),
            _ => Vec::new(),
        };

        // The evaluation's own purifier draws: condition c of its order, seeds of stream PROBE.
        let order: Vec<Condition> = Condition::GREY
            .into_iter()
            .chain(Condition::MANIFOLD)
            .collect();
        let cells = |cond: Condition| {
            results.grey_rows[d]
                .cells
                .get(&cond)
                .or_else(|| results.manifold_rows[d].cells.get(&cond))
        };
        let mut logs: BTreeMap<Condition, (Vec<Purified>, Vec<bool>)> = BTreeMap::new();
        for cond in std::iter::once(Condition::Clean).chain(GREY_ATTACKS) {
            let c = order
                .iter()
                .position(|&o| o == cond)
                .context("condition order")?;
            let seeds = self.pair_seeds(stream::PROBE, c as u64);
            let (log, _) = self.purified(defense, &probes[&cond], &seeds)?;
            let cell = cells(cond).with_context(|| format!("no A-VAE cell for {}", cond.key()))?;
            logs.insert(
                cond,
                (log, correct_pairs(&cell.scores, &self.same, threshold)),
            );
        }
        let clean = logs[&Condition::Clean].0.clone();
        let how = format!(
            "{} clean training faces (the crop cache's crops), M = {}, tau = {}",
            calib.len(),
            opts.purify.samples,
            opts.purify.tau
        );
        let on = &logs[&Condition::Fgsm8].0;
        let combinations: BTreeMap<String, f64> = alarm::COMBINATIONS
            .iter()
            .map(|(name, w)| {
                let p = alarm::fit(&calib, *w, how.clone());
                (name.to_string(), alarm::figures(&p, &clean, on, &[]).auc)
            })
            .collect();
        let (score, weights) = alarm::COMBINATIONS
            .iter()
            .max_by(|a, b| combinations[a.0].total_cmp(&combinations[b.0]))
            .copied()
            .context("no alarm combination")?;
        let params = alarm::fit(&calib, weights, format!("score '{score}' fitted on {how}"));
        let attacks: Vec<AttackAlarm> = GREY_ATTACKS
            .iter()
            .map(|cond| {
                let (log, correct) = &logs[cond];
                attack_alarm(
                    cond.key().into(),
                    format!("grey-box {}", cond.label()),
                    &params,
                    &clean,
                    log,
                    correct,
                )
            })
            .map(|mut a| {
                if a.key.starts_with("manifold") {
                    a.label = a.label.replacen("grey-box ", "", 1);
                }
                a
            })
            .collect();

        let gallery = &results.defended_gallery[d];
        let mut adaptive = Vec::new();
        for (w, &weight) in ADAPTIVE_WEIGHTS.iter().enumerate() {
            let adv = self.adaptive_probes(generator, &params, gallery, threshold, weight, w)?;
            let seeds = self.pair_seeds(stream::PROBE, 200 + w as u64);
            let (log, e) = self.purified(defense, &adv, &seeds)?;
            let correct = correct_pairs(&scores_of(&e, gallery)?, &self.same, threshold);
            let label = if weight == 0.0 {
                "white-box PGD 8, exact generator gradient (w = 0: ignores the alarm)".to_owned()
            } else {
                format!("adaptive PGD 8, score weight w = {weight}")
            };
            adaptive.push(attack_alarm(
                format!("adaptive-w{weight}"),
                label,
                &params,
                &clean,
                &log,
                &correct,
            ));
        }
        let worst = adaptive
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.figures.combined.total_cmp(&b.1.figures.combined))
            .map_or(0, |(i, _)| i);
        let clean_scores: Vec<f32> = clean.iter().map(|p| params.score(p)).collect();
        let auc_of = |key: &str| {
            attacks
                .iter()
                .find(|a| a.key == key)
                .map_or(f64::NAN, |a| a.figures.auc)
        };
        Ok(AlarmSummary {
            threat_model: ThreatModel::Crop,
            score: score.to_owned(),
            chosen_on: alarm::CHOSEN_ON.to_owned(),
            combinations,
            calibration: params.calibration.clone(),
            threshold_1: params.threshold_1,
            threshold_5: params.threshold_5,
            negatives: clean.len(),
            clean_false_alarms: [
                alarm::rate_above(&clean_scores, params.threshold_1),
                alarm::rate_above(&clean_scores, params.threshold_5),
            ],
            auc_fgsm8: auc_of("fgsm8"),
            auc_pgd8: auc_of("pgd8"),
            auc_cw: auc_of("cw"),
            auc_adaptive: adaptive[worst].figures.auc,
            combined_pgd8: attacks
                .iter()
                .find(|a| a.key == "pgd8")
                .map_or(f64::NAN, |a| a.figures.combined),
            combined_adaptive: adaptive[worst].figures.combined,
            adaptive_weight: ADAPTIVE_WEIGHTS[worst],
            attacks,
            adaptive,
        })
    }

    /// The adaptive attack's probes at `weight` (entry `w` of the sweep), a chunk of pairs at a
    /// time, aiming at the defended gallery embeddings `gallery`.
    fn adaptive_probes(
        &self,
        generator: &AVae,
        params: &AlarmParams,
        gallery: &Tensor,
        threshold: f64,
        weight: f64,
        w: usize,
    ) -> Result<Tensor> {
        let (n, opts) = (self.n(), self.opts);
        let size = self.probe.size()[2];
        let block = (size / 32).max(1);
        let bar = progress_bar(n as u64, &format!("adaptive alarm attack w = {weight}"));
        // Every setting the chunks depend on: a stopped run picks up the finished ones.
        let key = format!(
            "alarm|{}|{:?}|{params:?}|{weight}|{n}|{}|{:?}|{}|{threshold}",
            opts.bundle.display(),
            opts.purify,
            opts.chunk,
            opts.whitebox_pgd,
            opts.seed
        );
        let mut parts = Vec::new();
        for first in (0..n).step_by(opts.chunk.max(1)) {
            let len = opts.chunk.min(n - first);
            let kept = chunk::path(&opts.report.join("cache"), "adaptive-alarm", &key, first);
            if let Some(adv) = chunk::load(&kept)
                .and_then(|k| k.tensor("adv"))
                .filter(|adv| adv.size().first() == Some(&(len as i64)))
            {
                parts.push(adv);
                bar.inc(len as u64);
                continue;
            }
            // Seeded per chunk, so that a resumed run attacks the remaining chunks as a whole
            // run would have.
            let mut attack_rng =
                StdRng::seed_from_u64(mix(opts.seed, &[STREAM_ALARM, 1, w as u64, first as u64]));
            let target = Target::new(
                &Self::rows(gallery, first, len),
                &self.same[first..first + len],
                &Self::rows(&self.align_probe, first, len),
            );
            let x = Self::rows(&self.probe, first, len);
            let mut oracle = Adaptive {
                generator,
                recognizer: &self.recognizer,
                target: &target,
                score: params,
                weight,
                purify: opts.purify,
                block,
                threshold,
                rng: StdRng::seed_from_u64(mix(
                    opts.seed,
                    &[STREAM_ALARM, 2, w as u64, first as u64],
                )),
                evading: (0..len).map(|_| None).collect(),
            };
            let last = pgd(&x, &opts.whitebox_pgd, &mut oracle, &mut attack_rng)?;
            // The final iterate too may evade.
            let _final = oracle.loss_and_grad(&last)?;
            let rows: Vec<Tensor> = oracle
                .evading
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e.as_ref()
                        .map_or_else(|| last.get(i as i64), Tensor::shallow_clone)
                })
                .collect();
            let adv = quantize(&Tensor::stack(&rows, 0));
            chunk::save(&kept, &[("adv".to_owned(), adv.shallow_clone())])?;
            parts.push(adv);
            bar.inc(len as u64);
        }
        bar.finish();
        Ok(Tensor::cat(&parts, 0))
    }
}

/// The ROC figure of the alarm: every grey-box, on-manifold and adaptive attack.
pub(crate) fn write_figure(dir: &Path, summary: &AlarmSummary) -> Result<()> {
    let curves: Vec<RocCurve> = summary
        .attacks
        .iter()
        .chain(&summary.adaptive)
        .map(|a| RocCurve {
            label: format!("{} (AUC {:.3})", a.key, a.figures.auc),
            points: a.roc.clone(),
        })
        .collect();
    roc_curves(
        &dir.join(figure_name(summary)),
        &format!(
            "Attack alarm '{}', {} threat model",
            summary.score,
            summary.threat_model.key()
        ),
        ("false alarms on clean probes", "attacked probes flagged"),
        &curves,
    )
}

/// File name of the alarm's ROC figure.
fn figure_name(summary: &AlarmSummary) -> String {
    format!("alarm-{}.png", summary.threat_model.key())
}

/// The report's "Attack alarm" section.
pub(crate) fn markdown(summary: &AlarmSummary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Attack alarm\n");
    let _ = writeln!(
        s,
        "The score of `src/alarm.rs` on the {}: {} (thresholds {:.3} at 1% and {:.3} at \
         5% clean false alarms); the combination `{}` was chosen on {} AUC among {} (below). \
         Negatives: the {} clean fold-1 probes, which raise it at {:.3} / {:.3}. *Combined*: \
         attacked pairs flagged at the 1% threshold or verified correctly after purification.\n",
        summary.threat_model.label(),
        summary.calibration,
        summary.threshold_1,
        summary.threshold_5,
        summary.score,
        summary.chosen_on,
        summary.combinations.len(),
        summary.negatives,
        summary.clean_false_alarms[0],
        summary.clean_false_alarms[1],
    );
    let _ = writeln!(
        s,
        "| attack | AUC | detected at 1% | detected at 5% | accuracy after purification | \
         combined | mean score |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for a in summary.attacks.iter().chain(&summary.adaptive) {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
            a.label,
            a.figures.auc,
            a.figures.tpr_1,
            a.figures.tpr_5,
            a.accuracy,
            a.figures.combined,
            a.mean_score
        );
    }
    let _ = writeln!(
        s,
        "\nAdaptive attack: PGD 8 on the recognizer loss plus w times the score, exact gradients \
         through the bundle's generator with the nearest candidate's latent held fixed (BPDA \
         through the selection); per pair the last iterate that broke the decision unflagged is \
         kept. The attacker's best weight, w = {}, leaves AUC {:.3} and combined {:.3}.\n",
        summary.adaptive_weight, summary.auc_adaptive, summary.combined_adaptive
    );
    let _ = writeln!(
        s,
        "AUC on {} of every combination: {}\n",
        summary.chosen_on,
        summary
            .combinations
            .iter()
            .map(|(k, v)| format!("`{k}` {v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "![alarm ROC]({})\n", figure_name(summary));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstavaepurify::purifier::coarse_signals;
    use ndarray::Array3;

    #[test]
    fn the_tch_score_matches_the_plugins_score() {
        tch::manual_seed(3);
        let x = Tensor::rand([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let cand = (&x * 0.5 + Tensor::randn([2, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 0.05)
            .clamp(-1.0, 1.0);
        let mu = Tensor::randn([2, 4], (Kind::Float, tch::Device::Cpu));
        let logvar = Tensor::randn([2, 4], (Kind::Float, tch::Device::Cpu)) * 0.1 - 0.5;
        let k = 2;
        let to_array = |t: &Tensor| {
            Array3::from_shape_vec(
                (3, 8, 8),
                Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap(),
            )
            .unwrap()
        };
        let params = AlarmParams {
            features: Feature::ALL.to_vec(),
            mean: vec![1.0, -0.5, -3.0, -6.0, 0.2, 0.5],
            std: vec![0.5, 0.25, 1.0, 2.0, 0.3, 0.7],
            weights: vec![1.0, 0.5, 0.25, 2.0, 1.5, 0.75],
            threshold_1: 2.0,
            threshold_5: 1.0,
            calibration: String::new(),
            native_sizes: Vec::new(),
        };
        let tch_scores =
            Vec::<f32>::try_from(&score_tensor(&params, &x, &cand, &mu, &logvar, k)).unwrap();
        for i in 0..2 {
            let (xi, ci) = (to_array(&x.get(i)), to_array(&cand.get(i)));
            let (detail, distance_coarse, detail_candidate) =
                coarse_signals(xi.view(), ci.view(), 2);
            let (native_fine, native_mid) = gstavaepurify::core::band::crop_bands(xi.view());
            let mu_i = Array1::from(Vec::<f32>::try_from(&mu.get(i)).unwrap());
            let lv_i = Array1::from(Vec::<f32>::try_from(&logvar.get(i)).unwrap());
            let p = Purified {
                distance: gstavaepurify::core::select::squared_distance(ci.view(), xi.view()),
                candidate: 0,
                clipped: false,
                kl: gstavaepurify::core::latent::mean_kl(mu_i.view(), lv_i.view()),
                detail,
                distance_coarse,
                detail_candidate,
                native_fine,
                native_mid,
                native_width: 0.0,
            };
            let want = params.score(&p);
            let got = tch_scores[i as usize];
            assert!(
                (want - got).abs() < 1e-3 * want.abs().max(1.0),
                "face {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn the_score_penalty_has_a_gradient_through_the_input() {
        let x = (Tensor::rand([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0)
            .set_requires_grad(true);
        let cand = x
            .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
            .upsample_nearest2d([8, 8], None, None);
        let mu = Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu));
        let params = alarm::fit(
            &[Purified {
                distance: 1.0,
                candidate: 0,
                clipped: false,
                kl: 1.0,
                detail: 0.1,
                distance_coarse: 0.01,
                detail_candidate: 0.01,
                native_fine: 0.01,
                native_mid: 0.01,
                native_width: 0.0,
            }],
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
            String::new(),
        );
        let s = score_tensor(&params, &x, &cand, &mu, &mu, 2);
        let g = Tensor::run_backward(&[s.sum(Kind::Float)], &[&x], false, false)
            .pop()
            .unwrap();
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(correct_pairs(&[0.9, 0.1], &[true, true], 0.5) == vec![true, false]);
    }
}
