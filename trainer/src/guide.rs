//! Recognizer-guided training (beyond the paper, after Liao et al.'s high-level guided denoiser,
//! CVPR 2018): the face recognizer that the defense protects takes part in training in two ways.
//!
//! - **Attacked inputs.** A denoising family (`recognizer` in the training log) where the encoder
//!   sees the face perturbed by a few PGD steps that push the recognizer's embedding away from the
//!   clean face's (an untargeted dodging attack, the grey-box attacker's own gradient), computed
//!   on the fly; the critic and the consistency target still see the clean face.
//! - **Identity loss.** `id_weight x (1 - cos(R(G(x_in)), R(x)))`: the purified face must keep the
//!   clean face's embedding, whatever the encoder saw.
//!
//! The recognizer is frozen (its weights are constants of the ONNX graph); it sees crops through
//! the mean-landmark warp ([`Alignment::Template`]), since training crops carry no landmarks.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::CropSpec;
use crate::defense::quantize;
use crate::recognizer::{Alignment, Recognizer, normalize};

/// Settings of recognizer-guided training, stored in every checkpoint's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guide {
    /// Weight of the identity loss (0 = off).
    pub id_weight: f64,
    /// Share of the perturbed (denoising) steps whose input is the recognizer attack instead of
    /// one of the other families (0 = never).
    pub attack_share: f64,
    /// PGD steps of the recognizer attack.
    pub attack_steps: usize,
}

impl Default for Guide {
    fn default() -> Self {
        Self {
            id_weight: 0.0,
            attack_share: 0.0,
            attack_steps: 3,
        }
    }
}

impl Guide {
    /// Whether the recognizer is needed at all.
    pub fn enabled(&self) -> bool {
        self.id_weight > 0.0 || self.attack_share > 0.0
    }
}

/// The frozen recognizer (seeing the training crops through the mean-landmark warp) and the
/// step count of its attack.
pub struct Guidance {
    recognizer: Recognizer,
    attack_steps: usize,
}

impl Guidance {
    /// Loads the recognizer at `path` for `size x size` crops made with `crop`, on `device`, for
    /// the settings `guide`.
    pub fn load(
        path: &Path,
        crop: &CropSpec,
        size: i64,
        device: Device,
        guide: &Guide,
    ) -> Result<Self> {
        let mut recognizer = Recognizer::load(path, Alignment::Template, crop, size)?;
        recognizer.to_device(device);
        Ok(Self {
            recognizer,
            attack_steps: guide.attack_steps,
        })
    }

    fn align(&self, n: i64) -> Result<Tensor> {
        self.recognizer.default_align(n)
    }

    /// Unit embeddings `[N, 512]` of crops `[N, 3, S, S]` in [-1, 1]; differentiable.
    pub fn embed(&self, faces: &Tensor) -> Result<Tensor> {
        let n = faces.size()[0];
        Ok(normalize(&self.recognizer.embed(faces, &self.align(n)?)?))
    }

    /// Mean `1 - cos` between the embeddings of `faces` and the unit embeddings `target`.
    pub fn identity_loss(&self, faces: &Tensor, target: &Tensor) -> Result<Tensor> {
        let e = self.embed(faces)?;
        let cos = (e * target).sum_dim_intlist(1i64, false, Kind::Float);
        Ok((cos.neg() + 1.0).mean(Kind::Float))
    }

    /// An untargeted PGD of the guide's `attack_steps` steps (size 2.5 eps / steps, random
    /// start) within the L-inf ball of `eps` (in the [-1, 1] scale) around `x`, lowering the
    /// cosine to `target`, the unit embeddings of `x`; rounded to 8 bits.
    pub fn attack(&self, x: &Tensor, target: &Tensor, eps: f64) -> Result<Tensor> {
        let steps = self.attack_steps;
        let alpha = 2.5 * eps / steps.max(1) as f64;
        let mut adv = (x + (x.rand_like() * 2.0 - 1.0) * eps).clamp(-1.0, 1.0);
        for _ in 0..steps.max(1) {
            let input = adv.detach().set_requires_grad(true);
            let cos = (self.embed(&input)? * target)
                .sum_dim_intlist(1i64, false, Kind::Float)
                .sum(Kind::Float);
            let grad = Tensor::run_backward(&[cos], &[&input], false, false)
                .pop()
                .unwrap_or_else(|| input.zeros_like());
            let step = input.detach() - grad.sign() * alpha;
            adv = step
                .max_other(&(x - eps))
                .min_other(&(x + eps))
                .clamp(-1.0, 1.0);
        }
        Ok(quantize(&adv).detach())
    }
}
