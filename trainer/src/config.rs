//! Model sizes: one [`Config`] type with named presets; nothing else in the trainer hard-codes a
//! width.

use serde::{Deserialize, Serialize};

/// Side of the downsampled face the encoder sees (paper Fig. 2: "first downsampled to 32x32").
pub const ENCODER_INPUT_SIZE: i64 = 32;
/// Sides accepted for [`Config::input_size`]: those a bundle's `encoder_input_size` may have.
pub use gstavaepurify::bundle::ENCODER_INPUT_SIZES as INPUT_SIZES;

fn default_input_size() -> i64 {
    ENCODER_INPUT_SIZE
}
/// Side of the encoder feature map passed to the decoder through the skip connection.
pub const SKIP_SIZE: i64 = 16;
/// Sides accepted for [`Config::skip_detail`]: the full 16x16 skip or one average-pooled to 8x8.
pub const SKIP_DETAILS: [i64; 2] = [16, 8];

fn default_skip_detail() -> i64 {
    SKIP_SIZE
}
/// Side of the latent feature map (the latent is `latent_channels` x 4 x 4, flattened NCHW).
pub const LATENT_SIZE: i64 = 4;

/// Names accepted by [`Config::preset`].
pub const PRESET_NAMES: [&str; 3] = ["tiny", "cpu", "paper"];

/// Every size of an A-VAE model: encoder, mapping network, style decoder and discriminator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Preset name this configuration came from (written to checkpoints and bundle manifests).
    pub name: String,
    /// Side S of the square face the model takes and produces (a power of two, at least 32).
    pub image_size: i64,
    /// Encoder widths at 32x32, 16x16, 8x8 and 4x4; the 16x16 width is the skip width.
    pub enc_channels: [i64; 4],
    /// Channels of the 4x4 latent map; the latent size is `D = latent_channels * 16`.
    pub latent_channels: i64,
    /// Width of the intermediate latent `w` produced by the mapping network.
    pub w_dim: i64,
    /// Number of fully connected layers of the mapping network f (4 in the paper).
    pub mapping_layers: usize,
    /// Learning-rate multiplier of the mapping network (applied through an optimiser group).
    pub mapping_lr_mul: f64,
    /// Decoder widths, one per resolution 4, 8, 16, ..., S.
    pub dec_channels: Vec<i64>,
    /// Discriminator widths, one per resolution S, S/2, ..., 4.
    pub disc_channels: Vec<i64>,
    /// Whether the discriminator appends a minibatch standard-deviation feature at 4x4.
    pub minibatch_stddev: bool,
    /// Default KL clip tau (mean KL per latent dimension) written to the bundle manifest.
    pub tau: f64,
    /// Side of the area downsample the encoder's information comes from: 32 (the paper's
    /// 32x32 input; S/2 at S = 64) or 16 (the paper's 4x ratio at S = 64). Below 32 the
    /// downsample is brought back to 32x32 by nearest-neighbour upsampling, so the encoder's
    /// layers (and a bundle's weights) stay the same; the consistency loss then compares 16x16
    /// blocks.
    #[serde(default = "default_input_size")]
    pub input_size: i64,
    /// Side of the detail the skip connection carries: 16 (the 16x16 encoder activation) or 8
    /// (that activation average-pooled to 8x8 and brought back to 16x16 by nearest-neighbour
    /// upsampling inside the encoder graph, so the skip feature keeps its shape and a bundle
    /// its graph interface, but holds a quarter of the detail, and of the perturbation).
    #[serde(default = "default_skip_detail")]
    pub skip_detail: i64,
}

