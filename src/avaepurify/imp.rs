//! Implementation of `avaepurify`: settings, streaming state, and the per-frame work.

use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{BackendChoice, DeviceChoice, OnFailure, lock, pixel_layout};
use crate::avaefacedetect::{DETECTION_PARAM, face_from_detection};
use crate::core::image::{self, FrameMut, Region};
use crate::frame::{self, FrameError, Placement};
use crate::purifier::{Purified, Purifier, PurifyParams};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "avaepurify",
        gst::DebugColorFlags::empty(),
        Some("A-VAE face purification"),
    )
});

/// Name of the param structure added to each purified ROI meta.
const PARAM_NAME: &str = "avae-purify";
/// Name of the structure returned by the `stats` property.
const STATS_NAME: &str = "avaepurify-stats";

const DEFAULT_BACKEND: BackendChoice = BackendChoice::Auto;
const DEFAULT_DEVICE: DeviceChoice = DeviceChoice::Auto;
const DEFAULT_SAMPLES: u32 = 16;
const DEFAULT_BATCH: u32 = 16;
/// Negative: use the bundle's calibrated tau (`manifest.json`).
const DEFAULT_TAU: f32 = -1.0;
const DEFAULT_SEED: u64 = 0;
const DEFAULT_ROI_TYPE: &str = "face";
const DEFAULT_MARGIN: f32 = 0.2;
const DEFAULT_FULL_FRAME: bool = false;
const DEFAULT_MAX_FACES: u32 = 16;
const DEFAULT_FEATHER: f32 = 0.15;
const DEFAULT_ALIGN: bool = true;
const DEFAULT_ON_FAILURE: OnFailure = OnFailure::Pass;

const MAX_SAMPLES: u32 = 4096;
const MAX_BATCH: u32 = 4096;
const MAX_MARGIN: f32 = 2.0;
const MAX_MAX_FACES: u32 = 256;
const MAX_FEATHER: f32 = 0.5;

/// What the properties set; read once per frame.
#[derive(Debug, Clone)]
struct Settings {
    model: String,
    backend: BackendChoice,
    device: DeviceChoice,
    samples: u32,
    batch: u32,
    tau: f32,
    seed: u64,
    roi_type: String,
    margin: f32,
    full_frame: bool,
    max_faces: u32,
    feather: f32,
    align: bool,
    on_failure: OnFailure,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model: crate::bundle::default_model_dir()
                .to_string_lossy()
                .into_owned(),
            backend: DEFAULT_BACKEND,
            device: DEFAULT_DEVICE,
            samples: DEFAULT_SAMPLES,
            batch: DEFAULT_BATCH,
            tau: DEFAULT_TAU,
            seed: DEFAULT_SEED,
            roi_type: DEFAULT_ROI_TYPE.to_owned(),
            margin: DEFAULT_MARGIN,
            full_frame: DEFAULT_FULL_FRAME,
            max_faces: DEFAULT_MAX_FACES,
            feather: DEFAULT_FEATHER,
            align: DEFAULT_ALIGN,
            on_failure: DEFAULT_ON_FAILURE,
        }
    }
}

/// Why a face or a frame was passed through unpurified; each cause is warned about once per run.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// An ROI was empty or did not intersect the frame.
    RoiOutsideFrame,
    /// A frame had more matching ROIs than `max-faces`.
    TooManyFaces,
    /// The frame could not be mapped or its pixels read.
    FrameUnreadable,
    /// The purifier returned an error or panicked.
    EngineFailed,
    /// `batch` was above the bundle's memory bound and was clamped.
    BatchClamped,
    /// A frame had ROI metas, but none of `roi-type`.
    NoMatchingRoi,
}

impl Cause {
    /// The `reason` of a `purified=false` mark.
    fn reason(self) -> &'static str {
        match self {
            Cause::RoiOutsideFrame => "roi-outside-frame",
            Cause::TooManyFaces => "max-faces",
            Cause::FrameUnreadable => "frame-unreadable",
            Cause::EngineFailed => "engine-failed",
            Cause::BatchClamped => "batch",
            Cause::NoMatchingRoi => "roi-type",
        }
    }
}

