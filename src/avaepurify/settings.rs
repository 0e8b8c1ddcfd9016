//! What the properties of `avaepurify` set: defaults, ranges, param specs, set and get.

use gst::glib;
use gst::prelude::*;

use super::OnFailure;
use super::precision::{PrecisionChoice, precision_property};
use crate::element::{EngineSettings, backend_property, device_property, server_properties};
use crate::frame::{DEFAULT_CONTEXT, DEFAULT_PASSES, DEFAULT_SUSPECT_BLUR, Paste};

const DEFAULT_SAMPLES: u32 = 16;
const DEFAULT_BATCH: u32 = 16;
/// Negative: use the bundle's calibrated tau (`manifest.json`).
const DEFAULT_TAU: f32 = -1.0;
const DEFAULT_SEED: u64 = 0;
pub(super) const DEFAULT_ROI_TYPE: &str = "face";
const DEFAULT_MARGIN: f32 = 0.2;
const DEFAULT_FULL_FRAME: bool = false;
const DEFAULT_MAX_FACES: u32 = 16;
const DEFAULT_FEATHER: f32 = 0.15;
const MAX_PASSES: u32 = 8;
const MAX_CONTEXT: f32 = 1.0;
const MAX_SUSPECT_BLUR: f32 = 8.0;
const DEFAULT_ALIGN: bool = true;
const DEFAULT_ON_FAILURE: OnFailure = OnFailure::Pass;
const DEFAULT_ALARM: bool = true;
/// Negative: use the bundle's threshold at 1% clean false alarms (`manifest.json`, `alarm`).
const DEFAULT_ALARM_THRESHOLD: f64 = -1.0;

/// Frames between two full purifications of a tracked face (measured, see README "Video
/// rate: reuse and live budget").
pub(super) const DEFAULT_REFRESH_INTERVAL: u32 = 8;
/// A reused face whose distance exceeds this many times its distance at the last full
/// purification is purified in full at once (measured, see the README).
pub(super) const DEFAULT_REFRESH_RATIO: f64 = 1.5;
/// 0: the frame period of the negotiated frame rate, for live sources only.
const DEFAULT_MAX_LATENCY_MS: u32 = 0;

const MAX_REFRESH_INTERVAL: u32 = 10_000;
const MAX_MAX_LATENCY_MS: u32 = 60_000;
const MAX_SAMPLES: u32 = 4096;
const MAX_BATCH: u32 = 4096;
const MAX_MARGIN: f32 = 2.0;
const MAX_MAX_FACES: u32 = 256;
const MAX_FEATHER: f32 = 0.5;

/// What the properties set; read once per frame.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) engine: EngineSettings,
    pub(super) sharing: crate::shared::SharingSettings,
    pub(super) precision: PrecisionChoice,
    pub(super) samples: u32,
    pub(super) batch: u32,
    pub(super) tau: f32,
    pub(super) seed: u64,
    pub(super) roi_type: String,
    pub(super) margin: f32,
    pub(super) full_frame: bool,
    pub(super) max_faces: u32,
    pub(super) feather: f32,
    pub(super) context: f32,
    pub(super) passes: u32,
    pub(super) align: bool,
    pub(super) on_failure: OnFailure,
    pub(super) alarm: bool,
    pub(super) alarm_threshold: f64,
    pub(super) suspect_blur: f32,
    pub(super) refresh_interval: u32,
    pub(super) refresh_ratio: f64,
    pub(super) max_latency_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            engine: EngineSettings::new(
                crate::bundle::default_model_dir()
                    .to_string_lossy()
                    .into_owned(),
            ),
            sharing: crate::shared::SharingSettings::default(),
            precision: PrecisionChoice::default(),
            samples: DEFAULT_SAMPLES,
            batch: DEFAULT_BATCH,
            tau: DEFAULT_TAU,
            seed: DEFAULT_SEED,
            roi_type: DEFAULT_ROI_TYPE.to_owned(),
            margin: DEFAULT_MARGIN,
            full_frame: DEFAULT_FULL_FRAME,
            max_faces: DEFAULT_MAX_FACES,
            feather: DEFAULT_FEATHER,
            context: DEFAULT_CONTEXT,
            passes: DEFAULT_PASSES as u32,
            align: DEFAULT_ALIGN,
            on_failure: DEFAULT_ON_FAILURE,
            alarm: DEFAULT_ALARM,
            alarm_threshold: DEFAULT_ALARM_THRESHOLD,
            suspect_blur: DEFAULT_SUSPECT_BLUR,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            refresh_ratio: DEFAULT_REFRESH_RATIO,
            max_latency_ms: DEFAULT_MAX_LATENCY_MS,
        }
    }
}

impl Settings {
    /// How purified faces go back into the frame: `feather`, `context`, and the context's
    /// detail at `encoder_input_size` samples per face side (the bundle's).
    pub(super) fn paste(&self, encoder_input_size: usize) -> Paste {
        Paste {
            feather: self.feather,
            context: self.context,
            context_detail: encoder_input_size,
        }
    }

