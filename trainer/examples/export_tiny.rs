//! Writes an untrained `tiny` bundle (fixed seed) for the plugin's tests and checks its parity:
//! `cargo run -p avae-trainer --example export_tiny -- tests/data/bundle-tiny`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use avae_trainer::config::Config;
use avae_trainer::export::{ManifestExtras, check_parity, export_bundle};
use avae_trainer::model::AVae;
use tch::nn;

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: export_tiny <bundle folder>")?
        .into();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = AVae::new(&vs.root(), &Config::tiny());
    let provenance = BTreeMap::from([
        ("dataset".to_owned(), "none: untrained test bundle".into()),
        ("steps".to_owned(), 0.into()),
        ("seed".to_owned(), 0.into()),
        (
            "trainer".to_owned(),
            concat!("avae-trainer ", env!("CARGO_PKG_VERSION")).into(),
        ),
    ]);
    let report = export_bundle(&model, &out, provenance, ManifestExtras::default())?;
    let parity = check_parity(&model, &out, None)?;
    println!(
        "wrote {} ({} parameters, {} decoder FLOPs); parity max error {:e} over {} checks",
        report.dir.display(),
        report.num_params,
        report.manifest.decoder_flops,
        parity.max_error(),
        parity.entries.len()
    );
    Ok(())
}
