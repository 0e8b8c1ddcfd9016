//! The purifier: a bundle's encoder and decoder on an engine, plus the core's sampling and
//! selection (paper section 3.4). Used by the element, the trainer's evaluation and the
//! benchmarks alike.

use std::path::Path;
use std::time::Instant;

use ndarray::{
    Array1, Array2, Array4, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut4, Axis, Ix2, Ix4, s,
};
use rand::rngs::StdRng;

use crate::Error;
use crate::bundle::{Bundle, GraphKind};
use crate::core::band::crop_bands;
use crate::core::latent::{SampleStats, mean_kl, sample_latents};
use crate::core::select::{NearestTracker, squared_distance};
use crate::engine::precision::{self, CpuFeatures, DecoderChoice, Precision};
use crate::engine::{self, Backend, Device, Engine};

/// How to purify: the element's `samples`, `batch` and `tau` properties.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PurifyParams {
    /// M: latent samples (candidates) per face.
    pub samples: usize,
    /// Latents decoded per decoder call (bounds memory, not the result).
    pub batch: usize,
    /// KL clip (mean KL per latent dimension, see [`crate::core::latent`]).
    pub tau: f32,
}

/// What purification chose for one face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Purified {
    /// Squared L2 distance between the chosen candidate and the input face ([-1, 1] units).
    pub distance: f32,
    /// Index of the chosen sample, in `0..samples`.
    pub candidate: usize,
    /// Whether any latent of this face was changed by the KL clip.
    pub clipped: bool,
    /// KL divergence of the face's posterior mean from the prior, per latent dimension
    /// ([`crate::core::latent::mean_kl`] at `mu`): one of the alarm's signals.
    pub kl: f32,
    /// Mean squared detail of the input face above the encoder's resolution (the input minus
    /// its `k x k` block means, `k = S / 32`): what the encoder cannot see, where off-manifold
    /// perturbations live. One of the alarm's signals.
    pub detail: f32,
    /// Mean squared distance between the input and the chosen candidate at the encoder's
    /// resolution (`k x k` block means). One of the alarm's signals.
    pub distance_coarse: f32,
    /// Mean squared detail of the chosen candidate above the encoder's resolution: the detail
    /// the model gives this face, against which the input's is compared.
    pub detail_candidate: f32,
    /// Mean square of the input's finest band at its own resolution, and of the band below it
    /// ([`crate::core::band`]): read from the face crop here, and from the frame over the
    /// face's region where there is one ([`crate::frame::native_bands`]).
    pub native_fine: f32,
    /// See [`Purified::native_fine`].
    pub native_mid: f32,
    /// Width in frame pixels of the face's crop where the bands were read from the frame,
    /// 0 where they were read from the crop (the alarm's size table then plays no part).
    pub native_width: f32,
}

impl Purified {
    /// Replaces the native figures with `bands`, as read from the frame
    /// ([`crate::frame::native_bands`]).
    pub fn set_native_bands(&mut self, bands: crate::alarm::NativeBands) {
        self.native_fine = bands.fine;
        self.native_mid = bands.mid;
        self.native_width = bands.width;
    }
}

/// `(detail, distance_coarse, detail_candidate)` of [`Purified`] for `input` and the chosen
/// candidate `chosen` (`[3, S, S]`), with blocks of `k x k` pixels.
pub fn coarse_signals(
    input: ArrayView3<'_, f32>,
    chosen: ArrayView3<'_, f32>,
    k: usize,
) -> (f32, f32, f32) {
    let (c, h, w) = input.dim();
    let k = k.max(1);
    let (bh, bw) = (h / k, w / k);
    if bh == 0 || bw == 0 {
        return (0.0, 0.0, 0.0);
    }
    let area = (k * k) as f64;
    let (mut detail, mut coarse, mut detail_c) = (0.0f64, 0.0f64, 0.0f64);
    for ch in 0..c {
        for by in 0..bh {
            for bx in 0..bw {
                let (mut sx, mut sc) = (0.0f64, 0.0f64);
                for y in by * k..(by + 1) * k {
                    for x in bx * k..(bx + 1) * k {
                        sx += f64::from(input[[ch, y, x]]);
                        sc += f64::from(chosen[[ch, y, x]]);
                    }
                }
                let (mx, mc) = (sx / area, sc / area);
                for y in by * k..(by + 1) * k {
                    for x in bx * k..(bx + 1) * k {
                        detail += (f64::from(input[[ch, y, x]]) - mx).powi(2);
                        detail_c += (f64::from(chosen[[ch, y, x]]) - mc).powi(2);
                    }
                }
                coarse += (mx - mc).powi(2);
            }
        }
    }
    let pixels = (c * bh * bw) as f64;
    (
        (detail / (pixels * area)) as f32,
        (coarse / pixels) as f32,
        (detail_c / (pixels * area)) as f32,
    )
}

