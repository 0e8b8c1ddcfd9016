//! The A-VAE networks (paper Fig. 2): encoder, mapping network f, style decoder with AdaIN and one
//! skip connection, and the WGAN critic.
//!
//! The generator is written once, generically over [`Ops`]: [`TchOps`] runs it on tensors (with
//! autograd, for training), `onnx::OnnxOps` turns the same code into ONNX graphs and
//! [`ShapeOps`] derives the parameter list and the FLOP count from it.

use std::collections::BTreeMap;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::{Config, ENCODER_INPUT_SIZE, LATENT_SIZE, SKIP_SIZE};
use crate::graph::{Ops, ParamInit, ParamSpec, ShapeOps};

/// Negative slope of every leaky ReLU.
pub const LRELU_SLOPE: f64 = 0.2;
/// Epsilon added to the variance in AdaIN's instance normalisation.
pub const ADAIN_EPS: f32 = 1e-5;
/// Optimiser parameter group of the mapping network (its learning rate is multiplied by
/// `Config::mapping_lr_mul`); every other generator variable is in group 0.
pub const MAPPING_GROUP: usize = 1;
/// Scale of the AdaIN style weights at initialisation, so gamma and beta start near 0.
const STYLE_INIT_GAIN: f64 = 0.1;

/// Generator parameters by dotted name (`encoder.conv0.weight`, ...), sharing storage with the
/// VarStore they were created in.
pub type Params = BTreeMap<String, Tensor>;

/// Encoder outputs: posterior mean and log-variance `[N, D]`, and the 16x16 skip feature.
#[derive(Debug)]
pub struct Encoded<T> {
    /// Posterior mean `[N, D]`.
    pub mu: T,
    /// Posterior log-variance `[N, D]`.
    pub logvar: T,
    /// Skip feature `[N, C, 16, 16]`.
    pub skip: T,
}

/// Output of the fused purifier: the candidate nearest to the face.
#[derive(Debug)]
pub struct Purified<T> {
    /// Nearest candidate `[1, 3, S, S]`.
    pub image: T,
    /// Its squared L2 distance to the face, summed over 3*S*S values, `[1]`.
    pub distance: T,
    /// Row of `z` it was decoded from, int64 `[1]`.
    pub index: T,
}

fn leaky<O: Ops>(o: &mut O, x: &O::T) -> O::T {
    o.leaky_relu(x, LRELU_SLOPE)
}

/// The 32x32 encoder input: average pool with kernel = stride = S / `input_size`, then (for an
/// `input_size` below 32) nearest-neighbour upsampling back to 32x32.
pub fn downsample<O: Ops>(o: &mut O, cfg: &Config, face: &O::T) -> O::T {
    pool_and_restore(
        o,
        face,
        cfg.pool_factor(),
        cfg.input_size,
        ENCODER_INPUT_SIZE,
    )
}

/// Average pool with kernel = stride = `pool`, giving a map of side `side`, then nearest 2x
/// upsampling until the side reaches `target`: the detail of a `side` x `side` map at the
/// `target` size.
fn pool_and_restore<O: Ops>(o: &mut O, x: &O::T, pool: i64, side: i64, target: i64) -> O::T {
    let mut x = o.avg_pool(x, pool);
    let mut side = side;
    while side < target {
        x = o.upsample2x(&x);
        side *= 2;
    }
    x
}

/// Encoder E on the 32x32 input: three stride-2 convolutions down to 4x4, then 1x1 heads for mu and
/// logvar, flattened NCHW; the 16x16 activation is the skip feature (with
/// [`Config::skip_detail`] 8, average-pooled to 8x8 and upsampled back to 16x16 first; the
/// latent path still reads the full activation).
pub fn encoder_from_input<O: Ops>(o: &mut O, cfg: &Config, x32: &O::T) -> Encoded<O::T> {
    let [c32, c16, c8, c4] = cfg.enc_channels;
    let h = o.conv2d(x32, "encoder.conv0", c32, 3, 1);
    let h = leaky(o, &h);
    let h = o.conv2d(&h, "encoder.conv1", c16, 3, 2);
    let h16 = leaky(o, &h);
    let h = o.conv2d(&h16, "encoder.conv2", c8, 3, 2);
    let h = leaky(o, &h);
    let h = o.conv2d(&h, "encoder.conv3", c4, 3, 2);
    let h = leaky(o, &h);
    let mu = o.conv2d(&h, "encoder.mu", cfg.latent_channels, 1, 1);
    let mu = o.reshape(&mu, &[0, -1]);
    let logvar = o.conv2d(&h, "encoder.logvar", cfg.latent_channels, 1, 1);
    let logvar = o.reshape(&logvar, &[0, -1]);
    let skip = if cfg.skip_detail < SKIP_SIZE {
        let pool = SKIP_SIZE / cfg.skip_detail;
        pool_and_restore(o, &h16, pool, cfg.skip_detail, SKIP_SIZE)
    } else {
        h16
    };
    Encoded { mu, logvar, skip }
}

