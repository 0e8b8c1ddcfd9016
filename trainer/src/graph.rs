//! The operations the A-VAE forward passes are written against.
//!
//! The model (`model.rs`) is defined once, generically over [`Ops`]; it runs on tch tensors for
//! training (`model::TchOps`), emits ONNX nodes for export (`onnx::OnnxOps`) and propagates
//! shapes to declare parameters and count multiply-adds ([`ShapeOps`]). Every operation maps to
//! ONNX operators that both tract and ONNX Runtime run, so exported graphs match tch by
//! construction.

/// How a learned tensor is initialised when the model is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Kaiming-uniform for a weight followed by a leaky ReLU (tch's default for layers).
    Kaiming,
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// All zeros (biases).
    Zeros,
}

/// One learned tensor as a forward pass uses it: dotted name (e.g. `encoder.conv0.weight`),
/// shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Dotted name, also the ONNX initializer name.
    pub name: String,
    /// Tensor shape.
    pub shape: Vec<i64>,
    /// How to initialise it.
    pub init: ParamInit,
}

/// Tensor operations of the A-VAE graphs. Parameters are referred to by layer name: a layer
/// `l` owns `l.weight` and `l.bias` (see [`ParamSpec`]). Values are float32 unless noted.
pub trait Ops {
    /// A value: a tensor, a named graph value, or a shape.
    type T;

    /// 2-D convolution, square `kernel`, padding `kernel / 2`, with bias (ONNX `Conv`).
    fn conv2d(
        &mut self,
        x: &Self::T,
        layer: &str,
        out_channels: i64,
        kernel: i64,
        stride: i64,
    ) -> Self::T;
    /// Fully connected layer on `[N, in]` with bias, weight initialised by `init` (ONNX `Gemm`).
    fn linear(&mut self, x: &Self::T, layer: &str, out_features: i64, init: ParamInit) -> Self::T;
    /// The learned tensor `name` of shape `[1, shape..]`, repeated along a new batch of the size of
    /// `batch_like`'s first dimension (ONNX `Shape`, `Slice`, `Concat`, `Expand`).
    fn learned_constant(&mut self, name: &str, shape: &[i64], batch_like: &Self::T) -> Self::T;
    /// Repeats `x` (first dimension 1) along the first dimension of `batch_like`.
    fn expand_batch(&mut self, x: &Self::T, batch_like: &Self::T) -> Self::T;
    /// Leaky ReLU with negative slope `slope`.
    fn leaky_relu(&mut self, x: &Self::T, slope: f64) -> Self::T;
    /// Average pooling, kernel = stride = `k`, no padding.
    fn avg_pool(&mut self, x: &Self::T, k: i64) -> Self::T;
    /// Nearest-neighbour 2x upsampling of `[N, C, H, W]`.
    fn upsample2x(&mut self, x: &Self::T) -> Self::T;
    /// Concatenation along `axis`.
    fn concat(&mut self, xs: &[&Self::T], axis: i64) -> Self::T;
    /// Mean over the spatial axes 2 and 3, kept as size 1.
    fn mean_hw(&mut self, x: &Self::T) -> Self::T;
    /// Sum over `axes`, keeping them as size 1 when `keep_dims`.
    fn sum(&mut self, x: &Self::T, axes: &[i64], keep_dims: bool) -> Self::T;
    /// Broadcasting `a + b`.
    fn add(&mut self, a: &Self::T, b: &Self::T) -> Self::T;
    /// Broadcasting `a - b`.
    fn sub(&mut self, a: &Self::T, b: &Self::T) -> Self::T;
    /// Broadcasting `a * b`.
    fn mul(&mut self, a: &Self::T, b: &Self::T) -> Self::T;
    /// Broadcasting `a / b`.
    fn div(&mut self, a: &Self::T, b: &Self::T) -> Self::T;
    /// `x + c` for a constant `c`.
    fn add_scalar(&mut self, x: &Self::T, c: f32) -> Self::T;
    /// Element-wise square root.
    fn sqrt(&mut self, x: &Self::T) -> Self::T;
    /// Element-wise hyperbolic tangent.
    fn tanh(&mut self, x: &Self::T) -> Self::T;
    /// Reshape; a 0 copies the input dimension at that index (ONNX semantics), -1 is inferred.
    fn reshape(&mut self, x: &Self::T, shape: &[i64]) -> Self::T;
    /// `len` entries from `start` along `axis`.
    fn narrow(&mut self, x: &Self::T, axis: i64, start: i64, len: i64) -> Self::T;
    /// Index (int64) of the smallest entry along `axis`, kept as size 1; first one on ties.
    fn argmin(&mut self, x: &Self::T, axis: i64) -> Self::T;
    /// Rows of `x` along `axis` picked by the int64 `indices`.
    fn gather(&mut self, x: &Self::T, indices: &Self::T, axis: i64) -> Self::T;
}

