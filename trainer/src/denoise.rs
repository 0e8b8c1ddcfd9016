//! Denoising training (beyond the paper): the encoder sees a perturbed face while the critic and
//! the consistency target see the clean one, so the generator learns to map perturbed inputs back
//! to clean faces.
//!
//! Each training step draws one perturbation family for the whole batch (or none, with
//! probability `1 - p`):
//! - `sign`: random-sign noise of L-inf size `e ~ U(0, eps)`;
//! - `blur`: Gaussian blur with sigma in `[0.5, 1.2]`;
//! - `jpeg`: JPEG round trip at quality 50-90;
//! - `encoder`: a PGD-like worst case for the purifier itself: one signed-gradient step of size
//!   `eps` from a random start inside the ball, maximising how far the encoder's outputs (mu and
//!   the skip feature) move. It costs one encoder forward and backward pass, computed on the fly.
//!
//! Every perturbed face is rounded to 8 bits, as frames are.

use anyhow::{Context, Result};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::defense::{gaussian_blur, jpeg, quantize};
use crate::guide::{Guidance, Guide};
use crate::model::AVae;

/// Settings of denoising training, stored in every checkpoint's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denoise {
    /// Probability that a step's batch is perturbed (0 = off, the paper's training).
    pub p: f64,
    /// Largest L-inf size of the `sign` and `encoder` perturbations, in 1/255 of the image.
    pub eps_255: f64,
}

impl Default for Denoise {
    fn default() -> Self {
        Self {
            p: 0.0,
            eps_255: 8.0,
        }
    }
}

/// The perturbation family drawn for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The clean batch.
    Clean,
    /// Random-sign noise.
    Sign,
    /// Gaussian blur.
    Blur,
    /// JPEG round trip.
    Jpeg,
    /// Signed-gradient step against the encoder.
    Encoder,
    /// PGD against the face recognizer (recognizer-guided training, `guide.rs`): drawn on a
    /// share `attack_share` of the perturbed steps, in place of the family drawn first.
    Recognizer,
}

impl Family {
    /// Index used in the training log (0 = clean).
    pub fn index(self) -> u8 {
        self as u8
    }
}

impl Denoise {
    /// Whether any step is perturbed.
    pub fn enabled(&self) -> bool {
        self.p > 0.0
    }

    /// Draws the family of one step; with recognizer guidance, a share of the perturbed steps
    /// becomes [`Family::Recognizer`] instead.
    pub fn draw(&self, guide: &Guide, rng: &mut StdRng) -> Family {
        if !self.enabled() || !rng.random_bool(self.p.clamp(0.0, 1.0)) {
            return Family::Clean;
        }
        let family = match rng.random_range(0..4u8) {
            0 => Family::Sign,
            1 => Family::Blur,
            2 => Family::Jpeg,
            _ => Family::Encoder,
        };
        if guide.attack_share > 0.0 && rng.random_bool(guide.attack_share.clamp(0.0, 1.0)) {
            Family::Recognizer
        } else {
            family
        }
    }

    /// The encoder's input for clean faces `x` (`[N, 3, S, S]` in [-1, 1]) under `family`;
    /// [`Family::Recognizer`] needs the recognizer and the unit embeddings of `x`.
    pub fn perturb(
        &self,
        family: Family,
        x: &Tensor,
        generator: &AVae,
        recognizer: Option<(&Guidance, &Tensor)>,
        rng: &mut StdRng,
    ) -> Result<Tensor> {
        let eps = 2.0 * self.eps_255 / 255.0;
        let out = match family {
            Family::Clean => return Ok(x.shallow_clone()),
            Family::Sign => {
                let e = eps * rng.random_range(0.25..=1.0);
                x + x.randn_like().sign() * e
            }
            Family::Blur => gaussian_blur(x, rng.random_range(0.5..=1.2)),
            Family::Jpeg => jpeg(x, rng.random_range(50..=90u8))?,
            Family::Encoder => encoder_attack(x, generator, eps),
            Family::Recognizer => {
                let (guidance, target) = recognizer.context(
                    "the recognizer family needs the recognizer and the clean embeddings",
                )?;
                return guidance.attack(x, target, eps);
            }
        };
        Ok(quantize(&out.clamp(-1.0, 1.0)).detach())
    }
}

/// One signed-gradient step of size `eps` (from a uniform random start in the L-inf ball) that
/// maximises the squared change of the encoder's `mu` and skip feature.
pub fn encoder_attack(x: &Tensor, generator: &AVae, eps: f64) -> Tensor {
    let (mu0, _, skip0) = tch::no_grad(|| generator.encode(x));
    let start = (x + (x.rand_like() * 2.0 - 1.0) * eps).detach();
    let delta_in = start.set_requires_grad(true);
    let (mu, _, skip) = generator.encode(&delta_in);
    let loss =
        (&mu - &mu0).square().mean(Kind::Float) + (&skip - &skip0).square().mean(Kind::Float);
    let grad = Tensor::run_backward(&[loss], &[&delta_in], false, false)
        .pop()
        .unwrap_or_else(|| delta_in.zeros_like());
    let adv = delta_in.detach() + grad.sign() * eps;
    // Project back into the ball around x.
    let lo = x - eps;
    let hi = x + eps;
    adv.max_other(&lo).min_other(&hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rand::SeedableRng;
    use tch::{Device, nn};

    #[test]
    fn families_stay_in_range_and_in_budget() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = AVae::new(&vs.root(), &Config::tiny());
        let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
        let d = Denoise {
            p: 1.0,
            eps_255: 8.0,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let budget = 2.0 * 8.0 / 255.0 + 1.0 / 255.0 + 1e-5;
        for family in [Family::Sign, Family::Encoder] {
            let y = d.perturb(family, &x, &model, None, &mut rng).unwrap();
            assert_eq!(y.size(), x.size());
            let linf = f64::try_from((&y - &x).abs().max()).unwrap();
            assert!(linf <= budget && linf > 0.01, "{family:?}: {linf}");
        }
        for family in [Family::Blur, Family::Jpeg] {
            let y = d.perturb(family, &x, &model, None, &mut rng).unwrap();
            assert!(f64::try_from(y.abs().max()).unwrap() <= 1.0);
            assert!(f64::try_from((&y - &x).abs().mean(Kind::Float)).unwrap() > 1e-3);
        }
        assert!(
            f64::try_from(
                (d.perturb(Family::Clean, &x, &model, None, &mut rng)
                    .unwrap()
                    - &x)
                    .abs()
                    .max()
            )
            .unwrap()
                == 0.0
        );
    }

    #[test]
    fn off_draws_only_clean_batches() {
        let mut rng = StdRng::seed_from_u64(2);
        let off = Denoise::default();
        assert!((0..100).all(|_| off.draw(&Guide::default(), &mut rng) == Family::Clean));
        let on = Denoise {
            p: 1.0,
            eps_255: 8.0,
        };
        assert!((0..100).all(|_| on.draw(&Guide::default(), &mut rng) != Family::Clean));
    }
}