/// Encoder on a face `[N, 3, S, S]`: [`downsample`] then [`encoder_from_input`].
pub fn encoder<O: Ops>(o: &mut O, cfg: &Config, face: &O::T) -> Encoded<O::T> {
    let x32 = downsample(o, cfg, face);
    encoder_from_input(o, cfg, &x32)
}

/// Mapping network f: `mapping_layers` x (linear + leaky ReLU), `[B, D]` -> `[B, w_dim]`.
pub fn mapping<O: Ops>(o: &mut O, cfg: &Config, z: &O::T) -> O::T {
    let init = ParamInit::Kaiming;
    let h = o.linear(z, "mapping.fc0", cfg.w_dim, init);
    let mut w = leaky(o, &h);
    for i in 1..cfg.mapping_layers {
        let h = o.linear(&w, &format!("mapping.fc{i}"), cfg.w_dim, init);
        w = leaky(o, &h);
    }
    w
}

/// AdaIN: instance-normalise `x` per channel over H, W (biased variance, eps 1e-5), then
/// `x_hat * (1 + gamma) + beta` with `[gamma, beta]` from a linear layer on `w`.
pub fn adain<O: Ops>(o: &mut O, cfg: &Config, x: &O::T, w: &O::T, layer: &str, c: i64) -> O::T {
    let mean = o.mean_hw(x);
    let centred = o.sub(x, &mean);
    let squared = o.mul(&centred, &centred);
    let var = o.mean_hw(&squared);
    let var = o.add_scalar(&var, ADAIN_EPS);
    let std = o.sqrt(&var);
    let normalised = o.div(&centred, &std);
    let init = ParamInit::Normal(STYLE_INIT_GAIN / (cfg.w_dim as f64).sqrt());
    let style = o.linear(w, layer, 2 * c, init);
    let style = o.reshape(&style, &[0, 2 * c, 1, 1]);
    let gamma = o.narrow(&style, 1, 0, c);
    let scale = o.add_scalar(&gamma, 1.0);
    let beta = o.narrow(&style, 1, c, c);
    let scaled = o.mul(&normalised, &scale);
    o.add(&scaled, &beta)
}

/// conv3x3 -> AdaIN(w) -> leaky ReLU.
fn styled_conv<O: Ops>(
    o: &mut O,
    cfg: &Config,
    x: &O::T,
    w: &O::T,
    names: (&str, &str),
    c: i64,
) -> O::T {
    let h = o.conv2d(x, names.0, c, 3, 1);
    let h = adain(o, cfg, &h, w, names.1, c);
    leaky(o, &h)
}

/// Style decoder Dec: learned 4x4 constant, at each resolution (nearest 2x upsample) and two styled
/// convolutions, the skip feature concatenated after the 16x16 block, toRGB and tanh.
/// `z` `[B, D]`, `skip` `[B, C, 16, 16]` -> image `[B, 3, S, S]` in [-1, 1].
pub fn decoder<O: Ops>(o: &mut O, cfg: &Config, z: &O::T, skip: &O::T) -> O::T {
    let w = mapping(o, cfg, z);
    let mut x = o.learned_constant(
        "decoder.const",
        &[cfg.dec_channels[0], LATENT_SIZE, LATENT_SIZE],
        z,
    );
    for (r, &c) in cfg.resolutions().into_iter().zip(&cfg.dec_channels) {
        if r > LATENT_SIZE {
            x = o.upsample2x(&x);
        }
        for i in 0..2 {
            let (conv, style) = (
                format!("decoder.b{r}.conv{i}"),
                format!("decoder.b{r}.style{i}"),
            );
            x = styled_conv(o, cfg, &x, &w, (&conv, &style), c);
        }
        if r == SKIP_SIZE {
            x = o.concat(&[&x, skip], 1);
            let names = ("decoder.b16.skip_conv", "decoder.b16.skip_style");
            x = styled_conv(o, cfg, &x, &w, names, c);
        }
    }
    let rgb = o.conv2d(&x, "decoder.to_rgb", 3, 1, 1);
    o.tanh(&rgb)
}

