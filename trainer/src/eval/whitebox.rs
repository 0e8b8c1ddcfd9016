//! The white-box stage (Table 2): BPDA PGD and FGSM through each defense's real forward pass,
//! with and without EOT for a random defense, aiming at the defended gallery.

use std::collections::BTreeMap;

use anyhow::Result;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tch::Tensor;

use super::defenses::DefenseResults;
use super::protocol::{
    Evaluation, defended_embeddings, mark_broken, mix, scores_of, stream, verify,
};
use super::{Cell, Condition, Row};
use crate::attack::{self, Bpda, BreakMonitor, Target, fgsm, pgd};
use crate::chunk;
use crate::data::progress_bar;
use crate::defense::{Defense, quantize};

/// Grid rows of one attack: the adversarial probes and what the defense made of them.
pub(super) type GridPair = (Tensor, Tensor);

/// One white-box attack variant of a defense: K draws per gradient, row key and label.
struct Variant {
    eot: usize,
    key: String,
    label: String,
}

/// What one variant's attacks produced: adversarial probes by condition (chunk by chunk) and,
/// per pair, whether any PGD iterate broke the decision.
#[derive(Default)]
struct Attacked {
    probes: BTreeMap<Condition, Vec<Tensor>>,
    broken: Vec<bool>,
}

/// Appends a kept chunk of `len` pairs to every variant's attacks; false (and nothing appended)
/// when the chunk lacks a variant's tensor.
fn keep_from(kept: &chunk::Kept, out: &mut [Attacked], len: usize) -> bool {
    let mut parts = Vec::new();
    for v in 0..out.len() {
        let broken = kept.flags(&format!("{v}-broken"));
        let probes: Option<Vec<Tensor>> = Condition::WHITE_ATTACKS
            .iter()
            .map(|c| kept.tensor(&format!("{v}-{}", c.key())))
            .collect();
        match (broken, probes) {
            (Some(b), Some(p)) if b.len() == len => parts.push((b, p)),
            _ => return false,
        }
    }
    for (attacked, (broken, probes)) in out.iter_mut().zip(parts) {
        attacked.broken.extend(broken);
        for (cond, p) in Condition::WHITE_ATTACKS.into_iter().zip(probes) {
            attacked.probes.entry(cond).or_default().push(p);
        }
    }
    true
}

/// The variants of `defense`: BPDA without EOT, then with EOT over `eot` draws when it is random.
fn variants(defense: &Defense, eot: usize) -> Vec<Variant> {
    let without_eot = if defense.is_random() {
        "BPDA (K = 1)"
    } else {
        "BPDA"
    };
    let mut variants = vec![Variant {
        eot: 1,
        key: format!("{}-bpda", defense.key()),
        label: format!("{}, {without_eot}", defense.label()),
    }];
    if defense.is_random() {
        variants.push(Variant {
            eot,
            key: format!("{}-eot", defense.key()),
            label: format!("{}, BPDA + EOT (K = {eot})", defense.label()),
        });
    }
    variants
}