/// What [`Purifier::purify_observed`] hands out while it purifies.
#[derive(Debug)]
pub enum Observed<'a> {
    /// Latents of `face` were drawn (one call may draw only part of its M), with what the KL
    /// clip did to them.
    Latents {
        /// Index of the face in the batch.
        face: usize,
        /// What the clip did to these latents.
        stats: crate::core::latent::SampleStats,
    },
    /// Candidate `sample` of `face` was decoded.
    Candidate {
        /// Index of the face in the batch.
        face: usize,
        /// Index of the candidate, in `0..samples`.
        sample: usize,
        /// The candidate `[3, S, S]`.
        image: ArrayView3<'a, f32>,
    },
}

/// What [`purify_passes`] needs of a purifier. The element's handle (its own purifier or a
/// shared one) and a bare [`Purifier`] (the trainer's image threat model, the benches) both
/// implement it, so every caller purifies over several passes by the same route.
pub trait PassEngine {
    /// [`Purifier::encode`].
    fn encode(&mut self, faces: ArrayView4<'_, f32>) -> Result<Encoded, Error>;
    /// [`Purifier::purify_chosen`].
    fn purify_chosen(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<(Vec<Purified>, Vec<Chosen>), Error>;
}

impl PassEngine for Purifier {
    fn encode(&mut self, faces: ArrayView4<'_, f32>) -> Result<Encoded, Error> {
        Purifier::encode(self, faces)
    }

    fn purify_chosen(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<(Vec<Purified>, Vec<Chosen>), Error> {
        Purifier::purify_chosen(self, faces, enc, params, rng)
    }
}

/// Faces purified over one or more passes ([`purify_passes`]).
#[derive(Debug, Clone)]
pub struct Passes {
    /// The first pass's results, which saw each face as given (what the ROI reports).
    pub results: Vec<Purified>,
    /// The latent the first pass chose for each face.
    pub chosen: Vec<Chosen>,
    /// Per face, the latents the further passes chose, in pass order (empty for one pass).
    pub later: Vec<Vec<Chosen>>,
}

/// Purifies `faces` (`[N, 3, S, S]`, encoded as `enc`) in place over `passes` passes: each
/// further pass encodes the last pass's output and purifies it again. For a given `rng` state
/// one pass chooses as [`Purifier::purify`] does. Every further pass also keeps its latents,
/// so that a tracked face can be decoded pass by pass between refreshes.
pub fn purify_passes<P: PassEngine + ?Sized>(
    engine: &mut P,
    mut faces: ArrayViewMut4<'_, f32>,
    enc: &Encoded,
    params: &PurifyParams,
    passes: usize,
    rng: &mut StdRng,
) -> Result<Passes, Error> {
    let (results, chosen) = engine.purify_chosen(faces.view_mut(), enc, params, rng)?;
    let mut later = vec![Vec::with_capacity(passes.saturating_sub(1)); results.len()];
    for _ in 1..passes {
        let again = engine.encode(faces.view())?;
        let (_, picked) = engine.purify_chosen(faces.view_mut(), &again, params, rng)?;
        for (face, c) in later.iter_mut().zip(picked) {
            face.push(c);
        }
    }
    Ok(Passes {
        results,
        chosen,
        later,
    })
}

/// The encoder's outputs for a batch of faces.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Posterior means `[N, D]`.
    pub mu: Array2<f32>,
    /// Posterior log-variances `[N, D]`.
    pub logvar: Array2<f32>,
    /// Skip features `[N, C, 16, 16]`.
    pub skip: Array4<f32>,
}

impl Encoded {
    /// The encoder outputs of the faces `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Encoded {
        Encoded {
            mu: self.mu.select(Axis(0), rows),
            logvar: self.logvar.select(Axis(0), rows),
            skip: self.skip.select(Axis(0), rows),
        }
    }
}

/// The latent a full purification chose for one face, kept so that later frames of the same
/// face can be decoded from it with their own encoder output (per-track reuse,
/// [`Purifier::decode_chosen`]): one decoder call instead of M.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// The chosen latent z `[D]`: the KL-clipped sample the candidate was decoded from.
    pub latent: Array1<f32>,
    /// Index of the chosen sample, in `0..samples` of that purification.
    pub candidate: usize,
    /// Whether the KL clip changed any latent of that purification.
    pub clipped: bool,
}

/// The running nearest candidate's latent of each face, beside [`NearestTracker`]: on the
/// plain path the tracker decides ([`LatentKeeper::keep`]), on the fused path the same rule
/// decides here ([`LatentKeeper::offer`]: strictly nearer replaces, ties keep the earlier
/// sample). One purification uses one of the two.
pub(crate) struct LatentKeeper {
    /// The kept sample of each face.
    chosen: Vec<Option<usize>>,
    /// Its distance, for [`LatentKeeper::offer`] (the plain path's tracker keeps its own).
    nearest: Vec<f32>,
    latents: Array2<f32>,
}

impl LatentKeeper {
    pub(crate) fn new(faces: usize, dim: usize) -> Self {
        LatentKeeper {
            chosen: vec![None; faces],
            nearest: vec![f32::INFINITY; faces],
            latents: Array2::zeros((faces, dim)),
        }
    }

    fn offer(
        &mut self,
        face: usize,
        sample: usize,
        distance: f32,
        z: ndarray::ArrayView1<'_, f32>,
    ) {
        if self.chosen[face].is_none() || distance < self.nearest[face] {
            self.nearest[face] = distance;
            self.keep(face, sample, z);
        }
    }