/// The set of causes already warned about in this run.
#[derive(Debug, Default)]
struct Warned(u8);

impl Warned {
    /// True the first time `cause` is seen.
    fn first(&mut self, cause: Cause) -> bool {
        let bit = 1u8 << (cause as u8);
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first
    }
}

/// What exists only between `start()` and `stop()`.
struct State {
    purifier: Purifier,
    rng: StdRng,
    info: Option<gst_video::VideoInfo>,
    /// Storage of the `[N, 3, S, S]` face batch, reused from frame to frame.
    faces: Vec<f32>,
    warned: Warned,
}

/// Counters behind the read-only `stats` property.
#[derive(Debug, Default, Clone)]
struct Stats {
    frames: u64,
    faces_purified: u64,
    faces_aligned: u64,
    faces_skipped: u64,
    failures: u64,
    latency_ms_total: f64,
    engine_ms_total: f64,
}

impl Stats {
    fn to_structure(&self) -> gst::Structure {
        let mean_engine_ms = if self.faces_purified > 0 {
            self.engine_ms_total / self.faces_purified as f64
        } else {
            0.0
        };
        let mean_latency_ms = if self.faces_purified > 0 {
            self.latency_ms_total / self.faces_purified as f64
        } else {
            0.0
        };
        gst::Structure::builder(STATS_NAME)
            .field("frames", self.frames)
            .field("faces-purified", self.faces_purified)
            .field("faces-aligned", self.faces_aligned)
            .field("faces-skipped", self.faces_skipped)
            .field("failures", self.failures)
            .field("mean-latency-ms", mean_latency_ms)
            .field("mean-engine-ms", mean_engine_ms)
            .build()
    }
}

/// A face to purify: how it is cropped, and the ROI meta it came from (none in full-frame mode).
struct Target {
    roi: Option<gst::meta::MetaSeqnum>,
    placement: Placement,
}

/// The aligned placement that maps the landmarks of `detection` (normalised to the `width` x
/// `height` frame) onto `template` (fractions of the `side` x `side` face); `None` when the
/// structure has no landmarks or they are degenerate (coinciding, not finite).
fn landmark_alignment(
    detection: &gst::StructureRef,
    template: &[[f32; 2]; 5],
    side: usize,
    width: usize,
    height: usize,
) -> Option<Placement> {
    let (face, has_landmarks) = face_from_detection(detection)?;
    if !has_landmarks {
        return None;
    }
    let landmarks = face
        .landmarks
        .map(|[x, y]| [x * width as f32, y * height as f32]);
    Placement::aligned(&landmarks, template, side)
}

/// What happened to one frame, folded into [`Stats`] and warnings once the state lock is gone.
#[derive(Default)]
struct FrameReport {
    purified: u64,
    aligned: u64,
    skipped: u64,
    failed: bool,
    latency_ms: f64,
    engine_ms: f64,
    warnings: Vec<(Cause, String)>,
    /// `on-failure=error`: the message of the element error to post; the frame fails.
    error: Option<String>,
    /// `on-failure=conceal` on a frame that could not be concealed: drop it.
    drop: bool,
}

impl FrameReport {
    fn note(&mut self, warned: &mut Warned, cause: Cause, message: impl FnOnce() -> String) {
        if warned.first(cause) {
            self.warnings.push((cause, message()));
        }
    }
}

/// The `avaepurify` element.
#[derive(Default)]
pub struct AvaePurify {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
}

