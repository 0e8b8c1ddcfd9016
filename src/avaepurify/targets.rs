//! The faces of a frame for `avaepurify`: ROI metas of `roi-type` (or the whole frame) turned
//! into [`Placement`]s, and the `avae-purify` params written back onto those ROIs.

use super::alarms::Verdict;
use super::report::{Cause, FrameReport};
use super::settings::Settings;
use super::tracks::{FacePath, Outcome};
use crate::core::image::{self, Region};
use crate::element::{DETECTION_PARAM, Warned, face_from_detection};
use crate::frame::Placement;

/// Name of the param structure added to each purified ROI meta.
const PARAM_NAME: &str = "avae-purify";

/// A face to purify: how it is cropped, and the ROI meta it came from with that meta's id
/// (none in full-frame mode).
pub(super) struct Target {
    pub(super) roi: Option<gst::meta::MetaSeqnum>,
    pub(super) id: Option<i32>,
    /// The tracker's `object_id` from the ROI's `detection` param: faces with one take the
    /// per-track reuse path.
    pub(super) track: Option<i32>,
    pub(super) placement: Placement,
}

/// The geometry faces are placed in: the frame's size, the model's face side, and the
/// bundle's landmark template when faces are aligned to it.
pub(super) struct Geometry<'a> {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) side: usize,
    pub(super) template: Option<&'a [[f32; 2]; 5]>,
}

/// A matching ROI meta: its seqnum, id, pixel rectangle, aligned placement (when it has
/// landmarks and alignment is on) and track id (`object_id` of its `detection` param).
type Roi = (
    gst::meta::MetaSeqnum,
    i32,
    (u32, u32, u32, u32),
    Option<Placement>,
    Option<i32>,
);

/// Name of the tracker's id in the `detection` param (an int >= 1; absent: untracked).
const OBJECT_ID: &str = "object_id";

/// The aligned placement that maps the landmarks of `detection` (normalised to the frame) onto
/// the template; `None` when the structure has no landmarks or they are degenerate
/// (coinciding, not finite).
fn landmark_alignment(
    detection: &gst::StructureRef,
    template: &[[f32; 2]; 5],
    geometry: &Geometry<'_>,
) -> Option<Placement> {
    let (face, has_landmarks) = face_from_detection(detection)?;
    if !has_landmarks {
        return None;
    }
    let (width, height) = (geometry.width as f32, geometry.height as f32);
    let landmarks = face.landmarks.map(|[x, y]| [x * width, y * height]);
    Placement::aligned(&landmarks, template, geometry.side)
}

/// The ROI metas of `roi-type`, in the order they were attached.
fn matching_rois(
    buffer: &gst::BufferRef,
    settings: &Settings,
    geometry: &Geometry<'_>,
) -> Vec<Roi> {
    let template = geometry.template.filter(|_| settings.align);
    let mut rois: Vec<Roi> = buffer
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .filter(|meta| meta.roi_type() == settings.roi_type)
        .map(|meta| {
            let detection = meta.param(DETECTION_PARAM);
            let aligned =
                template.and_then(|template| landmark_alignment(detection?, template, geometry));
            let track = detection
                .and_then(|d| d.get::<i32>(OBJECT_ID).ok())
                .filter(|id| *id >= 1);
            (meta.seqnum(), meta.id(), meta.rect(), aligned, track)
        })
        .collect();
    rois.sort_by_key(|(seqnum, ..)| *seqnum);
    rois
}

