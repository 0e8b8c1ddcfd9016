//! Attacks on face verification (paper sections 2.1, 4.1, 4.4 and 4.5), in tch.
//!
//! The attacked image is the probe of a pair (its second image) as the `S x S` crop in [-1, 1]
//! that the purifier acts on. Every attack descends the attack loss
//! `L(x) = sign * cos(f(x), f(gallery))` with `sign = +1` for same-identity pairs (obfuscation:
//! the pair should be rejected) and `sign = -1` for different-identity pairs (impersonation: the
//! pair should be accepted). Epsilons are in 1/255 of the 8-bit pixel range, so an L-infinity
//! budget `eps` allows each value of the [-1, 1] crop to move by `2 eps / 255`.
//!
//! Gradients come from a [`LossGradient`]: [`GreyBox`] differentiates the undefended recognizer;
//! [`Bpda`] runs the real defense forward and passes the gradient at its output straight back to
//! its input (BPDA, Athalye et al. 2018), averaged over K draws of the defense's randomness (EOT).

use anyhow::{Context, Result, ensure};
use gstavaepurify::bundle::{Bundle, GraphKind};
use rand::Rng;
use rand::rngs::StdRng;
use tch::{Kind, Tensor, nn};

use crate::config::Config;
use crate::defense::Defense;
use crate::model::AVae;
use crate::onnx_tch::read_initializers;
use crate::recognizer::{Recognizer, cosine, normalize};

/// An L-infinity budget in 1/255 of the pixel range as a distance in the [-1, 1] crop.
pub fn unit_eps(eps_255: f64) -> f64 {
    2.0 * eps_255 / 255.0
}

/// What the attacker aims at for a batch of probes.
#[derive(Debug)]
pub struct Target {
    /// Unit embeddings `[N, 512]` of the (clean, undefended) gallery images.
    pub gallery: Tensor,
    /// `+1` for same-identity pairs, `-1` for different-identity pairs, `[N]`.
    pub sign: Tensor,
    /// The recognizer's warps `[N, 2, 3]` of the probes (their images' alignment).
    pub align: Tensor,
}

impl Target {
    /// The target for gallery embeddings `gallery`, pair kinds `same` and probe warps `align`.
    pub fn new(gallery: &Tensor, same: &[bool], align: &Tensor) -> Self {
        let sign: Vec<f32> = same.iter().map(|&s| if s { 1.0 } else { -1.0 }).collect();
        Self {
            gallery: normalize(&gallery.detach()),
            sign: Tensor::from_slice(&sign).to_device(gallery.device()),
            align: align.shallow_clone(),
        }
    }

    /// The attack loss `[N]` of embeddings `emb` `[N, 512]`.
    pub fn loss(&self, emb: &Tensor) -> Tensor {
        cosine(emb, &self.gallery) * &self.sign
    }
}

/// Records, per attacked pair, whether any iterate of an attack broke the defended system's
/// verification decision at `threshold` (a same-identity pair scored at or below it, or a
/// different one above it, as [`crate::eval::verify`] decides): the white-box figure counts such a pair as broken even when the final
/// iterate no longer breaks it.
#[derive(Debug, Clone)]
pub struct BreakMonitor {
    /// The defended system's verification threshold.
    pub threshold: f64,
    /// Per pair: broken by some iterate so far.
    pub broken: Vec<bool>,
}

impl BreakMonitor {
    /// A monitor of `n` pairs, none broken yet.
    pub fn new(threshold: f64, n: usize) -> Self {
        Self {
            threshold,
            broken: vec![false; n],
        }
    }

    /// Notes the attack losses `loss` (`[N]`, cosine times the pair's sign) of one defended
    /// forward pass at the current iterate.
    pub fn observe(&mut self, target: &Target, loss: &Tensor) -> Result<()> {
        let rows: Vec<usize> = (0..self.broken.len()).collect();
        self.observe_rows(target, loss, &rows).map(|_| ())
    }

