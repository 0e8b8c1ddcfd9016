//! Implementation of `avaepurify`: the element, its streaming state and the per-frame work.

use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::subclass::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::OnFailure;
use super::alarms::{self, Limiter, Verdict};
use super::report::{Cause, FrameReport, Stats};
use super::settings::{self, Settings};
use super::targets::{self, Geometry, Target};
use crate::element::{self, Warned, lock};
use crate::frame::{self, FrameError, Placement};
use crate::purifier::{Purified, Purifier, PurifyParams};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "avaepurify",
        gst::DebugColorFlags::empty(),
        Some("A-VAE face purification"),
    )
});

/// What exists only between `start()` and `stop()`.
struct State {
    purifier: Purifier,
    rng: StdRng,
    info: Option<gst_video::VideoInfo>,
    /// Storage of the `[N, 3, S, S]` face batch, reused from frame to frame.
    faces: Vec<f32>,
    warned: Warned<Cause>,
    /// The rate limit of the `avae-purify-alarm` messages.
    limiter: Limiter,
}

/// The `avaepurify` element.
#[derive(Default)]
pub struct AvaePurify {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    stats: Mutex<Stats>,
}

impl AvaePurify {
    /// Purifies every target of `frame` in one purifier call ([`frame::purify_faces`]). On
    /// error the frame is untouched.
    fn purify_frame(
        state: &mut State,
        settings: &Settings,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        targets: &[Target],
    ) -> Result<Vec<Purified>, (Cause, String)> {
        let mut dest =
            element::writable_frame(frame).map_err(|reason| (Cause::FrameUnreadable, reason))?;
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

    /// Does one frame's work under the state lock and says what happened.
    fn process(
        &self,
        buffer: &mut gst::BufferRef,
        settings: &Settings,
    ) -> Result<FrameReport, gst::FlowError> {
        let mut state_guard = lock(&self.state);
        let state = state_guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or(gst::FlowError::NotNegotiated)?;

        let mut report = FrameReport::default();
        Self::note_batch_clamp(state, settings, &mut report);
        let template = state.purifier.bundle().manifest.landmark_template;
        let geometry = Geometry {
            width: info.width() as usize,
            height: info.height() as usize,
            side: state.purifier.image_size(),
            template: template.as_ref(),
        };
        let (targets, extras) =
            targets::targets(buffer, settings, &geometry, &mut state.warned, &mut report);
        if targets.is_empty() && extras.is_empty() {
            return Ok(report);
        }
        let failure = if targets.is_empty() {
            None
        } else {
            self.purify_targets(state, settings, buffer, &info, &targets, &mut report)
        };

        // The faces that go on unpurified: all of them when the frame failed, and those beyond
        // max-faces; `on-failure` decides what becomes of them.
        let unpurified: Vec<(&Target, Cause)> = match &failure {
            Some((cause, _)) => targets.iter().map(|t| (t, *cause)).collect(),
            None => Vec::new(),
        }
        .into_iter()
        .chain(extras.iter().map(|t| (t, Cause::TooManyFaces)))
        .collect();
        if !unpurified.is_empty() {
            let beyond = extras.len();
            self.handle_unpurified(
                settings,
                buffer,
                &info,
                &unpurified,
                &failure,
                beyond,
                geometry.side,
                &mut report,
            );
        }
        Ok(report)
    }

    /// Warns (once) when `batch` is above the bundle's memory bound and is clamped.
    fn note_batch_clamp(state: &mut State, settings: &Settings, report: &mut FrameReport) {
        let asked = settings.batch as usize;
        let used = state.purifier.effective_batch(asked);
        if used < asked {
            let side = state.purifier.image_size();
            report.note(&mut state.warned, Cause::BatchClamped, || {
                format!(
                    "batch={asked} would need more than {} MiB of decoder activations for this \
                     bundle (image_size {}): using batch={used}",
                    crate::purifier::DECODER_MEMORY_BUDGET >> 20,
                    side,
                )
            });
        }
    }

    /// Purifies `targets` in place and annotates their ROIs; on failure the frame is untouched
    /// and the cause and reason come back (warned about once, unless `on-failure=error`).
    fn purify_targets(
        &self,
        state: &mut State,
        settings: &Settings,
        buffer: &mut gst::BufferRef,
        info: &gst_video::VideoInfo,
        targets: &[Target],
        report: &mut FrameReport,
    ) -> Option<(Cause, String)> {
        let policy = settings.on_failure;
        let started = Instant::now();
        let engine_before = state.purifier.engine_seconds();
        let outcome = match gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, info) {
            Ok(mut frame) => Self::purify_frame(state, settings, &mut frame, targets),
            Err(err) => Err((
                Cause::FrameUnreadable,
                format!("cannot map the buffer: {err}"),
            )),
        };
        let (cause, reason) = match outcome {
            Ok(results) => {
                report.purified = targets.len() as u64;
                report.aligned = targets
                    .iter()
                    .filter(|t| matches!(t.placement, Placement::Aligned(_)))
                    .count() as u64;
                report.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                report.engine_ms = (state.purifier.engine_seconds() - engine_before) * 1000.0;
                let verdicts = Self::judge(state, settings, buffer, targets, &results, report);
                targets::annotate_rois(
                    buffer,
                    targets,
                    &results,
                    verdicts.as_deref(),
                    settings.samples,
                    policy == OnFailure::Mark,
                );
                return None;
            }
            Err(failure) => failure,
        };
        gst::debug!(CAT, imp = self, "Frame not purified: {reason}");
        report.failed = true;
        let fate = match policy {
            OnFailure::Pass => "frames pass through unpurified",
            OnFailure::Mark => "frames pass through unpurified, their ROIs marked purified=false",
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
                    settings.engine.model
                )
            });
        }
        Some((cause, reason))
    }

    /// The alarm's verdicts on the purified faces (`None` with `alarm=false` or a bundle without
    /// an alarm); counts the suspicious ones and queues their rate-limited messages.
    fn judge(
        state: &mut State,
        settings: &Settings,
        buffer: &gst::BufferRef,
        targets: &[Target],
        results: &[Purified],
        report: &mut FrameReport,
    ) -> Option<Vec<Verdict>> {
        let params = state.purifier.bundle().manifest.alarm.as_ref();
        let params = params.filter(|_| settings.alarm)?;
        let threshold = alarms::threshold(settings.alarm_threshold, params);
        let verdicts = alarms::verdicts(params, threshold, results);
        let ids: Vec<Option<i32>> = targets.iter().map(|t| t.id).collect();
        report.alarms = verdicts.iter().filter(|v| v.suspicious).count() as u64;
        report.alarm_messages = (state.limiter).messages(&ids, &verdicts, threshold, buffer.pts());
        Some(verdicts)
    }

    /// Applies `on-failure` to the faces that go on unpurified: those of a failed frame
    /// (`failure`) and the `beyond` ones past `max-faces`.
    #[allow(clippy::too_many_arguments)]
    fn handle_unpurified(
        &self,
        settings: &Settings,
        buffer: &mut gst::BufferRef,
        info: &gst_video::VideoInfo,
        unpurified: &[(&Target, Cause)],
        failure: &Option<(Cause, String)>,
        beyond: usize,
        side: usize,
        report: &mut FrameReport,
    ) {
        match settings.on_failure {
            OnFailure::Pass => {}
            OnFailure::Mark => targets::mark_unpurified(buffer, unpurified),
            OnFailure::Conceal => {
                let concealed = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, info)
                    .map_err(|err| err.to_string())
                    .and_then(|mut frame| Self::conceal(&mut frame, unpurified, side));
                if let Err(reason) = concealed {
                    gst::debug!(CAT, imp = self, "Cannot conceal: {reason}");
                    report.drop = true;
                }
            }
            OnFailure::Error => {
                let reason = match failure {
                    Some((_, reason)) => format!("purification failed: {reason}"),
                    None => format!(
                        "{beyond} '{}' ROIs beyond max-faces={} cannot be purified",
                        settings.roi_type, settings.max_faces
                    ),
                };
                report.error = Some(format!(
                    "A face could not be purified and on-failure=error (model '{}'): {reason}",
                    settings.engine.model
                ));
            }
        }
    }

    /// Pixelates the frame region of each of `unpurified` (`on-failure=conceal`).
    fn conceal(
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        unpurified: &[(&Target, Cause)],
        side: usize,
    ) -> Result<(), String> {
        let mut dest = element::writable_frame(frame)?;
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
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(settings::properties);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        let set = lock(&self.settings).set(name, value);
        if let Err(message) = set {
            gst::error!(CAT, imp = self, "{message}");
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", message));
            return;
        }
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
        lock(&self.settings).get(pspec.name())
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
            LazyLock::new(element::packed_rgb_pad_templates);
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
            Path::new(&settings.engine.model),
            settings.engine.backend.into(),
            settings.engine.device.into(),
        )
        .map_err(|err| element::load_error("A-VAE model bundle", &settings.engine.model, &err))?;
        let purifier = super::precision::apply(self, *CAT, purifier, &settings)?;
        gst::info!(
            CAT,
            imp = self,
            "Loaded model bundle '{}' on backend {} (face size {}, bundle tau {}, tau {})",
            settings.engine.model,
            purifier.backend_name(),
            purifier.image_size(),
            purifier.default_tau(),
            settings.tau,
        );
        element::report_engine(
            self,
            *CAT,
            settings.engine.device,
            &purifier.backend_name(),
            &purifier.fallbacks(),
        );
        let alarm = purifier.bundle().manifest.alarm.as_ref();
        if let Some(note) = alarms::start_note(settings.alarm, settings.alarm_threshold, alarm) {
            gst::info!(
                CAT,
                imp = self,
                "{note} (model '{}')",
                settings.engine.model
            );
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
            limiter: Limiter::default(),
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
        lock(&self.stats).add(&report);
        for alarm in std::mem::take(&mut report.alarm_messages) {
            gst::debug!(CAT, imp = self, "Posting {alarm}");
            let message = gst::message::Element::builder(alarm)
                .src(&*self.obj())
                .build();
            // Without a bus (no pipeline) nobody listens: not an error.
            let _ = self.obj().post_message(message);
        }
        for (cause, message) in report.warnings {
            gst::warning!(CAT, imp = self, "{message}");
            match cause {
                Cause::EngineFailed => {
                    gst::element_imp_warning!(self, gst::LibraryError::Failed, ("{}", message));
                }
                Cause::FrameUnreadable => {
                    gst::element_imp_warning!(self, element::FRAME_UNREADABLE, ("{}", message));
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
