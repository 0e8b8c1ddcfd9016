//! Helpers shared by the trainer's integration tests.

use std::path::Path;
use std::process::Command;

/// Runs the `trainer` binary with `args` in `cwd`, asserts that it succeeded and returns its
/// stdout followed by its stderr.
pub fn trainer(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the trainer binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "trainer {args:?} failed:\n{text}");
    text
}