    /// [`Self::observe`] for the monitored pairs `rows` only (`target` and `loss` hold just
    /// those rows, in that order); says for each whether this iterate broke it.
    pub fn observe_rows(
        &mut self,
        target: &Target,
        loss: &Tensor,
        rows: &[usize],
    ) -> Result<Vec<bool>> {
        ensure!(
            loss.size() == [rows.len() as i64],
            "losses of shape {:?} for {} monitored rows",
            loss.size(),
            rows.len()
        );
        let cos = Vec::<f32>::try_from(&(loss * &target.sign).to_kind(Kind::Float))?;
        let sign = Vec::<f32>::try_from(&target.sign.to_kind(Kind::Float))?;
        ensure!(
            cos.len() == rows.len() && rows.iter().all(|&r| r < self.broken.len()),
            "{} losses for rows {rows:?} of {} monitored pairs",
            cos.len(),
            self.broken.len()
        );
        Ok(rows
            .iter()
            .zip(cos)
            .zip(sign)
            .map(|((&r, c), s)| {
                let accepted = f64::from(c) > self.threshold;
                let now = accepted != (s > 0.0);
                self.broken[r] |= now;
                now
            })
            .collect())
    }
}

/// Attack loss and its gradient with respect to the probe crops.
pub trait LossGradient {
    /// `(loss [N], gradient [N, 3, S, S])` at crops `x`.
    fn loss_and_grad(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// Attack loss and gradient through the recognizer alone.
pub fn recognizer_gradient(
    recognizer: &Recognizer,
    target: &Target,
    x: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let x = x.detach().set_requires_grad(true);
    let loss = target.loss(&recognizer.embed(&x, &target.align)?);
    let grad = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&x], false, false)
        .pop()
        .context("no gradient reached the probe")?;
    Ok((loss.detach(), grad))
}

/// Grey-box: the attacker knows the recognizer, not the defense.
pub struct GreyBox<'a> {
    /// The recognizer.
    pub recognizer: &'a Recognizer,
    /// The attacked pairs.
    pub target: &'a Target,
}

impl LossGradient for GreyBox<'_> {
    fn loss_and_grad(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        recognizer_gradient(self.recognizer, self.target, x)
    }
}

/// White-box BPDA: the defense runs forward, its backward pass is the identity; with `samples`
/// (K) > 1 the gradient is averaged over K independent draws of the defense's randomness (EOT).
pub struct Bpda<'a> {
    /// The recognizer.
    pub recognizer: &'a Recognizer,
    /// The attacked pairs.
    pub target: &'a Target,
    /// The defense being attacked.
    pub defense: &'a mut Defense,
    /// K: defense draws per gradient.
    pub samples: usize,
    /// Source of the attacker's seeds for the defense (independent of the evaluation's).
    pub rng: StdRng,
    /// Where the first draw of every gradient is checked for a broken decision.
    pub monitor: Option<BreakMonitor>,
}

impl Bpda<'_> {
    /// The K per-draw `(loss, gradient)` pairs at `x`.
    pub fn draws(&mut self, x: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        let n = usize::try_from(x.size()[0])?;
        (0..self.samples.max(1))
            .map(|_| {
                let seeds: Vec<u64> = (0..n).map(|_| self.rng.random()).collect();
                let defended = self.defense.apply(x, &seeds)?;
                recognizer_gradient(self.recognizer, self.target, &defended)
            })
            .collect()
    }
}

impl LossGradient for Bpda<'_> {
    fn loss_and_grad(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let draws = self.draws(x)?;
        if let Some(m) = self.monitor.as_mut() {
            m.observe(self.target, &draws[0].0)?;
        }
        let k = draws.len() as f64;
        let (mut loss, mut grad) = (Tensor::zeros_like(&draws[0].0), x.zeros_like());
        for (l, g) in &draws {
            loss += l;
            grad += g;
        }
        Ok((loss / k, grad / k))
    }
}

/// One signed-gradient step of size `eps` (unit of the crop), clamped to [-1, 1] (FGSM, eq. 1).
pub fn fgsm(x: &Tensor, grad: &Tensor, eps: f64) -> Tensor {
    (x - grad.sign() * eps).clamp(-1.0, 1.0)
}

/// PGD settings (Madry et al.; paper eq. 2). Sizes in 1/255.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PgdParams {
    /// L-infinity budget.
    pub eps: f64,
    /// Step size.
    pub step: f64,
    /// Steps per restart.
    pub steps: usize,
    /// Start from a uniform random point of the budget (otherwise from the clean crop).
    pub random_start: bool,
    /// Restarts; per probe the one with the lowest final loss is kept.
    pub restarts: usize,
}

