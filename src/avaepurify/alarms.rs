//! The attack alarm of `avaepurify`: each purified face's score against the threshold
//! ([`Verdict`]), and the `avae-purify-alarm` bus messages with their rate limit ([`Limiter`]).

use std::collections::HashMap;

use crate::alarm::AlarmParams;
use crate::purifier::Purified;

/// Name of the element message a suspicious face posts.
const MESSAGE_NAME: &str = "avae-purify-alarm";
/// Stream time a rate-limit key waits between two messages.
const MESSAGE_INTERVAL: gst::ClockTime = gst::ClockTime::SECOND;
/// Keys remembered before those older than [`MESSAGE_INTERVAL`] are forgotten.
const MAX_KEYS: usize = 256;
/// `roi-id` of a face that has no ROI meta (`full-frame=true`).
const NO_ROI_ID: i32 = -1;

/// One purified face's alarm: its score and whether it is above the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Verdict {
    pub(super) score: f64,
    pub(super) suspicious: bool,
}

/// The threshold in use: `alarm-threshold` when it is >= 0, else the bundle's threshold at 1%
/// clean false alarms.
pub(super) fn threshold(setting: f64, params: &AlarmParams) -> f64 {
    if setting >= 0.0 {
        setting
    } else {
        f64::from(params.threshold_1)
    }
}

/// What the log says at start about the alarm (`alarm`, `alarm-threshold`, the bundle's
/// `params`); `None` when there is nothing to say.
pub(super) fn start_note(on: bool, setting: f64, params: Option<&AlarmParams>) -> Option<String> {
    match params {
        Some(params) if on => Some(format!(
            "Attack alarm on: faces scoring above {} are suspicious",
            threshold(setting, params)
        )),
        Some(_) => Some("Attack alarm off (alarm=false)".to_owned()),
        None if on => Some(
            "The model bundle carries no alarm: faces are not scored (alarm=true has no effect)"
                .to_owned(),
        ),
        None => None,
    }
}

/// The verdict of each purified face, in order.
pub(super) fn verdicts(params: &AlarmParams, threshold: f64, results: &[Purified]) -> Vec<Verdict> {
    results
        .iter()
        .map(|result| {
            let score = f64::from(params.score(result));
            Verdict {
                score,
                suspicious: score > threshold,
            }
        })
        .collect()
}

/// Which faces share one rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A face whose ROI id no other face of its frame has.
    Id(i32),
    /// Faces without a stable id: ids repeated within a frame (a detector that leaves them all
    /// at 0), and the whole frame with `full-frame=true`.
    Unidentified,
}

/// The rate limit of the alarm messages: at most one per key per second of PTS; a key whose
/// last message is later than the frame (a seek, a loop) may post again at once. Frames without
/// PTS are limited per frame: at most one message per key.
#[derive(Debug, Default)]
pub(super) struct Limiter {
    last: HashMap<Key, gst::ClockTime>,
}

impl Limiter {
    /// Whether `key` may post at `pts`; records the message when it may.
    fn allow(&mut self, key: Key, pts: Option<gst::ClockTime>) -> bool {
        let Some(pts) = pts else {
            return true;
        };
        if let Some(&last) = self.last.get(&key)
            && pts >= last
            && pts < last + MESSAGE_INTERVAL
        {
            return false;
        }
        if self.last.len() >= MAX_KEYS {
            self.last
                .retain(|_, last| *last <= pts && pts < *last + MESSAGE_INTERVAL);
        }
        self.last.insert(key, pts);
        true
    }

    /// The `avae-purify-alarm` structures of one frame: one for each suspicious face whose key
    /// may post, the first such face of a key in a frame taking it. `ids` are the faces' ROI
    /// ids (`None` for the whole frame), in the order of `verdicts`.
    pub(super) fn messages(
        &mut self,
        ids: &[Option<i32>],
        verdicts: &[Verdict],
        threshold: f64,
        pts: Option<gst::ClockTime>,
    ) -> Vec<gst::Structure> {
        let key = |id: Option<i32>| match id {
            Some(id) if ids.iter().filter(|other| **other == Some(id)).count() == 1 => Key::Id(id),
            _ => Key::Unidentified,
        };
        let mut posted = Vec::new();
        let mut messages = Vec::new();
        for (&id, verdict) in ids.iter().zip(verdicts) {
            let key = key(id);
            if !verdict.suspicious || posted.contains(&key) || !self.allow(key, pts) {
                continue;
            }
            posted.push(key);
            messages.push(
                gst::Structure::builder(MESSAGE_NAME)
                    .field(
                        "pts",
                        pts.map_or(gst::ffi::GST_CLOCK_TIME_NONE, gst::ClockTime::nseconds),
                    )
                    .field("roi-id", id.unwrap_or(NO_ROI_ID))
                    .field("score", verdict.score)
                    .field("threshold", threshold)
                    .build(),
            );
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIGH: Verdict = Verdict {
        score: 3.0,
        suspicious: true,
    };
    const LOW: Verdict = Verdict {
        score: 0.5,
        suspicious: false,
    };

    fn ms(ms: u64) -> Option<gst::ClockTime> {
        Some(gst::ClockTime::from_mseconds(ms))
    }

    fn ids_of(messages: &[gst::Structure]) -> Vec<i32> {
        messages
            .iter()
            .map(|m| m.get::<i32>("roi-id").unwrap())
            .collect()
    }

    #[test]
    fn one_message_per_id_per_second() {
        gst::init().unwrap();
        let mut limiter = Limiter::default();
        let ids = [Some(7), Some(8)];
        let first = limiter.messages(&ids, &[HIGH, LOW], 2.0, ms(0));
        assert_eq!(ids_of(&first), vec![7]);
        assert_eq!(first[0].get::<u64>("pts").unwrap(), 0);
        assert_eq!(first[0].get::<f64>("threshold").unwrap(), 2.0);
        // Id 7 waits a second; id 8 has its own limit.
        assert_eq!(
            ids_of(&limiter.messages(&ids, &[HIGH, HIGH], 2.0, ms(999))),
            vec![8]
        );
        assert!(
            limiter
                .messages(&ids, &[HIGH, HIGH], 2.0, ms(999))
                .is_empty()
        );
        assert_eq!(
            ids_of(&limiter.messages(&ids, &[HIGH, LOW], 2.0, ms(1000))),
            vec![7]
        );
        // A jump back in time (a seek) posts again.
        assert_eq!(
            ids_of(&limiter.messages(&ids, &[HIGH, LOW], 2.0, ms(10))),
            vec![7]
        );
    }

    #[test]
    fn repeated_ids_share_one_limit_and_no_pts_limits_per_frame() {
        gst::init().unwrap();
        let mut limiter = Limiter::default();
        let ids = [Some(0), Some(0), Some(3)];
        let first = limiter.messages(&ids, &[HIGH, HIGH, HIGH], 2.0, ms(0));
        assert_eq!(ids_of(&first), vec![0, 3]);
        assert!(limiter.messages(&ids, &[HIGH; 3], 2.0, ms(500)).is_empty());
        let untimed = limiter.messages(&ids, &[HIGH; 3], 2.0, None);
        assert_eq!(ids_of(&untimed), vec![0, 3]);
        assert_eq!(untimed[0].get::<u64>("pts").unwrap(), u64::MAX);
        let whole = Limiter::default().messages(&[None], &[HIGH], 2.0, ms(0));
        assert_eq!(ids_of(&whole), vec![-1]);
    }
}
