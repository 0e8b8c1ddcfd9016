//! Latent sampling with the KL clip of the paper's section 3.4.
//!
//! # The clip, precisely
//! For a face the encoder gives `mu` and `logvar` (`sigma_i^2 = exp(logvar_i)`), `D` values each.
//! A latent `z` is drawn as `z = mu + sigma * eps`, `eps ~ N(0, I)`, and then has to satisfy
//! `KL(N(z, sigma^2 I) || N(0, I)) <= tau` (paper, section 3.4). We use the KL **averaged over
//! the D dimensions**, the same normalisation as the mean-KL training loss, so that `tau` does not
//! depend on the latent size (the paper's `tau = 0.03`):
//!
//! ```text
//! KL(z) = 1/(2D) * sum_i (sigma_i^2 + z_i^2 - 1 - ln sigma_i^2) = K0 + |z|^2 / (2D)
//! K0    = 1/(2D) * sum_i (sigma_i^2 - 1 - ln sigma_i^2)   >= 0, the KL at z = 0 (its minimum)
//! ```
//!
//! The admissible set `{z : KL(z) <= tau}` is therefore the ball `|z|^2 <= R^2` with
//! `R^2 = 2D (tau - K0)`, and *clipping* is the Euclidean projection onto it: a `z` inside is kept,
//! a `z` outside is scaled towards the origin to radius `R`. Edge cases:
//! - `tau = +inf`: nothing is clipped (plain VAE sampling);
//! - `tau = 0`: only `z = 0` can fit, and only if `sigma = 1` (then every sample becomes
//!   `z = 0`); for any other sigma the set is empty, the next case;
//! - `tau < K0` (a sigma for which no z fits): the set is empty. The latent of least KL would be
//!   `z = 0`, but the decoder never sees a zero latent in training and turns it into a face-less
//!   colour field (measured on real video faces); we use the posterior mean `z = mu` instead (a
//!   deterministic reconstruction, no sampling) and report [`ClipOutcome::Unreachable`]. So
//!   `tau = 0` decodes the posterior mean for every face whose sigma is not exactly 1.

use ndarray::{ArrayView1, ArrayViewMut1, ArrayViewMut2, Zip};
use rand::Rng;
use rand_distr::StandardNormal;

/// Bound on `logvar` before exponentiation, so that a wild encoder output cannot overflow.
const LOGVAR_LIMIT: f32 = 30.0;

/// What the clip did to one latent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClipOutcome {
    /// `z` was already inside the KL ball.
    Kept,
    /// `z` was scaled towards the origin onto the ball's surface.
    Scaled,
    /// No latent satisfies the bound for this sigma (`tau < K0`); `z` was set to `mu`.
    Unreachable,
}

/// The squared radius `R^2 = 2D (tau - K0)` of the KL ball, or `None` when it is empty
/// (`tau < K0`). `Some(f32::INFINITY)` when `tau` is infinite.
pub fn kl_ball_radius_sq(logvar: ArrayView1<'_, f32>, tau: f32) -> Option<f32> {
    let d = logvar.len() as f64;
    if tau.is_infinite() && tau > 0.0 {
        return Some(f32::INFINITY);
    }
    let k0 = logvar
        .iter()
        .map(|&lv| {
            let lv = f64::from(lv.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT));
            lv.exp() - 1.0 - lv
        })
        .sum::<f64>()
        / (2.0 * d);
    let r2 = 2.0 * d * (f64::from(tau) - k0);
    (r2 >= 0.0).then_some(r2 as f32)
}

/// The mean-per-dimension KL divergence of `N(z, sigma^2 I)` from `N(0, I)` (module docs).
pub fn mean_kl(z: ArrayView1<'_, f32>, logvar: ArrayView1<'_, f32>) -> f32 {
    let d = z.len() as f64;
    let sum: f64 = z
        .iter()
        .zip(logvar.iter())
        .map(|(&z, &lv)| {
            let lv = f64::from(lv.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT));
            lv.exp() + f64::from(z) * f64::from(z) - 1.0 - lv
        })
        .sum();
    (sum / (2.0 * d)) as f32
}

/// Projects `z` onto the KL ball of squared radius `radius_sq` (from [`kl_ball_radius_sq`]);
/// when the ball is empty, sets `z` to the posterior mean `mu` (module docs).
pub fn clip_latent(
    mut z: ArrayViewMut1<'_, f32>,
    radius_sq: Option<f32>,
    mu: ArrayView1<'_, f32>,
) -> ClipOutcome {
    let Some(r2) = radius_sq else {
        z.assign(&mu);
        return ClipOutcome::Unreachable;
    };
    let norm2: f32 = z.iter().map(|v| v * v).sum();
    if norm2 <= r2 {
        return ClipOutcome::Kept;
    }
    let scale = (r2 / norm2).sqrt();
    z.mapv_inplace(|v| v * scale);
    ClipOutcome::Scaled
}