impl AvaePurify {
    /// The faces of this frame: the whole frame, or each matching ROI in the order they were
    /// attached, up to `max-faces`; and, second, those beyond `max-faces` (not purified).
    #[allow(clippy::too_many_arguments)]
    fn targets(
        buffer: &gst::BufferRef,
        settings: &Settings,
        template: Option<&[[f32; 2]; 5]>,
        side: usize,
        width: usize,
        height: usize,
        warned: &mut Warned,
        report: &mut FrameReport,
    ) -> (Vec<Target>, Vec<Target>) {
        if settings.full_frame {
            return (
                vec![Target {
                    roi: None,
                    placement: Placement::Frame(Region::full(width, height)),
                }],
                Vec::new(),
            );
        }
        let template = template.filter(|_| settings.align);
        let mut rois: Vec<_> = buffer
            .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
            .filter(|meta| meta.roi_type() == settings.roi_type)
            .map(|meta| {
                let aligned = template.and_then(|template| {
                    let detection = meta.param(DETECTION_PARAM)?;
                    landmark_alignment(detection, template, side, width, height)
                });
                (meta.seqnum(), meta.rect(), aligned)
            })
            .collect();
        rois.sort_by_key(|(seqnum, ..)| *seqnum);
        if rois.is_empty() {
            let mut seen: Vec<String> = buffer
                .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
                .map(|meta| meta.roi_type().to_string())
                .collect();
            seen.sort();
            seen.dedup();
            if !seen.is_empty() {
                report.note(warned, Cause::NoMatchingRoi, || {
                    format!(
                        "A frame has ROI metas of type {} but none of roi-type '{}': nothing \
                         is purified (set roi-type to the type your detector attaches)",
                        seen.iter()
                            .map(|t| format!("'{t}'"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        settings.roi_type,
                    )
                });
            }
        }

        let max_faces = settings.max_faces as usize;
        if rois.len() > max_faces {
            let extra = rois.len() - max_faces;
            report.skipped += extra as u64;
            report.note(warned, Cause::TooManyFaces, || {
                format!(
                    "A frame has {} '{}' ROIs but max-faces is {max_faces}: the first {max_faces} \
                     are purified, the other {extra} pass through unpurified (raise max-faces)",
                    rois.len(),
                    settings.roi_type,
                )
            });
        }
        let beyond = rois.split_off(max_faces.min(rois.len()));
        let extras = beyond
            .into_iter()
            .filter_map(|(seqnum, (x, y, w, h), aligned)| {
                let square = image::square_box(
                    i64::from(x),
                    i64::from(y),
                    w,
                    h,
                    settings.margin,
                    width,
                    height,
                )?;
                Some(Target {
                    roi: Some(seqnum),
                    placement: aligned.unwrap_or(Placement::Box(square.into())),
                })
            })
            .collect();

        let mut targets = Vec::with_capacity(rois.len());
        for (seqnum, (x, y, w, h), aligned) in rois {
            match image::square_box(
                i64::from(x),
                i64::from(y),
                w,
                h,
                settings.margin,
                width,
                height,
            ) {
                Some(square) => targets.push(Target {
                    roi: Some(seqnum),
                    placement: aligned.unwrap_or(Placement::Box(square.into())),
                }),
                None => {
                    report.skipped += 1;
                    report.note(warned, Cause::RoiOutsideFrame, || {
                        format!(
                            "A '{}' ROI at ({x}, {y}) of size {w}x{h} is empty or outside the \
                             {width}x{height} frame: it passes through unpurified",
                            settings.roi_type,
                        )
                    });
                }
            }
        }
        (targets, extras)
    }

    /// Purifies every target of `frame` in one purifier call ([`frame::purify_faces`]). On
    /// error the frame is untouched.
    fn purify_frame(
        state: &mut State,
        settings: &Settings,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        targets: &[Target],
    ) -> Result<Vec<Purified>, (Cause, String)> {
        let mut dest = packed_frame(frame).map_err(|reason| (Cause::FrameUnreadable, reason))?;
        let State {
            purifier,
            rng,
            faces: storage,
            ..
        } = state;
        let params = PurifyParams {
            samples: settings.samples as usize,
            batch: settings.batch as usize,
            tau: if settings.tau < 0.0 {
                purifier.default_tau()
            } else {
                settings.tau
            },
        };
        let placements: Vec<Placement> = targets.iter().map(|t| t.placement).collect();
        frame::purify_faces(
            purifier,
            &mut dest,
            &placements,
            &params,
            settings.feather,
            rng,
            storage,
        )
        .map_err(|err| match err {
            FrameError::Unreadable(reason) => (Cause::FrameUnreadable, reason),
            FrameError::Engine(reason) => (Cause::EngineFailed, reason),
        })
    }

    /// Adds the `avae-purify` param structure to each ROI meta that was purified.
    fn annotate_rois(
        buffer: &mut gst::BufferRef,
        targets: &[Target],
        results: &[Purified],
        samples: u32,
        mark: bool,
    ) {
        for mut meta in buffer.iter_meta_mut::<gst_video::VideoRegionOfInterestMeta>() {
            let seqnum = meta.seqnum();
            let Some(found) = targets.iter().position(|t| t.roi == Some(seqnum)) else {
                continue;
            };
            let result = &results[found];
            let builder = gst::Structure::builder(PARAM_NAME);
            let builder = if mark {
                builder.field("purified", true)
            } else {
                builder
            };
            meta.add_param(
                builder
                    .field("distance", f64::from(result.distance))
                    .field(
                        "candidate",
                        u32::try_from(result.candidate).unwrap_or(u32::MAX),
                    )
                    .field("samples", samples)
                    .build(),
            );
        }
    }

    /// Does one frame's work under the state lock and says what happened.
    fn process(
        &self,
        buffer: &mut gst::BufferRef,
        settings: &Settings,
    ) -> Result<FrameReport, gst::FlowError> {
        let mut state_guard = lock(&self.state);
        let state = state_guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or(gst::FlowError::NotNegotiated)?;
        let (width, height) = (info.width() as usize, info.height() as usize);

        let mut report = FrameReport::default();
        let side = state.purifier.image_size();
        let template = state.purifier.bundle().manifest.landmark_template;
        let asked = settings.batch as usize;
        let used = state.purifier.effective_batch(asked);
        if used < asked {
            report.note(&mut state.warned, Cause::BatchClamped, || {
                format!(
                    "batch={asked} would need more than {} MiB of decoder activations for this \
                     bundle (image_size {}): using batch={used}",
                    crate::purifier::DECODER_MEMORY_BUDGET >> 20,
                    side,
                )
            });
        }
        let (targets, extras) = Self::targets(
            buffer,
            settings,
            template.as_ref(),
            side,
            width,
            height,
            &mut state.warned,
            &mut report,
        );
        if targets.is_empty() && extras.is_empty() {
            return Ok(report);
        }

        let policy = settings.on_failure;
        let mut failure: Option<(Cause, String)> = None;
        if !targets.is_empty() {
            let started = Instant::now();
            let engine_before = state.purifier.engine_seconds();
            let outcome = match gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info) {
                Ok(mut frame) => Self::purify_frame(state, settings, &mut frame, &targets),
                Err(err) => Err((
                    Cause::FrameUnreadable,
                    format!("cannot map the buffer: {err}"),
                )),
            };
            match outcome {
                Ok(results) => {
                    report.purified = targets.len() as u64;
                    report.aligned = targets
                        .iter()
                        .filter(|t| matches!(t.placement, Placement::Aligned(_)))
                        .count() as u64;
                    report.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                    report.engine_ms = (state.purifier.engine_seconds() - engine_before) * 1000.0;
                    Self::annotate_rois(
                        buffer,
                        &targets,
                        &results,
                        settings.samples,
                        policy == OnFailure::Mark,
                    );
                }
                Err((cause, reason)) => {
                    gst::debug!(CAT, imp = self, "Frame not purified: {reason}");
                    report.failed = true;
                    let fate = match policy {
                        OnFailure::Pass => "frames pass through unpurified",
                        OnFailure::Mark => {
                            "frames pass through unpurified, their ROIs marked purified=false"
                        }
                        OnFailure::Conceal if matches!(cause, Cause::FrameUnreadable) => {
                            "frames that cannot be mapped are dropped (on-failure=conceal)"
                        }
                        OnFailure::Conceal => "the faces are concealed (pixelated)",
                        OnFailure::Error => "stopping (on-failure=error)",
                    };
                    if policy != OnFailure::Error {
                        report.note(&mut state.warned, cause, || {
                            format!(
                                "Purification failed, {fate} (model '{}'): {reason}",
                                settings.model
                            )
                        });
                    }
                    failure = Some((cause, reason));
                }
            }
        }

        // The faces that go on unpurified: all of them when the frame failed, and those beyond
        // max-faces; `on-failure` decides what becomes of them.
        let unpurified: Vec<(&Target, Cause)> = match &failure {
            Some((cause, _)) => targets.iter().map(|t| (t, *cause)).collect(),
            None => Vec::new(),
        }
        .into_iter()
        .chain(extras.iter().map(|t| (t, Cause::TooManyFaces)))
        .collect();
        if unpurified.is_empty() {
            return Ok(report);
        }
        match policy {
            OnFailure::Pass => {}
            OnFailure::Mark => Self::mark_unpurified(buffer, &unpurified),
            OnFailure::Conceal => {
                match gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info) {
                    Ok(mut frame) => {
                        if let Err(reason) = Self::conceal(&mut frame, &unpurified, side) {
                            gst::debug!(CAT, imp = self, "Cannot conceal: {reason}");
                            report.drop = true;
                        }
                    }
                    Err(err) => {
                        gst::debug!(CAT, imp = self, "Cannot conceal: {err}");
                        report.drop = true;
                    }
                }
            }
            OnFailure::Error => {
                let reason = match &failure {
                    Some((_, reason)) => format!("purification failed: {reason}"),
                    None => format!(
                        "{} '{}' ROIs beyond max-faces={} cannot be purified",
                        extras.len(),
                        settings.roi_type,
                        settings.max_faces
                    ),
                };
                report.error = Some(format!(
                    "A face could not be purified and on-failure=error (model '{}'): {reason}",
                    settings.model
                ));
            }
        }
        Ok(report)
    }

