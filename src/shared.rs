//! One engine for many streams in a process (`model-instance-id`).
//!
//! Elements that set the same `model-instance-id` share one loaded model and one engine: the
//! first to start loads it, the others attach to it, and it is dropped when the last one
//! stops. Sharing is keyed on the element kind and the id; the engine settings (`model`,
//! `backend`, `device` and whatever else the element's engine settings hold) must then be
//! the same (for `avaepurify`, `precision` too), and an element whose settings differ from
//! the instance's is refused with an error naming `model-instance-id`.
//!
//! A shared purifier ([`Attachment`]) runs on a worker thread that collects the face batches
//! of every attached stream and purifies them together: one encoder call over all of them and
//! their latents decoded in shared decoder chunks ([`purify_streams`]). A batch is started as
//! soon as one of these holds: the queued faces reach the smallest `shared-batch-size` among
//! the queued requests, every attached stream has a request queued (nobody else can join), or
//! the oldest request has waited its `shared-timeout-ms`. Requests of different `samples` or
//! `tau` are purified in separate calls of the same batch (their latents cannot share a
//! draw); `batch` (latents per decoder call, which never changes a result) is the smallest
//! of the group's. Each stream keeps its own random generator and its latents are drawn from
//! it in the order a solo [`Purifier::purify`] draws them, so with a fixed `seed` a face's
//! result does not depend on which other streams' faces shared its batch. An engine error or
//! panic goes to every request of that call as its stream's failure (its `on-failure`
//! applies); the worker goes on with the next batch.
//!
//! A shared detector ([`DetectorHandle::Shared`]) is one [`Detector`] behind a lock: frames
//! of different streams have different sizes, so detection is not batched across streams,
//! only the loaded graph and its engine are shared.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ndarray::{Array4, ArrayView4, ArrayViewMut4, Axis, s};
use rand::rngs::StdRng;

use crate::Error;
use crate::bundle::Bundle;
use crate::detector::Detector;
use crate::purifier::{
    Chosen, Encoded, LatentKeeper, PassEngine, Purified, Purifier, PurifyParams, check_params,
};

/// The engine settings of an element as sharing compares them: `key` must be equal for two
/// elements to share an instance, `description` is what an error shows of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineKey {
    /// Every engine setting, with the model path made absolute where it exists.
    pub key: String,
    /// The settings in words, e.g. `model '/m/avae-cpu', backend tract, device cpu`.
    pub description: String,
}

impl EngineKey {
    /// The key of an element's `model`, `backend` and `device` properties and the rest of its
    /// engine settings (`settings`, compared through their `Debug` form, so that a setting
    /// added later, such as a server address, takes part without a change here).
    /// `extra` holds the element's other settings that change the engine (e.g. `precision`).
    pub(crate) fn of(settings: &crate::element::EngineSettings, extra: &str) -> Self {
        let mut canonical = settings.clone();
        if let Ok(path) = std::fs::canonicalize(&settings.model) {
            canonical.model = path.to_string_lossy().into_owned();
        }
        let description = format!(
            "model '{}', backend {:?}, device {:?}{}{extra}",
            canonical.model,
            settings.backend,
            settings.device,
            if extra.is_empty() { "" } else { ", " },
        );
        EngineKey {
            key: format!("{canonical:?} {extra}"),
            description,
        }
    }

