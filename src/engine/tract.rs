//! The tract backend: pure Rust ONNX inference, an optimised plan per input shape, cached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};
use tract_onnx::prelude::*;

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
}

impl TractEngine {
    /// Parses the graph at `path` (plans are built lazily, per input shape).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| engine_error(path, format!("cannot load ONNX graph: {e:#}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            model,
            plans: HashMap::new(),
            fallbacks: Vec::new(),
        })
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
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|a| a.shape().to_vec()).collect();
        let plan = self.plan(shapes)?;
        let values: TVec<TValue> = inputs
            .iter()
            .map(|a| Tensor::from(a.to_owned()).into_tvalue())
            .collect();
        let outputs = plan
            .run(values)
            .map_err(|e| engine_error(&self.path, format!("run failed: {e:#}")))?;
        outputs
            .into_iter()
            .map(|v| {
                let t = v.into_tensor();
                let t = if t.datum_type() == f32::datum_type() {
                    t
                } else {
                    t.cast_to::<f32>()
                        .map_err(|e| engine_error(&self.path, format!("output cast: {e:#}")))?
                        .into_owned()
                };
                t.into_plain_array::<f32>()
                    .map_err(|e| engine_error(&self.path, format!("output: {e:#}")))
            })
            .collect()
    }
}
