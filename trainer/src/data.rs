//! Face data: `trainer prepare` (LFW or folder-per-identity images -> one compact crop cache with an
//! identity-disjoint train/test split) and the batch loader the training loop draws from.
//!
//! The cache is two files in the output folder: `<name>-<S>.bin`, raw `u8` pixels laid out
//! `[N, 3, S, S]` (RGB planes, value `round((x + 1) * 127.5)` of the plugin's `[-1, 1]` crop), and
//! `<name>-<S>.json` ([`CacheIndex`]: file, identity and split of every image, the fold-1
//! verification pairs, and how the crops were made).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use gstavaepurify::core::image::{FrameRef, PixelLayout, read_face, square_box, to_u8};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array3;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Version of the cache format written by [`prepare`]; bumped when the layout changes.
pub const CACHE_FORMAT_VERSION: u32 = 1;

/// Where the development copy of LFW lives, relative to the workspace root.
const SHARED_LFW: &str = "../shared/datasets/lfw";

/// Fixed square crop of an aligned face image, in fractions of the image size, used until a face
/// detector drives the crop. The defaults frame the face of LFW deep-funneled 250x250 images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropSpec {
    /// Horizontal centre of the box, as a fraction of the image width.
    pub center_x: f32,
    /// Vertical centre of the box, as a fraction of the image height.
    pub center_y: f32,
    /// Side of the box, as a fraction of the smaller image side.
    pub side: f32,
}

impl Default for CropSpec {
    fn default() -> Self {
        Self {
            center_x: 0.5,
            center_y: 0.52,
            side: 0.48,
        }
    }
}

/// Which side of the identity-disjoint split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// People who appear nowhere in the test pairs: the only images training sees.
    Train,
    /// People of fold 1 of `pairs.txt` (or every tenth identity without pairs).
    Test,
}

/// One cached face.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Source path relative to the image root, e.g. `Zico/Zico_0001.jpg`.
    pub file: String,
    /// Index into [`CacheIndex::identities`].
    pub identity: usize,
    /// Split of the image's identity.
    pub split: Split,
}

/// A verification pair of fold 1 of `pairs.txt`, as indices into [`CacheIndex::images`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FacePair {
    /// First image.
    pub a: usize,
    /// Second image.
    pub b: usize,
    /// Whether both images show the same person.
    pub same: bool,
}

/// Per-split counts printed by `prepare` and stored in the index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Identities with at least one cached image in the training split.
    pub train_identities: usize,
    /// Cached images in the training split.
    pub train_images: usize,
    /// Identities with at least one cached image in the test split.
    pub test_identities: usize,
    /// Cached images in the test split.
    pub test_images: usize,
    /// Images that could not be read and were left out.
    pub skipped: usize,
}

/// The `<name>-<S>.json` side of the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheIndex {
    /// [`CACHE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Side S of every crop in pixels.
    pub size: usize,
    /// Description of the `.bin` layout, for people reading the file.
    pub layout: String,
    /// Image root the crops were read from.
    pub source: String,
    /// Crop box used for every image.
    pub crop: CropSpec,
    /// How the split was made (fold 1 of a pairs file, or every tenth identity).
    pub split_rule: String,
    /// Identity names; [`ImageEntry::identity`] indexes this list.
    pub identities: Vec<String>,
    /// Cached images, in `.bin` order.
    pub images: Vec<ImageEntry>,
    /// Fold-1 verification pairs whose two images are both cached (empty without `pairs.txt`).
    pub pairs: Vec<FacePair>,
    /// Image files that could not be read.
    pub skipped: Vec<String>,
    /// Per-split counts.
    pub counts: SplitCounts,
}

/// What `trainer prepare` was asked to do.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Dataset folder: LFW (`lfw-deepfunneled/` + `pairs.txt`) or one folder per identity.
    pub data: PathBuf,
    /// Output folder for the cache.
    pub out: PathBuf,
    /// Cache name prefix (`<name>-<S>.bin`).
    pub name: String,
    /// Side S of the crops in pixels.
    pub size: usize,
    /// Crop box.
    pub crop: CropSpec,
    /// Keep at most this many identities per split (for quick tests).
    pub limit_identities: Option<usize>,
}

