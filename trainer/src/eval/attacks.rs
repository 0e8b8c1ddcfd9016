//! The grey-box attack stage: FGSM, PGD and C&W through the undefended recognizer, and the
//! on-manifold attacks through the bundle's generator, every probe rounded to 8 bits.

use std::collections::BTreeMap;

use anyhow::Result;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tch::{Kind, Tensor};

use super::Condition;
use super::protocol::{Evaluation, mix, stream};
use crate::attack::{self, GreyBox, LatentStep, LossGradient, Target, carlini_wagner, fgsm, pgd};
use crate::chunk;
use crate::data::progress_bar;
use crate::defense::quantize;
use crate::model::AVae;

/// The attacks whose probes the grey-box stage makes, in the evaluation's condition order (the
/// stage also keeps the reconstruction, [`Condition::Recon`], after them).
pub(super) const GREY_ATTACKS: [Condition; 6] = [
    Condition::Fgsm4,
    Condition::Fgsm8,
    Condition::Pgd8,
    Condition::Cw,
    Condition::Manifold,
    Condition::ManifoldUnit,
];

/// Everything the grey-box stage makes and keeps, in order.
fn grey_kept() -> impl Iterator<Item = Condition> {
    GREY_ATTACKS.into_iter().chain([Condition::Recon])
}

/// Probes of every condition (clean and adversarial), `[N, 3, S, S]` each.
pub(super) type Probes = BTreeMap<Condition, Tensor>;

impl Evaluation<'_> {
    /// The grey-box adversarial probes (gradient of the undefended recognizer, C&W aiming at the
    /// undefended `threshold`) and the on-manifold ones, all rounded to 8 bits, by condition.
    pub(super) fn grey_box_attacks(&self, generator: &AVae, threshold: f64) -> Result<Probes> {
        let (n, opts) = (self.n(), self.opts);
        let clean_gallery =
            self.recognizer
                .embed_all(&self.gallery, &self.align_gallery, opts.chunk as i64)?;
        let mut parts: BTreeMap<Condition, Vec<Tensor>> = BTreeMap::new();
        let bar = progress_bar(n as u64, "grey-box attacks");
        // Every setting the chunks depend on (the on-manifold attacks use the bundle's
        // generator): a stopped run picks up the finished ones.
        let key = format!(
            "grey|{}|{n}|{}|{:?}|{:?}|{}|{}|{}|{}|{threshold}",
            opts.bundle.display(),
            opts.chunk,
            opts.pgd,
            opts.cw,
            opts.manifold_steps,
            opts.manifold_eps,
            opts.manifold_unit_step,
            opts.seed
        );
        for first in (0..n).step_by(opts.chunk) {
            let len = opts.chunk.min(n - first);
            let kept = chunk::path(&opts.report.join("cache"), "greybox-crop", &key, first);
            let loaded = chunk::load(&kept).and_then(|k| {
                grey_kept()
                    .map(|c| Some((c, k.tensor(c.key()).filter(|t| t.size()[0] == len as i64)?)))
                    .collect::<Option<Vec<_>>>()
            });
            if let Some(loaded) = loaded {
                for (cond, adv) in loaded {
                    parts.entry(cond).or_default().push(adv);
                }
                bar.inc(len as u64);
                continue;
            }
            // Seeded per chunk, so that a resumed run attacks the remaining chunks as a whole
            // run would have.
            let mut rng =
                StdRng::seed_from_u64(mix(opts.seed, &[stream::ATTACK, 2000 + first as u64]));
            let x = Self::rows(&self.probe, first, len);
            let target = Target::new(
                &Self::rows(&clean_gallery, first, len),
                &self.same[first..first + len],
                &Self::rows(&self.align_probe, first, len),
            );
            let mut grey = GreyBox {
                recognizer: &self.recognizer,
                target: &target,
            };
            let (_, grad) = grey.loss_and_grad(&x)?;
            let cw = carlini_wagner(&x, &target.sign, threshold, &opts.cw, &mut grey)?;
            let pgd8 = pgd(&x, &opts.pgd, &mut grey, &mut rng)?;
            let (latent_attacks, recon) = attack::on_manifold(
                generator,
                &self.recognizer,
                &target,
                &x,
                opts.manifold_steps,
                &[
                    LatentStep::Gradient(opts.manifold_eps),
                    LatentStep::Unit(opts.manifold_unit_step),
                ],
            )?;
            let [manifold, manifold_unit]: [Tensor; 2] = latent_attacks
                .try_into()
                .map_err(|_| anyhow::anyhow!("internal error: two on-manifold attacks expected"))?;
            let mut named = Vec::new();
            for (cond, adv) in grey_kept().zip([
                fgsm(&x, &grad, attack::unit_eps(4.0)),
                fgsm(&x, &grad, attack::unit_eps(8.0)),
                pgd8,
                cw,
                manifold,
                manifold_unit,
                recon,
            ]) {
                let adv = quantize(&adv);
                named.push((cond.key().to_owned(), adv.shallow_clone()));
                parts.entry(cond).or_default().push(adv);
            }
            chunk::save(&kept, &named)?;
            bar.inc(len as u64);
        }
        bar.finish();
        let mut probes: Probes = parts
            .into_iter()
            .map(|(k, v)| (k, Tensor::cat(&v, 0)))
            .collect();
        probes.insert(Condition::Clean, self.probe.shallow_clone());
        Ok(probes)
    }
}

/// Mean L2 norm (in [0, 1] pixel units) of each perturbed probe's distance from the clean one.
pub(super) fn perturbation_l2(probes: &Probes, clean: &Tensor) -> BTreeMap<Condition, f64> {
    Condition::PERTURBED
        .iter()
        .map(|&c| {
            let l2 = attack::l2_norm(&probes[&c], clean).mean(Kind::Float);
            (c, l2.double_value(&[]))
        })
        .collect()
}