/// An invalid configuration or an unknown preset name.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The preset name is not one of [`PRESET_NAMES`].
    #[error("unknown model preset '{name}'; valid presets: {}", PRESET_NAMES.join(", "))]
    UnknownPreset {
        /// The name asked for.
        name: String,
    },
    /// A field is inconsistent with the architecture.
    #[error("invalid model config '{name}': {reason}")]
    Invalid {
        /// The config name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl Config {
    /// The preset called `name` (`tiny`, `cpu` or `paper`).
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        let config = match name {
            "tiny" => Config::tiny(),
            "cpu" => Config::cpu(),
            "paper" => Config::paper(),
            _ => {
                return Err(ConfigError::UnknownPreset {
                    name: name.to_owned(),
                });
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// A very narrow 64x64 model for fast tests and the plugin's test bundle.
    pub fn tiny() -> Config {
        Config {
            name: "tiny".into(),
            image_size: 64,
            enc_channels: [8, 8, 16, 16],
            latent_channels: 4,
            w_dim: 32,
            mapping_layers: 4,
            mapping_lr_mul: 0.01,
            dec_channels: vec![16, 16, 8, 8, 8],
            disc_channels: vec![8, 8, 16, 16, 16],
            minibatch_stddev: true,
            tau: 0.03,
            input_size: ENCODER_INPUT_SIZE,
            skip_detail: SKIP_SIZE,
        }
    }

    /// A 64x64 model that trains on a 2-core CPU in hours and decodes in ~0.26 GFLOP.
    pub fn cpu() -> Config {
        Config {
            name: "cpu".into(),
            image_size: 64,
            enc_channels: [32, 64, 128, 128],
            latent_channels: 32,
            w_dim: 256,
            mapping_layers: 4,
            mapping_lr_mul: 0.01,
            dec_channels: vec![128, 128, 64, 32, 16],
            disc_channels: vec![32, 64, 128, 128, 128],
            minibatch_stddev: true,
            tau: 0.03,
            input_size: ENCODER_INPUT_SIZE,
            skip_detail: SKIP_SIZE,
        }
    }

    /// The paper's 128x128 model: a 512x4x4 latent and 512/256/128 channel widths (for a GPU).
    pub fn paper() -> Config {
        Config {
            name: "paper".into(),
            image_size: 128,
            enc_channels: [128, 256, 512, 512],
            latent_channels: 512,
            w_dim: 512,
            mapping_layers: 4,
            mapping_lr_mul: 0.01,
            dec_channels: vec![512, 512, 512, 256, 128, 64],
            disc_channels: vec![64, 128, 256, 512, 512, 512],
            minibatch_stddev: true,
            tau: 0.03,
            input_size: ENCODER_INPUT_SIZE,
            skip_detail: SKIP_SIZE,
        }
    }

    /// Latent size D (`latent_channels` x 4 x 4).
    pub fn latent_dim(&self) -> i64 {
        self.latent_channels * LATENT_SIZE * LATENT_SIZE
    }

    /// Channels of the 16x16 skip feature.
    pub fn skip_channels(&self) -> i64 {
        self.enc_channels[1]
    }

    /// Kernel (= stride) of the average pool that brings S down to [`Config::input_size`].
    pub fn pool_factor(&self) -> i64 {
        self.image_size / self.input_size
    }

    /// Decoder resolutions 4, 8, ..., S, in order.
    pub fn resolutions(&self) -> Vec<i64> {
        let mut res = vec![LATENT_SIZE];
        while let Some(&r) = res.last().filter(|&&r| r < self.image_size) {
            res.push(r * 2);
        }
        res
    }

    /// Checks that the sizes fit the architecture (S a power of two >= 32, one width per level).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            name: self.name.clone(),
            reason,
        };
        let s = self.image_size;
        if s < ENCODER_INPUT_SIZE || s.count_ones() != 1 {
            return Err(invalid(format!(
                "image_size {s} must be a power of two >= {ENCODER_INPUT_SIZE}"
            )));
        }
        if !INPUT_SIZES
            .iter()
            .any(|&side| side as i64 == self.input_size)
        {
            return Err(invalid(format!(
                "input_size {} must be one of {INPUT_SIZES:?}",
                self.input_size
            )));
        }
        if !SKIP_DETAILS.contains(&self.skip_detail) {
            return Err(invalid(format!(
                "skip_detail {} must be one of {SKIP_DETAILS:?}",
                self.skip_detail
            )));
        }
        let levels = self.resolutions().len();
        if self.dec_channels.len() != levels {
            return Err(invalid(format!(
                "dec_channels has {} entries, image_size {s} needs {levels} (resolutions {:?})",
                self.dec_channels.len(),
                self.resolutions()
            )));
        }
        if self.disc_channels.len() != levels {
            return Err(invalid(format!(
                "disc_channels has {} entries, image_size {s} needs {levels}",
                self.disc_channels.len()
            )));
        }
        let widths = self
            .enc_channels
            .iter()
            .chain(&self.dec_channels)
            .chain(&self.disc_channels)
            .chain([&self.latent_channels, &self.w_dim]);
        if widths.into_iter().any(|&c| c <= 0) {
            return Err(invalid("every width must be positive".into()));
        }
        if self.mapping_layers == 0 {
            return Err(invalid("mapping_layers must be at least 1".into()));
        }
        if !self.mapping_lr_mul.is_finite() || self.mapping_lr_mul <= 0.0 {
            return Err(invalid(format!(
                "mapping_lr_mul {} must be positive",
                self.mapping_lr_mul
            )));
        }
        if !self.tau.is_finite() || self.tau < 0.0 {
            return Err(invalid(format!("tau {} must be finite and >= 0", self.tau)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_named() {
        for name in PRESET_NAMES {
            let cfg = Config::preset(name).expect("preset");
            assert_eq!(cfg.name, name);
        }
    }

    #[test]
    fn skip_detail_is_16_or_8() {
        let mut cfg = Config::cpu();
        assert_eq!(cfg.skip_detail, 16);
        cfg.skip_detail = 4;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("skip_detail 4"), "{err}");
        cfg.skip_detail = 8;
        cfg.validate().unwrap();
        // Configs written before the field existed read as the full 16x16 skip.
        let mut old = serde_json::to_value(Config::cpu()).unwrap();
        old.as_object_mut().unwrap().remove("skip_detail");
        let old: Config = serde_json::from_value(old).unwrap();
        assert_eq!(old.skip_detail, 16);
    }

    #[test]
    fn unknown_preset_lists_valid_names() {
        let err = Config::preset("huge").unwrap_err().to_string();
        assert!(
            err.contains("huge") && err.contains("tiny, cpu, paper"),
            "{err}"
        );
    }

    #[test]
    fn derived_sizes() {
        let cpu = Config::cpu();
        assert_eq!(cpu.latent_dim(), 512);
        assert_eq!(cpu.skip_channels(), 64);
        assert_eq!(cpu.pool_factor(), 2);
        assert_eq!(cpu.resolutions(), vec![4, 8, 16, 32, 64]);
        let paper = Config::paper();
        assert_eq!(paper.latent_dim(), 8192);
        assert_eq!(paper.pool_factor(), 4);
        assert_eq!(paper.resolutions(), vec![4, 8, 16, 32, 64, 128]);
    }

    #[test]
    fn validate_rejects_bad_sizes() {
        let mut cfg = Config::cpu();
        cfg.image_size = 96;
        assert!(cfg.validate().unwrap_err().to_string().contains("96"));
        let mut cfg = Config::cpu();
        cfg.dec_channels.pop();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("dec_channels")
        );
        let mut cfg = Config::cpu();
        cfg.input_size = 12;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("input_size 12")
        );
        cfg.input_size = 16;
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.pool_factor(), 4);
    }

    #[test]
    fn serde_round_trip() {
        let cfg = Config::paper();
        let json = serde_json::to_string(&cfg).expect("serialize");
        let back: Config = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, cfg);
    }
}
