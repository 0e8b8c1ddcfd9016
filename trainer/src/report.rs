//! The evaluation report: `README.md` with the paper's Tables 1, 2 and 3 (ours beside the
//! paper's numbers), ROC curves of every defense per table (`roc-<table>.png`), image grids per
//! attack (`grid-<attack>.png`) and `summary.json`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use crate::data::write_atomic;
use crate::eval::{Cell, EvalSummary, Grid, Table};
use crate::plot::{FAMILY, ensure_font, face_grid};

/// The paper's Table 1 (grey-box; same / different / average): clean, FGSM 4, FGSM 8, PGD 8,
/// C&W.
#[allow(clippy::approx_constant)] // HGD's C&W average is 0.318, not 1 / pi.
pub const PAPER_GREY: [(&str, [[f64; 3]; 5]); 9] = [
    (
        "No Defense",
        [
            [0.992, 0.992, 0.992],
            [0.487, 0.417, 0.452],
            [0.190, 0.300, 0.245],
            [0.000, 0.007, 0.003],
            [0.000, 0.017, 0.008],
        ],
    ),
    (
        "Adversarial Training",
        [
            [0.981, 0.993, 0.987],
            [0.513, 0.787, 0.650],
            [0.177, 0.737, 0.457],
            [0.023, 0.190, 0.107],
            [0.000, 0.417, 0.208],
        ],
    ),
    (
        "Feature Denoising",
        [
            [0.950, 0.953, 0.952],
            [0.647, 0.717, 0.682],
            [0.213, 0.730, 0.472],
            [0.073, 0.260, 0.167],
            [0.020, 0.570, 0.295],
        ],
    ),
    (
        "TVM",
        [
            [0.990, 0.991, 0.991],
            [0.737, 0.683, 0.710],
            [0.343, 0.357, 0.350],
            [0.307, 0.353, 0.330],
            [0.007, 0.020, 0.013],
        ],
    ),
    (
        "Quilting",
        [
            [0.980, 0.993, 0.987],
            [0.813, 0.890, 0.852],
            [0.593, 0.680, 0.637],
            [0.667, 0.783, 0.725],
            [0.230, 0.037, 0.134],
        ],
    ),
    (
        "ComDefend",
        [
            [0.989, 0.990, 0.990],
            [0.523, 0.637, 0.630],
            [0.281, 0.389, 0.335],
            [0.022, 0.148, 0.085],
            [0.000, 0.017, 0.008],
        ],
    ),
    (
        "Feature Distillation",
        [
            [0.990, 0.993, 0.992],
            [0.667, 0.580, 0.623],
            [0.383, 0.380, 0.382],
            [0.143, 0.190, 0.167],
            [0.003, 0.027, 0.015],
        ],
    ),
    (
        "HGD",
        [
            [0.943, 1.000, 0.972],
            [0.650, 0.860, 0.755],
            [0.387, 0.790, 0.588],
            [0.150, 0.647, 0.398],
            [0.040, 0.597, 0.318],
        ],
    ),
    (
        "A-VAE",
        [
            [0.927, 1.000, 0.963],
            [0.830, 0.957, 0.893],
            [0.637, 0.863, 0.753],
            [0.697, 0.960, 0.828],
            [0.423, 0.797, 0.610],
        ],
    ),
];

