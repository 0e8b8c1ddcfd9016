//! Calibration of the bundle's default KL clip `tau` (see `gstavaepurify::core::latent`).
//!
//! The clip keeps a latent `z` only while `KL(N(z, sigma^2 I) || N(0, I))`, averaged over the
//! latent dimensions, stays below `tau`. That KL has a floor set by the encoder's sigma alone,
//! so a fixed `tau` only means something on the KL scale of the model that was trained: the
//! paper's 0.03 leaves the admissible ball empty for a model whose posteriors sit at a mean KL
//! of ~0.4 per dimension, and every latent then collapses to the posterior mean (no sampling at
//! all, `gstavaepurify::core::latent`). The bundle therefore carries a `tau` measured on training
//! faces: the median, over faces, of the KL at the posterior mean.
//! Typical faces keep their posterior mean inside the ball while samples are pulled back to its
//! surface; faces whose latents lie far out (off- or on-manifold attacks raise the KL, paper
//! section 3.1) are pulled towards the prior.

use anyhow::{Result, ensure};
use tch::{Kind, Tensor};

use crate::model::AVae;

/// Median over `faces` (`[N,3,S,S]` in [-1,1]) of the per-dimension mean KL of
/// `N(mu, sigma^2 I)` from `N(0, I)`.
pub fn median_posterior_kl(model: &AVae, faces: &Tensor) -> Result<f32> {
    ensure!(faces.size()[0] > 0, "no faces to calibrate tau on");
    let kl = tch::no_grad(|| {
        let (mu, logvar, _) = model.encode(faces);
        (logvar.exp() + mu.square() - 1.0 - &logvar).mean_dim(&[1i64][..], false, Kind::Float) * 0.5
    });
    let mut values: Vec<f32> = Vec::<f32>::try_from(kl.flatten(0, -1))?;
    values.retain(|v| v.is_finite());
    ensure!(!values.is_empty(), "the encoder gave no finite KL values");
    values.sort_by(f32::total_cmp);
    Ok(values[values.len() / 2])
}