/// [`Ops`] on shapes: checks that a forward pass is consistent, lists the parameters it uses and
/// counts the multiply-adds of its convolutions and linear layers.
#[derive(Debug, Default)]
pub struct ShapeOps {
    params: Vec<ParamSpec>,
    macs: i64,
}

impl ShapeOps {
    /// An empty shape propagator.
    pub fn new() -> ShapeOps {
        ShapeOps::default()
    }

    /// Parameters used so far, in first-use order, each once.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Multiply-adds of the convolutions and linear layers run so far (for the batch sizes the
    /// shapes carry).
    pub fn macs(&self) -> i64 {
        self.macs
    }

    fn declare(&mut self, name: String, shape: Vec<i64>, init: ParamInit) {
        match self.params.iter().find(|p| p.name == name) {
            Some(p) => assert_eq!(p.shape, shape, "parameter {name} used with two shapes"),
            None => self.params.push(ParamSpec { name, shape, init }),
        }
    }
}

fn axis_index(shape: &[i64], axis: i64) -> usize {
    let rank = shape.len() as i64;
    assert!(
        (-rank..rank).contains(&axis),
        "axis {axis} out of range for shape {shape:?}"
    );
    (if axis < 0 { axis + rank } else { axis }) as usize
}

fn broadcast(a: &[i64], b: &[i64]) -> Vec<i64> {
    let rank = a.len().max(b.len());
    let dim = |s: &[i64], i: usize| {
        let offset = rank - s.len();
        if i < offset { 1 } else { s[i - offset] }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => panic!("shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

impl Ops for ShapeOps {
    type T = Vec<i64>;

    fn conv2d(
        &mut self,
        x: &Vec<i64>,
        layer: &str,
        out: i64,
        kernel: i64,
        stride: i64,
    ) -> Vec<i64> {
        let [n, c, h, w] = x[..] else {
            panic!("conv2d {layer}: input shape {x:?} is not NCHW")
        };
        self.declare(
            format!("{layer}.weight"),
            vec![out, c, kernel, kernel],
            ParamInit::Kaiming,
        );
        self.declare(format!("{layer}.bias"), vec![out], ParamInit::Zeros);
        let pad = kernel / 2;
        let (oh, ow) = (
            (h + 2 * pad - kernel) / stride + 1,
            (w + 2 * pad - kernel) / stride + 1,
        );
        self.macs += n * out * oh * ow * c * kernel * kernel;
        vec![n, out, oh, ow]
    }

    fn linear(&mut self, x: &Vec<i64>, layer: &str, out: i64, init: ParamInit) -> Vec<i64> {
        let [n, inp] = x[..] else {
            panic!("linear {layer}: input shape {x:?} is not [N, features]")
        };
        self.declare(format!("{layer}.weight"), vec![out, inp], init);
        self.declare(format!("{layer}.bias"), vec![out], ParamInit::Zeros);
        self.macs += n * out * inp;
        vec![n, out]
    }

    fn learned_constant(&mut self, name: &str, shape: &[i64], like: &Vec<i64>) -> Vec<i64> {
        let mut full = vec![1];
        full.extend_from_slice(shape);
        self.declare(name.to_owned(), full, ParamInit::Normal(1.0));
        let mut out = vec![like[0]];
        out.extend_from_slice(shape);
        out
    }

    fn expand_batch(&mut self, x: &Vec<i64>, like: &Vec<i64>) -> Vec<i64> {
        assert_eq!(x[0], 1, "expand_batch needs a batch of 1, got {x:?}");
        let mut out = x.clone();
        out[0] = like[0];
        out
    }

    fn leaky_relu(&mut self, x: &Vec<i64>, _slope: f64) -> Vec<i64> {
        x.clone()
    }

    fn avg_pool(&mut self, x: &Vec<i64>, k: i64) -> Vec<i64> {
        let [n, c, h, w] = x[..] else {
            panic!("avg_pool: input shape {x:?} is not NCHW")
        };
        vec![n, c, h / k, w / k]
    }

    fn upsample2x(&mut self, x: &Vec<i64>) -> Vec<i64> {
        let [n, c, h, w] = x[..] else {
            panic!("upsample2x: input shape {x:?} is not NCHW")
        };
        vec![n, c, 2 * h, 2 * w]
    }

    fn concat(&mut self, xs: &[&Vec<i64>], axis: i64) -> Vec<i64> {
        let mut out = xs[0].clone();
        let axis = axis_index(&out, axis);
        for x in &xs[1..] {
            assert_eq!(x.len(), out.len(), "concat of ranks {xs:?}");
            for (i, (&d, o)) in x.iter().zip(out.iter_mut()).enumerate() {
                if i == axis {
                    *o += d;
                } else {
                    assert_eq!(d, *o, "concat of shapes {xs:?} along axis {axis}");
                }
            }
        }
        out
    }

    fn mean_hw(&mut self, x: &Vec<i64>) -> Vec<i64> {
        self.sum(x, &[2, 3], true)
    }

    fn sum(&mut self, x: &Vec<i64>, axes: &[i64], keep_dims: bool) -> Vec<i64> {
        let axes: Vec<usize> = axes.iter().map(|&a| axis_index(x, a)).collect();
        x.iter()
            .enumerate()
            .filter_map(|(i, &d)| match (axes.contains(&i), keep_dims) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect()
    }

    fn add(&mut self, a: &Vec<i64>, b: &Vec<i64>) -> Vec<i64> {
        broadcast(a, b)
    }

    fn sub(&mut self, a: &Vec<i64>, b: &Vec<i64>) -> Vec<i64> {
        broadcast(a, b)
    }

    fn mul(&mut self, a: &Vec<i64>, b: &Vec<i64>) -> Vec<i64> {
        broadcast(a, b)
    }

    fn div(&mut self, a: &Vec<i64>, b: &Vec<i64>) -> Vec<i64> {
        broadcast(a, b)
    }

    fn add_scalar(&mut self, x: &Vec<i64>, _c: f32) -> Vec<i64> {
        x.clone()
    }

    fn sqrt(&mut self, x: &Vec<i64>) -> Vec<i64> {
        x.clone()
    }

    fn tanh(&mut self, x: &Vec<i64>) -> Vec<i64> {
        x.clone()
    }

    fn reshape(&mut self, x: &Vec<i64>, shape: &[i64]) -> Vec<i64> {
        let mut out: Vec<i64> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if d == 0 { x[i] } else { d })
            .collect();
        let total: i64 = x.iter().product();
        let known: i64 = out.iter().filter(|&&d| d != -1).product();
        if let Some(d) = out.iter_mut().find(|d| **d == -1) {
            *d = total / known;
        }
        assert_eq!(
            out.iter().product::<i64>(),
            total,
            "reshape {x:?} to {shape:?}"
        );
        out
    }

    fn narrow(&mut self, x: &Vec<i64>, axis: i64, start: i64, len: i64) -> Vec<i64> {
        let axis = axis_index(x, axis);
        assert!(
            start + len <= x[axis],
            "narrow {x:?} axis {axis} {start}+{len}"
        );
        let mut out = x.clone();
        out[axis] = len;
        out
    }

    fn argmin(&mut self, x: &Vec<i64>, axis: i64) -> Vec<i64> {
        self.sum(x, &[axis], true)
    }

    fn gather(&mut self, x: &Vec<i64>, indices: &Vec<i64>, axis: i64) -> Vec<i64> {
        let axis = axis_index(x, axis);
        let mut out = x[..axis].to_vec();
        out.extend_from_slice(indices);
        out.extend_from_slice(&x[axis + 1..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_shapes_params_and_macs() {
        let mut ops = ShapeOps::new();
        let y = ops.conv2d(&vec![2, 3, 32, 32], "c", 8, 3, 2);
        assert_eq!(y, vec![2, 8, 16, 16]);
        assert_eq!(ops.macs(), 2 * 8 * 16 * 16 * 3 * 9);
        assert_eq!(ops.params()[0].shape, vec![8, 3, 3, 3]);
        assert_eq!(ops.params()[1].name, "c.bias");
    }

    #[test]
    fn reshape_copies_zero_and_infers_minus_one() {
        let mut ops = ShapeOps::new();
        let x = vec![5, 4, 3, 2];
        assert_eq!(
            ops.reshape(&x, &[0, 0, 0, 1, -1, 1]),
            vec![5, 4, 3, 1, 2, 1]
        );
        assert_eq!(ops.reshape(&x, &[0, -1]), vec![5, 24]);
    }

    #[test]
    fn broadcasting_and_reductions() {
        let mut ops = ShapeOps::new();
        assert_eq!(
            ops.sub(&vec![7, 3, 8, 8], &vec![1, 3, 8, 8]),
            vec![7, 3, 8, 8]
        );
        assert_eq!(ops.sum(&vec![7, 3, 8, 8], &[1, 2, 3], false), vec![7]);
        assert_eq!(ops.argmin(&vec![7], 0), vec![1]);
        assert_eq!(ops.gather(&vec![7, 3, 8, 8], &vec![1], 0), vec![1, 3, 8, 8]);
    }

    #[test]
    #[should_panic(expected = "do not broadcast")]
    fn mismatched_shapes_panic() {
        ShapeOps::new().add(&vec![2, 3], &vec![2, 4]);
    }
}
