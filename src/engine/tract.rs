//! The tract backend: pure Rust ONNX inference, an optimised plan per input shape, cached.
//!
//! A graph whose inputs and outputs all share one symbolic batch axis (the encoder and the
//! decoder: every row is independent) runs one row at a time, the rows spread over the CPU's
//! cores. tract convolves a single image through its lazy im2col, and a batch through an eager
//! one that costs several times more per image here (README, "Benchmarks").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Axis};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::Engine;
use crate::Error;

/// Plans kept at most; beyond this the cache is cleared (shapes seldom vary that much).
const MAX_PLANS: usize = 32;

type Plan = Arc<TypedRunnableModel>;

/// An ONNX graph run by tract.
pub struct TractEngine {
    path: PathBuf,
    model: InferenceModel,
    plans: HashMap<Vec<Vec<usize>>, Plan>,
    fallbacks: Vec<String>,
    /// Whether the rows of a batch are independent (see the module docs).
    rowwise: bool,
    /// Threads the rows are spread over.
    threads: usize,
}

impl TractEngine {
    /// Parses the graph at `path` (plans are built lazily, per input shape).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| engine_error(path, format!("cannot load ONNX graph: {e:#}")))?;
        let rowwise = shares_batch_axis(&model);
        Ok(Self {
            path: path.to_path_buf(),
            model,
            plans: HashMap::new(),
            fallbacks: Vec::new(),
            rowwise,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Whether this graph runs a batch row by row (see the module docs).
    pub fn is_rowwise(&self) -> bool {
        self.rowwise
    }

    /// Runs a batch as one call, as [`Engine::run`] does for graphs that are not row-wise
    /// (for comparing the two ways).
    pub fn run_batched(
        &mut self,
        inputs: &[ArrayViewD<'_, f32>],
    ) -> Result<Vec<ArrayD<f32>>, Error> {
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|a| a.shape().to_vec()).collect();
        let plan = self.plan(shapes)?;
        run_plan(&plan, &self.path, inputs)
    }

    pub(crate) fn note_fallback(&mut self, reason: String) {
        self.fallbacks.push(reason);
    }

    fn plan(&mut self, shapes: Vec<Vec<usize>>) -> Result<Plan, Error> {
        if let Some(plan) = self.plans.get(&shapes) {
            return Ok(plan.clone());
        }
        let mut model = self.model.clone();
        for (i, shape) in shapes.iter().enumerate() {
            model = model
                .with_input_fact(i, f32::fact(shape).into())
                .map_err(|e| {
                    engine_error(&self.path, format!("input {i} shape {shape:?}: {e:#}"))
                })?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                engine_error(
                    &self.path,
                    format!("cannot optimise for input shapes {shapes:?}: {e:#}"),
                )
            })?;
        if self.plans.len() >= MAX_PLANS {
            self.plans.clear();
        }
        self.plans.insert(shapes, plan.clone());
        Ok(plan)
    }
}

fn engine_error(path: &Path, reason: String) -> Error {
    Error::Engine {
        backend: "tract",
        path: path.to_path_buf(),
        reason,
    }
}

impl Engine for TractEngine {
    fn describe(&self) -> String {
        "tract (CPU)".to_string()
    }

    fn fallbacks(&self) -> &[String] {
        &self.fallbacks
    }

    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>, Error> {
        let Some(rows) = super::splittable_rows(inputs).filter(|_| self.rowwise) else {
            return self.run_batched(inputs);
        };
        let shapes: Vec<Vec<usize>> = inputs
            .iter()
            .map(|a| {
                let mut shape = a.shape().to_vec();
                shape[0] = 1;
                shape
            })
            .collect();
        let plan = self.plan(shapes)?;
        let path = &self.path;
        let fail = |reason| engine_error(path, reason);
        let mut workers = vec![(); self.threads.clamp(1, rows)];
        super::run_in_shares(
            &mut workers,
            inputs,
            |_, share| {
                let n = share.first().map_or(0, |a| a.shape()[0]);
                let per_row = (0..n)
                    .map(|r| {
                        let row: Vec<ArrayViewD<'_, f32>> = share
                            .iter()
                            .map(|a| a.slice_axis(Axis(0), (r..r + 1).into()))
                            .collect();
                        run_plan(&plan, path, &row)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                super::join_rows(per_row, fail)
            },
            fail,
        )
    }
}

/// Runs `plan` on `inputs` once.
fn run_plan(
    plan: &Plan,
    path: &Path,
    inputs: &[ArrayViewD<'_, f32>],
) -> Result<Vec<ArrayD<f32>>, Error> {
    let values: TVec<TValue> = inputs
        .iter()
        .map(|a| Tensor::from(a.to_owned()).into_tvalue())
        .collect();
    let outputs = plan
        .run(values)
        .map_err(|e| engine_error(path, format!("run failed: {e:#}")))?;
    outputs
        .into_iter()
        .map(|v| {
            let t = v.into_tensor();
            let t = if t.datum_type() == f32::datum_type() {
                t
            } else {
                t.cast_to::<f32>()
                    .map_err(|e| engine_error(path, format!("output cast: {e:#}")))?
                    .into_owned()
            };
            t.into_plain_array::<f32>()
                .map_err(|e| engine_error(path, format!("output: {e:#}")))
        })
        .collect()
}

/// Whether every input and output of `model` starts with the same symbolic axis (a batch whose
/// rows the graph treats independently, as the exported encoder and decoder declare it). The
/// outputs' shapes come from tract's own analysis of the graph (it does not trust the file's).
fn shares_batch_axis(model: &InferenceModel) -> bool {
    let symbol = |d: Option<TDim>| d.filter(|d| matches!(d, TDim::Sym(_)));
    let inputs: Vec<Option<TDim>> = (0..model.inputs.len())
        .map(|i| {
            let fact = model.input_fact(i).ok()?;
            symbol(fact.shape.dims().next()?.concretize())
        })
        .collect();
    let Some(Some(axis)) = inputs.first().cloned() else {
        return false;
    };
    if inputs.iter().any(|a| a.as_ref() != Some(&axis)) {
        return false;
    }
    let Ok(typed) = model.clone().into_typed() else {
        return false;
    };
    (0..typed.outputs.len()).all(|i| {
        typed
            .output_fact(i)
            .ok()
            .and_then(|f| symbol(f.shape.iter().next().cloned()))
            .is_some_and(|a| a == axis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(graph: &str) -> TractEngine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny");
        TractEngine::open(&dir.join(graph)).unwrap()
    }

    #[test]
    fn only_graphs_with_one_batch_axis_run_row_by_row() {
        assert!(tiny("encoder.onnx").is_rowwise());
        assert!(tiny("decoder.onnx").is_rowwise());
        // The fused graph chooses among all the batch's candidates: its rows are not independent.
        assert!(!tiny("purifier.onnx").is_rowwise());
    }

    #[test]
    fn row_by_row_gives_the_batched_result() {
        let mut decoder = tiny("decoder.onnx");
        let (z, skip) = super::super::row_checks::decoder_inputs();
        let rows = decoder.run(&[z.view(), skip.view()]).unwrap();
        let batched = decoder.run_batched(&[z.view(), skip.view()]).unwrap();
        super::super::row_checks::assert_rows_match(&rows[0], &batched[0], 1e-4);
    }

    #[test]
    fn mismatched_batches_run_as_one_call() {
        super::super::row_checks::assert_mismatched_rows_name_the_graph(&mut tiny("decoder.onnx"));
    }
}
