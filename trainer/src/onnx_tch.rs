//! A small ONNX interpreter on tch tensors, so that a pretrained ONNX graph (the face recognizer)
//! runs with autograd for the attacks.
//!
//! It implements exactly the operators of the graphs the trainer runs this way: `Conv` (2-D,
//! grouped, explicit pads), `PRelu`, `Add` and `Reshape` with a constant shape. Loading fails
//! with an error naming the file, the node and the operator when a graph uses anything else, so
//! a new graph is never half-run.
//!
//! Graphs exported at batch size 1 often hard-code that batch in a `Reshape` target (`[1, -1]`);
//! a target whose first entry is 1 is applied per sample (the first dimension stays the batch),
//! so the graph also runs on batches.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use prost::Message;
use tch::{Device, Kind, Tensor};
use tract_onnx::pb;

/// The operators [`OnnxGraph`] runs.
pub const SUPPORTED_OPS: [&str; 4] = ["Conv", "PRelu", "Add", "Reshape"];

/// One supported operator with its attributes.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// 2-D convolution; `pads` is ONNX's `[top, left, bottom, right]`.
    Conv {
        strides: [i64; 2],
        pads: [i64; 4],
        dilations: [i64; 2],
        group: i64,
    },
    /// `max(0, x) + slope * min(0, x)`, slope broadcast against x.
    PRelu,
    /// Element-wise sum with broadcasting.
    Add,
    /// Reshape to the constant shape held by the second input.
    Reshape,
}

/// A node of the graph: its operator and the names of its inputs and outputs.
#[derive(Debug, Clone)]
struct Node {
    name: String,
    op: Op,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A parsed ONNX graph whose weights are tch tensors.
#[derive(Debug)]
pub struct OnnxGraph {
    path: PathBuf,
    inputs: Vec<String>,
    outputs: Vec<String>,
    nodes: Vec<Node>,
    constants: HashMap<String, Tensor>,
    op_counts: BTreeMap<String, usize>,
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn ints_attr<const N: usize>(
    node: &pb::NodeProto,
    name: &str,
    default: [i64; N],
) -> Result<[i64; N]> {
    match attr(node, name) {
        None => Ok(default),
        Some(a) => a.ints.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "attribute '{name}' has {} values, expected {N} (2-D convolution)",
                a.ints.len()
            )
        }),
    }
}

fn parse_op(node: &pb::NodeProto) -> Result<Op> {
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        bail!("operator domain '{}' is not supported", node.domain);
    }
    Ok(match node.op_type.as_str() {
        "Conv" => {
            if let Some(a) = attr(node, "auto_pad") {
                let mode = String::from_utf8_lossy(&a.s);
                ensure!(
                    mode == "NOTSET" || mode.is_empty(),
                    "Conv auto_pad '{mode}' is not supported (explicit pads only)"
                );
            }
            Op::Conv {
                strides: ints_attr(node, "strides", [1, 1])?,
                pads: ints_attr(node, "pads", [0, 0, 0, 0])?,
                dilations: ints_attr(node, "dilations", [1, 1])?,
                group: attr(node, "group").map_or(1, |a| a.i),
            }
        }
        "PRelu" => Op::PRelu,
        "Add" => Op::Add,
        "Reshape" => {
            if let Some(a) = attr(node, "allowzero") {
                ensure!(a.i == 0, "Reshape allowzero=1 is not supported");
            }
            Op::Reshape
        }
        other => bail!(
            "operator '{other}' is not supported (this interpreter runs {})",
            SUPPORTED_OPS.join(", ")
        ),
    })
}

/// Converts an ONNX tensor (float32 or int64, raw or typed data) to a tch tensor on the CPU.
fn tensor_from_proto(t: &pb::TensorProto) -> Result<Tensor> {
    use pb::tensor_proto::DataType;
    let count: i64 = t.dims.iter().product();
    let count = usize::try_from(count).context("negative dimension")?;
    let tensor = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => {
            let values: Vec<f32> = if t.raw_data.is_empty() {
                t.float_data.clone()
            } else {
                t.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            ensure!(
                values.len() == count,
                "holds {} floats for dims {:?}",
                values.len(),
                t.dims
            );
            Tensor::from_slice(&values)
        }
        Ok(DataType::Int64) => {
            let values: Vec<i64> = if t.raw_data.is_empty() {
                t.int64_data.clone()
            } else {
                t.raw_data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect()
            };
            ensure!(
                values.len() == count,
                "holds {} int64 values for dims {:?}",
                values.len(),
                t.dims
            );
            Tensor::from_slice(&values)
        }
        _ => bail!(
            "data type {} is not supported (float32 and int64 only)",
            t.data_type
        ),
    };
    Ok(tensor.reshape(t.dims.as_slice()))
}

