//! What the evaluation hands to [`crate::report`]: the result types of `summary.json`, the three
//! tables, the image grids and the purifier and recognizer descriptions.

use std::collections::BTreeMap;

use anyhow::Result;
use gstavaepurify::bundle::Bundle;
use serde::Serialize;
use tch::Tensor;

use super::attacks::Probes;
use super::condition::serialize_columns;
use super::protocol::Evaluation;
use super::whitebox::GridPair;
use super::{Condition, EvalOptions};
use crate::defense::AVaeDefense;
use crate::recognizer::Recognizer;

/// Accuracy of one defense under one condition.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Same-identity pairs verified correctly (accepted).
    pub same: f64,
    /// Different-identity pairs verified correctly (rejected).
    pub different: f64,
    /// All pairs verified correctly.
    pub average: f64,
    /// Cosine similarity of every pair, in pair order.
    pub scores: Vec<f32>,
}

/// One table row: a defense (or a defense under one white-box variant) across conditions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Identifier (`none`, `avae`, `avae-eot`, ...).
    pub key: String,
    /// Label shown in the report.
    pub label: String,
    /// The defense's threshold (1% FAR on calibration pairs).
    pub threshold: f64,
    /// Results by condition.
    pub cells: BTreeMap<Condition, Cell>,
}

/// A table of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Identifier (`grey`, `white`, `manifold`).
    pub key: String,
    /// Caption.
    pub title: String,
    /// Its conditions, in order (serialised as `[key, label]` pairs).
    #[serde(serialize_with = "serialize_columns")]
    pub columns: Vec<Condition>,
    /// Rows, in order.
    pub rows: Vec<Row>,
}

/// Faces shown in the image grids of one attack.
pub struct Grid {
    /// Identifier of the attack (file name).
    pub key: String,
    /// Caption.
    pub title: String,
    /// Columns (gallery, clean probe, adversarial, purified), each `[R, 3, S, S]`.
    pub columns: Vec<Tensor>,
    /// Column labels.
    pub labels: Vec<String>,
}

/// What the evaluation measured and how.
#[derive(Debug, Serialize)]
pub struct EvalSummary {
    /// The options used.
    pub options: EvalOptions,
    /// The purifier's backend, bundle provenance and decoder FLOPs.
    pub purifier: BTreeMap<String, serde_json::Value>,
    /// The recognizer: file, op counts, alignment.
    pub recognizer: BTreeMap<String, serde_json::Value>,
    /// Side S of the evaluated crops.
    pub image_size: usize,
    /// Pair kinds in evaluation order (`true` = same identity).
    pub same: Vec<bool>,
    /// Calibration impostor pairs actually used.
    pub calibration_pairs: usize,
    /// Table 1 (grey-box), table 2 (white-box) and table 3 (on-manifold).
    pub tables: Vec<Table>,
    /// Mean L2 norm (in [0, 1] pixel units) of each grey-box perturbation.
    pub perturbation_l2: BTreeMap<Condition, f64>,
    /// The attack alarm's evaluation (absent for a bundle without an A-VAE defense row).
    pub alarm: Option<super::alarm::AlarmSummary>,
    /// The image threat model's rows (the lab's, with every baseline and the stronger
    /// white-box attack; see `eval/image.rs`).
    pub image: Vec<crate::lab::LabRow>,
    /// The headline figures (image threat model, shipped defaults).
    pub headline: Option<super::Headline>,
    /// Seconds spent in each stage.
    pub seconds: BTreeMap<String, f64>,
    /// Total wall time in seconds.
    pub wall_seconds: f64,
}

/// Table 1 (grey-box), Table 2 (white-box) and Table 3 (on-manifold) from their rows.
pub(super) fn tables(grey: Vec<Row>, white: Vec<Row>, manifold: Vec<Row>) -> Vec<Table> {
    vec![
        Table {
            key: "grey".into(),
            title: "Table 1: grey-box attacks (gradient of the undefended recognizer)".into(),
            columns: Condition::GREY.to_vec(),
            rows: grey,
        },
        Table {
            key: "white".into(),
            title: "Table 2: white-box adaptive attacks (BPDA, with and without EOT)".into(),
            columns: Condition::WHITE.to_vec(),
            rows: white,
        },
        Table {
            key: "manifold".into(),
            title: "Table 3: on-manifold attack (paper eq. 8)".into(),
            columns: Condition::MANIFOLD.to_vec(),
            rows: manifold,
        },
    ]
}

/// The summary's description of the purifier: backend, bundle, M, batch, tau, decoder FLOPs and
/// the bundle's provenance.
pub(super) fn purifier_info(
    opts: &EvalOptions,
    bundle: &Bundle,
    avae: &AVaeDefense,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut info = BTreeMap::new();
    info.insert("backend".into(), avae.purifier().backend_name().into());
    info.insert("bundle".into(), opts.bundle.display().to_string().into());
    info.insert("samples".into(), opts.purify.samples.into());
    info.insert("batch".into(), opts.purify.batch.into());
    info.insert("tau".into(), f64::from(opts.purify.tau).into());
    info.insert("decoder_flops".into(), bundle.manifest.decoder_flops.into());
    info.insert(
        "provenance".into(),
        serde_json::to_value(&bundle.manifest.provenance)?,
    );
    Ok(info)
}

/// The summary's description of the recognizer: file, alignment, op counts and weights.
pub(super) fn recognizer_info(
    opts: &EvalOptions,
    recognizer: &Recognizer,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut info = BTreeMap::new();
    info.insert("file".into(), opts.recognizer.display().to_string().into());
    info.insert("alignment".into(), opts.alignment.label().into());
    info.insert(
        "ops".into(),
        serde_json::to_value(recognizer.graph().op_counts())?,
    );
    info.insert("weights".into(), recognizer.graph().num_weights().into());
    Ok(info)
}

impl Evaluation<'_> {
    /// The image grids: gallery | clean probe | adversarial | A-VAE output, per attack.
    pub(super) fn grids(
        &self,
        probes: &Probes,
        purified: &BTreeMap<Condition, Tensor>,
        white: Option<GridPair>,
    ) -> Vec<Grid> {
        let index = self.grid_index();
        let (gallery, probe) = (
            self.gallery.index_select(0, &index),
            self.probe.index_select(0, &index),
        );
        let labels = || -> Vec<String> {
            ["gallery", "probe", "adversarial", "A-VAE"]
                .map(String::from)
                .to_vec()
        };
        let mut grids = Vec::new();
        for cond in Condition::GREY.into_iter().chain(Condition::MANIFOLD) {
            let (Some(title), Some(p)) = (cond.grid_title(), purified.get(&cond)) else {
                continue;
            };
            grids.push(Grid {
                key: cond.key().to_owned(),
                title: title.to_owned(),
                columns: vec![
                    gallery.shallow_clone(),
                    probe.shallow_clone(),
                    probes[&cond].index_select(0, &index),
                    p.shallow_clone(),
                ],
                labels: labels(),
            });
        }
        if let Some((adv, defended)) = white {
            grids.push(Grid {
                key: "whitebox-pgd8".into(),
                title: format!("white-box PGD eps=8, BPDA + EOT (K = {})", self.opts.eot),
                columns: vec![gallery, probe, adv, defended],
                labels: labels(),
            });
        }
        grids
    }
}