/// Fused purifier: decodes every row of `z` `[B, D]` with the same `skip` `[1, C, 16, 16]` and
/// keeps the candidate nearest to `face` `[1, 3, S, S]` in squared L2 (paper section 3.4).
pub fn purifier<O: Ops>(
    o: &mut O,
    cfg: &Config,
    z: &O::T,
    skip: &O::T,
    face: &O::T,
) -> Purified<O::T> {
    let skips = o.expand_batch(skip, z);
    let candidates = decoder(o, cfg, z, &skips);
    let diff = o.sub(&candidates, face);
    let squared = o.mul(&diff, &diff);
    let distances = o.sum(&squared, &[1, 2, 3], false);
    let index = o.argmin(&distances, 0);
    Purified {
        image: o.gather(&candidates, &index, 0),
        distance: o.gather(&distances, &index, 0),
        index,
    }
}

/// Every generator parameter (encoder, mapping, decoder) with its shape and initialisation.
pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let mut o = ShapeOps::new();
    let s = cfg.image_size;
    encoder(&mut o, cfg, &vec![1, 3, s, s]);
    decoder(
        &mut o,
        cfg,
        &vec![1, cfg.latent_dim()],
        &vec![1, cfg.skip_channels(), SKIP_SIZE, SKIP_SIZE],
    );
    o.params().to_vec()
}

/// Floating-point operations (2 x multiply-adds of convolutions and linear layers) to decode one
/// latent, mapping network included.
pub fn decoder_flops(cfg: &Config) -> i64 {
    let mut o = ShapeOps::new();
    decoder(
        &mut o,
        cfg,
        &vec![1, cfg.latent_dim()],
        &vec![1, cfg.skip_channels(), SKIP_SIZE, SKIP_SIZE],
    );
    2 * o.macs()
}

/// [`Ops`] on tch tensors, with autograd; parameters are looked up by name in a [`Params`] map.
pub struct TchOps<'a> {
    params: &'a Params,
}

impl<'a> TchOps<'a> {
    /// Evaluates with the parameters in `params`.
    pub fn new(params: &'a Params) -> TchOps<'a> {
        TchOps { params }
    }

    fn param(&self, name: &str) -> &'a Tensor {
        match self.params.get(name) {
            Some(t) => t,
            None => panic!("A-VAE parameter '{name}' does not exist (model/config mismatch)"),
        }
    }
}