/// Reads and decodes the ONNX model at `path`.
fn read_model(path: &Path) -> Result<pb::ModelProto> {
    let bytes = fs::read(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    pb::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("'{}' is not an ONNX model", path.display()))
}

/// Every float32 or int64 initializer of the ONNX model at `path`, by name, as CPU tensors.
pub fn read_initializers(path: &Path) -> Result<HashMap<String, Tensor>> {
    let model = read_model(path)?;
    let graph = model
        .graph
        .with_context(|| format!("'{}' has no graph", path.display()))?;
    graph
        .initializer
        .iter()
        .map(|t| {
            let tensor = tensor_from_proto(t)
                .with_context(|| format!("'{}': initializer '{}'", path.display(), t.name))?;
            Ok((t.name.clone(), tensor))
        })
        .collect()
}

impl OnnxGraph {
    /// Parses the ONNX model at `path`; fails naming the node and operator if any operator is
    /// not in [`SUPPORTED_OPS`].
    pub fn load(path: &Path) -> Result<Self> {
        let model = read_model(path)?;
        let graph = model
            .graph
            .with_context(|| format!("'{}' has no graph", path.display()))?;
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            let tensor = tensor_from_proto(t)
                .with_context(|| format!("'{}': initializer '{}'", path.display(), t.name))?;
            constants.insert(t.name.clone(), tensor);
        }
        let mut op_counts = BTreeMap::new();
        let mut nodes = Vec::with_capacity(graph.node.len());
        for (k, node) in graph.node.iter().enumerate() {
            *op_counts.entry(node.op_type.clone()).or_insert(0) += 1;
            let op = parse_op(node).with_context(|| {
                format!(
                    "'{}': node {k} ('{}', {})",
                    path.display(),
                    node.name,
                    node.op_type
                )
            })?;
            nodes.push(Node {
                name: node.name.clone(),
                op,
                inputs: node.input.clone(),
                outputs: node.output.clone(),
            });
        }
        let inputs: Vec<String> = graph
            .input
            .iter()
            .map(|v| v.name.clone())
            .filter(|n| !constants.contains_key(n))
            .collect();
        let outputs: Vec<String> = graph.output.iter().map(|v| v.name.clone()).collect();
        ensure!(
            !inputs.is_empty() && !outputs.is_empty(),
            "'{}' declares no graph input or output",
            path.display()
        );
        Ok(Self {
            path: path.to_path_buf(),
            inputs,
            outputs,
            nodes,
            constants,
            op_counts,
        })
    }

    /// How many nodes of each operator the graph has.
    pub fn op_counts(&self) -> &BTreeMap<String, usize> {
        &self.op_counts
    }

    /// Names of the graph inputs (initializers excluded), in declared order.
    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// Number of scalar weights held by the initializers.
    pub fn num_weights(&self) -> usize {
        self.constants.values().map(Tensor::numel).sum()
    }

    /// Moves every weight to `device`.
    pub fn to_device(&mut self, device: Device) {
        for t in self.constants.values_mut() {
            *t = t.to_device(device);
        }
    }

    /// Prepares the weights for fast CPU inference without changing what the graph computes
    /// beyond 1e-38: subnormal weights (this recognizer has about 4,500, mostly in its 1x1
    /// expansion convolutions) become 0, because arithmetic on subnormals is many times slower
    /// on x86, and 4-D weights get channels-last strides, the layout libtorch's CPU
    /// convolutions are fastest on.
    pub fn optimize_for_cpu(&mut self) {
        for t in self.constants.values_mut() {
            if t.is_floating_point() {
                let subnormal = t
                    .abs()
                    .lt(f64::from(f32::MIN_POSITIVE))
                    .logical_and(&t.not_equal(0.0));
                *t = t.where_self(&subnormal.logical_not(), &t.zeros_like());
            }
            if t.dim() == 4 {
                *t = channels_last(t);
            }
        }
    }

    /// Runs the graph on `inputs` (in declared input order) and returns its outputs in declared
    /// order. Autograd flows through every operator.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        ensure!(
            inputs.len() == self.inputs.len(),
            "'{}' takes {} inputs ({}), got {}",
            self.path.display(),
            self.inputs.len(),
            self.inputs.join(", "),
            inputs.len()
        );
        let mut values: HashMap<&str, Tensor> = self
            .inputs
            .iter()
            .zip(inputs)
            .map(|(n, t)| (n.as_str(), t.shallow_clone()))
            .collect();
        for node in &self.nodes {
            let args: Vec<&Tensor> = node
                .inputs
                .iter()
                .filter(|n| !n.is_empty())
                .map(|n| {
                    values
                        .get(n.as_str())
                        .or_else(|| self.constants.get(n))
                        .with_context(|| {
                            format!(
                                "'{}': node '{}' reads '{n}', which nothing produced",
                                self.path.display(),
                                node.name
                            )
                        })
                })
                .collect::<Result<_>>()?;
            let out = eval_node(&node.op, &args).with_context(|| {
                format!(
                    "'{}': node '{}' ({:?}) failed",
                    self.path.display(),
                    node.name,
                    node.op
                )
            })?;
            let name = node
                .outputs
                .first()
                .with_context(|| format!("node '{}' has no output", node.name))?;
            values.insert(name.as_str(), out);
        }
        self.outputs
            .iter()
            .map(|n| {
                values.remove(n.as_str()).with_context(|| {
                    format!(
                        "'{}': graph output '{n}' was not computed",
                        self.path.display()
                    )
                })
            })
            .collect()
    }
}