impl Evaluation<'_> {
    /// The white-box rows of every defense (the undefended row repeats its grey-box cells) and
    /// the grid rows of the first random defense's strongest PGD variant.
    pub(super) fn white_box_rows(
        &self,
        defenses: &mut [Defense],
        thresholds: &[f64],
        results: &DefenseResults,
    ) -> Result<(Vec<Row>, Option<GridPair>)> {
        let mut rows = Vec::new();
        let mut grid = None;
        for (d, defense) in defenses.iter_mut().enumerate() {
            let grey = &results.grey_rows[d];
            if matches!(defense, Defense::None) {
                // Without a defense, white-box and grey-box attacks are the same attack.
                rows.push(Row {
                    label: "No Defense (= grey-box)".into(),
                    cells: grey
                        .cells
                        .iter()
                        .filter(|(k, _)| Condition::WHITE.contains(k))
                        .map(|(k, v)| (*k, v.clone()))
                        .collect(),
                    ..grey.clone()
                });
                continue;
            }
            let (white, white_grid) = self.white_box(
                d,
                defense,
                thresholds[d],
                &grey.cells[&Condition::Clean],
                &results.defended_gallery[d],
            )?;
            rows.extend(white);
            grid = grid.or(white_grid);
        }
        Ok((rows, grid))
    }

    /// White-box rows of defense number `d` (BPDA, plus BPDA + EOT for a random defense); also
    /// returns the grid rows of the strongest PGD variant (adversarial, defended) when the
    /// defense is random.
    fn white_box(
        &self,
        d: usize,
        defense: &mut Defense,
        threshold: f64,
        clean: &Cell,
        defended_gallery: &Tensor,
    ) -> Result<(Vec<Row>, Option<GridPair>)> {
        let eot = if defense.is_random() {
            self.opts.eot.max(1)
        } else {
            1
        };
        let variants = variants(defense, eot);
        let attacked = self.white_box_attacks(d, defense, threshold, &variants)?;
        let mut rows = Vec::new();
        let mut grid = None;
        for (v, (variant, attacked)) in variants.iter().zip(&attacked).enumerate() {
            let mut cells = BTreeMap::new();
            cells.insert(Condition::Clean, clean.clone());
            for (c, cond) in Condition::WHITE_ATTACKS.into_iter().enumerate() {
                let faces = Tensor::cat(&attacked.probes[&cond], 0);
                let seeds = self.pair_seeds(stream::PROBE, 100 + (v * 10 + c) as u64);
                let e = defended_embeddings(
                    &self.recognizer,
                    defense,
                    &faces,
                    &self.align_probe,
                    &seeds,
                    self.opts.chunk,
                )?;
                let mut scores = scores_of(&e, defended_gallery)?;
                if cond == Condition::Pgd8 {
                    mark_broken(&mut scores, &self.same, &attacked.broken);
                }
                cells.insert(cond, verify(&scores, &self.same, threshold));
                if defense.is_random() && cond == Condition::Pgd8 && v + 1 == variants.len() {
                    let shown = faces.index_select(0, &self.grid_index());
                    let defended = defense.apply(&shown, &self.grid_seeds(&seeds))?;
                    grid = Some((shown, defended));
                }
            }
            rows.push(Row {
                key: variant.key.clone(),
                label: variant.label.clone(),
                threshold,
                cells,
            });
        }
        Ok((rows, grid))
    }

    /// Runs every variant's BPDA attacks on defense number `d`, a chunk of pairs at a time.
    fn white_box_attacks(
        &self,
        d: usize,
        defense: &mut Defense,
        threshold: f64,
        variants: &[Variant],
    ) -> Result<Vec<Attacked>> {
        let (n, opts) = (self.n(), self.opts);
        let eot = variants.iter().map(|v| v.eot).max().unwrap_or(1);
        // The attack monitors the defended system with the first of its K draws; the target is
        // the defended gallery.
        let mut out: Vec<Attacked> = variants.iter().map(|_| Attacked::default()).collect();
        let bar = progress_bar(n as u64, &format!("white-box {}", defense.key()));
        // Every setting the chunks depend on: a stopped run picks up the finished ones.
        let key = format!(
            "crop|{}|{:?}|{}|{n}|{}|{eot}|{:?}|{}|{threshold}|passes {}|select {}",
            opts.bundle.display(),
            opts.purify,
            defense.key(),
            opts.chunk,
            opts.whitebox_pgd,
            opts.seed,
            opts.passes,
            opts.select_block
        );
        let stem = format!("whitebox-crop-{}", defense.key());
        for first in (0..n).step_by(opts.chunk) {
            let len = opts.chunk.min(n - first);
            let kept = chunk::path(&opts.report.join("cache"), &stem, &key, first);
            if chunk::load(&kept).is_some_and(|k| keep_from(&k, &mut out, len)) {
                bar.inc(len as u64);
                continue;
            }
            let x = Self::rows(&self.probe, first, len);
            let attacker_seed =
                |extra: u64| mix(opts.seed, &[stream::ATTACK, d as u64, first as u64, extra]);
            // Seeded per chunk, so that a resumed run attacks the remaining chunks as a whole
            // run would have.
            let mut attack_rng = StdRng::seed_from_u64(attacker_seed(1000));
            let mut named = Vec::new();
            let target = self.white_box_target(d, defense, first, len)?;
            // FGSM: K defense draws at the clean probe; the variant without EOT uses the first.
            let draws = Bpda {
                recognizer: &self.recognizer,
                target: &target,
                defense: &mut *defense,
                samples: eot,
                rng: StdRng::seed_from_u64(attacker_seed(1)),
                monitor: None,
            }
            .draws(&x)?;
            for (v, (variant, attacked)) in variants.iter().zip(&mut out).enumerate() {
                let grad = draws[..variant.eot]
                    .iter()
                    .fold(x.zeros_like(), |acc, (_, g)| acc + g);
                let mut bpda = Bpda {
                    recognizer: &self.recognizer,
                    target: &target,
                    defense: &mut *defense,
                    samples: variant.eot,
                    rng: StdRng::seed_from_u64(attacker_seed(2 + v as u64)),
                    monitor: Some(BreakMonitor::new(threshold, len)),
                };
                let pgd8 = pgd(&x, &opts.whitebox_pgd, &mut bpda, &mut attack_rng)?;
                let broken = bpda.monitor.map(|m| m.broken).unwrap_or_default();
                named.push((format!("{v}-broken"), chunk::flags(&broken)));
                attacked.broken.extend(broken);
                for (cond, a) in [
                    (Condition::Fgsm4, fgsm(&x, &grad, attack::unit_eps(4.0))),
                    (Condition::Fgsm8, fgsm(&x, &grad, attack::unit_eps(8.0))),
                    (Condition::Pgd8, pgd8),
                ] {
                    let a = quantize(&a);
                    named.push((format!("{v}-{}", cond.key()), a.shallow_clone()));
                    attacked.probes.entry(cond).or_default().push(a);
                }
            }
            chunk::save(&kept, &named)?;
            bar.inc(len as u64);
        }
        bar.finish();
        Ok(out)
    }

    /// The white-box attacker's target for pairs `first..first + len`: the gallery as the
    /// defended system sees it.
    fn white_box_target(
        &self,
        d: usize,
        defense: &mut Defense,
        first: usize,
        len: usize,
    ) -> Result<Target> {
        let gallery_seeds: Vec<u64> = (0..len as u64)
            .map(|k| {
                mix(
                    self.opts.seed,
                    &[stream::ATTACK, d as u64, first as u64 + k],
                )
            })
            .collect();
        let g = defense.apply(&Self::rows(&self.gallery, first, len), &gallery_seeds)?;
        Ok(Target::new(
            &self.recognizer.embed_all(
                &g,
                &Self::rows(&self.align_gallery, first, len),
                len as i64,
            )?,
            &self.same[first..first + len],
            &Self::rows(&self.align_probe, first, len),
        ))
    }
}
