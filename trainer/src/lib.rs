//! A-VAE trainer library: model definition, ONNX export, data preparation, training and plots.

pub mod config;
pub mod data;
pub mod export;
pub mod graph;
pub mod model;
pub mod onnx;
pub mod plot;
pub mod train;