impl Ops for TchOps<'_> {
    type T = Tensor;

    fn conv2d(&mut self, x: &Tensor, layer: &str, out: i64, kernel: i64, stride: i64) -> Tensor {
        let weight = self.param(&format!("{layer}.weight"));
        debug_assert_eq!(weight.size()[..1], [out]);
        let bias = self.param(&format!("{layer}.bias"));
        let pad = kernel / 2;
        x.conv2d(weight, Some(bias), [stride, stride], [pad, pad], [1, 1], 1)
    }

    fn linear(&mut self, x: &Tensor, layer: &str, out: i64, _init: ParamInit) -> Tensor {
        let weight = self.param(&format!("{layer}.weight"));
        debug_assert_eq!(weight.size()[..1], [out]);
        x.linear(weight, Some(self.param(&format!("{layer}.bias"))))
    }

    fn learned_constant(&mut self, name: &str, shape: &[i64], like: &Tensor) -> Tensor {
        let mut full = vec![like.size()[0]];
        full.extend_from_slice(shape);
        self.param(name).expand(full, false)
    }

    fn expand_batch(&mut self, x: &Tensor, like: &Tensor) -> Tensor {
        let mut full = x.size();
        full[0] = like.size()[0];
        x.expand(full, false)
    }

    fn leaky_relu(&mut self, x: &Tensor, slope: f64) -> Tensor {
        x.maximum(&(x * slope))
    }

    fn avg_pool(&mut self, x: &Tensor, k: i64) -> Tensor {
        x.avg_pool2d([k, k], [k, k], [0, 0], false, true, None)
    }

    fn upsample2x(&mut self, x: &Tensor) -> Tensor {
        let size = x.size();
        x.upsample_nearest2d([2 * size[2], 2 * size[3]], None, None)
    }

    fn concat(&mut self, xs: &[&Tensor], axis: i64) -> Tensor {
        Tensor::cat(xs, axis)
    }

    fn mean_hw(&mut self, x: &Tensor) -> Tensor {
        x.mean_dim([2i64, 3].as_slice(), true, Kind::Float)
    }

    fn sum(&mut self, x: &Tensor, axes: &[i64], keep_dims: bool) -> Tensor {
        x.sum_dim_intlist(axes, keep_dims, Kind::Float)
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        a + b
    }

    fn sub(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        a - b
    }

    fn mul(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        a * b
    }

    fn div(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        a / b
    }

    fn add_scalar(&mut self, x: &Tensor, c: f32) -> Tensor {
        x + f64::from(c)
    }

    fn sqrt(&mut self, x: &Tensor) -> Tensor {
        x.sqrt()
    }

    fn tanh(&mut self, x: &Tensor) -> Tensor {
        x.tanh()
    }

    fn reshape(&mut self, x: &Tensor, shape: &[i64]) -> Tensor {
        let size = x.size();
        let shape: Vec<i64> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if d == 0 { size[i] } else { d })
            .collect();
        x.reshape(shape)
    }

    fn narrow(&mut self, x: &Tensor, axis: i64, start: i64, len: i64) -> Tensor {
        x.narrow(axis, start, len)
    }

    fn argmin(&mut self, x: &Tensor, axis: i64) -> Tensor {
        x.argmin(axis, true)
    }

    fn gather(&mut self, x: &Tensor, indices: &Tensor, axis: i64) -> Tensor {
        x.index_select(axis, indices)
    }
}

/// The A-VAE generator: encoder E, mapping network f and style decoder Dec.
#[derive(Debug)]
pub struct AVae {
    cfg: Config,
    params: Params,
}