/// The paper's Table 2 (white-box, BPDA): clean, FGSM 4, FGSM 8, PGD 8.
pub const PAPER_WHITE: [(&str, [[f64; 3]; 4]); 6] = [
    (
        "No Defense",
        [
            [0.992, 0.992, 0.992],
            [0.487, 0.417, 0.452],
            [0.190, 0.300, 0.245],
            [0.000, 0.007, 0.003],
        ],
    ),
    (
        "Adversarial Training",
        [
            [0.981, 0.993, 0.987],
            [0.363, 0.650, 0.507],
            [0.177, 0.610, 0.393],
            [0.000, 0.010, 0.005],
        ],
    ),
    (
        "Feature Denoising",
        [
            [0.950, 0.953, 0.952],
            [0.401, 0.440, 0.423],
            [0.170, 0.450, 0.310],
            [0.000, 0.020, 0.010],
        ],
    ),
    (
        "ComDefend",
        [
            [0.989, 0.990, 0.990],
            [0.467, 0.543, 0.507],
            [0.303, 0.513, 0.408],
            [0.187, 0.277, 0.232],
        ],
    ),
    (
        "HGD",
        [
            [0.943, 1.000, 0.972],
            [0.243, 0.677, 0.460],
            [0.103, 0.627, 0.365],
            [0.323, 0.713, 0.518],
        ],
    ),
    (
        "A-VAE",
        [
            [0.927, 1.000, 0.963],
            [0.720, 0.743, 0.732],
            [0.468, 0.637, 0.552],
            [0.557, 0.594, 0.573],
        ],
    ),
];

/// The paper's Table 3 (on-manifold attack).
pub const PAPER_MANIFOLD: [(&str, [f64; 3]); 9] = [
    ("No Defense", [0.080, 0.451, 0.321]),
    ("Adversarial Training", [0.237, 0.867, 0.537]),
    ("Feature Denoising", [0.273, 0.867, 0.570]),
    ("TVM", [0.337, 0.623, 0.480]),
    ("Quilting", [0.393, 0.664, 0.529]),
    ("Feature Distillation", [0.327, 0.593, 0.460]),
    ("ComDefend", [0.407, 0.553, 0.480]),
    ("HGD", [0.301, 0.543, 0.422]),
    ("A-VAE", [0.644, 0.687, 0.667]),
];

/// A row of one of the paper's tables: defense and its (same, different, average) cells.
type PaperRow<'a> = (&'a str, Vec<[f64; 3]>);

fn fmt_cell(c: &[f64; 3]) -> String {
    format!("{:.3} / {:.3} / {:.3}", c[0], c[1], c[2])
}

fn ours(cell: Option<&Cell>) -> String {
    cell.map_or_else(
        || "-".to_owned(),
        |c| fmt_cell(&[c.same, c.different, c.average]),
    )
}

/// The markdown of one of our tables, with the paper's No Defense and A-VAE rows in italics.
fn table_markdown(table: &Table, paper: &[PaperRow<'_>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "**{}** (same / different / average)\n", table.title);
    let header: Vec<&str> = table.columns.iter().map(|c| c.label()).collect();
    let _ = writeln!(s, "| Defense | threshold | {} |", header.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(header.len()));
    for row in &table.rows {
        let cells: Vec<String> = table
            .columns
            .iter()
            .map(|c| ours(row.cells.get(c)))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {:.3} | {} |",
            row.label,
            row.threshold,
            cells.join(" | ")
        );
    }
    for (label, cells) in paper
        .iter()
        .filter(|(l, _)| matches!(*l, "No Defense" | "A-VAE"))
    {
        let mut shown: Vec<String> = cells.iter().map(|c| format!("*{}*", fmt_cell(c))).collect();
        shown.resize(header.len(), "-".to_owned());
        let _ = writeln!(s, "| *paper: {label}* | | {} |", shown.join(" | "));
    }
    s
}