    /// Sets the property `name` (type checked by GObject). An empty `roi-type` is refused:
    /// the previous value stays and the error is the message to log.
    pub(super) fn set(&mut self, name: &str, value: &glib::Value) -> Result<(), String> {
        if self.engine.set(name, value) || self.sharing.set(name, value) {
            return Ok(());
        }
        let checked = "type checked upstream";
        match name {
            "precision" => self.precision = value.get().expect(checked),
            "samples" => self.samples = value.get().expect(checked),
            "batch" => self.batch = value.get().expect(checked),
            "tau" => self.tau = value.get().expect(checked),
            "seed" => self.seed = value.get().expect(checked),
            "roi-type" => {
                let roi_type = value
                    .get::<Option<String>>()
                    .expect(checked)
                    .unwrap_or_else(|| DEFAULT_ROI_TYPE.to_owned());
                if roi_type.trim().is_empty() {
                    return Err(format!(
                        "Refused roi-type '{roi_type}': expected the non-empty type of the ROI \
                         metas to purify (e.g. face); keeping the previous value"
                    ));
                }
                self.roi_type = roi_type;
            }
            "margin" => self.margin = value.get().expect(checked),
            "full-frame" => self.full_frame = value.get().expect(checked),
            "max-faces" => self.max_faces = value.get().expect(checked),
            "feather" => self.feather = value.get().expect(checked),
            "context" => self.context = value.get().expect(checked),
            "passes" => self.passes = value.get().expect(checked),
            "align" => self.align = value.get().expect(checked),
            "on-failure" => self.on_failure = value.get().expect(checked),
            "alarm" => self.alarm = value.get().expect(checked),
            "alarm-threshold" => self.alarm_threshold = value.get().expect(checked),
            "suspect-blur" => self.suspect_blur = value.get().expect(checked),
            "refresh-interval" => self.refresh_interval = value.get().expect(checked),
            "refresh-ratio" => self.refresh_ratio = value.get().expect(checked),
            "max-latency-ms" => self.max_latency_ms = value.get().expect(checked),
            _ => unimplemented!("property {name}"),
        }
        Ok(())
    }

    /// The value of the property `name` (all but `stats`).
    pub(super) fn get(&self, name: &str) -> glib::Value {
        if let Some(value) = self.engine.get(name).or_else(|| self.sharing.get(name)) {
            return value;
        }
        match name {
            "precision" => self.precision.to_value(),
            "samples" => self.samples.to_value(),
            "batch" => self.batch.to_value(),
            "tau" => self.tau.to_value(),
            "seed" => self.seed.to_value(),
            "roi-type" => self.roi_type.to_value(),
            "margin" => self.margin.to_value(),
            "full-frame" => self.full_frame.to_value(),
            "max-faces" => self.max_faces.to_value(),
            "feather" => self.feather.to_value(),
            "context" => self.context.to_value(),
            "passes" => self.passes.to_value(),
            "align" => self.align.to_value(),
            "on-failure" => self.on_failure.to_value(),
            "alarm" => self.alarm.to_value(),
            "alarm-threshold" => self.alarm_threshold.to_value(),
            "suspect-blur" => self.suspect_blur.to_value(),
            "refresh-interval" => self.refresh_interval.to_value(),
            "refresh-ratio" => self.refresh_ratio.to_value(),
            "max-latency-ms" => self.max_latency_ms.to_value(),
            name => unimplemented!("property {name}"),
        }
    }
}

/// The element's properties, in the order `gst-inspect-1.0` lists them, `stats` last.
pub(super) fn properties() -> Vec<glib::ParamSpec> {
    let default_model = Settings::default().engine.model;
    let mut specs = vec![
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
        backend_property(),
        device_property(),
        precision_property(),
    ];
    specs.extend(server_properties());
    specs.extend(crate::shared::sharing_properties(true));
    specs.extend(sampling_properties());
    specs.extend(face_properties());
    specs.extend(alarm_properties());
    specs.extend(rate_properties());
    specs.push(
            glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                .nick("Statistics")
                .blurb(
                    "Counters since start (avaepurify-stats): frames, faces-purified, \
                     faces-aligned (purified through landmark alignment), faces-skipped (ROI empty, outside the frame or beyond max-faces), \
                     failures (frames passed through unpurified: unreadable frame or engine \
                     error), alarms (suspicious faces, every one, not rate-limited), mean-latency-ms (per purified face), mean-engine-ms (of it, inside \
                     the inference engine), faces-full (M-sample purifications), faces-reused \
                     (decoded from their track's kept latent), faces-suspect-blurred (blurred \
                     before purification, see suspect-blur), faces-refreshed-early (full \
                     because the face had changed), faces-over-budget (left unpurified by a \
                     live frame budget), late-frames (held past the live budget), \
                     mean-full-ms and mean-reuse-ms (engine time per face of each path)",
                )
                .read_only()
                .build(),
    );
    specs
}

