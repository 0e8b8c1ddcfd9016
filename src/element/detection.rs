//! The `detection` param structure of a face ROI, in the layout DL Streamer writes:
//! `avaefacedetect` writes it and `avaepurify` reads it (see the `avaefacedetect` module
//! documentation for the fields).

use crate::core::detect::{Face, LANDMARKS};
use crate::tracker::TrackInfo;

/// Name of the param structure attached to each face ROI.
pub const DETECTION_PARAM: &str = "detection";

/// The ROI type of the metas `avaefacedetect` attaches.
pub const ROI_TYPE: &str = "face";

/// The `detection` param structure of a face given in normalised coordinates.
pub fn detection_structure(face: &Face) -> gst::Structure {
    let landmarks = gst::Array::new(
        face.landmarks
            .iter()
            .flat_map(|[x, y]| [f64::from(*x), f64::from(*y)]),
    );
    gst::Structure::builder(DETECTION_PARAM)
        .field("x_min", f64::from(face.x_min))
        .field("y_min", f64::from(face.y_min))
        .field("x_max", f64::from(face.x_max))
        .field("y_max", f64::from(face.y_max))
        .field("confidence", f64::from(face.confidence))
        .field("label_id", 0i32)
        .field("label", ROI_TYPE)
        .field("landmarks", landmarks)
        .build()
}

/// Reads a `detection` param structure back into a face in normalised coordinates, and whether
/// it had landmarks. The box is required (`None` without it); a missing confidence reads as 1;
/// landmarks that are absent or not 10 numbers (a detector without landmarks, another producer)
/// read as all zero, with `false`.
pub fn face_from_detection(s: &gst::StructureRef) -> Option<(Face, bool)> {
    let number = |name: &str| s.get::<f64>(name).ok().map(|v| v as f32);
    let mut face = Face {
        x_min: number("x_min")?,
        y_min: number("y_min")?,
        x_max: number("x_max")?,
        y_max: number("y_max")?,
        confidence: number("confidence").unwrap_or(1.0),
        landmarks: [[0.0; 2]; LANDMARKS],
    };
    let values: Option<Vec<f32>> = s.get::<gst::Array>("landmarks").ok().and_then(|a| {
        a.iter()
            .map(|v| v.get::<f64>().ok().map(|v| v as f32))
            .collect()
    });
    let has_landmarks = match values {
        Some(v) if v.len() == 2 * LANDMARKS => {
            for (point, xy) in face.landmarks.iter_mut().zip(v.chunks_exact(2)) {
                *point = [xy[0], xy[1]];
            }
            true
        }
        _ => false,
    };
    Some((face, has_landmarks))
}

/// Adds a face's track to its `detection` param structure: `object_id` (int), `track-age`
/// (uint) and `tracked` (bool), the fields a tracked face has (see the `avaefacedetect` module
/// documentation).
pub fn add_track_fields(s: &mut gst::Structure, track: &TrackInfo) {
    s.set("object_id", track.object_id);
    s.set("track-age", track.age);
    s.set("tracked", track.tracked);
}

/// Reads a face's track back from its `detection` param structure; `None` for an untracked
/// face (no `object_id`, or one below 1). A missing `track-age` reads as 0 and a missing
/// `tracked` as false (a producer that writes only DL Streamer's `object_id`).
pub fn track_from_detection(s: &gst::StructureRef) -> Option<TrackInfo> {
    let object_id = s.get::<i32>("object_id").ok().filter(|&id| id >= 1)?;
    Some(TrackInfo {
        object_id,
        age: s.get::<u32>("track-age").unwrap_or(0),
        tracked: s.get::<bool>("tracked").unwrap_or(false),
    })
}
