//! Kept chunks of long attacks. A stopped `trainer eval` picks up, under `<report>/cache/`, the
//! finished chunks of a run with the same settings instead of attacking them again: the key of
//! a chunk names every setting its result depends on, hashed into the file name.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::Tensor;

/// 64-bit FNV-1a of `text` (names the kept chunks of one setting).
pub fn key_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The file of the chunk starting at pair `first` of the attack `stem` with settings `key`.
pub fn path(dir: &Path, stem: &str, key: &str, first: usize) -> PathBuf {
    dir.join(format!("{stem}-{:016x}-{first}.pt", key_hash(key)))
}

/// A kept chunk's named tensors (`None` when absent or unreadable, which means attacking it
/// again).
pub fn load(path: &Path) -> Option<Kept> {
    Tensor::load_multi(path).ok().map(Kept)
}

/// Keeps a chunk (written beside and renamed, so a stop never leaves half a file).
pub fn save(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    Tensor::save_multi(named, &tmp).with_context(|| format!("cannot write '{}'", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write '{}'", path.display()))
}

/// Per-pair flags as a tensor to keep.
pub fn flags(values: &[bool]) -> Tensor {
    let v: Vec<i64> = values.iter().map(|&b| i64::from(b)).collect();
    Tensor::from_slice(&v)
}

/// The named tensors of a kept chunk.
pub struct Kept(Vec<(String, Tensor)>);

impl Kept {
    /// The tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
    }

    /// The per-pair flags `name` (kept by [`flags`]).
    pub fn flags(&self, name: &str) -> Option<Vec<bool>> {
        let v: Vec<i64> = Vec::try_from(&self.tensor(name)?).ok()?;
        Some(v.into_iter().map(|b| b != 0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn a_kept_chunk_reads_back_as_written() {
        let dir = std::env::temp_dir().join(format!("avae-chunk-{}", std::process::id()));
        let file = path(&dir, "whitebox-image", "a|1", 0);
        assert!(load(&file).is_none(), "nothing kept yet");
        let adv = Tensor::rand([3, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
        save(
            &file,
            &[
                ("adv".into(), adv.shallow_clone()),
                ("broken".into(), flags(&[true, false, true])),
            ],
        )
        .unwrap();
        let kept = load(&file).expect("the kept chunk");
        assert_eq!(kept.flags("broken").unwrap(), [true, false, true]);
        assert!(kept.tensor("adv").unwrap().allclose(&adv, 0.0, 0.0, false));
        assert!(kept.tensor("missing").is_none());
        fs::remove_dir_all(&dir).unwrap();
        assert_ne!(key_hash("a|1"), key_hash("a|2"));
        assert_ne!(path(&dir, "s", "a|1", 0), path(&dir, "s", "a|1", 20));
    }
}
