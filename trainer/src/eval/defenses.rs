//! Every defense on every grey-box and on-manifold probe: its defended gallery, the verification
//! cells of Tables 1 and 3, and the A-VAE outputs the image grids show.

use std::collections::BTreeMap;

use anyhow::Result;
use tch::Tensor;

use super::attacks::Probes;
use super::protocol::{Evaluation, defended_embeddings, scores_of, stream, verify};
use super::{Cell, Condition, Row};
use crate::data::progress_bar;
use crate::defense::Defense;

/// What evaluating every defense on the grey-box and on-manifold probes produced.
pub(super) struct DefenseResults {
    pub grey_rows: Vec<Row>,
    pub manifold_rows: Vec<Row>,
    /// Each defense's embeddings of the gallery as the evaluation saw it.
    pub defended_gallery: Vec<Tensor>,
    /// A-VAE outputs of the grid rows, by condition.
    pub purified: BTreeMap<Condition, Tensor>,
}

impl Evaluation<'_> {
    /// Every defense on every grey-box and on-manifold condition.
    pub(super) fn evaluate_defenses(
        &self,
        defenses: &mut [Defense],
        probes: &Probes,
        thresholds: &[f64],
    ) -> Result<DefenseResults> {
        let n = self.n();
        let conditions: Vec<Condition> = Condition::GREY
            .into_iter()
            .chain(Condition::MANIFOLD)
            .collect();
        let mut out = DefenseResults {
            grey_rows: Vec::new(),
            manifold_rows: Vec::new(),
            defended_gallery: Vec::new(),
            purified: BTreeMap::new(),
        };
        let bar = progress_bar(
            (defenses.len() * (conditions.len() + 1) * n) as u64,
            "defenses",
        );
        for (d, defense) in defenses.iter_mut().enumerate() {
            let g = defended_embeddings(
                &self.recognizer,
                defense,
                &self.gallery,
                &self.align_gallery,
                &self.pair_seeds(stream::GALLERY, 0),
                self.opts.chunk,
            )?;
            bar.inc(n as u64);
            let mut cells = BTreeMap::new();
            for (c, &cond) in conditions.iter().enumerate() {
                let seeds = self.pair_seeds(stream::PROBE, c as u64);
                let cell =
                    self.defended_cell(defense, &probes[&cond], &seeds, &g, thresholds[d])?;
                if let Some(purified) = cell.1 {
                    out.purified.insert(cond, purified);
                }
                cells.insert(cond, cell.0);
                bar.inc(n as u64);
            }
            let row = |cols: &[Condition]| Row {
                key: defense.key(),
                label: defense.label(),
                threshold: thresholds[d],
                cells: cols
                    .iter()
                    .filter_map(|c| Some((*c, cells.get(c)?.clone())))
                    .collect(),
            };
            out.grey_rows.push(row(&Condition::GREY));
            out.manifold_rows.push(row(&Condition::MANIFOLD));
            out.defended_gallery.push(g);
        }
        bar.finish();
        Ok(out)
    }

    /// One defense on one condition's probes against its defended gallery `g`; also the defended
    /// grid rows when the defense is random.
    fn defended_cell(
        &self,
        defense: &mut Defense,
        faces: &Tensor,
        seeds: &[u64],
        g: &Tensor,
        threshold: f64,
    ) -> Result<(Cell, Option<Tensor>)> {
        let purified = if defense.is_random() {
            let shown = faces.index_select(0, &self.grid_index());
            Some(defense.apply(&shown, &self.grid_seeds(seeds))?)
        } else {
            None
        };
        let e = defended_embeddings(
            &self.recognizer,
            defense,
            faces,
            &self.align_probe,
            seeds,
            self.opts.chunk,
        )?;
        Ok((verify(&scores_of(&e, g)?, &self.same, threshold), purified))
    }
}