/// The same values as `x` `[N, C, H, W]` with channels-last strides (differentiable).
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

fn arg<'a>(args: &[&'a Tensor], k: usize, what: &str) -> Result<&'a Tensor> {
    args.get(k)
        .copied()
        .with_context(|| format!("missing input {k} ({what})"))
}

fn eval_node(op: &Op, args: &[&Tensor]) -> Result<Tensor> {
    Ok(match op {
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
        } => {
            let x = arg(args, 0, "X")?;
            let w = arg(args, 1, "W")?;
            ensure!(
                x.dim() == 4 && w.dim() == 4,
                "only 2-D convolutions are supported (X {:?}, W {:?})",
                x.size(),
                w.size()
            );
            let [top, left, bottom, right] = *pads;
            let (x, padding) = if top == bottom && left == right {
                (x.shallow_clone(), [top, left])
            } else {
                (x.constant_pad_nd([left, right, top, bottom]), [0, 0])
            };
            x.conv2d(
                w,
                args.get(2).copied(),
                *strides,
                padding,
                *dilations,
                *group,
            )
        }
        Op::PRelu => {
            let x = arg(args, 0, "X")?;
            let slope = arg(args, 1, "slope")?;
            // A slope of shape [C, 1, ..., 1] (one per channel, broadcast over the spatial
            // dimensions) runs torch's fused kernel; any other shape the broadcast formula.
            let dims = x.size();
            let per_channel = dims.len() >= 2 && {
                let mut want = vec![dims[1]];
                want.resize(dims.len() - 1, 1);
                slope.size() == want
            };
            if per_channel {
                x.prelu(&slope.reshape([-1]))
            } else {
                x.relu() + slope * x.clamp_max(0.0)
            }
        }
        Op::Add => arg(args, 0, "A")? + arg(args, 1, "B")?,
        Op::Reshape => {
            let x = arg(args, 0, "data")?;
            let shape = arg(args, 1, "shape")?;
            ensure!(
                shape.kind() == Kind::Int64 && shape.dim() == 1,
                "the target shape must be a 1-D int64 constant"
            );
            let mut target = Vec::<i64>::try_from(shape).context("cannot read the shape")?;
            let dims = x.size();
            for (k, t) in target.iter_mut().enumerate() {
                if *t == 0 {
                    *t = *dims.get(k).context("shape entry 0 past the input's rank")?;
                }
            }
            if target.first() == Some(&1) && dims.first().is_some_and(|&n| n > 1) {
                target[0] = dims[0];
            }
            x.f_reshape(target.as_slice())?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: values.to_vec(),
            ..Default::default()
        }
    }

    fn node(
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<pb::AttributeProto>,
    ) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: format!("{op}_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        }
    }

    fn value(name: &str) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        }
    }

    fn write_model(dir: &Path, nodes: Vec<pb::NodeProto>, inits: Vec<pb::TensorProto>) -> PathBuf {
        let model = pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 9,
            }],
            graph: Some(pb::GraphProto {
                name: "t".into(),
                node: nodes,
                initializer: inits,
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        fs::create_dir_all(dir).unwrap();
        let path = dir.join("g.onnx");
        fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn runs_conv_prelu_add_reshape_by_hand() {
        let dir = std::env::temp_dir().join(format!("onnx-tch-{}", std::process::id()));
        // x [1,1,3,3] = 1..9; conv 2x2 all-ones weight, bias -20, pads [0,0,1,1] (bottom/right
        // only), stride 2 -> [1,1,2,2]; prelu slope 0.5; add 1; reshape [1,-1].
        let nodes = vec![
            node(
                "Conv",
                &["x", "w", "b"],
                "c",
                vec![ints("pads", &[0, 0, 1, 1]), ints("strides", &[2, 2])],
            ),
            node("PRelu", &["c", "slope"], "p", vec![]),
            node("Add", &["p", "one"], "a", vec![]),
            node("Reshape", &["a", "shape"], "y", vec![]),
        ];
        let inits = vec![
            f32_tensor("w", &[1, 1, 2, 2], &[1.0; 4]),
            f32_tensor("b", &[1], &[-20.0]),
            f32_tensor("slope", &[1, 1, 1], &[0.5]),
            f32_tensor("one", &[1], &[1.0]),
            pb::TensorProto {
                name: "shape".into(),
                dims: vec![2],
                data_type: pb::tensor_proto::DataType::Int64 as i32,
                int64_data: vec![1, -1],
                ..Default::default()
            },
        ];
        let g = OnnxGraph::load(&write_model(&dir, nodes, inits)).unwrap();
        assert_eq!(g.op_counts().len(), 4);
        let x = Tensor::arange(9, (Kind::Float, Device::Cpu)).view([1, 1, 3, 3]) + 1.0;
        let y = g.run(&[&x]).unwrap().remove(0);
        // windows: [1,2,4,5]=12, [3,0,6,0]=9, [7,8,0,0]=15, [9,0,0,0]=9; minus 20:
        // -8, -11, -5, -11 -> prelu: -4, -5.5, -2.5, -5.5 -> +1.
        let got = Vec::<f32>::try_from(&y.view([-1])).unwrap();
        assert_eq!(y.size(), [1, 4]);
        assert_eq!(got, [-3.0, -4.5, -1.5, -4.5]);
        // A batch of two runs per sample through the batch-1 Reshape.
        let xb = Tensor::cat(&[&x, &(&x * 2.0)], 0);
        let yb = g.run(&[&xb]).unwrap().remove(0);
        assert_eq!(yb.size(), [2, 4]);
        assert!(yb.get(0).allclose(&y.get(0), 0.0, 0.0, false));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prelu_broadcasts_per_channel_and_scalar_slopes_alike() {
        let x = Tensor::from_slice(&[-2.0f32, 3.0, -4.0, 5.0]).view([1, 2, 1, 2]);
        let per_channel = Tensor::from_slice(&[0.5f32, 0.25]).view([2, 1, 1]);
        let y = eval_node(&Op::PRelu, &[&x, &per_channel]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&y.view([-1])).unwrap(),
            [-1.0, 3.0, -1.0, 5.0]
        );
        let scalar = Tensor::from_slice(&[0.5f32]);
        let y = eval_node(&Op::PRelu, &[&x, &scalar]).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&y.view([-1])).unwrap(),
            [-1.0, 3.0, -2.0, 5.0]
        );
    }

    #[test]
    fn unsupported_operator_is_named() {
        let dir = std::env::temp_dir().join(format!("onnx-tch-bad-{}", std::process::id()));
        let path = write_model(&dir, vec![node("Softmax", &["x"], "y", vec![])], vec![]);
        let err = format!("{:#}", OnnxGraph::load(&path).unwrap_err());
        assert!(err.contains("Softmax") && err.contains("g.onnx"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