    /// Keeps sample `sample`'s latent for `face` (the tracker beside it chose it).
    fn keep(&mut self, face: usize, sample: usize, z: ndarray::ArrayView1<'_, f32>) {
        self.chosen[face] = Some(sample);
        self.latents.row_mut(face).assign(&z);
    }

    pub(crate) fn finish(self, clipped: &[bool]) -> Vec<Chosen> {
        self.chosen
            .iter()
            .zip(self.latents.outer_iter())
            .zip(clipped)
            .map(|((chosen, latent), &clipped)| Chosen {
                latent: latent.to_owned(),
                candidate: chosen.unwrap_or(0),
                clipped,
            })
            .collect()
    }
}

/// The next latent rows of one face to draw, handed to the generator of
/// [`Purifier::purify_drawn`]: the face's posterior and the rows to fill.
pub(crate) struct LatentRows<'a, 'b> {
    mu: ndarray::ArrayView1<'a, f32>,
    logvar: ndarray::ArrayView1<'a, f32>,
    tau: f32,
    out: ndarray::ArrayViewMut2<'b, f32>,
}

impl LatentRows<'_, '_> {
    /// Fills the rows with KL-clipped draws from `rng` ([`sample_latents`]).
    pub(crate) fn draw(self, rng: &mut StdRng) -> SampleStats {
        sample_latents(self.mu, self.logvar, self.tau, rng, self.out)
    }
}

/// A loaded bundle ready to purify faces.
pub struct Purifier {
    bundle: Bundle,
    encoder: Box<dyn Engine>,
    decoder: Box<dyn Engine>,
    /// The fused decode-and-select graph, when in use (GPU providers, or forced).
    fused: Option<Box<dyn Engine>>,
    engine_seconds: f64,
    /// Which decoder graph runs (fp32 unless [`Purifier::set_precision`] chose int8).
    precision: Precision,
    /// The block side the nearest candidate is chosen at ([`Purifier::set_selection_block`]).
    selection_block: usize,
}

impl Purifier {
    /// Loads and validates the bundle in `dir` and opens its graphs.
    pub fn load(dir: &Path, backend: Backend, device: Device) -> Result<Self, Error> {
        Self::from_bundle(Bundle::load(dir)?, backend, device)
    }

    /// Opens the graphs of an already validated bundle.
    pub fn from_bundle(bundle: Bundle, backend: Backend, device: Device) -> Result<Self, Error> {
        let open = |kind| {
            let path = bundle
                .graph_path(kind)
                .ok_or_else(|| Error::bundle(&bundle.dir, "graph missing from manifest"))?;
            engine::open_graph(&path, backend, device, &bundle.dir)
        };
        let encoder = open(GraphKind::Encoder)?;
        let decoder = open(GraphKind::Decoder)?;
        // On a GPU the fused graph keeps the candidates on the device and returns only the
        // nearest one; on the CPU it saves nothing, so the plain decoder is used there.
        let on_gpu = !decoder.describe().contains("CPU");
        let fused = match bundle.graph_path(GraphKind::Purifier) {
            Some(_) if on_gpu => Some(open(GraphKind::Purifier)?),
            _ => None,
        };
        Ok(Self {
            bundle,
            encoder,
            decoder,
            fused,
            engine_seconds: 0.0,
            precision: Precision::Fp32,
            selection_block: 1,
        })
    }

    /// Chooses the nearest candidate by the distance between `block x block` means of the
    /// candidate and the input (1, the default: pixel L2, the paper's rule; see
    /// [`crate::core::select::block_distance`]). The reported `distance` stays the pixel one.
    /// A block above 1 runs the plain decoder (the fused graph selects by pixels).
    pub fn set_selection_block(&mut self, block: usize) -> Result<(), Error> {
        let side = self.image_size();
        if block == 0 || !side.is_multiple_of(block) {
            return Err(Error::InvalidParameter {
                name: "selection block",
                value: block.to_string(),
                expected: "a block side of at least 1 that divides the bundle's image size",
            });
        }
        self.selection_block = block;
        Ok(())
    }

    /// The block side the nearest candidate is chosen at (1: pixels).
    pub fn selection_block(&self) -> usize {
        self.selection_block
    }

    /// Whether the fused graph may choose (it selects by pixel distance only).
    fn fused_selects(&self) -> bool {
        self.fused.is_some() && self.selection_block == 1
    }

    /// Uses (or stops using) the bundle's fused `purifier.onnx` graph on `backend`/`device`.
    /// Errors when the bundle has none.
    pub fn use_fused(&mut self, on: bool, backend: Backend, device: Device) -> Result<(), Error> {
        self.fused = if on {
            let path = self.bundle.graph_path(GraphKind::Purifier).ok_or_else(|| {
                Error::bundle(&self.bundle.dir, "this bundle has no fused purifier graph")
            })?;
            Some(engine::open_graph(
                &path,
                backend,
                device,
                &self.bundle.dir,
            )?)
        } else {
            None
        };
        Ok(())
    }