/// Warns (once) when the frame has ROI metas but none of `roi-type`.
fn note_other_roi_types(
    buffer: &gst::BufferRef,
    settings: &Settings,
    warned: &mut Warned<Cause>,
    report: &mut FrameReport,
) {
    let mut seen: Vec<String> = buffer
        .iter_meta::<gst_video::VideoRegionOfInterestMeta>()
        .map(|meta| meta.roi_type().to_string())
        .collect();
    seen.sort();
    seen.dedup();
    if seen.is_empty() {
        return;
    }
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

/// The target of `roi`: its aligned placement, else the square box around it with `margin`;
/// `None` when the ROI is empty or outside the frame.
fn roi_target(roi: &Roi, settings: &Settings, geometry: &Geometry<'_>) -> Option<Target> {
    let (seqnum, id, (x, y, w, h), aligned, track) = *roi;
    let square = image::square_box(
        i64::from(x),
        i64::from(y),
        w,
        h,
        settings.margin,
        geometry.width,
        geometry.height,
    )?;
    Some(Target {
        roi: Some(seqnum),
        id: Some(id),
        track,
        placement: aligned.unwrap_or(Placement::Box(square.into())),
    })
}

/// The faces of this frame: the whole frame, or each matching ROI in the order they were
/// attached, up to `max-faces`; and, second, those beyond `max-faces` (not purified).
pub(super) fn targets(
    buffer: &gst::BufferRef,
    settings: &Settings,
    geometry: &Geometry<'_>,
    warned: &mut Warned<Cause>,
    report: &mut FrameReport,
) -> (Vec<Target>, Vec<Target>) {
    if settings.full_frame {
        let whole = Target {
            roi: None,
            id: None,
            track: None,
            placement: Placement::Frame(Region::full(geometry.width, geometry.height)),
        };
        return (vec![whole], Vec::new());
    }
    let mut rois = matching_rois(buffer, settings, geometry);
    if rois.is_empty() {
        note_other_roi_types(buffer, settings, warned, report);
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
        .iter()
        .filter_map(|roi| roi_target(roi, settings, geometry))
        .collect();

    let mut targets = Vec::with_capacity(rois.len());
    for roi in &rois {
        match roi_target(roi, settings, geometry) {
            Some(target) => targets.push(target),
            None => {
                let (_, _, (x, y, w, h), ..) = *roi;
                let (width, height) = (geometry.width, geometry.height);
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

/// Adds the `avae-purify` param structure to each ROI meta that was purified (with
/// `purified=true` when `mark`, `reused`, `suspect-blurred`, `refresh` on the full path, `track-age` and
/// `latent-age` for a tracked face, and `score` and `suspicious` when the alarm gave a verdict).
pub(super) fn annotate_rois(
    buffer: &mut gst::BufferRef,
    targets: &[Target],
    outcomes: &[Outcome],
    verdicts: &[Option<Verdict>],
    mark: bool,
) {
    for mut meta in buffer.iter_meta_mut::<gst_video::VideoRegionOfInterestMeta>() {
        let seqnum = meta.seqnum();
        let Some(found) = targets.iter().position(|t| t.roi == Some(seqnum)) else {
            continue;
        };
        let outcome = &outcomes[found];
        let Some(result) = &outcome.result else {
            continue;
        };
        let builder = gst::Structure::builder(PARAM_NAME);
        let builder = if mark {
            builder.field("purified", true)
        } else {
            builder
        };
        let builder = builder
            .field("distance", f64::from(result.distance))
            .field(
                "candidate",
                u32::try_from(result.candidate).unwrap_or(u32::MAX),
            )
            .field(
                "samples",
                u32::try_from(outcome.samples).unwrap_or(u32::MAX),
            )
            .field("reused", outcome.path == FacePath::Reused)
            .field("suspect-blurred", outcome.blurred);
        let builder = match outcome.path {
            FacePath::Full(refresh) => builder.field("refresh", refresh.name()),
            _ => builder,
        };
        let builder = match outcome.ages {
            Some((track_age, latent_age)) => builder
                .field("track-age", track_age)
                .field("latent-age", latent_age),
            None => builder,
        };
        let builder = match verdicts[found] {
            Some(verdict) => builder
                .field("score", verdict.score)
                .field("suspicious", verdict.suspicious),
            None => builder,
        };
        meta.add_param(builder.build());
    }
}

/// Adds `avae-purify` params with `purified=false` and the reason to the ROIs of
/// `unpurified` (`on-failure=mark`).
pub(super) fn mark_unpurified(buffer: &mut gst::BufferRef, unpurified: &[(&Target, Cause)]) {
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