/// Projected gradient descent on the attack loss within the L-infinity ball around `x`.
pub fn pgd(
    x: &Tensor,
    params: &PgdParams,
    oracle: &mut dyn LossGradient,
    rng: &mut StdRng,
) -> Result<Tensor> {
    let (eps, step) = (unit_eps(params.eps), unit_eps(params.step));
    let mut best: Option<(Tensor, Tensor)> = None;
    for _ in 0..params.restarts.max(1) {
        tch::manual_seed(rng.random::<i64>() & 0x7fff_ffff_ffff);
        let mut adv = if params.random_start {
            (x + x.rand_like() * (2.0 * eps) - eps).clamp(-1.0, 1.0)
        } else {
            x.shallow_clone()
        };
        for _ in 0..params.steps {
            let (_, grad) = oracle.loss_and_grad(&adv)?;
            adv = project_linf(&(adv - grad.sign() * step), x, eps);
        }
        if params.restarts <= 1 {
            return Ok(adv);
        }
        let (loss, _) = oracle.loss_and_grad(&adv)?;
        best = Some(match best {
            None => (adv, loss),
            Some((b, bl)) => {
                let better = loss.lt_tensor(&bl);
                let keep = better.view([-1, 1, 1, 1]);
                (adv.where_self(&keep, &b), loss.minimum(&bl))
            }
        });
    }
    best.map(|(adv, _)| adv).context("PGD ran no restart")
}

/// Clamps `adv` into the L-infinity ball of radius `eps` around `x` and into [-1, 1].
fn project_linf(adv: &Tensor, x: &Tensor, eps: f64) -> Tensor {
    (x + (adv - x).clamp(-eps, eps)).clamp(-1.0, 1.0)
}

/// C&W settings (Carlini & Wagner 2017, L2; paper eq. 3) under an L2 bound.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CwParams {
    /// L2 bound on the perturbation, in [0, 1] pixel units over the whole `3 x S x S` crop.
    pub bound: f64,
    /// Weight c of the verification loss against the squared L2 norm.
    pub c: f64,
    /// Adam learning rate, in [0, 1] pixel units.
    pub lr: f64,
    /// Optimisation steps.
    pub steps: usize,
    /// Margin kappa on the cosine similarity past the threshold.
    pub kappa: f64,
}

/// C&W L2: minimises `||delta||^2 + c * max(L(x + delta) - sign * t + kappa, 0)` with Adam
/// (`t` the verification threshold the attacker targets), projecting `delta` onto the L2 ball of
/// radius `bound` and the valid pixel range after every step.
pub fn carlini_wagner(
    x: &Tensor,
    sign: &Tensor,
    threshold: f64,
    params: &CwParams,
    oracle: &mut dyn LossGradient,
) -> Result<Tensor> {
    let n = x.size()[0];
    let (beta1, beta2, tiny) = (0.9, 0.999, 1e-8);
    // delta lives in [0, 1] pixel units: the crop moves by 2 delta.
    let mut delta = x.zeros_like();
    let (mut m, mut v) = (x.zeros_like(), x.zeros_like());
    for t in 1..=params.steps {
        let adv = (x + &delta * 2.0).clamp(-1.0, 1.0);
        let (loss, grad) = oracle.loss_and_grad(&adv)?;
        let active = (loss - sign * threshold + params.kappa)
            .gt(0.0)
            .to_kind(Kind::Float)
            .view([n, 1, 1, 1]);
        let g = &delta * 2.0 + grad * 2.0 * params.c * active;
        m = &m * beta1 + &g * (1.0 - beta1);
        v = &v * beta2 + g.square() * (1.0 - beta2);
        let m_hat = &m / (1.0 - beta1.powi(t as i32));
        let v_hat = &v / (1.0 - beta2.powi(t as i32));
        delta = &delta - m_hat / (v_hat.sqrt() + tiny) * params.lr;
        delta = project_l2(&delta, x, params.bound);
    }
    Ok((x + delta * 2.0).clamp(-1.0, 1.0))
}

/// Keeps `x + 2 delta` in [-1, 1] and scales each row of `delta` to L2 norm at most `bound`.
fn project_l2(delta: &Tensor, x: &Tensor, bound: f64) -> Tensor {
    let n = delta.size()[0];
    let delta = ((x + delta * 2.0).clamp(-1.0, 1.0) - x) / 2.0;
    let norm = delta
        .view([n, -1])
        .norm_scalaropt_dim(2, [1], false)
        .view([n, 1, 1, 1]);
    let scale = (norm.clamp_min(1e-12).reciprocal() * bound).clamp_max(1.0);
    delta * scale
}