    /// Runs the decoder graph that `requested` calls for on this engine and CPU
    /// ([`precision::choose`]; fp32 until called), reopening the decoder on `backend`/`device`
    /// when that changes it. What cannot be honoured falls back to fp32 with its reason.
    pub fn set_precision(
        &mut self,
        requested: Precision,
        backend: Backend,
        device: Device,
    ) -> Result<DecoderChoice, Error> {
        let running = self.decoder.describe();
        let choice = precision::choose(&self.bundle, requested, &running, CpuFeatures::detect());
        if choice.precision != self.precision {
            self.decoder = engine::open_graph(&choice.graph, backend, device, &self.bundle.dir)?;
            self.precision = choice.precision;
        }
        Ok(choice)
    }

    /// The decoder precision in use: [`Precision::Fp32`] or [`Precision::Int8`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the fused purifier graph is in use.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// The bundle in use.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// S: the side of the faces the model reads and writes.
    pub fn image_size(&self) -> usize {
        self.bundle.manifest.image_size
    }

    /// The bundle's default KL clip.
    pub fn default_tau(&self) -> f32 {
        self.bundle.manifest.tau
    }

    /// The backend and device in use, e.g. `ort (CPU)`.
    pub fn backend_name(&self) -> String {
        self.decoder.describe()
    }

    /// Every fallback taken while opening the engines, with its reason (deduplicated).
    pub fn fallbacks(&self) -> Vec<String> {
        let mut all: Vec<String> = self.encoder.fallbacks().to_vec();
        for f in self.decoder.fallbacks() {
            if !all.contains(f) {
                all.push(f.clone());
            }
        }
        all
    }

    /// The decoder batch actually used for a requested `batch`: at most [`batch_limit`] of
    /// this bundle, so that a huge `batch` cannot exhaust memory (the result does not depend
    /// on the batch).
    pub fn effective_batch(&self, batch: usize) -> usize {
        batch.min(batch_limit(&self.bundle.manifest))
    }

    /// Seconds spent inside engine calls since load (for overhead measurements).
    pub fn engine_seconds(&self) -> f64 {
        self.engine_seconds
    }

    fn check_faces(&self, dim: (usize, usize, usize, usize)) -> Result<(), Error> {
        let s = self.image_size();
        if dim.1 != 3 || dim.2 != s || dim.3 != s {
            return Err(Error::InvalidParameter {
                name: "faces",
                value: format!("{dim:?}"),
                expected: "an [N, 3, S, S] array with S the bundle's image_size",
            });
        }
        Ok(())
    }

    /// Side of the pixel blocks the encoder's input averages (`S / encoder_input_size`).
    fn coarse_block(&self) -> usize {
        let m = &self.bundle.manifest;
        (m.image_size / m.encoder_input_size.max(1)).max(1)
    }

    /// Runs the encoder on `faces` (`[N, 3, S, S]`, RGB in [-1, 1]).
    pub fn encode(&mut self, faces: ArrayView4<'_, f32>) -> Result<Encoded, Error> {
        self.check_faces(faces.dim())?;
        let n = faces.dim().0;
        let m = &self.bundle.manifest;
        let (d, c) = (m.latent_dim, m.skip_channels);
        let t = Instant::now();
        let out = self.encoder.run(&[faces.into_dyn()])?;
        self.engine_seconds += t.elapsed().as_secs_f64();
        let path = self
            .bundle
            .graph_path(GraphKind::Encoder)
            .unwrap_or_default();
        let bad = |what: &str| Error::Engine {
            backend: "engine",
            path: path.clone(),
            reason: format!("encoder output {what} has an unexpected shape"),
        };
        let [mu, logvar, skip]: [_; 3] = out.try_into().map_err(|_| bad("count"))?;
        let mu = mu.into_dimensionality::<Ix2>().map_err(|_| bad("mu"))?;
        let logvar = logvar
            .into_dimensionality::<Ix2>()
            .map_err(|_| bad("logvar"))?;
        let skip = skip.into_dimensionality::<Ix4>().map_err(|_| bad("skip"))?;
        if mu.dim() != (n, d) || logvar.dim() != (n, d) || skip.dim() != (n, c, 16, 16) {
            return Err(bad("mu/logvar/skip"));
        }
        Ok(Encoded { mu, logvar, skip })
    }

    /// Runs the decoder on latents `z` `[B, D]` with skip features `[B, C, 16, 16]`.
    pub fn decode(
        &mut self,
        z: ArrayView2<'_, f32>,
        skip: ArrayView4<'_, f32>,
    ) -> Result<Array4<f32>, Error> {
        let s = self.image_size();
        let b = z.nrows();
        let t = Instant::now();
        let out = self.decoder.run(&[z.into_dyn(), skip.into_dyn()])?;
        self.engine_seconds += t.elapsed().as_secs_f64();
        out.into_iter()
            .next()
            .and_then(|a| a.into_dimensionality::<Ix4>().ok())
            .filter(|a| a.dim() == (b, 3, s, s))
            .ok_or_else(|| Error::Engine {
                backend: "engine",
                path: self
                    .bundle
                    .graph_path(GraphKind::Decoder)
                    .unwrap_or_default(),
                reason: format!("decoder output is not [{b}, 3, {s}, {s}]"),
            })
    }