impl AVae {
    /// Creates the variables under `p / "encoder"`, `p / "mapping"` (optimiser group
    /// [`MAPPING_GROUP`]) and `p / "decoder"`. Create the VarStore on its final device first.
    ///
    /// # Panics
    /// If `cfg` fails [`Config::validate`] (presets never do).
    pub fn new(p: &nn::Path, cfg: &Config) -> AVae {
        if let Err(e) = cfg.validate() {
            panic!("{e}");
        }
        let params = param_specs(cfg)
            .into_iter()
            .map(|spec| {
                let mut parts: Vec<&str> = spec.name.split('.').collect();
                let leaf = parts.pop().unwrap_or_default();
                let mut path = if parts.first() == Some(&"mapping") {
                    p.set_group(MAPPING_GROUP)
                } else {
                    p.clone()
                };
                for part in parts {
                    path = path / part;
                }
                let init = match spec.init {
                    ParamInit::Kaiming => nn::Init::Kaiming {
                        dist: nn::init::NormalOrUniform::Uniform,
                        fan: nn::init::FanInOut::FanIn,
                        non_linearity: nn::init::NonLinearity::ExplicitGain(
                            (2.0 / (1.0 + LRELU_SLOPE * LRELU_SLOPE)).sqrt(),
                        ),
                    },
                    ParamInit::Normal(stdev) => nn::Init::Randn { mean: 0.0, stdev },
                    ParamInit::Zeros => nn::Init::Const(0.0),
                };
                let tensor = path.var(leaf, &spec.shape, init);
                (spec.name, tensor)
            })
            .collect();
        AVae {
            cfg: cfg.clone(),
            params,
        }
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The generator parameters by dotted name.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Number of scalar generator parameters.
    pub fn num_params(&self) -> i64 {
        self.params.values().map(Tensor::numel).sum::<usize>() as i64
    }

    /// The 32x32 encoder input `[N, 3, 32, 32]` of faces `[N, 3, S, S]`.
    pub fn downsample(&self, face: &Tensor) -> Tensor {
        downsample(&mut TchOps::new(&self.params), &self.cfg, face)
    }

    /// Encodes faces `[N, 3, S, S]` in [-1, 1] to `(mu, logvar, skip)`: `[N, D]`, `[N, D]`,
    /// `[N, C, 16, 16]`.
    pub fn encode(&self, face: &Tensor) -> (Tensor, Tensor, Tensor) {
        let e = encoder(&mut TchOps::new(&self.params), &self.cfg, face);
        (e.mu, e.logvar, e.skip)
    }

    /// Decodes latents `[B, D]` with skip features `[B, C, 16, 16]` to images `[B, 3, S, S]`.
    pub fn decode(&self, z: &Tensor, skip: &Tensor) -> Tensor {
        decoder(&mut TchOps::new(&self.params), &self.cfg, z, skip)
    }

    /// The fused purifier on tensors: `(image [1,3,S,S], distance [1], index [1] int64)`.
    pub fn purify(&self, z: &Tensor, skip: &Tensor, face: &Tensor) -> (Tensor, Tensor, Tensor) {
        let p = purifier(&mut TchOps::new(&self.params), &self.cfg, z, skip, face);
        (p.image, p.distance, p.index)
    }
}

fn leaky_tensor(x: &Tensor) -> Tensor {
    x.maximum(&(x * LRELU_SLOPE))
}

/// WGAN critic D (no sigmoid): images `[N, 3, S, S]`, and when conditional the 32x32 encoder input
/// upsampled to S and concatenated as 3 more channels, down to 4x4 by stride-2 convolutions,
/// optional minibatch standard deviation, then two linear layers to a score `[N, 1]`.
#[derive(Debug)]
pub struct Discriminator {
    image_size: i64,
    conditional: bool,
    minibatch_stddev: bool,
    from_rgb: nn::Conv2D,
    blocks: Vec<(nn::Conv2D, nn::Conv2D)>,
    final_conv: nn::Conv2D,
    fc: nn::Linear,
    out: nn::Linear,
}

impl Discriminator {
    /// Creates the variables under `p / "disc"`.
    pub fn new(p: &nn::Path, cfg: &Config, conditional: bool) -> Discriminator {
        let p = p / "disc";
        let d = &cfg.disc_channels;
        let conv = |path: nn::Path, i: i64, o: i64, k: i64, stride: i64| {
            let c = nn::ConvConfig {
                stride,
                padding: k / 2,
                ..Default::default()
            };
            nn::conv2d(path, i, o, k, c)
        };
        let in_channels = if conditional { 6 } else { 3 };
        let from_rgb = conv(&p / "from_rgb", in_channels, d[0], 1, 1);
        let blocks = d
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let block = &p / format!("b{i}");
                (
                    conv(&block / "conv0", pair[0], pair[0], 3, 1),
                    conv(&block / "down", pair[0], pair[1], 3, 2),
                )
            })
            .collect();
        let last = d[d.len() - 1];
        let extra = i64::from(cfg.minibatch_stddev);
        let final_conv = conv(&p / "final_conv", last + extra, last, 3, 1);
        let side = LATENT_SIZE * LATENT_SIZE;
        let fc = nn::linear(&p / "fc", last * side, last, Default::default());
        let out = nn::linear(&p / "out", last, 1, Default::default());
        Discriminator {
            image_size: cfg.image_size,
            conditional,
            minibatch_stddev: cfg.minibatch_stddev,
            from_rgb,
            blocks,
            final_conv,
            fc,
            out,
        }
    }

    /// Critic scores `[N, 1]` of `image` `[N, 3, S, S]`; `cond32` `[N, 3, 32, 32]` is required when
    /// the critic is conditional and ignored otherwise.
    ///
    /// # Panics
    /// If the critic is conditional and `cond32` is `None`.
    pub fn forward(&self, image: &Tensor, cond32: Option<&Tensor>) -> Tensor {
        let x = match (self.conditional, cond32) {
            (true, Some(c)) => {
                let s = self.image_size;
                let up = c.upsample_nearest2d([s, s], None, None);
                Tensor::cat(&[image, &up], 1)
            }
            (true, None) => panic!("conditional discriminator called without the 32x32 input"),
            (false, _) => image.shallow_clone(),
        };
        let mut h = leaky_tensor(&self.from_rgb.forward(&x));
        for (conv, down) in &self.blocks {
            h = leaky_tensor(&conv.forward(&h));
            h = leaky_tensor(&down.forward(&h));
        }
        if self.minibatch_stddev {
            let size = h.size();
            let std = (h.var_dim(0, false, false) + 1e-8).sqrt().mean(Kind::Float);
            let feature = std.expand([size[0], 1, size[2], size[3]], false);
            h = Tensor::cat(&[&h, &feature], 1);
        }
        h = leaky_tensor(&self.final_conv.forward(&h));
        let h = leaky_tensor(&self.fc.forward(&h.flatten(1, -1)));
        self.out.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn::OptimizerConfig;

    fn tiny() -> (nn::VarStore, AVae) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = AVae::new(&vs.root(), &Config::tiny());
        (vs, model)
    }

    #[test]
    fn input_size_16_feeds_the_encoder_16x16_blocks() {
        let mut cfg = Config::tiny();
        cfg.input_size = 16;
        let vs = nn::VarStore::new(Device::Cpu);
        let model = AVae::new(&vs.root(), &cfg);
        let face = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let x = model.downsample(&face);
        assert_eq!(x.size(), [2, 3, 32, 32]);
        // Every 2x2 block of the 32x32 input is one 4x4 average of the face.
        let blocks = face.avg_pool2d([4, 4], [4, 4], [0, 0], false, true, None::<i64>);
        let up = blocks.upsample_nearest2d([32, 32], None, None);
        assert!(f64::try_from((&x - &up).abs().max()).unwrap() < 1e-6);
        let (mu, _, skip) = model.encode(&face);
        assert_eq!(mu.size(), [2, cfg.latent_dim()]);
        assert_eq!(skip.size(), [2, cfg.skip_channels(), 16, 16]);
    }

    #[test]
    fn skip_detail_8_carries_8x8_blocks_and_keeps_the_latent() {
        let mut cfg = Config::tiny();
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let full = AVae::new(&vs.root(), &cfg);
        cfg.skip_detail = 8;
        let coarse = AVae::new(&vs.root().sub("coarse"), &cfg);
        tch::no_grad(|| {
            for (name, param) in coarse.params() {
                let mut p = param.shallow_clone();
                p.copy_(&full.params()[name]);
            }
        });
        let face = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let (mu_full, _, skip_full) = full.encode(&face);
        let (mu, _, skip) = coarse.encode(&face);
        assert_eq!(skip.size(), [2, cfg.skip_channels(), 16, 16]);
        assert!(f64::try_from((&mu - &mu_full).abs().max()).unwrap() < 1e-6);
        let blocks = skip_full.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        let up = blocks.upsample_nearest2d([16, 16], None, None);
        assert!(f64::try_from((&skip - &up).abs().max()).unwrap() < 1e-6);
        assert!(f64::try_from((&skip - &skip_full).abs().max()).unwrap() > 1e-4);
    }

    #[test]
    fn shapes_follow_the_contract() {
        let (_vs, model) = tiny();
        let cfg = model.config().clone();
        let face = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        assert_eq!(model.downsample(&face).size(), [2, 3, 32, 32]);
        let (mu, logvar, skip) = model.encode(&face);
        assert_eq!(mu.size(), [2, cfg.latent_dim()]);
        assert_eq!(logvar.size(), [2, cfg.latent_dim()]);
        assert_eq!(skip.size(), [2, cfg.skip_channels(), 16, 16]);
        let image = model.decode(&mu, &skip);
        assert_eq!(image.size(), [2, 3, 64, 64]);
        assert!(image.abs().max().double_value(&[]) <= 1.0);
    }

    #[test]
    fn decoder_depends_on_z_and_skip_deterministically() {
        let (_vs, model) = tiny();
        let d = model.config().latent_dim();
        let c = model.config().skip_channels();
        let z = Tensor::randn([3, d], (Kind::Float, Device::Cpu));
        let skip = Tensor::randn([3, c, 16, 16], (Kind::Float, Device::Cpu));
        let a = model.decode(&z, &skip);
        let b = model.decode(&z, &skip);
        assert_eq!(f64::try_from((&a - &b).abs().max()).unwrap(), 0.0);
        let other_z = model.decode(&(&z + 1.0), &skip);
        assert!(f64::try_from((&a - other_z).abs().max()).unwrap() > 1e-4);
        let other_skip = model.decode(&z, &(&skip + 1.0));
        assert!(f64::try_from((&a - other_skip).abs().max()).unwrap() > 1e-4);
    }

    #[test]
    fn variables_use_stable_paths_and_mapping_group() {
        let (vs, model) = tiny();
        let names = vs.variables();
        for expected in [
            "encoder.conv0.weight",
            "encoder.mu.bias",
            "mapping.fc3.weight",
            "decoder.const",
            "decoder.b16.skip_conv.weight",
            "decoder.b64.style1.weight",
            "decoder.to_rgb.bias",
        ] {
            assert!(names.contains_key(expected), "missing {expected}");
        }
        assert_eq!(names.len(), model.params().len());
        let expected: i64 = names.values().map(|t| t.numel() as i64).sum();
        assert_eq!(model.num_params(), expected);
        let mut opt = nn::Sgd::default().build(&vs, 1.0).unwrap();
        // Only the mapping group moves when the other group's learning rate is zero.
        opt.set_lr_group(0, 0.0);
        opt.set_lr_group(MAPPING_GROUP, 1.0);
        let before = names["mapping.fc0.weight"].copy();
        let enc_before = names["encoder.conv0.weight"].copy();
        let z = Tensor::randn([2, model.config().latent_dim()], (Kind::Float, Device::Cpu));
        let skip = Tensor::randn([2, 8, 16, 16], (Kind::Float, Device::Cpu));
        let (_, _, s2) = model.encode(&Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu)));
        opt.backward_step(&(model.decode(&z, &(&skip + s2)).sum(Kind::Float)));
        assert!(f64::try_from((&names["mapping.fc0.weight"] - before).abs().max()).unwrap() > 0.0);
        assert_eq!(
            f64::try_from((&names["encoder.conv0.weight"] - enc_before).abs().max()).unwrap(),
            0.0
        );
    }

    #[test]
    fn purify_picks_the_nearest_candidate() {
        let (_vs, model) = tiny();
        let cfg = model.config();
        let z = Tensor::randn([5, cfg.latent_dim()], (Kind::Float, Device::Cpu));
        let skip = Tensor::randn([1, cfg.skip_channels(), 16, 16], (Kind::Float, Device::Cpu));
        let all = model.decode(&z, &skip.expand([5, cfg.skip_channels(), 16, 16], false));
        let face = all.get(3).unsqueeze(0) + 0.001;
        let (image, distance, index) = model.purify(&z, &skip, &face);
        assert_eq!(index.kind(), Kind::Int64);
        assert_eq!(i64::try_from(&index).unwrap(), 3);
        assert_eq!(image.size(), [1, 3, 64, 64]);
        let expected = 3.0 * 64.0 * 64.0 * 1e-6;
        assert!((f64::try_from(&distance).unwrap() - expected).abs() < 1e-4);
    }

    #[test]
    fn discriminator_scores_and_gradient() {
        for conditional in [false, true] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = Config::tiny();
            let disc = Discriminator::new(&vs.root(), &cfg, conditional);
            assert!(vs.variables().keys().all(|k| k.starts_with("disc.")));
            let image =
                Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let cond = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
            let score = disc.forward(&image, Some(&cond));
            assert_eq!(score.size(), [4, 1]);
            let grad = Tensor::run_backward(&[score.sum(Kind::Float)], &[&image], true, true);
            // WGAN-GP needs a second backward pass through the gradient.
            let penalty = grad[0].square().sum(Kind::Float);
            penalty.backward();
            assert!(f64::try_from(penalty).unwrap() > 0.0);
        }
    }

    #[test]
    fn decoder_flops_per_preset() {
        // cpu preset: 0.257 GFLOP per decoded latent, as counted by hand from the layer shapes.
        let flops = decoder_flops(&Config::cpu());
        assert!((250_000_000..270_000_000).contains(&flops), "{flops}");
        assert!(decoder_flops(&Config::paper()) > 10 * flops);
    }
}