    /// Why an element with this key cannot share `id`'s instance, whose key is `theirs`.
    fn mismatch(&self, id: &str, theirs: &EngineKey) -> String {
        // Two keys with the same words differ in a setting the words leave out: show them all.
        let (theirs, ours) = if theirs.description == self.description {
            (&theirs.key, &self.key)
        } else {
            (&theirs.description, &self.description)
        };
        format!(
            "model-instance-id '{id}' is already in use by an element with {theirs}, but this \
             element has {ours}: elements sharing a model-instance-id must have the same model, \
             backend, device, server and precision; give this one another model-instance-id"
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Default `shared-batch-size`: faces per shared engine call.
pub const DEFAULT_SHARED_BATCH_SIZE: u32 = 16;
/// Default `shared-timeout-ms`: the longest a stream's faces wait for other streams'.
pub const DEFAULT_SHARED_TIMEOUT_MS: u32 = 10;
const MAX_SHARED_BATCH_SIZE: u32 = 1024;
const MAX_SHARED_TIMEOUT_MS: u32 = 10_000;

/// The sharing properties of an element: `model-instance-id` (both elements) and, for
/// `avaepurify`, `shared-batch-size` and `shared-timeout-ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SharingSettings {
    /// `model-instance-id`; empty: the element has its own engine.
    pub(crate) id: String,
    /// `shared-batch-size`.
    pub(crate) batch_size: u32,
    /// `shared-timeout-ms`.
    pub(crate) timeout_ms: u32,
}

impl Default for SharingSettings {
    fn default() -> Self {
        SharingSettings {
            id: String::new(),
            batch_size: DEFAULT_SHARED_BATCH_SIZE,
            timeout_ms: DEFAULT_SHARED_TIMEOUT_MS,
        }
    }
}

impl SharingSettings {
    /// Sets one of the sharing properties (type checked by GObject); `false` for any other
    /// name.
    pub(crate) fn set(&mut self, name: &str, value: &gst::glib::Value) -> bool {
        let checked = "type checked upstream";
        match name {
            "model-instance-id" => {
                self.id = value
                    .get::<Option<String>>()
                    .expect(checked)
                    .unwrap_or_default()
            }
            "shared-batch-size" => self.batch_size = value.get().expect(checked),
            "shared-timeout-ms" => self.timeout_ms = value.get().expect(checked),
            _ => return false,
        }
        true
    }

    /// The value of one of the sharing properties; `None` for any other name.
    pub(crate) fn get(&self, name: &str) -> Option<gst::glib::Value> {
        use gst::prelude::ToValue;
        match name {
            "model-instance-id" => Some(self.id.to_value()),
            "shared-batch-size" => Some(self.batch_size.to_value()),
            "shared-timeout-ms" => Some(self.timeout_ms.to_value()),
            _ => None,
        }
    }

    /// How this element's faces are batched with other streams'.
    pub(crate) fn batching(&self) -> Batching {
        Batching {
            max_faces: self.batch_size as usize,
            timeout: Duration::from_millis(self.timeout_ms.into()),
        }
    }
}

/// The sharing properties' specs: `model-instance-id`, and with `batching` (`avaepurify`)
/// `shared-batch-size` and `shared-timeout-ms`. All READY only.
pub(crate) fn sharing_properties(batching: bool) -> Vec<gst::glib::ParamSpec> {
    use gst::glib;
    use gst::prelude::*;
    let mut specs = vec![
        glib::ParamSpecString::builder("model-instance-id")
            .nick("Model instance id")
            .blurb(if batching {
                "Elements of this process with the same non-empty id share one loaded model \
                 and engine, and their faces are purified together in the same engine calls \
                 (shared-batch-size, shared-timeout-ms); their model, backend, device, server \
                 and precision must be the same. Empty: this element has its own engine"
            } else {
                "Elements of this process with the same non-empty id share one loaded detector \
                 and engine (one frame at a time); their model, backend, device and server must \
                 be the same. Empty: this element has its own engine"
            })
            .mutable_ready()
            .build(),
    ];
    if batching {
        specs.push(
            glib::ParamSpecUInt::builder("shared-batch-size")
                .nick("Shared batch size")
                .blurb(
                    "With model-instance-id: a shared engine call starts once this many faces \
                     of the sharing streams are queued (a frame with more runs alone)",
                )
                .minimum(1)
                .maximum(MAX_SHARED_BATCH_SIZE)
                .default_value(DEFAULT_SHARED_BATCH_SIZE)
                .mutable_ready()
                .build(),
        );
        specs.push(
            glib::ParamSpecUInt::builder("shared-timeout-ms")
                .nick("Shared batch timeout")
                .blurb(
                    "With model-instance-id: the longest this element's faces wait for other \
                     streams' before the shared call starts without them (it starts at once \
                     when every sharing stream is waiting); 0: never wait",
                )
                .maximum(MAX_SHARED_TIMEOUT_MS)
                .default_value(DEFAULT_SHARED_TIMEOUT_MS)
                .mutable_ready()
                .build(),
        );
    }
    specs
}

/// The live instances of one element kind, by `model-instance-id`.
type Registry<T> = Mutex<HashMap<String, Weak<T>>>;

fn purifiers() -> &'static Registry<SharedPurifier> {
    static REGISTRY: OnceLock<Registry<SharedPurifier>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn detectors() -> &'static Registry<SharedDetector> {
    static REGISTRY: OnceLock<Registry<SharedDetector>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// How many times each `(kind, id)` was loaded in this process.
fn load_counts() -> &'static Mutex<HashMap<(&'static str, String), u64>> {
    static COUNTS: OnceLock<Mutex<HashMap<(&'static str, String), u64>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

fn count_load(kind: &'static str, id: &str) {
    *lock(load_counts())
        .entry((kind, id.to_owned()))
        .or_default() += 1;
}

/// How many times a shared purifier was loaded for `model-instance-id` `id` in this process
/// (a test hook: elements attaching to a live instance do not load it again).
pub fn purifier_loads(id: &str) -> u64 {
    lock(load_counts())
        .get(&("avaepurify", id.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// How many times a shared detector was loaded for `model-instance-id` `id` in this process.
pub fn detector_loads(id: &str) -> u64 {
    lock(load_counts())
        .get(&("avaefacedetect", id.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// The live instance of `id` in `registry` if its key is `key`, else a new one from `load`
/// (registered under `id`); `refuse` turns a refusal's message into the caller's error. The
/// registry stays locked while loading, so that elements starting together load an instance
/// once.
fn acquire<T, E>(
    registry: &Registry<T>,
    id: &str,
    key: &EngineKey,
    key_of: impl Fn(&T) -> &EngineKey,
    load: impl FnOnce() -> Result<T, E>,
    refuse: impl FnOnce(String) -> E,
) -> Result<Arc<T>, E> {
    let mut map = lock(registry);
    map.retain(|_, weak| weak.strong_count() > 0);
    if let Some(live) = map.get(id).and_then(Weak::upgrade) {
        let theirs = key_of(&live);
        if theirs.key != key.key {
            return Err(refuse(key.mismatch(id, theirs)));
        }
        return Ok(live);
    }
    let instance = Arc::new(load()?);
    map.insert(id.to_owned(), Arc::downgrade(&instance));
    Ok(instance)
}

/// How a stream's requests are batched with other streams': the element's
/// `shared-batch-size` and `shared-timeout-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// A batch starts once this many faces are queued (a request with more runs alone).
    pub max_faces: usize,
    /// A batch starts at the latest this long after a request was queued.
    pub timeout: Duration,
}

/// One stream's faces waiting for the worker.
struct Request {
    stream: u64,
    faces: Array4<f32>,
    enc: Encoded,
    params: PurifyParams,
    rng: StdRng,
    batching: Batching,
    queued: Instant,
    reply: mpsc::SyncSender<Reply>,
}

/// What the worker sends back: the purified faces (unchanged on failure), the generator
/// after its draws, and the share of the batch's engine time.
struct Reply {
    faces: Array4<f32>,
    rng: StdRng,
    result: Result<(Vec<Purified>, Vec<Chosen>), String>,
    engine_seconds: f64,
    batch_faces: usize,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Request>,
    /// Attached streams.
    streams: usize,
    closed: bool,
}

/// What the worker thread and the attachments share.
struct Core {
    purifier: Mutex<Purifier>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A purifier loaded once for a `model-instance-id`, with its batching worker.
pub struct SharedPurifier {
    key: EngineKey,
    bundle: Bundle,
    backend_name: String,
    fallbacks: Vec<String>,
    core: Arc<Core>,
    worker: Option<JoinHandle<()>>,
}

impl Drop for SharedPurifier {
    fn drop(&mut self) {
        lock(&self.core.queue).closed = true;
        self.core.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            // A worker that panicked has nothing left to clean up.
            let _ = worker.join();
        }
    }
}

impl SharedPurifier {
    fn start(purifier: Purifier, key: EngineKey, id: &str) -> Result<Self, String> {
        let bundle = purifier.bundle().clone();
        let backend_name = purifier.backend_name();
        let fallbacks = purifier.fallbacks();
        let core = Arc::new(Core {
            purifier: Mutex::new(purifier),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let worker_core = Arc::clone(&core);
        let worker = std::thread::Builder::new()
            .name(format!("avae-shared-{id}"))
            .spawn(move || run_worker(&worker_core))
            .map_err(|err| {
                format!("model-instance-id '{id}': cannot start the shared engine's thread: {err}")
            })?;
        Ok(SharedPurifier {
            key,
            bundle,
            backend_name,
            fallbacks,
            core,
            worker: Some(worker),
        })
    }
}

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// One element's attachment to a [`SharedPurifier`]: the stream's view of the instance and
/// its share of the engine time. Dropping it detaches the stream; the last one drops the
/// instance.
pub struct Attachment {
    instance: Arc<SharedPurifier>,
    stream: u64,
    engine_seconds: f64,
    batches: u64,
    batch_faces: u64,
}

impl Attachment {
    /// Attaches to the shared purifier `id`, loading it with `load` if no element holds it.
    /// Fails with `refuse`'s error when the live instance has other engine settings than
    /// `key` (or its thread cannot start).
    pub fn attach<E>(
        id: &str,
        key: &EngineKey,
        load: impl FnOnce() -> Result<Purifier, E>,
        refuse: impl Fn(String) -> E,
    ) -> Result<Self, E> {
        let instance = acquire(
            purifiers(),
            id,
            key,
            |p: &SharedPurifier| &p.key,
            || {
                let purifier = load()?;
                count_load("avaepurify", id);
                SharedPurifier::start(purifier, key.clone(), id).map_err(&refuse)
            },
            &refuse,
        )?;
        lock(&instance.core.queue).streams += 1;
        Ok(Attachment {
            instance,
            stream: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            engine_seconds: 0.0,
            batches: 0,
            batch_faces: 0,
        })
    }

    /// Purifies `faces` (encoded as `enc`) in place together with whatever other streams
    /// queue meanwhile (see the module docs), handing out each face's chosen latent as
    /// [`Purifier::purify_chosen`] does; `rng` advances exactly as a solo call would advance
    /// it. On error the faces are untouched.
    pub fn purify_chosen(
        &mut self,
        mut faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
        batching: Batching,
    ) -> Result<(Vec<Purified>, Vec<Chosen>), Error> {
        check_params(params)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let placeholder = <StdRng as rand::SeedableRng>::seed_from_u64(0);
        let request = Request {
            stream: self.stream,
            faces: faces.to_owned(),
            enc: enc.clone(),
            params: *params,
            rng: std::mem::replace(rng, placeholder),
            batching,
            queued: Instant::now(),
            reply: tx,
        };
        let core = &self.instance.core;
        lock(&core.queue).pending.push_back(request);
        core.wake.notify_all();
        let engine_error = |reason: String| Error::Engine {
            backend: "shared",
            path: self.instance.bundle.dir.clone(),
            reason,
        };
        let reply = rx.recv().map_err(|_| {
            engine_error("the shared engine's worker stopped (see the log above)".to_owned())
        })?;
        *rng = reply.rng;
        self.engine_seconds += reply.engine_seconds;
        self.batches += 1;
        self.batch_faces += reply.batch_faces as u64;
        let results = reply.result.map_err(engine_error)?;
        faces.assign(&reply.faces);
        Ok(results)
    }

    /// [`Attachment::purify_chosen`] on faces not yet encoded (the encoder runs alone).
    pub fn purify(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        params: &PurifyParams,
        rng: &mut StdRng,
        batching: Batching,
    ) -> Result<Vec<Purified>, Error> {
        let enc = self.with_purifier(|p| p.encode(faces.view()))?;
        Ok(self.purify_chosen(faces, &enc, params, rng, batching)?.0)
    }

    /// Runs `f` on the shared purifier, alone (no batching), and counts its engine time as
    /// this stream's.
    pub fn with_purifier<R>(&mut self, f: impl FnOnce(&mut Purifier) -> R) -> R {
        let mut purifier = lock(&self.instance.core.purifier);
        let before = purifier.engine_seconds();
        let out = f(&mut purifier);
        self.engine_seconds += purifier.engine_seconds() - before;
        out
    }

    /// The bundle in use.
    pub fn bundle(&self) -> &Bundle {
        &self.instance.bundle
    }

    /// The backend and device in use, e.g. `ort (CPU)`.
    pub fn backend_name(&self) -> &str {
        &self.instance.backend_name
    }

    /// Every fallback taken while opening the engines.
    pub fn fallbacks(&self) -> &[String] {
        &self.instance.fallbacks
    }

    /// This stream's share of the engine time of the batches it took part in (each batch's
    /// time split by faces).
    pub fn engine_seconds(&self) -> f64 {
        self.engine_seconds
    }

    /// Elements attached to the instance now, this one included.
    pub fn streams(&self) -> usize {
        lock(&self.instance.core.queue).streams
    }

    /// Mean faces (of all streams) per batch this stream took part in; 0 before the first.
    pub fn mean_batch_faces(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.batch_faces as f64 / self.batches as f64
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let core = &self.instance.core;
        lock(&core.queue).streams -= 1;
        // The streams still attached may now all be waiting: let the worker look again.
        core.wake.notify_all();
    }
}

/// The worker: waits for a batch to be due, takes it, purifies it, replies; until closed.
fn run_worker(core: &Core) {
    loop {
        let batch = {
            let mut queue = lock(&core.queue);
            loop {
                if queue.pending.is_empty() {
                    if queue.closed {
                        return;
                    }
                    queue = core
                        .wake
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                match due(&queue, Instant::now()) {
                    None => break take(&mut queue.pending),
                    Some(wait) => {
                        queue = core
                            .wake
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
        };
        run_batch(core, batch);
    }
}

/// `None` when the queued requests should be purified now, else how long to wait at most.
fn due(queue: &Queue, now: Instant) -> Option<Duration> {
    let limit = queue
        .pending
        .iter()
        .map(|r| r.batching.max_faces.max(1))
        .min()?;
    let faces: usize = queue.pending.iter().map(|r| r.faces.dim().0).sum();
    let waiting: HashSet<u64> = queue.pending.iter().map(|r| r.stream).collect();
    let deadline = queue
        .pending
        .iter()
        .map(|r| r.queued + r.batching.timeout)
        .min()?;
    if faces >= limit || waiting.len() >= queue.streams || queue.closed || now >= deadline {
        None
    } else {
        Some(deadline - now)
    }
}

/// The oldest requests, in order, while their faces fit the smallest batch size among them
/// (at least one request).
fn take(pending: &mut VecDeque<Request>) -> Vec<Request> {
    let mut batch: Vec<Request> = Vec::new();
    let (mut faces, mut limit) = (0usize, usize::MAX);
    while let Some(next) = pending.front() {
        let n = next.faces.dim().0;
        let next_limit = limit.min(next.batching.max_faces.max(1));
        if !batch.is_empty() && faces + n > next_limit {
            break;
        }
        faces += n;
        limit = next_limit;
        batch.extend(pending.pop_front());
    }
    batch
}

/// Purifies `batch`, one call per group of equal `samples` and `tau`, and replies to each
/// request.
fn run_batch(core: &Core, batch: Vec<Request>) {
    let total_faces: usize = batch.iter().map(|r| r.faces.dim().0).sum();
    let mut groups: Vec<Vec<Request>> = Vec::new();
    for request in batch {
        let same = |g: &Vec<Request>| {
            g[0].params.samples == request.params.samples
                && g[0].params.tau.to_bits() == request.params.tau.to_bits()
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(group) => group.push(request),
            None => groups.push(vec![request]),
        }
    }
    let mut purifier = lock(&core.purifier);
    for mut group in groups {
        let params = PurifyParams {
            batch: group.iter().map(|r| r.params.batch).min().unwrap_or(1),
            ..group[0].params
        };
        let engine_before = purifier.engine_seconds();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_group(&mut purifier, &mut group, &params)
        }))
        .unwrap_or_else(|_| Err("the shared engine panicked (see the log above)".to_owned()));
        let engine = purifier.engine_seconds() - engine_before;
        let group_faces: usize = group.iter().map(|r| r.faces.dim().0).sum();
        let mut results = match outcome {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(reason) => vec![Err(reason); group.len()],
        };
        for (request, result) in group.into_iter().zip(results.drain(..)) {
            let n = request.faces.dim().0;
            let reply = Reply {
                faces: request.faces,
                rng: request.rng,
                result,
                engine_seconds: engine * n as f64 / group_faces.max(1) as f64,
                batch_faces: total_faces,
            };
            // A stream that stopped waiting (its element went away) needs no reply.
            let _ = request.reply.send(reply);
        }
    }
}

/// One request's results and chosen latents.
type GroupResult = (Vec<Purified>, Vec<Chosen>);

/// One call over the faces of `group` (equal `samples` and `tau`): each request's faces are
/// purified in place on success, and its results and chosen latents come back in request
/// order.
fn run_group(
    purifier: &mut Purifier,
    group: &mut [Request],
    params: &PurifyParams,
) -> Result<Vec<GroupResult>, String> {
    let side = purifier.image_size();
    let counts: Vec<usize> = group.iter().map(|r| r.faces.dim().0).collect();
    let total: usize = counts.iter().sum();
    for request in group.iter() {
        let n = request.faces.dim().0;
        if request.faces.dim() != (n, 3, side, side) || request.enc.mu.nrows() != n {
            return Err(format!(
                "a stream sent faces of shape {:?} with {} encodings, expected [N, 3, {side}, \
                 {side}] and N encodings",
                request.faces.dim(),
                request.enc.mu.nrows()
            ));
        }
    }
    let views = |f: fn(&Request) -> ndarray::ArrayViewD<'_, f32>| -> Result<_, String> {
        let parts: Vec<_> = group.iter().map(f).collect();
        ndarray::concatenate(Axis(0), &parts).map_err(|err| err.to_string())
    };
    let mut faces = views(|r| r.faces.view().into_dyn())?
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|err| err.to_string())?;
    let enc = Encoded {
        mu: views(|r| r.enc.mu.view().into_dyn())?
            .into_dimensionality()
            .map_err(|err| err.to_string())?,
        logvar: views(|r| r.enc.logvar.view().into_dyn())?
            .into_dimensionality()
            .map_err(|err| err.to_string())?,
        skip: views(|r| r.enc.skip.view().into_dyn())?
            .into_dimensionality()
            .map_err(|err| err.to_string())?,
    };
    let owners: Vec<usize> = (counts.iter().enumerate())
        .flat_map(|(index, &n)| std::iter::repeat_n(index, n))
        .collect();
    debug_assert_eq!(owners.len(), total);
    let mut rngs: Vec<&mut StdRng> = group.iter_mut().map(|r| &mut r.rng).collect();
    let (mut results, mut chosen) =
        purify_streams(purifier, faces.view_mut(), &enc, &owners, &mut rngs, params)
            .map_err(|err| err.to_string())?;
    let mut out = Vec::with_capacity(group.len());
    let mut row = 0;
    for (request, n) in group.iter_mut().zip(counts) {
        request
            .faces
            .assign(&faces.slice(s![row..row + n, .., .., ..]));
        out.push((results.drain(..n).collect(), chosen.drain(..n).collect()));
        row += n;
    }
    Ok(out)
}

/// Purifies `faces` (`[N, 3, S, S]`, encoded as `enc`) of several streams in shared decoder
/// chunks of `params.batch` latents: face `i` draws its latents from `rngs[owners[i]]`, face
/// by face, sample by sample, as [`Purifier::purify_chosen`] draws them, so each stream's
/// results, chosen latents and generator state are exactly those of purifying its faces
/// alone with its own generator. The chosen latent of a face is that of its nearest
/// candidate (strictly nearer replaces, ties keep the earlier sample).
pub fn purify_streams(
    purifier: &mut Purifier,
    faces: ArrayViewMut4<'_, f32>,
    enc: &Encoded,
    owners: &[usize],
    rngs: &mut [&mut StdRng],
    params: &PurifyParams,
) -> Result<(Vec<Purified>, Vec<Chosen>), Error> {
    check_params(params)?;
    let n = faces.dim().0;
    if owners.len() != n || owners.iter().any(|&o| o >= rngs.len()) || enc.mu.nrows() != n {
        return Err(Error::InvalidParameter {
            name: "owners",
            value: format!(
                "{} owners and {} encodings for {n} faces and {} streams",
                owners.len(),
                enc.mu.nrows(),
                rngs.len()
            ),
            expected: "one encoding and one stream index below the number of generators per face",
        });
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut keeper = LatentKeeper::new(n, enc.mu.ncols());
    let results = purifier.purify_drawn(
        faces,
        enc,
        params,
        &mut |face, rows| rows.draw(&mut *rngs[owners[face]]),
        None,
        Some(&mut keeper),
    )?;
    let clipped: Vec<bool> = results.iter().map(|r| r.clipped).collect();
    Ok((results, keeper.finish(&clipped)))
}

/// The error of an element refused a shared instance: a settings error naming
/// `model-instance-id`.
fn refusal(message: String) -> gst::ErrorMessage {
    gst::error_msg!(gst::ResourceError::Settings, ("{}", message))
}

/// Where `avaepurify` gets its purifier: its own, or a shared instance's.
// One handle per element, held for the element's life: the size of the own variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum PurifierHandle {
    /// A purifier of this element alone.
    Own(Purifier),
    /// An attachment to the shared purifier of a `model-instance-id`, and how this stream's
    /// requests are batched.
    Shared(Attachment, Batching),
}

impl PurifierHandle {
    /// The element's own purifier when `id` is empty, else an attachment to the shared
    /// instance `id` (loaded by `load` if no element holds it); `key` is the element's
    /// [`EngineKey`]. A refusal is an error naming `model-instance-id`.
    pub(crate) fn open(
        id: &str,
        key: &EngineKey,
        batching: Batching,
        load: impl FnOnce() -> Result<Purifier, gst::ErrorMessage>,
    ) -> Result<Self, gst::ErrorMessage> {
        if id.is_empty() {
            return load().map(PurifierHandle::Own);
        }
        Attachment::attach(id, key, load, refusal).map(|a| PurifierHandle::Shared(a, batching))
    }

    /// Runs `f` on the purifier (a shared one alone, no batching).
    pub fn with_purifier<R>(&mut self, f: impl FnOnce(&mut Purifier) -> R) -> R {
        match self {
            PurifierHandle::Own(p) => f(p),
            PurifierHandle::Shared(a, _) => a.with_purifier(f),
        }
    }

    /// The bundle in use.
    pub fn bundle(&self) -> &Bundle {
        match self {
            PurifierHandle::Own(p) => p.bundle(),
            PurifierHandle::Shared(a, _) => a.bundle(),
        }
    }

    /// S: the side of the faces the model reads and writes.
    pub fn image_size(&self) -> usize {
        self.bundle().manifest.image_size
    }

    /// The bundle's default KL clip.
    pub fn default_tau(&self) -> f32 {
        self.bundle().manifest.tau
    }

    /// The decoder batch used for a requested `batch` ([`Purifier::effective_batch`]).
    pub fn effective_batch(&self, batch: usize) -> usize {
        batch.min(crate::purifier::batch_limit(&self.bundle().manifest))
    }

    /// The backend and device in use, e.g. `ort (CPU)`.
    pub fn backend_name(&self) -> String {
        match self {
            PurifierHandle::Own(p) => p.backend_name(),
            PurifierHandle::Shared(a, _) => a.backend_name().to_owned(),
        }
    }

    /// Every fallback taken while opening the engines.
    pub fn fallbacks(&self) -> Vec<String> {
        match self {
            PurifierHandle::Own(p) => p.fallbacks(),
            PurifierHandle::Shared(a, _) => a.fallbacks().to_vec(),
        }
    }

    /// Seconds of engine time spent for this element (its share, when shared).
    pub fn engine_seconds(&self) -> f64 {
        match self {
            PurifierHandle::Own(p) => p.engine_seconds(),
            PurifierHandle::Shared(a, _) => a.engine_seconds(),
        }
    }

    /// Elements attached to the shared instance (this one included); 0 when not shared.
    pub fn shared_streams(&self) -> usize {
        match self {
            PurifierHandle::Own(_) => 0,
            PurifierHandle::Shared(a, _) => a.streams(),
        }
    }

    /// Mean faces per shared batch this element took part in; 0 when not shared.
    pub fn mean_batch_faces(&self) -> f64 {
        match self {
            PurifierHandle::Own(_) => 0.0,
            PurifierHandle::Shared(a, _) => a.mean_batch_faces(),
        }
    }

    /// [`Purifier::decode_chosen`] (a shared engine runs it alone: one decoder run per face).
    pub fn decode_chosen(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        chosen: &[&Chosen],
        batch: usize,
    ) -> Result<Vec<Purified>, Error> {
        self.with_purifier(|p| p.decode_chosen(faces, enc, chosen, batch))
    }

    /// [`Purifier::purify`]: through the batching scheduler when shared.
    pub fn purify(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<Vec<Purified>, Error> {
        match self {
            PurifierHandle::Own(p) => p.purify(faces, params, rng),
            PurifierHandle::Shared(a, batching) => a.purify(faces, params, rng, *batching),
        }
    }
}

impl PassEngine for PurifierHandle {
    /// [`Purifier::encode`] (a shared engine runs it alone).
    fn encode(&mut self, faces: ArrayView4<'_, f32>) -> Result<Encoded, Error> {
        self.with_purifier(|p| p.encode(faces))
    }

    /// [`Purifier::purify_chosen`]: through the batching scheduler when shared, with the same
    /// results for a given `rng` state.
    fn purify_chosen(
        &mut self,
        faces: ArrayViewMut4<'_, f32>,
        enc: &Encoded,
        params: &PurifyParams,
        rng: &mut StdRng,
    ) -> Result<(Vec<Purified>, Vec<Chosen>), Error> {
        match self {
            PurifierHandle::Own(p) => p.purify_chosen(faces, enc, params, rng),
            PurifierHandle::Shared(a, batching) => {
                a.purify_chosen(faces, enc, params, rng, *batching)
            }
        }
    }
}

/// Adds the sharing figures to `avaepurify`'s `stats`: `shared-streams` (elements attached to
/// its shared instance now, this one included; 0 when not shared or stopped) and
/// `shared-mean-batch-faces` (mean faces of all streams per shared call this element's faces
/// took part in).
pub(crate) fn add_purifier_stats(stats: &mut gst::Structure, purifier: Option<&PurifierHandle>) {
    let streams = purifier.map_or(0, PurifierHandle::shared_streams);
    let mean = purifier.map_or(0.0, PurifierHandle::mean_batch_faces);
    stats.set("shared-streams", u32::try_from(streams).unwrap_or(u32::MAX));
    stats.set("shared-mean-batch-faces", mean);
}

/// A detector loaded once for a `model-instance-id`, used by one stream at a time.
pub struct SharedDetector {
    key: EngineKey,
    describe: String,
    fallbacks: Vec<String>,
    detector: Mutex<Detector>,
}

/// Where `avaefacedetect` gets its detector: its own, or a shared instance's.
pub enum DetectorHandle {
    /// A detector of this element alone.
    Own(Detector),
    /// The shared detector of a `model-instance-id`.
    Shared(Arc<SharedDetector>),
}

impl DetectorHandle {
    /// The element's own detector when `id` is empty, else the shared instance `id` (loaded
    /// by `load` if no element holds it). A refusal is an error naming `model-instance-id`.
    pub(crate) fn open(
        id: &str,
        key: &EngineKey,
        load: impl FnOnce() -> Result<Detector, gst::ErrorMessage>,
    ) -> Result<Self, gst::ErrorMessage> {
        if id.is_empty() {
            return load().map(DetectorHandle::Own);
        }
        acquire(
            detectors(),
            id,
            key,
            |d: &SharedDetector| &d.key,
            || {
                let detector = load()?;
                count_load("avaefacedetect", id);
                Ok(SharedDetector {
                    key: key.clone(),
                    describe: detector.describe(),
                    fallbacks: detector.fallbacks().to_vec(),
                    detector: Mutex::new(detector),
                })
            },
            refusal,
        )
        .map(DetectorHandle::Shared)
    }

    /// Runs `f` on the detector (a shared one locked for the call).
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Detector) -> R) -> R {
        match self {
            DetectorHandle::Own(d) => f(d),
            DetectorHandle::Shared(s) => f(&mut lock(&s.detector)),
        }
    }

    /// Backend and device in use.
    pub fn describe(&self) -> String {
        match self {
            DetectorHandle::Own(d) => d.describe(),
            DetectorHandle::Shared(s) => s.describe.clone(),
        }
    }

    /// Every fallback taken while opening the engine.
    pub fn fallbacks(&self) -> Vec<String> {
        match self {
            DetectorHandle::Own(d) => d.fallbacks().to_vec(),
            DetectorHandle::Shared(s) => s.fallbacks.clone(),
        }
    }

    /// Elements holding the shared detector (this one included); 0 when not shared.
    pub fn shared_streams(&self) -> usize {
        match self {
            DetectorHandle::Own(_) => 0,
            DetectorHandle::Shared(s) => Arc::strong_count(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::SeedableRng;

    fn faces(n: usize, s: usize, shift: usize) -> Array4<f32> {
        Array4::from_shape_fn((n, 3, s, s), |(i, c, y, x)| {
            ((i * 5 + c * 3 + y + 2 * x + shift) % 19) as f32 / 9.5 - 1.0
        })
    }

    #[test]
    fn streams_purified_together_get_their_solo_results() {
        let mut purifier = crate::purifier::tiny_purifier();
        let s = purifier.image_size();
        let params = PurifyParams {
            samples: 5,
            batch: 1,
            tau: purifier.default_tau(),
        };
        let (a, b) = (faces(2, s, 0), faces(3, s, 7));
        let solo = |purifier: &mut Purifier, f: &Array4<f32>, seed| {
            let mut f = f.clone();
            let enc = purifier.encode(f.view()).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let (r, c) = purifier
                .purify_chosen(f.view_mut(), &enc, &params, &mut rng)
                .unwrap();
            (f, r, c, rand::Rng::random::<u64>(&mut rng))
        };
        let (fa, ra, ca, next_a) = solo(&mut purifier, &a, 11);
        let (fb, rb, cb, next_b) = solo(&mut purifier, &b, 12);

        // batch 1: every decoder call has one latent alone and together, so that the engine's
        // rounding, which may depend on the call's size, is the same. Interleaved owners: the
        // draws of each stream still come from its own generator.
        let order = [0usize, 1, 0, 1, 1];
        let pick = |o: usize, k: usize| if o == 0 { (0, k) } else { (1, k) };
        let mut rows = Vec::new();
        let (mut ia, mut ib) = (0, 0);
        for &o in &order {
            rows.push(pick(o, if o == 0 { ia } else { ib }));
            if o == 0 { ia += 1 } else { ib += 1 }
        }
        let mut together = Array4::zeros((5, 3, s, s));
        for (row, &(o, k)) in rows.iter().enumerate() {
            let src = if o == 0 { &a } else { &b };
            together
                .index_axis_mut(Axis(0), row)
                .assign(&src.index_axis(Axis(0), k));
        }
        let enc = purifier.encode(together.view()).unwrap();
        let (mut rng_a, mut rng_b) = (StdRng::seed_from_u64(11), StdRng::seed_from_u64(12));
        let (results, chosen) = {
            let mut rngs = [&mut rng_a, &mut rng_b];
            purify_streams(
                &mut purifier,
                together.view_mut(),
                &enc,
                &order,
                &mut rngs,
                &params,
            )
            .unwrap()
        };
        for (row, &(o, k)) in rows.iter().enumerate() {
            let (want_face, want, want_chosen) = if o == 0 {
                (fa.index_axis(Axis(0), k), ra[k], &ca[k])
            } else {
                (fb.index_axis(Axis(0), k), rb[k], &cb[k])
            };
            assert_eq!(results[row], want, "face {row}");
            assert_eq!(&chosen[row], want_chosen, "face {row}");
            assert_eq!(together.index_axis(Axis(0), row), want_face, "face {row}");
        }
        assert_eq!(rand::Rng::random::<u64>(&mut rng_a), next_a);
        assert_eq!(rand::Rng::random::<u64>(&mut rng_b), next_b);
    }

    #[test]
    fn owners_must_name_a_generator_per_face() {
        let mut purifier = crate::purifier::tiny_purifier();
        let s = purifier.image_size();
        let mut f = faces(2, s, 0);
        let enc = purifier.encode(f.view()).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let params = PurifyParams {
            samples: 2,
            batch: 2,
            tau: 1.0,
        };
        let err = purify_streams(
            &mut purifier,
            f.view_mut(),
            &enc,
            &[0, 1],
            &mut [&mut rng],
            &params,
        )
        .unwrap_err();
        assert!(err.to_string().contains("owners"), "{err}");
    }

    fn request(stream: u64, n: usize, max_faces: usize, queued: Instant) -> Request {
        let (reply, _) = mpsc::sync_channel(1);
        Request {
            stream,
            faces: Array4::zeros((n, 3, 1, 1)),
            enc: Encoded {
                mu: Array2::zeros((n, 1)),
                logvar: Array2::zeros((n, 1)),
                skip: Array4::zeros((n, 1, 16, 16)),
            },
            params: PurifyParams {
                samples: 1,
                batch: 1,
                tau: 1.0,
            },
            rng: StdRng::seed_from_u64(0),
            batching: Batching {
                max_faces,
                timeout: Duration::from_millis(50),
            },
            queued,
            reply,
        }
    }

    #[test]
    fn a_batch_is_due_when_full_when_everyone_waits_or_at_the_timeout() {
        let t0 = Instant::now();
        let mut queue = Queue {
            streams: 3,
            ..Queue::default()
        };
        queue.pending.push_back(request(1, 4, 16, t0));
        // One of three streams waiting, 4 of 16 faces: wait for the rest of the 50 ms.
        assert_eq!(due(&queue, t0), Some(Duration::from_millis(50)));
        assert_eq!(due(&queue, t0 + Duration::from_millis(50)), None);
        queue.pending.push_back(request(2, 4, 16, t0));
        assert!(due(&queue, t0).is_some());
        queue.pending.push_back(request(3, 4, 16, t0));
        assert_eq!(due(&queue, t0), None, "every stream is waiting");
        queue.streams = 4;
        queue.pending.push_back(request(4, 4, 8, t0));
        assert_eq!(
            due(&queue, t0),
            None,
            "16 faces reach the smallest limit, 8"
        );
        // take: 4 + 4 fit the limit 16 of the first two; the 8-face limit of the fourth stops
        // nothing before it, and the third still fits 16.
        let taken = take(&mut queue.pending);
        assert_eq!(
            taken.iter().map(|r| r.stream).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let taken = take(&mut queue.pending);
        assert_eq!(taken.iter().map(|r| r.stream).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn an_oversized_request_runs_alone() {
        let t0 = Instant::now();
        let mut pending: VecDeque<Request> = [request(1, 20, 16, t0), request(2, 1, 16, t0)]
            .into_iter()
            .collect();
        assert_eq!(take(&mut pending).len(), 1);
        assert_eq!(take(&mut pending).len(), 1);
    }
}