/// Draws `out.nrows()` latents `z = mu + sigma * eps` for one face and clips each to the KL
/// ball of `tau`. Returns how many were scaled and whether the ball was empty.
///
/// Rows are drawn in order from `rng`, so for a given seed the latents do not depend on how
/// the caller later splits them into decoder batches.
pub fn sample_latents<R: Rng + ?Sized>(
    mu: ArrayView1<'_, f32>,
    logvar: ArrayView1<'_, f32>,
    tau: f32,
    rng: &mut R,
    mut out: ArrayViewMut2<'_, f32>,
) -> SampleStats {
    let radius_sq = kl_ball_radius_sq(logvar, tau);
    let mut stats = SampleStats {
        scaled: 0,
        unreachable: radius_sq.is_none(),
    };
    for mut row in out.rows_mut() {
        Zip::from(&mut row)
            .and(&mu)
            .and(&logvar)
            .for_each(|z, &m, &lv| {
                let sigma = (0.5 * lv.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)).exp();
                let eps: f32 = rng.sample(StandardNormal);
                *z = m + sigma * eps;
            });
        if clip_latent(row, radius_sq, mu) == ClipOutcome::Scaled {
            stats.scaled += 1;
        }
    }
    stats
}

/// What [`sample_latents`] did for one face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleStats {
    /// Latents scaled onto the KL ball.
    pub scaled: usize,
    /// The KL ball was empty: every latent was set to the posterior mean `mu`.
    pub unreachable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, array};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn radius_by_hand() {
        // sigma = 1 everywhere: K0 = 0, so R^2 = 2 * D * tau = 2 * 4 * 0.5 = 4.
        let lv = Array1::<f32>::zeros(4);
        assert!((kl_ball_radius_sq(lv.view(), 0.5).unwrap() - 4.0).abs() < 1e-6);
        // logvar = ln 2 in 2 dims: K0 = (2 - 1 - ln 2) / 2 = 0.153426; tau = 1 gives
        // R^2 = 2 * 2 * (1 - 0.153426) = 3.386294.
        let lv = array![2f32.ln(), 2f32.ln()];
        assert!((kl_ball_radius_sq(lv.view(), 1.0).unwrap() - 3.386_294).abs() < 1e-5);
    }

    #[test]
    fn tau_zero_decodes_the_posterior_mean() {
        let mu = array![3.0f32, -2.0, 0.5];
        let lv = array![-1.0f32, 0.0, 0.3];
        let mut out = Array2::<f32>::zeros((5, 3));
        let mut rng = StdRng::seed_from_u64(7);
        let stats = sample_latents(mu.view(), lv.view(), 0.0, &mut rng, out.view_mut());
        assert!(stats.unreachable);
        assert!(out.rows().into_iter().all(|r| r == mu));
    }

    #[test]
    fn tau_zero_with_unit_sigma_is_the_origin_too() {
        // K0 = 0 and R = 0: the ball is the single point 0, reachable, every z scaled to it.
        let mu = array![1.0f32, 1.0];
        let lv = Array1::<f32>::zeros(2);
        let mut out = Array2::<f32>::zeros((3, 2));
        let mut rng = StdRng::seed_from_u64(1);
        let stats = sample_latents(mu.view(), lv.view(), 0.0, &mut rng, out.view_mut());
        assert!(!stats.unreachable);
        assert_eq!(stats.scaled, 3);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn tau_infinite_keeps_plain_samples() {
        let mu = array![10.0f32, -10.0];
        let lv = array![0.0f32, 2.0f32.ln() * 2.0]; // sigma 1 and 2
        let mut out = Array2::<f32>::zeros((2, 2));
        let stats = sample_latents(
            mu.view(),
            lv.view(),
            f32::INFINITY,
            &mut StdRng::seed_from_u64(3),
            out.view_mut(),
        );
        assert_eq!(stats.scaled, 0);
        // Same draws by hand: z = mu + sigma * eps.
        let mut rng = StdRng::seed_from_u64(3);
        for r in 0..2 {
            let e0: f32 = rng.sample(StandardNormal);
            let e1: f32 = rng.sample(StandardNormal);
            assert!((out[[r, 0]] - (10.0 + e0)).abs() < 1e-5);
            assert!((out[[r, 1]] - (-10.0 + 2.0 * e1)).abs() < 1e-4);
        }
    }

    #[test]
    fn sigma_for_which_no_latent_fits() {
        // sigma^2 = e^4: K0 = (e^4 - 1 - 4) / 2 = 24.8 per dim, far above tau = 1.
        let lv = array![4.0f32];
        assert_eq!(kl_ball_radius_sq(lv.view(), 1.0), None);
        let mut z = array![0.7f32];
        let mu = array![0.2f32];
        assert_eq!(
            clip_latent(z.view_mut(), None, mu.view()),
            ClipOutcome::Unreachable
        );
        assert_eq!(z[0], 0.2);
    }

    #[test]
    fn clipped_latent_lands_on_the_ball() {
        let lv = array![0.0f32, 0.0];
        let tau = 0.25; // R^2 = 2 * 2 * 0.25 = 1
        let r2 = kl_ball_radius_sq(lv.view(), tau);
        let mu = array![0.0f32, 0.0];
        let mut z = array![3.0f32, 4.0];
        assert_eq!(
            clip_latent(z.view_mut(), r2, mu.view()),
            ClipOutcome::Scaled
        );
        assert!((z[0] - 0.6).abs() < 1e-6 && (z[1] - 0.8).abs() < 1e-6);
        assert!((mean_kl(z.view(), lv.view()) - tau).abs() < 1e-6);
        let mut inside = array![0.3f32, 0.4];
        assert_eq!(
            clip_latent(inside.view_mut(), r2, mu.view()),
            ClipOutcome::Kept
        );
        assert_eq!(inside, array![0.3f32, 0.4]);
    }
}