/// The default dataset folder, `../shared/datasets/lfw` from the workspace root, when it exists.
pub fn default_dataset_dir() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    [PathBuf::from(SHARED_LFW), workspace.join(SHARED_LFW)]
        .into_iter()
        .find(|p| p.join("lfw-deepfunneled").is_dir() || p.join("pairs.txt").is_file())
}

impl CacheIndex {
    /// A short description of the data for logs and bundle provenance: the last two components of
    /// the image root, the training-image count and the split rule.
    pub fn describe(&self) -> String {
        let tail: Vec<String> = Path::new(&self.source)
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        format!(
            "{} ({} training images of {} identities; {})",
            tail[tail.len().saturating_sub(2)..].join("/"),
            self.counts.train_images,
            self.counts.train_identities,
            self.split_rule
        )
    }
}

/// Paths of the two cache files for `name` and size `size` inside `dir`.
pub fn cache_paths(dir: &Path, name: &str, size: usize) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}-{size}.bin")),
        dir.join(format!("{name}-{size}.json")),
    )
}

/// Identity folders and image files found under a dataset folder.
struct Layout {
    root: PathBuf,
    pairs: Option<PathBuf>,
    identities: Vec<(String, Vec<String>)>,
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn scan_layout(data: &Path) -> Result<Layout> {
    ensure!(
        data.is_dir(),
        "dataset folder '{}' does not exist (pass --data: an LFW folder with lfw-deepfunneled/ and \
         pairs.txt, or one sub-folder of images per identity)",
        data.display()
    );
    let lfw = data.join("lfw-deepfunneled");
    let root = if lfw.is_dir() {
        lfw
    } else {
        data.to_path_buf()
    };
    let pairs = Some(data.join("pairs.txt")).filter(|p| p.is_file());
    let mut identities = Vec::new();
    let entries =
        fs::read_dir(&root).with_context(|| format!("cannot list '{}'", root.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list '{}'", root.display()))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            eprintln!(
                "warning: skipping folder with a non-UTF-8 name: {}",
                entry.path().display()
            );
            continue;
        };
        let dir = entry.path();
        let mut files: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list '{}'", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && is_image_file(p))
            .filter_map(|p| p.file_name()?.to_str().map(|f| format!("{name}/{f}")))
            .collect();
        files.sort();
        if !files.is_empty() {
            identities.push((name, files));
        }
    }
    identities.sort();
    ensure!(
        !identities.is_empty(),
        "no identity folders with .jpg/.png images in '{}'",
        root.display()
    );
    Ok(Layout {
        root,
        pairs,
        identities,
    })
}

/// One line of an LFW `pairs.txt`: two images (person name, image number) and whether they show
/// the same person.
#[derive(Debug, Clone, PartialEq)]
pub struct PairLine {
    /// First image.
    pub a: (String, usize),
    /// Second image.
    pub b: (String, usize),
    /// Same person.
    pub same: bool,
}