/// L2 norms `[N]` of perturbations between crops, in [0, 1] pixel units.
pub fn l2_norm(adv: &Tensor, x: &Tensor) -> Tensor {
    let n = x.size()[0];
    ((adv - x) / 2.0)
        .view([n, -1])
        .norm_scalaropt_dim(2, [1], false)
}

/// How one on-manifold attack steps through the latent space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatentStep {
    /// The paper's raw step `z <- z - eps * g`.
    Gradient(f64),
    /// A step of fixed latent length, `z <- z - eps * g / |g|` (g per face), for models whose
    /// latent gradients are too small for the raw step to move `z` far.
    Unit(f64),
}

/// The on-manifold attack (paper eq. 8): encode the probe once to its posterior mean `z` and
/// skip feature, then for each entry of `variants` take `steps` steps of that kind down the
/// attack loss `L(Dec(z))` (the paper's ascent of the cosine loss J, with our sign convention).
/// Returns `Dec(z_n)` per variant (the adversarial images) and `Dec(z_0)` (the unattacked
/// reconstruction).
pub fn on_manifold(
    model: &AVae,
    recognizer: &Recognizer,
    target: &Target,
    x: &Tensor,
    steps: usize,
    variants: &[LatentStep],
) -> Result<(Vec<Tensor>, Tensor)> {
    let (mu, _, skip) = tch::no_grad(|| model.encode(x));
    let recon = tch::no_grad(|| model.decode(&mu, &skip));
    let mut adversarial = Vec::with_capacity(variants.len());
    for variant in variants {
        let mut z = mu.shallow_clone();
        for _ in 0..steps {
            let zv = z.detach().set_requires_grad(true);
            let image = model.decode(&zv, &skip);
            let loss = target.loss(&recognizer.embed(&image, &target.align)?);
            let grad = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&zv], false, false)
                .pop()
                .context("no gradient reached the latent")?;
            let step = match *variant {
                LatentStep::Gradient(eps) => grad * eps,
                LatentStep::Unit(eps) => {
                    let norm = grad.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
                    grad / norm * eps
                }
            };
            z = zv.detach() - step;
        }
        adversarial.push(tch::no_grad(|| model.decode(&z, &skip)));
    }
    Ok((adversarial, recon))
}