    /// Purifies `faces` (`[N, 3, S, S]`, RGB in [-1, 1]) in place: each face is replaced by the
    /// nearest (pixel L2) of `samples` candidates decoded from KL-clipped latents. Latents are
    /// decoded `batch` at a time across faces, so memory is bounded by `batch`, not by
    /// `samples`; for a given `rng` state the result does not depend on `batch`.
    pub fn purify(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<Vec<Purified>, Error> {
        self.purify_observed(faces, params, rng, None)
    }

    /// [`Purifier::purify`], handing every latent draw and every decoded candidate to
    /// `observe` as it goes (for measuring what purification does without replaying its random
    /// generator). With an observer the plain decoder runs even where the fused graph is in
    /// use, so that every candidate exists; the choice is the same either way.
    pub fn purify_observed(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        params: &PurifyParams,
        rng: &mut StdRng,
        observe: Option<&mut dyn FnMut(Observed<'_>)>,
    ) -> Result<Vec<Purified>, Error> {
        check_params(params)?;
        self.check_faces(faces.dim())?;
        let n = faces.dim().0;
        if n == 0 {
            return Ok(Vec::new());
        }
        let enc = self.encode(faces.view())?;
        if self.fused_selects() && observe.is_none() {
            return self.purify_fused(faces, &enc, params, rng, None);
        }
        self.purify_plain(faces, &enc, params, rng, observe, None)
    }

    /// Purifies `faces` (`[N, 3, S, S]`, already encoded as `enc`) in place as
    /// [`Purifier::purify`] does, and hands out each face's chosen latent for reuse on later
    /// frames ([`Purifier::decode_chosen`]). For a given `rng` state the choice is the same as
    /// [`Purifier::purify`]'s.
    pub fn purify_chosen(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<(Vec<Purified>, Vec<Chosen>), Error> {
        let mut keeper = LatentKeeper::new(faces.dim().0, enc.mu.ncols());
        let results = self.purify_kept(faces, enc, params, rng, Some(&mut keeper))?;
        let clipped: Vec<bool> = results.iter().map(|r| r.clipped).collect();
        Ok((results, keeper.finish(&clipped)))
    }

    /// [`Purifier::purify_chosen`] without keeping the chosen latents: the same choice, for
    /// callers that never reuse them (the frame purifier).
    pub fn purify_encoded(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<Vec<Purified>, Error> {
        self.purify_kept(faces, enc, params, rng, None)
    }

    fn purify_kept(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
        keeper: Option<&mut LatentKeeper>,
    ) -> Result<Vec<Purified>, Error> {
        check_params(params)?;
        self.check_faces(faces.dim())?;
        let n = faces.dim().0;
        if enc.mu.nrows() != n {
            return Err(Error::InvalidParameter {
                name: "enc",
                value: format!("{} encoded faces for {n} faces", enc.mu.nrows()),
                expected: "the encoder outputs of exactly these faces",
            });
        }
        if self.fused_selects() {
            self.purify_fused(faces, enc, params, rng, keeper)
        } else {
            self.purify_plain(faces, enc, params, rng, None, keeper)
        }
    }

    /// Replaces each of `faces` (`[N, 3, S, S]`, encoded as `enc`) by the decoding of its kept
    /// latent `chosen[i]` with its own, current skip feature: one decoder run per face instead
    /// of M (per-track reuse). `distance` and the alarm's signals are those of this decoding
    /// against this input, so the alarm scores the face that goes out; `candidate` and
    /// `clipped` are those of the purification that chose the latent.
    pub fn decode_chosen(
        &mut self,
        mut faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        chosen: &[&Chosen],
        batch: usize,
    ) -> Result<Vec<Purified>, Error> {
        self.check_faces(faces.dim())?;
        let n = faces.dim().0;
        let d = self.bundle.manifest.latent_dim;
        if enc.mu.nrows() != n || chosen.len() != n || chosen.iter().any(|c| c.latent.len() != d) {
            return Err(Error::InvalidParameter {
                name: "chosen",
                value: format!(
                    "{} latents and {} encoded faces for {n} faces",
                    chosen.len(),
                    enc.mu.nrows()
                ),
                expected: "one latent of the bundle's latent_dim and one encoding per face",
            });
        }
        let k = self.coarse_block();
        let chunk = self.effective_batch(batch.max(1));
        let mut results = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let b = chunk.min(n - start);
            let mut z = Array2::<f32>::zeros((b, d));
            for (mut row, c) in z.outer_iter_mut().zip(&chosen[start..start + b]) {
                row.assign(&c.latent);
            }
            let images = self.decode(z.view(), enc.skip.slice(s![start..start + b, .., .., ..]))?;
            for (r, image) in images.outer_iter().enumerate() {
                let face = start + r;
                let mut input = faces.index_axis_mut(Axis(0), face);
                let (detail, distance_coarse, detail_candidate) =
                    coarse_signals(input.view(), image, k);
                let (native_fine, native_mid) = crop_bands(input.view());
                results.push(Purified {
                    distance: squared_distance(image, input.view()),
                    candidate: chosen[face].candidate,
                    clipped: chosen[face].clipped,
                    kl: mean_kl(enc.mu.row(face), enc.logvar.row(face)),
                    detail,
                    distance_coarse,
                    detail_candidate,
                    native_fine,
                    native_mid,
                    native_width: 0.0,
                });
                input.assign(&image);
            }
            start += b;
        }
        Ok(results)
    }

    /// The plain path of [`Purifier::purify_observed`] on faces already encoded as `enc`;
    /// `keeper` follows each face's chosen latent.
    fn purify_plain(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
        observe: Option<&mut dyn FnMut(Observed<'_>)>,
        keeper: Option<&mut LatentKeeper>,
    ) -> Result<Vec<Purified>, Error> {
        self.purify_drawn(
            faces,
            enc,
            params,
            &mut |_, rows| rows.draw(rng),
            observe,
            keeper,
        )
    }

    /// The plain path with the random generator chosen per face: `draw(face, rows)` fills the
    /// next latents of `face` (see [`LatentRows::draw`]). Faces are drawn face by face, sample
    /// by sample, whatever the decoder chunking, so a face's draws do not depend on `batch`.
    pub(crate) fn purify_drawn(
        &mut self,
        mut faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        draw: &mut dyn FnMut(usize, LatentRows<'_, '_>) -> SampleStats,
        mut observe: Option<&mut dyn FnMut(Observed<'_>)>,
        mut keeper: Option<&mut LatentKeeper>,
    ) -> Result<Vec<Purified>, Error> {
        let n = faces.dim().0;
        let (m, s) = (params.samples, self.image_size());
        let (d, c) = (enc.mu.ncols(), enc.skip.dim().1);
        let total = n * m;
        let chunk = self.effective_batch(params.batch).min(total);
        let mut z = Array2::<f32>::zeros((chunk, d));
        let mut skip = Array4::<f32>::zeros((chunk, c, 16, 16));
        let mut tracker = NearestTracker::new(n, s).with_block(self.selection_block);
        let mut clipped = vec![false; n];
        let mut start = 0;
        while start < total {
            let b = chunk.min(total - start);
            let mut row = 0;
            while row < b {
                let (face, sample) = ((start + row) / m, (start + row) % m);
                let take = (m - sample).min(b - row);
                let stats = draw(
                    face,
                    LatentRows {
                        mu: enc.mu.row(face),
                        logvar: enc.logvar.row(face),
                        tau: params.tau,
                        out: z.slice_mut(s![row..row + take, ..]),
                    },
                );
                clipped[face] |= stats.scaled > 0 || stats.unreachable;
                if let Some(observe) = observe.as_mut() {
                    observe(Observed::Latents { face, stats });
                }
                for r in row..row + take {
                    skip.index_axis_mut(Axis(0), r)
                        .assign(&enc.skip.index_axis(Axis(0), face));
                }
                row += take;
            }
            let images = self.decode(z.slice(s![..b, ..]), skip.slice(s![..b, .., .., ..]))?;
            for (r, image) in images.outer_iter().enumerate() {
                let (face, sample) = ((start + r) / m, (start + r) % m);
                if let Some(observe) = observe.as_mut() {
                    observe(Observed::Candidate {
                        face,
                        sample,
                        image: image.view(),
                    });
                }
                let input = faces.index_axis(Axis(0), face);
                if tracker.offer(face, sample, image, input)
                    && let Some(keeper) = keeper.as_mut()
                {
                    keeper.keep(face, sample, z.row(r));
                }
            }
            start += b;
        }
        let (images, best) = tracker.finish();
        let k = self.coarse_block();
        let signals: Vec<_> = faces
            .outer_iter()
            .zip(images.outer_iter())
            .map(|(input, chosen)| (coarse_signals(input, chosen, k), crop_bands(input)))
            .collect();
        faces.assign(&images);
        Ok(best
            .into_iter()
            .zip(clipped)
            .enumerate()
            .map(|(face, (b, clipped))| {
                let b = b.unwrap_or(crate::core::select::Nearest {
                    distance: f32::NAN,
                    candidate: 0,
                });
                Purified {
                    distance: b.distance,
                    candidate: b.candidate,
                    clipped,
                    kl: mean_kl(enc.mu.row(face), enc.logvar.row(face)),
                    detail: signals[face].0.0,
                    distance_coarse: signals[face].0.1,
                    detail_candidate: signals[face].0.2,
                    native_fine: signals[face].1.0,
                    native_mid: signals[face].1.1,
                    native_width: 0.0,
                }
            })
            .collect())
    }
}

impl Purifier {
    /// The fused path: per face, chunks of `batch` latents through `purifier.onnx`, which
    /// returns only each chunk's nearest candidate. Latents are drawn in the same order as on
    /// the plain path, so both choose the same candidates.
    fn purify_fused(
        &mut self,
        mut faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
        mut keeper: Option<&mut LatentKeeper>,
    ) -> Result<Vec<Purified>, Error> {
        let path = self
            .bundle
            .graph_path(GraphKind::Purifier)
            .unwrap_or_default();
        let coarse_block = self.coarse_block();
        let Some(fused) = self.fused.as_mut() else {
            return Err(Error::bundle(&path, "fused purifier graph not loaded"));
        };
        let (m, d) = (params.samples, enc.mu.ncols());
        let chunk = params.batch.min(batch_limit(&self.bundle.manifest)).min(m);
        let mut z = Array2::<f32>::zeros((chunk, d));
        let mut result = Vec::with_capacity(faces.dim().0);
        for (face, mut pixels) in faces.outer_iter_mut().enumerate() {
            let skip = enc.skip.slice(s![face..face + 1, .., .., ..]);
            let mut best: Option<(f32, usize, ndarray::ArrayD<f32>)> = None;
            let mut clipped = false;
            let mut start = 0;
            while start < m {
                let b = chunk.min(m - start);
                let stats = sample_latents(
                    enc.mu.row(face),
                    enc.logvar.row(face),
                    params.tau,
                    rng,
                    z.slice_mut(s![..b, ..]),
                );
                clipped |= stats.scaled > 0 || stats.unreachable;
                let target = pixels.view().insert_axis(Axis(0));
                let t = Instant::now();
                let out = fused.run(&[
                    z.slice(s![..b, ..]).into_dyn(),
                    skip.into_dyn(),
                    target.into_dyn(),
                ])?;
                self.engine_seconds += t.elapsed().as_secs_f64();
                let [image, distance, index]: [_; 3] =
                    out.try_into().map_err(|_| Error::Engine {
                        backend: "engine",
                        path: path.clone(),
                        reason: "fused purifier must return image, distance and index".into(),
                    })?;
                let (dist, idx) = (
                    distance.iter().next().copied().unwrap_or(f32::NAN),
                    index.iter().next().copied().unwrap_or(0.0) as usize,
                );
                if best.as_ref().is_none_or(|(bd, _, _)| dist < *bd) {
                    best = Some((dist, start + idx, image));
                    if let Some(keeper) = keeper.as_mut() {
                        keeper.offer(face, start + idx, dist, z.row(idx.min(b - 1)));
                    }
                }
                start += b;
            }
            let Some((distance, candidate, image)) = best else {
                return Err(Error::bundle(&path, "no candidate decoded"));
            };
            let image =
                image
                    .into_shape_with_order(pixels.raw_dim())
                    .map_err(|e| Error::Engine {
                        backend: "engine",
                        path: path.clone(),
                        reason: format!("fused purifier image: {e}"),
                    })?;
            let (detail, distance_coarse, detail_candidate) =
                coarse_signals(pixels.view(), image.view(), coarse_block);
            let (native_fine, native_mid) = crop_bands(pixels.view());
            pixels.assign(&image);
            result.push(Purified {
                distance,
                candidate,
                clipped,
                kl: mean_kl(enc.mu.row(face), enc.logvar.row(face)),
                detail,
                distance_coarse,
                detail_candidate,
                native_fine,
                native_mid,
                native_width: 0.0,
            });
        }
        Ok(result)
    }
}

/// Memory budget of one decoder call's activations, in bytes (see [`batch_limit`]).
pub const DECODER_MEMORY_BUDGET: usize = 512 << 20;

/// The largest decoder batch whose estimated activations stay under
/// [`DECODER_MEMORY_BUDGET`] for `manifest`'s bundle, at least 1.
///
/// One candidate's activations are estimated as 48 times its skip feature (`skip_channels` x
/// 16 x 16) plus its output face (3 x S x S), in f32: the factor matches what tract allocates
/// for the shipped bundle (about 5 MB per candidate; `batch=4096` took about 21 GB). The
/// estimate does not depend on the engine, so every backend is bounded the same way.
pub fn batch_limit(manifest: &crate::bundle::Manifest) -> usize {
    let per_candidate = manifest
        .skip_channels
        .saturating_mul(16 * 16)
        .saturating_add(
            manifest
                .image_size
                .saturating_mul(manifest.image_size)
                .saturating_mul(3),
        )
        .saturating_mul(4 * 48)
        .max(1);
    (DECODER_MEMORY_BUDGET / per_candidate).max(1)
}

/// Checks `samples >= 1`, `batch >= 1` and `tau >= 0` (not NaN).
pub fn check_params(params: &PurifyParams) -> Result<(), Error> {
    if params.samples == 0 {
        return Err(Error::InvalidParameter {
            name: "samples",
            value: "0".into(),
            expected: "at least 1",
        });
    }
    if params.batch == 0 {
        return Err(Error::InvalidParameter {
            name: "batch",
            value: "0".into(),
            expected: "at least 1",
        });
    }
    if params.tau.is_nan() || params.tau < 0.0 {
        return Err(Error::InvalidParameter {
            name: "tau",
            value: params.tau.to_string(),
            expected: "a value >= 0 (infinity disables the clip)",
        });
    }
    Ok(())
}

/// The untrained tiny test bundle (`tests/data/bundle-tiny`) on tract, for unit tests.
#[cfg(test)]
pub(crate) fn tiny_purifier() -> Purifier {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bundle-tiny");
    Purifier::load(&dir, Backend::Tract, Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use rand::SeedableRng;

    /// The tiny test bundle on tract, and two faces of its size drawn from a pattern.
    fn tiny_with_faces(
        pattern: impl Fn(usize, usize, usize, usize) -> f32,
    ) -> (Purifier, Array4<f32>) {
        let purifier = tiny_purifier();
        let s = purifier.image_size();
        let faces = Array4::from_shape_fn((2, 3, s, s), |(n, c, y, x)| pattern(n, c, y, x));
        (purifier, faces)
    }

    #[test]
    fn the_observer_sees_every_candidate_and_changes_nothing() {
        let (mut purifier, faces) =
            tiny_with_faces(|n, c, y, x| ((n * 7 + c * 3 + y + 2 * x) % 17) as f32 / 8.5 - 1.0);
        let params = PurifyParams {
            samples: 5,
            batch: 3,
            tau: purifier.default_tau(),
        };
        let mut plain = faces.clone();
        let a = purifier
            .purify(plain.view_mut(), &params, &mut StdRng::seed_from_u64(3))
            .unwrap();
        let mut seen: Vec<(usize, usize, Array3<f32>)> = Vec::new();
        let mut draws = 0;
        let mut observe = |o: Observed<'_>| match o {
            Observed::Latents { .. } => draws += 1,
            Observed::Candidate {
                face,
                sample,
                image,
            } => seen.push((face, sample, image.to_owned())),
        };
        let mut observed = faces.clone();
        let b = purifier
            .purify_observed(
                observed.view_mut(),
                &params,
                &mut StdRng::seed_from_u64(3),
                Some(&mut observe),
            )
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(plain, observed);
        assert_eq!(seen.len(), 10);
        assert!(draws >= 2);
        for (face, result) in b.iter().enumerate() {
            let chosen = seen
                .iter()
                .find(|(f, k, _)| *f == face && *k == result.candidate)
                .unwrap();
            assert_eq!(chosen.2, observed.index_axis(Axis(0), face));
        }
    }

    #[test]
    fn passes_purify_the_output_again_as_purify_does() {
        // The element (through `purify_passes`, keeping every pass's latent) and a repeated
        // `purify` must give the same faces for a seed: the lab measures the latter's route.
        let (mut purifier, faces) =
            tiny_with_faces(|n, c, y, x| ((n * 5 + c * 2 + 3 * y + x) % 13) as f32 / 6.5 - 1.0);
        let params = PurifyParams {
            samples: 4,
            batch: 4,
            tau: purifier.default_tau(),
        };
        let mut again = faces.clone();
        let mut rng = StdRng::seed_from_u64(11);
        let first = purifier
            .purify(again.view_mut(), &params, &mut rng)
            .unwrap();
        let once = again.clone();
        purifier
            .purify(again.view_mut(), &params, &mut rng)
            .unwrap();
        purifier
            .purify(again.view_mut(), &params, &mut rng)
            .unwrap();

        let mut passed = faces.clone();
        let enc = purifier.encode(faces.view()).unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        let done =
            purify_passes(&mut purifier, passed.view_mut(), &enc, &params, 3, &mut rng).unwrap();
        assert_eq!(done.results, first);
        assert_eq!(passed, again);
        assert_ne!(once, again, "the further passes changed nothing");
        assert_eq!(done.chosen.len(), 2);
        assert!(done.later.iter().all(|l| l.len() == 2));

        // The kept latents redo the three passes without sampling (the reuse path).
        let mut replay = faces.clone();
        let chosen: Vec<&Chosen> = done.chosen.iter().collect();
        purifier
            .decode_chosen(replay.view_mut(), &enc, &chosen, 4)
            .unwrap();
        assert_eq!(replay, once);
        for pass in 0..2 {
            let enc = purifier.encode(replay.view()).unwrap();
            let chosen: Vec<&Chosen> = done.later.iter().map(|l| &l[pass]).collect();
            purifier
                .decode_chosen(replay.view_mut(), &enc, &chosen, 4)
                .unwrap();
        }
        let worst = (&replay - &again)
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(worst < 1e-4, "replayed passes differ by {worst}");
    }

    #[test]
    fn coarse_signals_separate_detail_from_the_coarse_image() {
        // Flat 2 x 2 blocks: no detail; a +-0.1 checkerboard on top: detail 0.01 per value.
        let flat = Array3::from_shape_fn((3, 8, 8), |(c, y, x)| {
            0.1 * (c as f32) + 0.05 * ((y / 2) as f32) - 0.02 * ((x / 2) as f32)
        });
        let noisy = Array3::from_shape_fn((3, 8, 8), |(c, y, x)| {
            flat[[c, y, x]] + if (x + y) % 2 == 0 { 0.1 } else { -0.1 }
        });
        let (detail, coarse, detail_c) = coarse_signals(flat.view(), flat.view(), 2);
        assert!(detail < 1e-10 && coarse < 1e-10 && detail_c < 1e-10);
        // The checkerboard averages out in every block: only the detail sees it.
        let (detail, coarse, detail_c) = coarse_signals(noisy.view(), flat.view(), 2);
        assert!((detail - 0.01).abs() < 1e-6, "{detail}");
        assert!(coarse < 1e-10 && detail_c < 1e-10);
        // A coarse shift shows in the coarse distance, not in the detail.
        let shifted = flat.mapv(|v| v + 0.2);
        let (detail, coarse, _) = coarse_signals(shifted.view(), flat.view(), 2);
        assert!(detail < 1e-10 && (coarse - 0.04).abs() < 1e-6, "{coarse}");
    }
}
