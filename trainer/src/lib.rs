//! A-VAE trainer library: model definition, ONNX export, data preparation, training and plots.

pub mod alarm;
pub mod attack;
pub mod calibrate;
pub mod chunk;
pub mod config;
pub mod data;
pub mod defense;
pub mod denoise;
pub mod eval;
pub mod export;
pub mod graph;
pub mod guide;
pub mod lab;
pub mod model;
pub mod onnx;
pub mod onnx_tch;
pub mod plot;
pub mod quality;
pub mod recognizer;
pub mod report;
pub mod template;
pub mod threat;
pub mod train;
pub mod training_report;