/// Rebuilds the tch generator of a bundle from the weights of its `encoder.onnx` and
/// `decoder.onnx` (their initializers carry the generator's parameter names), so the
/// on-manifold attack differentiates through exactly the shipped weights.
pub fn generator_from_bundle(bundle: &Bundle) -> Result<(nn::VarStore, AVae)> {
    let m = &bundle.manifest;
    let mut cfg = Config::preset(&m.preset)
        .with_context(|| format!("bundle '{}': preset '{}'", bundle.dir.display(), m.preset))?;
    // The geometry the graphs were exported with: the encoder's input side and, when the
    // provenance names one, the skip connection's detail.
    cfg.input_size = i64::try_from(m.encoder_input_size).unwrap_or(cfg.input_size);
    if let Some(side) = m.provenance.get("skip_detail").and_then(|v| v.as_i64()) {
        cfg.skip_detail = side;
    }
    cfg.validate()
        .with_context(|| format!("bundle '{}': encoder geometry", bundle.dir.display()))?;
    ensure!(
        cfg.image_size as usize == m.image_size
            && cfg.latent_dim() as usize == m.latent_dim
            && cfg.skip_channels() as usize == m.skip_channels,
        "bundle '{}' (S {}, D {}, C {}) does not match the '{}' preset (S {}, D {}, C {})",
        bundle.dir.display(),
        m.image_size,
        m.latent_dim,
        m.skip_channels,
        m.preset,
        cfg.image_size,
        cfg.latent_dim(),
        cfg.skip_channels()
    );
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = AVae::new(&vs.root(), &cfg);
    let mut weights = std::collections::HashMap::new();
    for kind in [GraphKind::Encoder, GraphKind::Decoder] {
        let path = bundle
            .graph_path(kind)
            .context("bundle without encoder or decoder")?;
        weights.extend(read_initializers(&path)?);
    }
    tch::no_grad(|| -> Result<()> {
        for (name, param) in model.params() {
            let w = weights.get(name).with_context(|| {
                format!(
                    "bundle '{}' has no weight '{name}' in its graphs",
                    bundle.dir.display()
                )
            })?;
            ensure!(
                w.size() == param.size(),
                "bundle '{}': weight '{name}' is {:?}, the model expects {:?}",
                bundle.dir.display(),
                w.size(),
                param.size()
            );
            let mut p = param.shallow_clone();
            p.copy_(w);
        }
        Ok(())
    })?;
    Ok((vs, model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tch::Device;

    /// A quadratic "recognizer-free" loss `sum((x - a)^2)` per row, for checking the optimisers.
    struct Quadratic(Tensor);

    impl LossGradient for Quadratic {
        fn loss_and_grad(&mut self, x: &Tensor) -> Result<(Tensor, Tensor)> {
            let d = x - &self.0;
            Ok((
                d.square()
                    .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float),
                d * 2.0,
            ))
        }
    }

    fn zeros() -> Tensor {
        Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn the_monitor_marks_the_rows_an_iterate_breaks_and_keeps_them_broken() {
        // Pairs 0 and 2 are the same person, 1 and 3 are not; threshold 0.3.
        let target = Target {
            gallery: Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)),
            sign: Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0]),
            align: Tensor::zeros([4, 2, 3], (Kind::Float, Device::Cpu)),
        };
        let mut m = BreakMonitor::new(0.3, 4);
        // Losses are cosine x sign: same pair at cosine 0.2 (rejected: broken), different pair
        // at cosine 0.1 (rejected: holds).
        let sub = Target {
            gallery: target.gallery.narrow(0, 0, 2),
            sign: target.sign.narrow(0, 0, 2),
            align: target.align.narrow(0, 0, 2),
        };
        let now = m
            .observe_rows(&sub, &Tensor::from_slice(&[0.2f32, -0.1]), &[0, 1])
            .unwrap();
        assert_eq!(now, [true, false]);
        assert_eq!(m.broken, [true, false, false, false]);
        // Rows 2 and 3 alone: a different pair accepted at cosine 0.5 breaks; a later iterate
        // that no longer breaks pair 0 does not mend it.
        let rest = Target {
            gallery: target.gallery.narrow(0, 2, 2),
            sign: target.sign.narrow(0, 2, 2),
            align: target.align.narrow(0, 2, 2),
        };
        let now = m
            .observe_rows(&rest, &Tensor::from_slice(&[0.9f32, -0.5]), &[2, 3])
            .unwrap();
        assert_eq!(now, [false, true]);
        m.observe(&target, &Tensor::from_slice(&[0.9f32, -0.1, 0.9, -0.1]))
            .unwrap();
        assert_eq!(m.broken, [true, false, false, true]);
        // Rows and losses must agree.
        assert!(
            m.observe_rows(&sub, &Tensor::from_slice(&[0.1f32]), &[0, 1])
                .is_err()
        );
    }

    #[test]
    fn fgsm_moves_every_value_by_eps_against_the_gradient() {
        let x = zeros();
        let g = Tensor::ones_like(&x);
        let adv = fgsm(&x, &g, unit_eps(8.0));
        assert!((adv.max().double_value(&[]) + 16.0 / 255.0).abs() < 1e-6);
        assert!((adv.min().double_value(&[]) + 16.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn pgd_stays_in_the_ball_and_reaches_the_nearest_corner() {
        let x = zeros();
        let goal = Tensor::full([2, 3, 4, 4], 0.5, (Kind::Float, Device::Cpu));
        let params = PgdParams {
            eps: 8.0,
            step: 1.0,
            steps: 20,
            random_start: true,
            restarts: 2,
        };
        let adv = pgd(
            &x,
            &params,
            &mut Quadratic(goal),
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let eps = unit_eps(8.0);
        assert!((adv.max().double_value(&[]) - eps).abs() < 1e-6);
        assert!((adv.min().double_value(&[]) - eps).abs() < 1e-6);
    }

    #[test]
    fn cw_respects_the_l2_bound() {
        let x = zeros();
        let goal = Tensor::full([2, 3, 4, 4], 0.9, (Kind::Float, Device::Cpu));
        let sign = Tensor::from_slice(&[1.0f32, 1.0]);
        let params = CwParams {
            bound: 0.5,
            c: 10.0,
            lr: 0.05,
            steps: 50,
            kappa: 0.0,
        };
        // Threshold far below the loss: the verification term stays active and pulls to the goal.
        let adv = carlini_wagner(&x, &sign, -1e9, &params, &mut Quadratic(goal)).unwrap();
        let norms = Vec::<f32>::try_from(&l2_norm(&adv, &x)).unwrap();
        for n in norms {
            assert!(n <= 0.5 + 1e-4 && n > 0.4, "{n}");
        }
        assert!(adv.min().double_value(&[]) >= 0.0);
    }
}