/// Parses an LFW `pairs.txt` (first line "folds n", then per fold n same-person lines
/// `name n1 n2` and n different-person lines `name1 n1 name2 n2`): one list per fold, for the
/// first `max_folds` folds (the rest of the file is not read). The error names the file and
/// line.
pub fn parse_pairs(path: &Path, max_folds: usize) -> Result<Vec<Vec<PairLine>>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut lines = text.lines().enumerate();
    let header: Vec<usize> = lines
        .next()
        .map(|(_, l)| {
            l.split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [folds, per_kind] = header[..] else {
        bail!(
            "'{}' line 1: expected '<folds> <pairs per kind>', e.g. '10 300'",
            path.display()
        );
    };
    let number = |t: &str, line: usize| -> Result<usize> {
        t.parse().with_context(|| {
            format!(
                "'{}' line {line}: '{t}' is not an image number",
                path.display()
            )
        })
    };
    let folds = folds.min(max_folds);
    let mut out = Vec::with_capacity(folds);
    for fold in 0..folds {
        let mut pairs = Vec::with_capacity(2 * per_kind);
        for (i, line) in lines.by_ref().take(2 * per_kind) {
            let t: Vec<&str> = line.split_whitespace().collect();
            let pair = match (pairs.len() < per_kind, t.as_slice()) {
                (true, [name, n1, n2]) => PairLine {
                    a: (name.to_string(), number(n1, i + 1)?),
                    b: (name.to_string(), number(n2, i + 1)?),
                    same: true,
                },
                (false, [name1, n1, name2, n2]) => PairLine {
                    a: (name1.to_string(), number(n1, i + 1)?),
                    b: (name2.to_string(), number(n2, i + 1)?),
                    same: false,
                },
                _ => bail!(
                    "'{}' line {}: expected '{}', got '{line}'",
                    path.display(),
                    i + 1,
                    if pairs.len() < per_kind {
                        "name n1 n2"
                    } else {
                        "name1 n1 name2 n2"
                    }
                ),
            };
            pairs.push(pair);
        }
        ensure!(
            pairs.len() == 2 * per_kind,
            "'{}' ends after {} lines of fold {}, expected {}",
            path.display(),
            pairs.len(),
            fold + 1,
            2 * per_kind
        );
        out.push(pairs);
    }
    Ok(out)
}

/// Fold 1 of an LFW `pairs.txt` (see [`parse_pairs`]).
fn parse_fold1(path: &Path) -> Result<Vec<PairLine>> {
    parse_pairs(path, 1)?
        .into_iter()
        .next()
        .with_context(|| format!("'{}' has no fold", path.display()))
}

/// Square pixel box `(x0, y0, side)` of `crop` inside a `width` x `height` image.
pub fn crop_box(crop: &CropSpec, width: u32, height: u32) -> (i64, i64, u32) {
    let side = (crop.side * width.min(height) as f32).round().max(1.0);
    (
        (crop.center_x * width as f32 - side / 2.0).round() as i64,
        (crop.center_y * height as f32 - side / 2.0).round() as i64,
        side as u32,
    )
}

/// Reads one image file and writes its `size` x `size` crop into `out` (`[3, S, S]` u8 planes)
/// with the plugin's own crop and resize code, so training sees what deployment sees.
fn crop_file(path: &Path, crop: &CropSpec, size: usize, out: &mut [u8]) -> Result<()> {
    let rgb = image::ImageReader::open(path)
        .with_context(|| format!("cannot open '{}'", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read '{}'", path.display()))?
        .decode()
        .with_context(|| format!("cannot decode '{}'", path.display()))?
        .into_rgb8();
    let (width, height) = rgb.dimensions();
    let frame = FrameRef {
        data: rgb.as_raw(),
        width: width as usize,
        height: height as usize,
        stride: 3 * width as usize,
        layout: PixelLayout::Rgb,
    };
    let (x0, y0, side) = crop_box(crop, width, height);
    let bbox = square_box(x0, y0, side, side, 0.0, frame.width, frame.height)
        .with_context(|| format!("the crop box lies outside '{}'", path.display()))?;
    let mut face = Array3::<f32>::zeros((3, size, size));
    read_face(&frame, &bbox, face.view_mut())
        .with_context(|| format!("cannot crop '{}'", path.display()))?;
    for (dst, v) in out.iter_mut().zip(face.iter()) {
        *dst = to_u8(*v);
    }
    Ok(())
}

/// Progress bar with rate and ETA used by every long loop of the trainer.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_owned());
    bar
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut file =
        fs::File::create(&tmp).with_context(|| format!("cannot create '{}'", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write '{}'", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename '{}' to '{}'", tmp.display(), path.display()))
}

/// Writes a 4 x 4 grid of crops spread evenly over `pixels` (`[N, 3, S, S]` u8) to `path`.
fn write_preview(path: &Path, pixels: &[u8], count: usize, size: usize) -> Result<()> {
    let shown = count.min(16);
    let plane = size * size;
    let side = (4 * size) as u32;
    let mut grid = image::RgbImage::new(side, side);
    for i in 0..shown {
        let k = i * count / shown;
        let face = &pixels[k * 3 * plane..(k + 1) * 3 * plane];
        let (gx, gy) = ((i % 4) * size, (i / 4) * size);
        for y in 0..size {
            for x in 0..size {
                let p = y * size + x;
                grid.put_pixel(
                    (gx + x) as u32,
                    (gy + y) as u32,
                    image::Rgb([face[p], face[plane + p], face[2 * plane + p]]),
                );
            }
        }
    }
    grid.save(path)
        .with_context(|| format!("cannot write preview '{}'", path.display()))
}

/// Runs `trainer prepare`: crops every image, splits by identity and writes the cache.
pub fn prepare(opts: &PrepareOptions) -> Result<CacheIndex> {
    ensure!(
        opts.size >= 32 && opts.size.is_power_of_two(),
        "--size {} must be a power of two of at least 32 (the model's image sizes)",
        opts.size
    );
    ensure!(
        opts.crop.side > 0.0 && opts.crop.side <= 1.0,
        "--crop-side {} must be in (0, 1]",
        opts.crop.side
    );
    let layout = scan_layout(&opts.data)?;
    let (fold1, split_rule) = match &layout.pairs {
        Some(p) => (
            parse_fold1(p)?,
            "test = people in fold 1 of pairs.txt".to_owned(),
        ),
        None => (
            Vec::new(),
            "test = every tenth identity in name order (no pairs.txt)".to_owned(),
        ),
    };
    let test_names: BTreeSet<&str> = fold1
        .iter()
        .flat_map(|p| [p.a.0.as_str(), p.b.0.as_str()])
        .collect();
    let is_test = |i: usize, name: &str| {
        if layout.pairs.is_some() {
            test_names.contains(name)
        } else {
            i.is_multiple_of(10)
        }
    };
    let known: BTreeSet<&str> = layout.identities.iter().map(|(n, _)| n.as_str()).collect();
    let missing = test_names.iter().filter(|n| !known.contains(*n)).count();
    if missing > 0 {
        eprintln!(
            "warning: {missing} people of fold 1 have no image folder under '{}'",
            layout.root.display()
        );
    }

    let mut chosen: Vec<(usize, Split)> = Vec::new();
    let mut per_split: HashMap<Split, usize> = HashMap::new();
    for (i, (name, _)) in layout.identities.iter().enumerate() {
        let split = if is_test(i, name) {
            Split::Test
        } else {
            Split::Train
        };
        let n = per_split.entry(split).or_default();
        if opts.limit_identities.is_none_or(|limit| *n < limit) {
            *n += 1;
            chosen.push((i, split));
        }
    }

    let total: usize = chosen
        .iter()
        .map(|&(i, _)| layout.identities[i].1.len())
        .sum();
    let plane = 3 * opts.size * opts.size;
    let mut pixels = vec![0u8; total * plane];
    let mut identities = Vec::new();
    let mut images = Vec::with_capacity(total);
    let mut skipped = Vec::new();
    let bar = progress_bar(total as u64, "prepare");
    for &(i, split) in &chosen {
        let (name, files) = &layout.identities[i];
        let identity = identities.len();
        let mut any = false;
        for file in files {
            let path = layout.root.join(file);
            let n = images.len();
            match crop_file(
                &path,
                &opts.crop,
                opts.size,
                &mut pixels[n * plane..(n + 1) * plane],
            ) {
                Ok(()) => {
                    any = true;
                    images.push(ImageEntry {
                        file: file.clone(),
                        identity,
                        split,
                    });
                }
                Err(e) => {
                    bar.suspend(|| eprintln!("warning: skipping {}: {e:#}", path.display()));
                    skipped.push(file.clone());
                }
            }
            bar.inc(1);
        }
        if any {
            identities.push(name.clone());
        }
    }
    bar.finish();
    pixels.truncate(images.len() * plane);
    ensure!(
        !images.is_empty(),
        "none of the {total} images under '{}' could be read",
        layout.root.display()
    );

    let by_file: HashMap<&str, usize> = images
        .iter()
        .enumerate()
        .map(|(k, e)| (e.file.as_str(), k))
        .collect();
    let lookup = |(name, n): &(String, usize)| {
        by_file
            .get(format!("{name}/{name}_{n:04}.jpg").as_str())
            .copied()
    };
    let pairs: Vec<FacePair> = fold1
        .iter()
        .filter_map(|p| {
            Some(FacePair {
                a: lookup(&p.a)?,
                b: lookup(&p.b)?,
                same: p.same,
            })
        })
        .collect();

    let mut counts = SplitCounts {
        skipped: skipped.len(),
        ..SplitCounts::default()
    };
    let mut seen = BTreeSet::new();
    for e in &images {
        let new = seen.insert(e.identity);
        match e.split {
            Split::Train => {
                counts.train_images += 1;
                counts.train_identities += usize::from(new);
            }
            Split::Test => {
                counts.test_images += 1;
                counts.test_identities += usize::from(new);
            }
        }
    }
    let index = CacheIndex {
        format_version: CACHE_FORMAT_VERSION,
        size: opts.size,
        layout: "u8 [N, 3, S, S], RGB planes, value = round((x + 1) * 127.5) for x in [-1, 1]"
            .to_owned(),
        source: layout.root.display().to_string(),
        crop: opts.crop,
        split_rule,
        identities,
        images,
        pairs,
        skipped,
        counts,
    };

    fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create '{}'", opts.out.display()))?;
    let (bin, json) = cache_paths(&opts.out, &opts.name, opts.size);
    write_atomic(&bin, &pixels)?;
    write_atomic(&json, serde_json::to_string_pretty(&index)?.as_bytes())?;
    let preview = opts
        .out
        .join(format!("{}-{}-preview.png", opts.name, opts.size));
    write_preview(&preview, &pixels, index.images.len(), opts.size)?;
    Ok(index)
}

/// A loaded crop cache: the index and all pixels as one `u8` tensor `[N, 3, S, S]` on the CPU.
pub struct FaceSet {
    /// The `.json` index.
    pub index: CacheIndex,
    /// All crops, in index order.
    pub pixels: Tensor,
}

impl FaceSet {
    /// Loads `<dir>/<name>-<size>.{bin,json}`, checking that the two agree.
    pub fn load(dir: &Path, name: &str, size: usize) -> Result<Self> {
        let (bin, json) = cache_paths(dir, name, size);
        let text = fs::read_to_string(&json).with_context(|| {
            format!(
                "cannot read the dataset index '{}' (run `trainer prepare --size {size} --out {}` first)",
                json.display(),
                dir.display()
            )
        })?;
        let index: CacheIndex = serde_json::from_str(&text)
            .with_context(|| format!("'{}' is not a dataset index", json.display()))?;
        ensure!(
            index.format_version == CACHE_FORMAT_VERSION && index.size == size,
            "'{}' has format version {} and size {}, expected {CACHE_FORMAT_VERSION} and {size} \
             (run `trainer prepare` again)",
            json.display(),
            index.format_version,
            index.size
        );
        let bytes = fs::read(&bin).with_context(|| format!("cannot read '{}'", bin.display()))?;
        let plane = 3 * size * size;
        ensure!(
            bytes.len() == index.images.len() * plane,
            "'{}' holds {} bytes, expected {} images x {plane} = {} (run `trainer prepare` again)",
            bin.display(),
            bytes.len(),
            index.images.len(),
            index.images.len() * plane
        );
        let n = index.images.len() as i64;
        let s = size as i64;
        let pixels = Tensor::from_slice(&bytes).view([n, 3, s, s]);
        Ok(Self { index, pixels })
    }

    /// Positions of the images of `split`, in index order.
    pub fn indices(&self, split: Split) -> Vec<i64> {
        self.index
            .images
            .iter()
            .enumerate()
            .filter(|(_, e)| e.split == split)
            .map(|(i, _)| i as i64)
            .collect()
    }

    /// The crops at `indices` as a `u8` tensor `[len, 3, S, S]`.
    pub fn select(&self, indices: &[i64]) -> Tensor {
        self.pixels.index_select(0, &Tensor::from_slice(indices))
    }

    /// `count` test faces of distinct people, spread evenly over the test identities, so sample
    /// grids always show the same faces.
    pub fn fixed_test_faces(&self, count: usize) -> Vec<i64> {
        let mut first_of_identity: Vec<i64> = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, e) in self.index.images.iter().enumerate() {
            if e.split == Split::Test && seen.insert(e.identity) {
                first_of_identity.push(i as i64);
            }
        }
        let n = first_of_identity.len();
        (0..count.min(n))
            .map(|k| first_of_identity[k * n / count.min(n)])
            .collect()
    }
}

/// Converts `u8` crops to float RGB in `[-1, 1]`.
pub fn to_unit_range(pixels: &Tensor) -> Tensor {
    pixels.to_kind(Kind::Float) / 127.5 - 1.0
}

/// Random training batches: shuffled passes over a set of crops with random horizontal flips.
pub struct BatchLoader {
    pixels: Tensor,
    order: Vec<i64>,
    next: usize,
    rng: StdRng,
}

impl BatchLoader {
    /// A loader over `pixels` (`u8` `[N, 3, S, S]`, moved to `device`), seeded by `seed`.
    pub fn new(pixels: &Tensor, device: Device, seed: u64) -> Result<Self> {
        let n = pixels.size().first().copied().unwrap_or(0);
        ensure!(n > 0, "the training split is empty");
        Ok(Self {
            pixels: pixels.to_device(device),
            order: (0..n).collect(),
            next: usize::MAX,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next batch of `batch` crops as float `[batch, 3, S, S]` in `[-1, 1]` on the loader's device.
    pub fn next_batch(&mut self, batch: usize) -> Tensor {
        let mut picked = Vec::with_capacity(batch);
        while picked.len() < batch {
            if self.next >= self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.next = 0;
            }
            picked.push(self.order[self.next]);
            self.next += 1;
        }
        let device = self.pixels.device();
        let flips: Vec<bool> = (0..batch).map(|_| self.rng.random_bool(0.5)).collect();
        let x = to_unit_range(
            &self
                .pixels
                .index_select(0, &Tensor::from_slice(&picked).to_device(device)),
        );
        let flip = Tensor::from_slice(&flips)
            .to_device(device)
            .view([batch as i64, 1, 1, 1]);
        x.flip([3]).where_self(&flip, &x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold1_is_parsed_from_both_kinds_of_line() {
        let dir = std::env::temp_dir().join(format!("avae-pairs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pairs.txt");
        fs::write(
            &path,
            "2\t2\nA\t1\t2\nB\t1\t3\nA\t1\tC\t2\nB\t2\tD\t1\nE\t1\t2\n",
        )
        .unwrap();
        let pairs = parse_fold1(&path).unwrap();
        assert_eq!(pairs.len(), 4);
        assert!(pairs[1].same && !pairs[2].same);
        assert_eq!(pairs[2].b, ("C".to_owned(), 2));
        fs::write(&path, "1\t2\nA\t1\t2\nA\t1\tC\t2\n").unwrap();
        let err = parse_fold1(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crop_box_is_centred_and_square() {
        let crop = CropSpec {
            center_x: 0.5,
            center_y: 0.5,
            side: 0.5,
        };
        assert_eq!(crop_box(&crop, 200, 100), (75, 25, 50));
    }

    #[test]
    fn batches_flip_some_rows_and_cover_the_set() {
        let pixels = Tensor::arange(4 * 3 * 2 * 2, (Kind::Uint8, Device::Cpu)).view([4, 3, 2, 2]);
        let mut loader = BatchLoader::new(&pixels, Device::Cpu, 7).unwrap();
        let x = loader.next_batch(64);
        assert_eq!(x.size(), [64, 3, 2, 2]);
        let first_col = x.select(3, 0);
        let second_col = x.select(3, 1);
        let flipped = first_col.gt_tensor(&second_col).any().int64_value(&[]);
        let kept = first_col.lt_tensor(&second_col).any().int64_value(&[]);
        assert_eq!((flipped, kept), (1, 1));
        assert!(x.min().double_value(&[]) >= -1.0 && x.max().double_value(&[]) <= 1.0);
    }
}
