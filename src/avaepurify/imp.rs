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
use super::faces::{self, Rate, Timing, Work};
use super::live;
use super::report::{Cause, FrameReport, Stats};
use super::settings::{self, Settings};
use super::targets::{self, Geometry, Target};
use super::tracks::{Budget, Costs, FacePath, Outcome, Refresh, Tracks};
use crate::element::{self, Warned, lock};
use crate::frame::{self, FrameError, Placement, Prefilter};
use crate::purifier::{Purified, Purifier, PurifyParams};
use crate::shared::{EngineKey, PurifierHandle};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "avaepurify",
        gst::DebugColorFlags::empty(),
        Some("A-VAE face purification"),
    )
});

/// What exists only between `start()` and `stop()`.
struct State {
    purifier: PurifierHandle,
    rng: StdRng,
    info: Option<gst_video::VideoInfo>,
    warned: Warned<Cause>,
    /// The kept latents of the face tracks (reset on flush and caps change).
    tracks: Tracks,
    /// The measured cost of each path, for the live budget.
    costs: Costs,
    /// Whether upstream is live, asked at the first frame after caps.
    live: Option<bool>,
    /// How far a live stream has fallen behind its timestamps (reset on flush and caps change).
    backlog: live::Backlog,
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
    /// Purifies every target of `frame` along its path ([`faces::purify`]). On error the
    /// frame is untouched.
    fn purify_frame(
        state: &mut State,
        settings: &Settings,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
        targets: &[Target],
        budget: Option<Budget>,
    ) -> Result<(Vec<Outcome>, Timing), (Cause, String)> {
        let mut dest =
            element::writable_frame(frame).map_err(|reason| (Cause::FrameUnreadable, reason))?;
        let State {
            purifier,
            rng,
            tracks,
            costs,
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
        let rate = Rate {
            params,
            paste: settings.paste(purifier.bundle().manifest.encoder_input_size),
            passes: settings.passes as usize,
            interval: settings.refresh_interval,
            ratio: settings.refresh_ratio,
            budget,
            prefilter: {
                let alarm = purifier.bundle().manifest.alarm.as_ref();
                let threshold =
                    alarm.map(|a| alarms::threshold(settings.alarm_threshold, a) as f32);
                Prefilter::for_alarm(alarm, threshold, settings.suspect_blur)
            },
        };
        let work = Work {
            purifier,
            rng,
            tracks,
            costs,
        };
        faces::purify(work, &mut dest, targets, &rate).map_err(|err| match err {
            FrameError::Unreadable(reason) => (Cause::FrameUnreadable, reason),
            FrameError::Engine(reason) => (Cause::EngineFailed, reason),
        })
    }

    /// Does one frame's work under the state lock and says what happened.
    fn process(
        &self,
        buffer: &mut gst::BufferRef,
        settings: &Settings,
        received: Instant,
    ) -> Result<FrameReport, gst::FlowError> {
        let mut state_guard = lock(&self.state);
        let state = state_guard.as_mut().ok_or(gst::FlowError::Flushing)?;
        let info = state.info.clone().ok_or(gst::FlowError::NotNegotiated)?;

        let mut report = FrameReport::default();
        let budget = self.budget(
            state,
            settings,
            &info,
            (received, buffer.pts()),
            &mut report,
        );
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
        let (failure, over) = if targets.is_empty() {
            (None, Vec::new())
        } else {
            self.purify_targets(
                state,
                settings,
                buffer,
                &info,
                &targets,
                budget,
                &mut report,
            )
        };
        if let Some(budget) = &budget {
            report.late = budget.exceeded();
        }
        if !over.is_empty() {
            self.handle_over_budget(settings, buffer, &info, &targets, &over, geometry.side);
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

    /// The live budget of this frame, received at `arrival.0` with PTS `arrival.1`: `None`
    /// unless upstream is live (asked once after caps). It counts from when the frame should
    /// have arrived: the time it waited upstream behind a slow frame is spent already.
    fn budget(
        &self,
        state: &mut State,
        settings: &Settings,
        info: &gst_video::VideoInfo,
        arrival: (Instant, Option<gst::ClockTime>),
        report: &mut FrameReport,
    ) -> Option<Budget> {
        let (received, pts) = arrival;
        let live = *state
            .live
            .get_or_insert_with(|| live::upstream_is_live(self.obj().sink_pad()));
        if !live || (settings.max_latency_ms == 0 && live::test_clock(&*self.obj())) {
            return None;
        }
        let limit = live::frame_budget(settings.max_latency_ms, info);
        if limit.is_none() {
            report.note(&mut state.warned, Cause::NoBudget, || {
                "A live stream with an unknown frame rate and max-latency-ms=0: no frame budget \
                 applies (set max-latency-ms)"
                    .to_owned()
            });
        }
        let behind = state.backlog.arrive(received, pts);
        gst::log!(CAT, imp = self, "Frame budget {limit:?}, {behind:?} behind");
        limit.map(|limit| Budget {
            start: received.checked_sub(behind.min(limit)).unwrap_or(received),
            limit,
        })
    }

    /// Purifies `targets` in place and annotates their ROIs; on failure the frame is untouched
    /// and the cause and reason come back (warned about once, unless `on-failure=error`).
    /// Second, the targets the live budget left unpurified.
    #[allow(clippy::too_many_arguments)]
    fn purify_targets(
        &self,
        state: &mut State,
        settings: &Settings,
        buffer: &mut gst::BufferRef,
        info: &gst_video::VideoInfo,
        targets: &[Target],
        budget: Option<Budget>,
        report: &mut FrameReport,
    ) -> (Option<(Cause, String)>, Vec<usize>) {
        let policy = settings.on_failure;
        let started = Instant::now();
        let engine_before = state.purifier.engine_seconds();
        let outcome = match gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, info) {
            Ok(mut frame) => Self::purify_frame(state, settings, &mut frame, targets, budget),
            Err(err) => Err((
                Cause::FrameUnreadable,
                format!("cannot map the buffer: {err}"),
            )),
        };
        let (cause, reason) = match outcome {
            Ok((outcomes, timing)) => {
                Self::count(targets, &outcomes, &timing, report);
                report.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                report.engine_ms = (state.purifier.engine_seconds() - engine_before) * 1000.0;
                let verdicts = Self::judge(state, settings, buffer, targets, &outcomes, report);
                targets::annotate_rois(
                    buffer,
                    targets,
                    &outcomes,
                    &verdicts,
                    policy == OnFailure::Mark,
                );
                let over = (outcomes.iter().enumerate())
                    .filter(|(_, o)| o.path == FacePath::OverBudget)
                    .map(|(i, _)| i)
                    .collect();
                return (None, over);
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
        (Some((cause, reason)), Vec::new())
    }

    /// Counts the faces of each path into `report`.
    fn count(targets: &[Target], outcomes: &[Outcome], timing: &Timing, report: &mut FrameReport) {
        let purified = || {
            targets
                .iter()
                .zip(outcomes)
                .filter(|(_, o)| o.result.is_some())
        };
        report.purified = purified().count() as u64;
        report.aligned = purified()
            .filter(|(t, _)| matches!(t.placement, Placement::Aligned(_)))
            .count() as u64;
        let paths = || outcomes.iter().map(|o| o.path);
        report.full = paths().filter(|p| matches!(p, FacePath::Full(_))).count() as u64;
        report.changed = paths()
            .filter(|p| *p == FacePath::Full(Refresh::Changed))
            .count() as u64;
        report.reused = paths().filter(|p| *p == FacePath::Reused).count() as u64;
        report.blurred = outcomes.iter().filter(|o| o.blurred).count() as u64;
        report.over_budget = paths().filter(|p| *p == FacePath::OverBudget).count() as u64;
        report.full_ms = timing.full_ms;
        report.reuse_ms = timing.reuse_ms;
    }

    /// Faces the live budget left unpurified: marked `purified=false reason=latency-budget`
    /// whatever `on-failure` says (a budget is not a failure), and concealed as well with
    /// `on-failure=conceal`.
    fn handle_over_budget(
        &self,
        settings: &Settings,
        buffer: &mut gst::BufferRef,
        info: &gst_video::VideoInfo,
        targets: &[Target],
        over: &[usize],
        side: usize,
    ) {
        let unpurified: Vec<(&Target, Cause)> = over
            .iter()
            .map(|&i| (&targets[i], Cause::OverBudget))
            .collect();
        targets::mark_unpurified(buffer, &unpurified);
        if settings.on_failure == OnFailure::Conceal {
            let concealed = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, info)
                .map_err(|err| err.to_string())
                .and_then(|mut frame| Self::conceal(&mut frame, &unpurified, side));
            if let Err(reason) = concealed {
                gst::debug!(CAT, imp = self, "Cannot conceal: {reason}");
            }
        }
    }

    /// The alarm's verdicts on the purified faces (`None` with `alarm=false` or a bundle without
    /// an alarm); counts the suspicious ones and queues their rate-limited messages.
    fn judge(
        state: &mut State,
        settings: &Settings,
        buffer: &gst::BufferRef,
        targets: &[Target],
        outcomes: &[Outcome],
        report: &mut FrameReport,
    ) -> Vec<Option<Verdict>> {
        let none = vec![None; outcomes.len()];
        let params = state.purifier.bundle().manifest.alarm.as_ref();
        let Some(params) = params.filter(|_| settings.alarm) else {
            return none;
        };
        let threshold = alarms::threshold(settings.alarm_threshold, params);
        let scored: Vec<usize> = (0..outcomes.len())
            .filter(|&i| outcomes[i].result.is_some())
            .collect();
        let results: Vec<Purified> = scored.iter().filter_map(|&i| outcomes[i].result).collect();
        let verdicts = alarms::verdicts(params, threshold, &results);
        let ids: Vec<Option<i32>> = scored.iter().map(|&i| targets[i].id).collect();
        report.alarms = verdicts.iter().filter(|v| v.suspicious).count() as u64;
        report.alarm_messages = (state.limiter).messages(&ids, &verdicts, threshold, buffer.pts());
        let mut all = none;
        for (i, verdict) in scored.into_iter().zip(verdicts) {
            all[i] = Some(verdict);
        }
        all
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
            let mut stats = lock(&self.stats).to_structure();
            crate::shared::add_purifier_stats(
                &mut stats,
                lock(&self.state).as_ref().map(|s| &s.purifier),
            );
            return stats.to_value();
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
        let load = || {
            let purifier = Purifier::load(
                Path::new(&settings.engine.model),
                settings.engine.backend()?,
                settings.engine.device.into(),
            )
            .map_err(|err| {
                element::load_error("A-VAE model bundle", &settings.engine.model, &err)
            })?;
            super::precision::apply(self, *CAT, purifier, &settings)
        };
        let key = EngineKey::of(
            &settings.engine,
            &format!("precision {:?}", settings.precision),
        );
        let sharing = &settings.sharing;
        let purifier = PurifierHandle::open(&sharing.id, &key, sharing.batching(), load)?;
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
        let mut purifier = purifier;
        let mut costs = Costs::default();
        let batch = settings.batch as usize;
        let samples = settings.samples as usize;
        let passes = settings.passes as usize;
        if let Err(err) = purifier.with_purifier(|p| {
            let paste = settings.paste(p.bundle().manifest.encoder_input_size);
            live::warm_up(p, batch, samples, passes, &paste, &mut costs)
        }) {
            gst::warning!(
                CAT,
                imp = self,
                "Warm-up failed, no cost figures yet: {err}"
            );
        } else {
            gst::info!(
                CAT,
                imp = self,
                "Warm-up: encoder {:.2} ms per face, decoder {:.2} ms per latent (M = {} is \
                 {:.1} ms per face in full), reuse decode {:.2} ms per face, paste {:.2} ms \
                 per face and pass",
                costs.encode.ms(),
                costs.sample.ms(),
                settings.samples,
                costs.sample.ms() * f64::from(settings.samples),
                costs.reuse.ms(),
                costs.paste.ms()
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
            warned: Warned::default(),
            tracks: Tracks::default(),
            costs,
            live: None,
            backlog: live::Backlog::default(),
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

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::FlushStop(_) = event.view()
            && let Some(state) = lock(&self.state).as_mut()
        {
            state.tracks.reset();
            state.backlog.reset();
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let received = Instant::now();
        let settings = lock(&self.settings).clone();
        let mut report = self.process(buf, &settings, received)?;
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
                Cause::BatchClamped | Cause::NoBudget | Cause::OverBudget => {
                    gst::element_imp_warning!(self, gst::ResourceError::Settings, ("{}", message));
                }
            }
        }
        if let Some(message) = error {
            gst::error!(CAT, imp = self, "{message}");
            gst::element_imp_error!(self, gst::StreamError::Failed, ("{}", message));
            return Err(gst::FlowError::Error);
        }
        if let Some(state) = lock(&self.state).as_mut() {
            state.backlog.depart(Instant::now());
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
        // New caps: another stream or geometry; no kept latent applies, and liveness is asked
        // again.
        state.tracks.reset();
        state.backlog.reset();
        state.live = None;
        Ok(())
    }
}