    /// Adds `avae-purify` params with `purified=false` and the reason to the ROIs of
    /// `unpurified` (`on-failure=mark`).
    fn mark_unpurified(buffer: &mut gst::BufferRef, unpurified: &[(&Target, Cause)]) {
        for mut meta in buffer.iter_meta_mut::<gst_video::VideoRegionOfInterestMeta>() {
            let seqnum = meta.seqnum();
            let Some((_, cause)) = unpurified.iter().find(|(t, _)| t.roi == Some(seqnum)) else {
                continue;
            };
            meta.add_param(
                gst::Structure::builder(PARAM_NAME)
                    .field("purified", false)
                    .field("reason", cause.reason())
                    .build(),
            );
        }
    }

    /// Pixelates the frame region of each of `unpurified` (`on-failure=conceal`).
    fn conceal(
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        unpurified: &[(&Target, Cause)],
        side: usize,
    ) -> Result<(), String> {
        let mut dest = packed_frame(frame)?;
        let placements: Vec<Placement> = unpurified.iter().map(|(t, _)| t.placement).collect();
        frame::conceal(&mut dest, &placements, side).map_err(|err| err.to_string())
    }
}

#[glib::object_subclass]
impl ObjectSubclass for AvaePurify {
    const NAME: &'static str = "GstAvaePurify";
    type Type = super::AvaePurify;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for AvaePurify {
    fn constructed(&self) {
        self.parent_constructed();
        // GstVideoFilter enables QoS, which drops late frames; every frame must come out.
        self.obj().set_qos(false);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let default_model = Settings::default().model;
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model bundle")
                    .blurb(
                        "Folder of the A-VAE model bundle (manifest.json, encoder.onnx, \
                         decoder.onnx; default: AVAE_PURIFY_MODEL, else avae-cpu in the first \
                         models folder that has it: AVAE_PURIFY_MODELS, then avae-purify/models \
                         in the plugin's <prefix>/share, $XDG_DATA_HOME or ~/.local/share, \
                         /usr/local/share, /usr/share, then the source tree); loaded when the \
                         element starts",
                    )
                    .default_value(Some(default_model.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("backend", DEFAULT_BACKEND)
                    .nick("Inference backend")
                    .blurb(
                        "Inference backend: auto uses ONNX Runtime when its library loads \
                         (ORT_DYLIB_PATH) and tract otherwise",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("device", DEFAULT_DEVICE)
                    .nick("Inference device")
                    .blurb(
                        "Device for the ort backend: auto tries TensorRT, then CUDA, then CPU \
                         (tract always runs on the CPU)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("samples")
                    .nick("Latent samples")
                    .blurb(
                        "Latent samples M decoded per face; the candidate nearest to the input \
                         is kept (more is slower and purifies closer to the input)",
                    )
                    .minimum(1)
                    .maximum(MAX_SAMPLES)
                    .default_value(DEFAULT_SAMPLES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("batch")
                    .nick("Decoder batch")
                    .blurb("Latents decoded per engine call; bounds memory, not the result")
                    .minimum(1)
                    .maximum(MAX_BATCH)
                    .default_value(DEFAULT_BATCH)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("tau")
                    .nick("KL clip")
                    .blurb(
                        "KL clip tau of the sampled latents (mean KL per latent dimension, \
                         paper section 3.4): each latent is scaled towards 0 until it fits. \
                         -1 uses the bundle's calibrated tau; 0 decodes the posterior mean (no \
                         randomness); the paper uses 0.03 on its own KL scale; a very large \
                         value (e.g. 1e30) disables the clip",
                    )
                    .minimum(-1.0)
                    .maximum(f32::MAX)
                    .default_value(DEFAULT_TAU)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt64::builder("seed")
                    .nick("Random seed")
                    .blurb(
                        "Seed of the latent sampling: 0 draws a new random seed at each start; \
                         any other value gives reproducible output from start",
                    )
                    .default_value(DEFAULT_SEED)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("roi-type")
                    .nick("ROI type")
                    .blurb("Type of the region-of-interest metas to purify (e.g. face)")
                    .default_value(Some(DEFAULT_ROI_TYPE))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("margin")
                    .nick("Crop margin")
                    .blurb(
                        "Margin added around each ROI, as a fraction of its longer side, \
                         before the square crop is resized to the model's input",
                    )
                    .minimum(0.0)
                    .maximum(MAX_MARGIN)
                    .default_value(DEFAULT_MARGIN)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("full-frame")
                    .nick("Full frame")
                    .blurb(
                        "Purify the whole frame as one face (streams of cropped faces) and \
                         ignore ROI metas",
                    )
                    .default_value(DEFAULT_FULL_FRAME)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("max-faces")
                    .nick("Maximum faces")
                    .blurb(
                        "Most ROIs purified per frame, in the order they were attached; the \
                         others pass through unpurified and count as skipped",
                    )
                    .minimum(1)
                    .maximum(MAX_MAX_FACES)
                    .default_value(DEFAULT_MAX_FACES)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecFloat::builder("feather")
                    .nick("Feather")
                    .blurb(
                        "Width of the soft edge over which each purified face blends into the \
                         frame, as a fraction of the face crop's side, so that no seam shows; \
                         0 pastes the crop with a hard edge (ignored with full-frame)",
                    )
                    .minimum(0.0)
                    .maximum(MAX_FEATHER)
                    .default_value(DEFAULT_FEATHER)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("align")
                    .nick("Landmark alignment")
                    .blurb(
                        "Align faces whose ROI has a 'detection' param with 5 landmarks to the \
                         bundle's landmark template (a rotated, scaled crop like the training \
                         faces); false, or a bundle without template, crops the square box \
                         around the ROI with margin",
                    )
                    .default_value(DEFAULT_ALIGN)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("on-failure", DEFAULT_ON_FAILURE)
                    .nick("On failure")
                    .blurb(
                        "What becomes of a face that cannot be purified (engine error, \
                         unmappable frame, beyond max-faces): pass (goes on unchanged), mark \
                         (goes on, its ROI's avae-purify param says purified=false; purified \
                         ones say purified=true), conceal (pixelated beyond recognition; a \
                         frame that cannot be mapped is dropped) or error (element error, \
                         the stream stops)",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since start (avaepurify-stats): frames, faces-purified, \
                         faces-aligned (purified through landmark alignment), faces-skipped (ROI empty, outside the frame or beyond max-faces), \
                         failures (frames passed through unpurified: unreadable frame or engine \
                         error), mean-latency-ms (per purified face), mean-engine-ms (of it, inside \
                         the inference engine)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = lock(&self.settings);
        let name = pspec.name();
        match name {
            "model" => {
                settings.model = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| Settings::default().model);
            }
            "backend" => settings.backend = value.get().expect("type checked upstream"),
            "device" => settings.device = value.get().expect("type checked upstream"),
            "samples" => settings.samples = value.get().expect("type checked upstream"),
            "batch" => settings.batch = value.get().expect("type checked upstream"),
            "tau" => settings.tau = value.get().expect("type checked upstream"),
            "seed" => settings.seed = value.get().expect("type checked upstream"),
            "roi-type" => {
                let roi_type = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_ROI_TYPE.to_owned());
                if roi_type.trim().is_empty() {
                    drop(settings);
                    gst::error!(
                        CAT,
                        imp = self,
                        "Refused roi-type '{roi_type}': expected the non-empty type of the ROI \
                         metas to purify (e.g. face); keeping the previous value"
                    );
                    gst::element_imp_warning!(
                        self,
                        gst::LibraryError::Settings,
                        (
                            "Refused roi-type '{}': expected the non-empty type of the ROI \
                             metas to purify (e.g. face); keeping the previous value",
                            roi_type
                        )
                    );
                    return;
                }
                settings.roi_type = roi_type;
            }
            "margin" => settings.margin = value.get().expect("type checked upstream"),
            "full-frame" => settings.full_frame = value.get().expect("type checked upstream"),
            "max-faces" => settings.max_faces = value.get().expect("type checked upstream"),
            "feather" => settings.feather = value.get().expect("type checked upstream"),
            "align" => settings.align = value.get().expect("type checked upstream"),
            "on-failure" => settings.on_failure = value.get().expect("type checked upstream"),
            _ => unimplemented!("property {name}"),
        }
        drop(settings);
        gst::debug!(CAT, imp = self, "Set {name} to {value:?}");
        if matches!(name, "model" | "backend" | "device" | "seed") && lock(&self.state).is_some() {
            gst::warning!(
                CAT,
                imp = self,
                "{name} changed while running: it takes effect at the next start"
            );
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return lock(&self.stats).to_structure().to_value();
        }
        let settings = lock(&self.settings);
        match pspec.name() {
            "model" => settings.model.to_value(),
            "backend" => settings.backend.to_value(),
            "device" => settings.device.to_value(),
            "samples" => settings.samples.to_value(),
            "batch" => settings.batch.to_value(),
            "tau" => settings.tau.to_value(),
            "seed" => settings.seed.to_value(),
            "roi-type" => settings.roi_type.to_value(),
            "margin" => settings.margin.to_value(),
            "full-frame" => settings.full_frame.to_value(),
            "max-faces" => settings.max_faces.to_value(),
            "feather" => settings.feather.to_value(),
            "align" => settings.align.to_value(),
            "on-failure" => settings.on_failure.to_value(),
            name => unimplemented!("property {name}"),
        }
    }
}

impl GstObjectImpl for AvaePurify {}

impl ElementImpl for AvaePurify {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "A-VAE face purifier",
                "Filter/Effect/Video",
                "Purifies faces (region-of-interest metas or the whole frame) against \
                 adversarial perturbations by projecting them onto an A-VAE's face manifold",
                "avae-purify developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> =
            LazyLock::new(super::packed_rgb_pad_templates);
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for AvaePurify {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let purifier = Purifier::load(
            Path::new(&settings.model),
            settings.backend.into(),
            settings.device.into(),
        )
        .map_err(|err| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                (
                    "Cannot load the A-VAE model bundle '{}' (property 'model'): {err}",
                    settings.model
                )
            )
        })?;
        gst::info!(
            CAT,
            imp = self,
            "Loaded model bundle '{}' on backend {} (face size {}, bundle tau {}, tau {})",
            settings.model,
            purifier.backend_name(),
            purifier.image_size(),
            purifier.default_tau(),
            settings.tau,
        );
        for fallback in purifier.fallbacks() {
            gst::info!(CAT, imp = self, "Engine fallback: {fallback}");
        }
        if let Some(message) = crate::engine::explicit_device_unavailable(
            settings.device.into(),
            &purifier.backend_name(),
            &purifier.fallbacks(),
        ) {
            gst::warning!(CAT, imp = self, "{message}");
            gst::element_imp_warning!(self, gst::LibraryError::Init, ("{}", message));
        }
        let rng = if settings.seed == 0 {
            StdRng::from_os_rng()
        } else {
            StdRng::seed_from_u64(settings.seed)
        };
        *lock(&self.state) = Some(State {
            purifier,
            rng,
            info: None,
            faces: Vec::new(),
            warned: Warned::default(),
        });
        *lock(&self.stats) = Stats::default();
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        lock(&self.state).take();
        gst::info!(
            CAT,
            imp = self,
            "Stopped: {}",
            lock(&self.stats).to_structure()
        );
        Ok(())
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let settings = lock(&self.settings).clone();
        let mut report = self.process(buf, &settings)?;
        let error = report.error.take();
        let drop_frame = report.drop;
        {
            let mut stats = lock(&self.stats);
            stats.frames += 1;
            stats.faces_purified += report.purified;
            stats.faces_aligned += report.aligned;
            stats.faces_skipped += report.skipped;
            stats.failures += u64::from(report.failed);
            stats.latency_ms_total += report.latency_ms;
            stats.engine_ms_total += report.engine_ms;
        }
        for (cause, message) in report.warnings {
            gst::warning!(CAT, imp = self, "{message}");
            match cause {
                Cause::EngineFailed | Cause::FrameUnreadable => {
                    gst::element_imp_warning!(self, gst::LibraryError::Failed, ("{}", message));
                }
                Cause::RoiOutsideFrame | Cause::TooManyFaces | Cause::NoMatchingRoi => {
                    gst::element_imp_warning!(self, gst::StreamError::Failed, ("{}", message));
                }
                Cause::BatchClamped => {
                    gst::element_imp_warning!(self, gst::ResourceError::Settings, ("{}", message));
                }
            }
        }
        if let Some(message) = error {
            gst::error!(CAT, imp = self, "{message}");
            gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", message));
            return Err(gst::FlowError::Error);
        }
        if drop_frame {
            // on-failure=conceal and the frame could not even be mapped: fail closed.
            return Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED);
        }
        Ok(gst::FlowSuccess::Ok)
    }
}

impl VideoFilterImpl for AvaePurify {
    fn set_info(
        &self,
        incaps: &gst::Caps,
        in_info: &gst_video::VideoInfo,
        _outcaps: &gst::Caps,
        _out_info: &gst_video::VideoInfo,
    ) -> Result<(), gst::LoggableError> {
        let mut state = lock(&self.state);
        let state = state
            .as_mut()
            .ok_or_else(|| gst::loggable_error!(CAT, "Caps set before the element started"))?;
        gst::debug!(CAT, imp = self, "Configured for caps {incaps}");
        state.info = Some(in_info.clone());
        Ok(())
    }
}

/// The first plane of a mapped packed-RGB video frame as a writable [`FrameMut`]; the error
/// says what is wrong with the frame.
fn packed_frame<'a>(
    frame: &'a mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
) -> Result<FrameMut<'a>, String> {
    let info = frame.info();
    let (width, height) = (info.width() as usize, info.height() as usize);
    let layout = pixel_layout(info.format())
        .ok_or_else(|| format!("unsupported format {}", info.format()))?;
    let stride =
        usize::try_from(frame.plane_stride()[0]).map_err(|_| "negative stride".to_owned())?;
    let data = frame
        .plane_data_mut(0)
        .map_err(|err| format!("cannot access plane 0: {err}"))?;
    Ok(FrameMut {
        data,
        width,
        height,
        stride,
        layout,
    })
}