/// The paper's full table in markdown.
fn paper_markdown(caption: &str, columns: &[&str], rows: &[PaperRow<'_>]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<details><summary>{caption}</summary>\n");
    let _ = writeln!(s, "| Defense | {} |", columns.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(columns.len()));
    for (label, cells) in rows {
        let shown: Vec<String> = cells.iter().map(fmt_cell).collect();
        let _ = writeln!(s, "| {label} | {} |", shown.join(" | "));
    }
    let _ = writeln!(s, "\n</details>");
    s
}

/// ROC points `(FAR, TAR)` of `scores` over every threshold, from (0, 0) to (1, 1).
pub fn roc(scores: &[f32], same: &[bool]) -> Vec<(f64, f64)> {
    let mut order: Vec<(f32, bool)> = scores.iter().copied().zip(same.iter().copied()).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let pos = same.iter().filter(|&&s| s).count().max(1) as f64;
    let neg = same.iter().filter(|&&s| !s).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = vec![(0.0, 0.0)];
    for (k, (s, is_same)) in order.iter().enumerate() {
        if *is_same {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if order.get(k + 1).is_none_or(|next| next.0 != *s) {
            points.push((fp / neg, tp / pos));
        }
    }
    points
}

/// Colour of the i-th curve.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(0, 0, 0),
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

/// One ROC panel per column of `table`, one curve per row.
fn roc_figure(path: &Path, table: &Table, same: &[bool]) -> Result<()> {
    ensure_font()?;
    let panels = table.columns.len();
    let per_row = panels.min(3);
    let rows = panels.div_ceil(per_row);
    let (width, height) = (420 * per_row as u32, 420 * rows as u32);
    let draw_err = |e: &dyn std::fmt::Display| anyhow!("cannot draw '{}': {e}", path.display());
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        for (cond, area) in table.columns.iter().zip(root.split_evenly((rows, per_row))) {
            let mut chart = ChartBuilder::on(&area)
                .caption(cond.label(), (FAMILY, 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(0.0..1.0, 0.0..1.0)
                .map_err(|e| draw_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("false accept rate")
                .y_desc("true accept rate")
                .label_style((FAMILY, 11))
                .draw()
                .map_err(|e| draw_err(&e))?;
            for (i, row) in table.rows.iter().enumerate() {
                let Some(cell) = row.cells.get(cond) else {
                    continue;
                };
                let c = colour(i);
                chart
                    .draw_series(LineSeries::new(roc(&cell.scores, same), c.stroke_width(2)))
                    .map_err(|e| draw_err(&e))?
                    .label(row.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FAMILY, 10))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| draw_err(&e))?;
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    image::RgbImage::from_raw(width, height, buf)
        .context("internal error: ROC image buffer of the wrong size")?
        .save(path)
        .with_context(|| format!("cannot write '{}'", path.display()))
}

/// The README of the report folder.
fn readme(summary: &EvalSummary, grids: &[Grid]) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(s, "# A-VAE evaluation on LFW\n");
    let _ = writeln!(
        s,
        "Regenerated by `{}` (every setting is in `summary.json`). Wall time {:.0} s.\n",
        summary.options.command, summary.wall_seconds
    );
    s.push_str(&protocol_markdown(summary));
    s.push_str(&crate::eval::image_markdown(summary));
    s.push_str(&results_markdown(summary));
    if let Some(alarm) = &summary.alarm {
        s.push_str(&crate::eval::alarm_markdown(alarm));
    }
    let _ = writeln!(
        s,
        "Mean L2 distance of the adversarial probes from the clean ones ([0, 1] pixel units; \
         for the on-manifold attacks and the reconstruction this includes the reconstruction's \
         own error):"
    );
    for (k, v) in &summary.perturbation_l2 {
        let _ = write!(s, " {} {v:.3};", k.key());
    }
    let _ = writeln!(s, "\n\n## Image grids\n");
    for g in grids {
        let _ = writeln!(
            s,
            "{} (gallery | probe | adversarial | A-VAE output):\n",
            g.title
        );
        let _ = writeln!(s, "![{}](grid-{}.png)\n", g.title, g.key);
    }
    let _ = writeln!(s, "## Time\n");
    for (k, v) in &summary.seconds {
        let _ = writeln!(s, "- {k}: {v:.0} s");
    }
    Ok(s)
}

/// The report's Protocol section: pairs, recognizer, thresholds and every attack's settings.
fn protocol_markdown(summary: &EvalSummary) -> String {
    let mut s = String::new();
    let n_same = summary.same.iter().filter(|&&x| x).count();
    let _ = writeln!(s, "## Protocol\n");
    let _ = writeln!(
        s,
        "- **Pairs**: {} pairs of fold 1 of LFW `pairs.txt` ({n_same} same-identity, {} \
         different-identity), people the A-VAE never saw in training. Cells read \
         *same / different / average*: the fraction of same-identity pairs accepted, of \
         different-identity pairs rejected, and of all pairs verified correctly.",
        summary.same.len(),
        summary.same.len() - n_same
    );
    let _ = writeln!(
        s,
        "- **Recognizer**: `fr_feature.onnx` (512-d ArcFace-style MobileFaceNet from the npm package \
         `faceplugin-face-recognition-js@0.0.1`), run in tch by the trainer's ONNX interpreter. \
         It sees the face crop warped to its 112 x 112 input ({}; the warp of each image is \
         fixed from its clean original, attacks do not move it), cosine similarity of the \
         embeddings.",
        summary
            .recognizer
            .get("alignment")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "- **Thresholds**: per defense, at 1% FAR on {} clean different-identity pairs of folds 2-10 \
         with the defense applied to both images (never on the test fold; those people are in \
         the A-VAE's training split); a pair is accepted when its score is above the threshold.",
        summary.calibration_pairs
    );
    let _ = writeln!(
        s,
        "- **Attack domain**: the {s}x{s} face crop in [-1, 1] that the purifier acts on. The \
         gallery image (first of a pair) stays clean; the probe (second) is attacked. Every \
         attack descends `L = sign * cos(f(probe), f(gallery))` with sign = +1 on same-identity \
         pairs (obfuscation: they should be rejected) and -1 on different-identity pairs \
         (impersonation: they should be accepted). Epsilons are in 1/255 of the pixel range. \
         Adversarial images and defense outputs are rounded to 8 bits. Every defense is applied \
         to both images of a pair.",
        s = summary.image_size
    );
    s.push_str(&attack_settings_markdown(summary));
    s
}

/// The Protocol section's grey-box, white-box, on-manifold and A-VAE settings.
fn attack_settings_markdown(summary: &EvalSummary) -> String {
    let o = &summary.options;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- **Grey-box** (Table 1): gradients of the undefended recognizer. FGSM eps 4 and 8; PGD \
         eps {} with {} steps of {}/255, random start {}, {} restart(s); C&W L2: Adam (lr {}), {} \
         steps, c = {}, kappa = {} on the cosine, perturbation projected onto an L2 ball of \
         radius {} ([0, 1] pixel units over the whole crop; the paper gives no value for its \
         C&W bound), aiming at the undefended threshold.",
        o.pgd.eps,
        o.pgd.steps,
        o.pgd.step,
        o.pgd.random_start,
        o.pgd.restarts,
        o.cw.lr,
        o.cw.steps,
        o.cw.c,
        o.cw.kappa,
        o.cw.bound
    );
    let _ = writeln!(
        s,
        "- **White-box** (Table 2): BPDA, the defense's real forward pass and an identity \
         backward pass, attacking the gallery as the defended system sees it. For A-VAE both \
         without EOT (K = 1, the paper's setting) and with EOT over K = {} purifier draws per \
         gradient; the purifier draws of the attacker and of the evaluation are independent. \
         FGSM eps 4 and 8 share one gradient; PGD eps {} with {} steps of {}/255, random start \
         {}.",
        o.eot,
        o.whitebox_pgd.eps,
        o.whitebox_pgd.steps,
        o.whitebox_pgd.step,
        o.whitebox_pgd.random_start
    );
    let _ = writeln!(
        s,
        "- **On-manifold** (Table 3, paper eq. 8): z = the encoder's posterior mean of the probe, \
         {} steps z <- z - {} grad_z L(Dec(z)) through the bundle's own generator weights \
         (rebuilt in tch from `encoder.onnx` and `decoder.onnx`), adversarial image Dec(z_n). \
         The second column (ours, not in the paper) takes {} steps of fixed latent length {} \
         along the normalised gradient, z <- z - {} g/|g|, because this model's latent \
         gradients are small enough that the paper's raw step barely moves z. The third column \
         is Dec(z_0) without any attack: what the reconstruction alone does.",
        o.manifold_steps,
        o.manifold_eps,
        o.manifold_steps,
        o.manifold_unit_step,
        o.manifold_unit_step
    );
    let _ = writeln!(
        s,
        "- **A-VAE**: the plugin's `Purifier` on the bundle ({}), M = {} samples, tau = {}, \
         {} pass(es), decoder batch {}; per-face seeds derived from seed {}.\n",
        summary
            .purifier
            .get("backend")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        o.purify.samples,
        o.purify.tau,
        o.passes,
        o.purify.batch,
        o.seed
    );
    s
}

/// The report's Results section: our three tables beside the paper's, with their ROC figures.
fn results_markdown(summary: &EvalSummary) -> String {
    let mut s = String::new();
    let paper_grey: Vec<PaperRow<'_>> = PAPER_GREY.iter().map(|(l, c)| (*l, c.to_vec())).collect();
    let paper_white: Vec<PaperRow<'_>> =
        PAPER_WHITE.iter().map(|(l, c)| (*l, c.to_vec())).collect();
    let paper_manifold: Vec<PaperRow<'_>> =
        PAPER_MANIFOLD.iter().map(|(l, c)| (*l, vec![*c])).collect();
    let _ = writeln!(s, "## Results\n");
    for table in &summary.tables {
        let (paper, cols): (&[PaperRow<'_>], Vec<&str>) = match table.key.as_str() {
            "grey" => (
                &paper_grey,
                vec!["clean", "FGSM eps=4", "FGSM eps=8", "PGD eps=8", "C&W"],
            ),
            "white" => (
                &paper_white,
                vec!["clean", "FGSM eps=4", "FGSM eps=8", "PGD eps=8"],
            ),
            _ => (&paper_manifold, vec!["On-manifold attack"]),
        };
        s.push_str(&table_markdown(table, paper));
        let _ = writeln!(s);
        s.push_str(&paper_markdown(
            "The paper's table (ResNet-50 trained on VGGFace2, 6000 pairs, 128x128 A-VAE, M = 1000)",
            &cols,
            paper,
        ));
        let _ = writeln!(s, "\n![ROC {}](roc-{}.png)\n", table.key, table.key);
    }
    s
}

/// Writes `README.md`, the ROC figures, the grids and `summary.json` into `dir`.
pub fn write(dir: &Path, summary: &EvalSummary, grids: &[Grid]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    for table in &summary.tables {
        roc_figure(
            &dir.join(format!("roc-{}.png", table.key)),
            table,
            &summary.same,
        )?;
    }
    if let Some(alarm) = &summary.alarm {
        crate::eval::write_alarm_figure(dir, alarm)?;
    }
    for g in grids {
        let labels: Vec<(usize, &str)> = g
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i, l.as_str()))
            .collect();
        face_grid(
            &dir.join(format!("grid-{}.png", g.key)),
            &g.columns,
            &labels,
            &[1],
        )?;
    }
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    write_atomic(&dir.join("README.md"), readme(summary, grids)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::Condition;

    #[test]
    fn roc_runs_from_origin_to_one_one() {
        let pts = roc(&[0.9, 0.8, 0.3, 0.1], &[true, false, true, false]);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        assert_eq!(pts[1], (0.0, 0.5));
        assert_eq!(pts[2], (0.5, 0.5));
    }

    #[test]
    fn tables_show_our_cells_and_the_papers_rows() {
        let mut cells = std::collections::BTreeMap::new();
        cells.insert(
            Condition::Clean,
            Cell {
                same: 1.0,
                different: 0.5,
                average: 0.75,
                scores: vec![],
            },
        );
        let table = Table {
            key: "grey".into(),
            title: "T".into(),
            columns: vec![Condition::Clean, Condition::Cw],
            rows: vec![crate::eval::Row {
                key: "none".into(),
                label: "No Defense".into(),
                threshold: 0.25,
                cells,
            }],
        };
        let paper: Vec<PaperRow<'_>> = PAPER_GREY.iter().map(|(l, c)| (*l, c.to_vec())).collect();
        let md = table_markdown(&table, &paper);
        assert!(
            md.contains("| No Defense | 0.250 | 1.000 / 0.500 / 0.750 | - |"),
            "{md}"
        );
        assert!(md.contains("*paper: A-VAE*"), "{md}");
        assert!(!md.contains("Quilting"), "{md}");
    }
}
