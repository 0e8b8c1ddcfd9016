//! The conditions a probe is evaluated under (clean, each attack, the reconstruction), with the
//! keys `summary.json` and the report files use and the labels the tables show.

use std::cmp::Ordering;

use serde::{Serialize, Serializer};

/// One column of the evaluation's tables: how the probe image was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The clean probe.
    Clean,
    /// FGSM at eps = 4/255.
    Fgsm4,
    /// FGSM at eps = 8/255.
    Fgsm8,
    /// PGD at eps = 8/255.
    Pgd8,
    /// Carlini-Wagner L2.
    Cw,
    /// The paper's on-manifold attack (eq. 8).
    Manifold,
    /// The on-manifold attack with normalised latent steps.
    ManifoldUnit,
    /// Dec(E(x)) without any attack.
    Recon,
}

impl Condition {
    /// Table 1's columns (grey-box).
    pub const GREY: [Self; 5] = [Self::Clean, Self::Fgsm4, Self::Fgsm8, Self::Pgd8, Self::Cw];
    /// Table 2's columns (white-box).
    pub const WHITE: [Self; 4] = [Self::Clean, Self::Fgsm4, Self::Fgsm8, Self::Pgd8];
    /// The white-box attacks (Table 2 without the clean column).
    pub const WHITE_ATTACKS: [Self; 3] = [Self::Fgsm4, Self::Fgsm8, Self::Pgd8];
    /// Table 3's columns (on-manifold).
    pub const MANIFOLD: [Self; 3] = [Self::Manifold, Self::ManifoldUnit, Self::Recon];
    /// Every condition whose probe differs from the clean one.
    pub const PERTURBED: [Self; 7] = [
        Self::Fgsm4,
        Self::Fgsm8,
        Self::Pgd8,
        Self::Cw,
        Self::Manifold,
        Self::ManifoldUnit,
        Self::Recon,
    ];

    /// The key in `summary.json` and in file names.
    pub fn key(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Fgsm4 => "fgsm4",
            Self::Fgsm8 => "fgsm8",
            Self::Pgd8 => "pgd8",
            Self::Cw => "cw",
            Self::Manifold => "manifold",
            Self::ManifoldUnit => "manifold_unit",
            Self::Recon => "recon",
        }
    }

    /// The column label in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Fgsm4 => "FGSM eps=4",
            Self::Fgsm8 => "FGSM eps=8",
            Self::Pgd8 => "PGD eps=8",
            Self::Cw => "C&W L2",
            Self::Manifold => "On-manifold attack",
            Self::ManifoldUnit => "On-manifold, unit steps",
            Self::Recon => "Dec(E(x)), no attack",
        }
    }

    /// The caption of the condition's image grid, for the grey-box and on-manifold attacks
    /// that get one.
    pub fn grid_title(self) -> Option<&'static str> {
        match self {
            Self::Fgsm8 => Some("grey-box FGSM eps=8"),
            Self::Pgd8 => Some("grey-box PGD eps=8"),
            Self::Cw => Some("grey-box C&W L2"),
            Self::Manifold => Some("on-manifold attack"),
            Self::ManifoldUnit => Some("on-manifold attack, unit steps"),
            Self::Clean | Self::Fgsm4 | Self::Recon => None,
        }
    }
}

/// Ordered by key, so that maps keyed by condition serialise in the order of their keys.
impl Ord for Condition {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl PartialOrd for Condition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Serialised as its key.
impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.key())
    }
}

/// Serialises table columns as `[key, label]` pairs.
pub(crate) fn serialize_columns<S: Serializer>(
    columns: &[Condition],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(columns.iter().map(|c| (c.key(), c.label())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_ordered_by_key() {
        let mut all = Condition::PERTURBED.to_vec();
        all.push(Condition::Clean);
        all.sort();
        let keys: Vec<&str> = all.iter().map(|c| c.key()).collect();
        assert_eq!(
            keys,
            [
                "clean",
                "cw",
                "fgsm4",
                "fgsm8",
                "manifold",
                "manifold_unit",
                "pgd8",
                "recon"
            ]
        );
        assert_eq!(
            serde_json::to_string(&Condition::ManifoldUnit).unwrap(),
            "\"manifold_unit\""
        );
    }
}