/// The properties of the latent sampling: `samples`, `batch`, `tau`, `seed`.
fn sampling_properties() -> Vec<glib::ParamSpec> {
    vec![
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
    ]
}

/// The properties of which faces are purified and how they are cropped and pasted.
fn face_properties() -> Vec<glib::ParamSpec> {
    vec![
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
        glib::ParamSpecFloat::builder("context")
            .nick("Context")
            .blurb(
                "Margin around each purified face, as a fraction of the face crop's side, \
             that is low-passed to the purifier's own input detail before the face is \
             pasted: a recogniser's crop is wider than the purifier's, and an attack \
             on the forehead, cheeks or ears would otherwise reach it untouched; 0 \
             leaves the frame around the face as it is (ignored with full-frame)",
            )
            .minimum(0.0)
            .maximum(MAX_CONTEXT)
            .default_value(DEFAULT_CONTEXT)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("passes")
            .nick("Passes")
            .blurb(
                "A-VAE passes over each face: each further pass reads the face again from \
             the frame the last pass was pasted into and purifies it again (M more \
             candidates each), as that many elements in a row would, removing more of \
             what an attack left; a tracked face between refreshes decodes the latent \
             each pass chose",
            )
            .minimum(1)
            .maximum(MAX_PASSES)
            .default_value(DEFAULT_PASSES as u32)
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
    ]
}

/// The properties of the attack alarm: `alarm`, `alarm-threshold`, `suspect-blur`.
fn alarm_properties() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecBoolean::builder("alarm")
            .nick("Attack alarm")
            .blurb(
                "Score every purified face with the bundle's alarm (a calibrated score from \
             purification's own signals): its ROI's avae-purify param gains score and \
             suspicious (score > alarm-threshold), and a suspicious face posts an element \
             message avae-purify-alarm (pts, roi-id, score, threshold), at most one per ROI \
             id per second of PTS; faces whose id is not unique in their frame (or \
             full-frame, roi-id -1) share one such limit, and frames without PTS are limited \
             per frame. A bundle without an alarm scores nothing",
            )
            .default_value(DEFAULT_ALARM)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("alarm-threshold")
            .nick("Alarm threshold")
            .blurb(
                "Score above which a face is suspicious: -1 uses the bundle's threshold at 1% \
             false alarms on clean training faces; any value >= 0 replaces it",
            )
            .minimum(-1.0)
            .maximum(f64::MAX)
            .default_value(DEFAULT_ALARM_THRESHOLD)
            .mutable_playing()
            .build(),
        glib::ParamSpecFloat::builder("suspect-blur")
            .nick("Suspect blur")
            .blurb(
                "Gaussian blur, in face-crop pixels, of a face the alarm flags before it is \
             purified: where the bundle's alarm score is read from the frame alone (its \
             finest band), a face scoring above alarm-threshold has its region blurred in \
             the frame first, so that the finest detail an attack added does not reach the \
             purifier; its ROI's avae-purify param says suspect-blurred=true. Clean faces \
             under the threshold are untouched; it scores faces also with alarm=false. 0 \
             turns it off (so does a bundle whose alarm needs purification's own signals)",
            )
            .minimum(0.0)
            .maximum(MAX_SUSPECT_BLUR)
            .default_value(DEFAULT_SUSPECT_BLUR)
            .mutable_playing()
            .build(),
    ]
}

/// The properties of video-rate purification: per-track reuse and the live frame budget.
fn rate_properties() -> Vec<glib::ParamSpec> {
    vec![
        glib::ParamSpecUInt::builder("refresh-interval")
            .nick("Refresh interval")
            .blurb(
                "A tracked face (its ROI's detection param has object_id) is purified in full \
             (M samples) on its first frame and then every refresh-interval frames; in \
             between its chosen latent is decoded with the frame's own encoder output (one \
             decoder call instead of M). 1 purifies every face in full on every frame; faces \
             without object_id always are",
            )
            .minimum(1)
            .maximum(MAX_REFRESH_INTERVAL)
            .default_value(DEFAULT_REFRESH_INTERVAL)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("refresh-ratio")
            .nick("Refresh ratio")
            .blurb(
                "A reused face whose distance to its decoding is more than refresh-ratio times \
             its distance at its last full purification has changed: it is purified in full \
             at once (a very large value never refreshes early)",
            )
            .minimum(1.0)
            .maximum(f64::MAX)
            .default_value(DEFAULT_REFRESH_RATIO)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("max-latency-ms")
            .nick("Maximum latency")
            .blurb(
                "With a live source, the longest a frame is held (ms), counted from when it \
             should have arrived: faces that cannot get a full purification in time take the \
             reuse path, or pass through marked \
             purified=false reason=latency-budget when they have no latent yet. 0 = one frame \
             period of the negotiated frame rate. Non-live streams never skip purification",
            )
            .maximum(MAX_MAX_LATENCY_MS)
            .default_value(DEFAULT_MAX_LATENCY_MS)
            .mutable_playing()
            .build(),
    ]
}
