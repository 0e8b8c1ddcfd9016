//! ONNX writer: [`OnnxOps`] turns the generic A-VAE forward passes into an opset-17 graph whose
//! weights are initializers, using only operators that tract 0.23 and ONNX Runtime both run.

use std::collections::BTreeSet;

use prost::Message;
use tch::{Device, Kind, Tensor};
use tract_onnx::pb;

use crate::graph::{Ops, ParamInit, ShapeOps};
use crate::model::Params;

/// ONNX operator set the graphs are written for.
pub const OPSET: i64 = 17;
/// ONNX IR version matching [`OPSET`].
const IR_VERSION: i64 = 8;

/// A named graph value with its shape (the batch dimension as first traced).
#[derive(Debug, Clone)]
pub struct Value {
    /// Name in the graph.
    pub name: String,
    /// Shape, for shape checks and reshapes.
    pub shape: Vec<i64>,
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic size with this symbolic name (`"N"`, `"B"`).
    Symbol(&'static str),
}

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ElemType {
    /// float32.
    F32,
    /// int64.
    I64,
}

impl ElemType {
    fn proto(self) -> i32 {
        match self {
            ElemType::F32 => pb::tensor_proto::DataType::Float as i32,
            ElemType::I64 => pb::tensor_proto::DataType::Int64 as i32,
        }
    }
}

/// An input or output declaration: name, element type and dimensions.
#[derive(Debug, Clone)]
pub struct Io {
    /// Name in the graph.
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Dimensions.
    pub dims: Vec<Dim>,
}

impl Io {
    /// A float32 input or output.
    pub fn f32(name: &str, dims: Vec<Dim>) -> Io {
        Io {
            name: name.to_owned(),
            elem: ElemType::F32,
            dims,
        }
    }

    /// An int64 input or output.
    pub fn i64(name: &str, dims: Vec<Dim>) -> Io {
        Io {
            name: name.to_owned(),
            elem: ElemType::I64,
            dims,
        }
    }

    fn value_info(&self) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{Dimension, dimension};
        let dim = self
            .dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => dimension::Value::DimValue(*n),
                    Dim::Symbol(s) => dimension::Value::DimParam((*s).to_owned()),
                }),
                ..Default::default()
            })
            .collect();
        pb::ValueInfoProto {
            name: self.name.clone(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: self.elem.proto(),
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn traced_shape(&self, batch: i64) -> Vec<i64> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Symbol(_) => batch,
            })
            .collect()
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

/// The values of `t` as float32, in row-major order (copied to the CPU).
pub(crate) fn tensor_data(t: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view(-1);
    Vec::<f32>::try_from(&flat)
}

/// A float32 initializer `name` holding the values of `t`.
fn tensor_initializer(name: &str, t: &Tensor) -> pb::TensorProto {
    match tensor_data(t) {
        Ok(data) => f32_initializer(name, &t.size(), &data),
        Err(e) => panic!("cannot read parameter '{name}' as float32: {e}"),
    }
}

fn f32_initializer(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_initializer(name: &str, data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: vec![data.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// [`Ops`] that appends ONNX nodes; parameters become initializers named as in [`Params`].
pub struct OnnxOps<'a> {
    params: &'a Params,
    shapes: ShapeOps,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    initialized: BTreeSet<String>,
    inputs: Vec<Io>,
    next_id: usize,
}

impl<'a> OnnxOps<'a> {
    /// An empty graph whose weights come from `params`.
    pub fn new(params: &'a Params) -> OnnxOps<'a> {
        OnnxOps {
            params,
            shapes: ShapeOps::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            initialized: BTreeSet::new(),
            inputs: Vec::new(),
            next_id: 0,
        }
    }

    /// Declares a graph input; symbolic dimensions are traced with size `batch`.
    pub fn input(&mut self, io: Io, batch: i64) -> Value {
        let value = Value {
            name: io.name.clone(),
            shape: io.traced_shape(batch),
        };
        self.inputs.push(io);
        value
    }

    /// Finishes the graph: each `(value, io)` becomes output `io.name` (the producing node's
    /// output is renamed), and the model is serialised.
    pub fn finish(mut self, graph_name: &str, outputs: &[(&Value, Io)]) -> Vec<u8> {
        for (value, io) in outputs {
            for node in &mut self.nodes {
                for name in node.output.iter_mut().chain(node.input.iter_mut()) {
                    if *name == value.name {
                        name.clone_from(&io.name);
                    }
                }
            }
        }
        let graph = pb::GraphProto {
            name: graph_name.to_owned(),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs.iter().map(Io::value_info).collect(),
            output: outputs.iter().map(|(_, io)| io.value_info()).collect(),
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "avae-trainer".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    fn param(&mut self, name: &str) -> String {
        if !self.initialized.contains(name) {
            let Some(t) = self.params.get(name) else {
                panic!("A-VAE parameter '{name}' does not exist (model/config mismatch)")
            };
            self.initializers.push(tensor_initializer(name, t));
            self.initialized.insert(name.to_owned());
        }
        name.to_owned()
    }

    fn const_i64(&mut self, data: &[i64]) -> String {
        let name = self.fresh("const_i64");
        self.initializers.push(i64_initializer(&name, data));
        name
    }

    fn const_f32(&mut self, value: f32) -> String {
        let name = self.fresh("const_f32");
        self.initializers
            .push(f32_initializer(&name, &[], &[value]));
        name
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        attributes: Vec<pb::AttributeProto>,
        shape: Vec<i64>,
    ) -> Value {
        let name = self.fresh(&op.to_lowercase());
        self.nodes.push(pb::NodeProto {
            input: inputs,
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op.to_owned(),
            attribute: attributes,
            ..Default::default()
        });
        Value { name, shape }
    }

    fn unary(&mut self, op: &str, x: &Value) -> Value {
        self.node(op, vec![x.name.clone()], vec![], x.shape.clone())
    }

    fn binary(&mut self, op: &str, a: &Value, b: &Value, shape: Vec<i64>) -> Value {
        self.node(op, vec![a.name.clone(), b.name.clone()], vec![], shape)
    }

    /// `[B]` as an int64 1-D tensor: the first dimension of `x` (Shape + Slice).
    fn batch_dim(&mut self, x: &Value) -> Value {
        let shape = self.node(
            "Shape",
            vec![x.name.clone()],
            vec![],
            vec![x.shape.len() as i64],
        );
        let starts = self.const_i64(&[0]);
        let ends = self.const_i64(&[1]);
        let axes = self.const_i64(&[0]);
        self.node(
            "Slice",
            vec![shape.name, starts, ends, axes],
            vec![],
            vec![1],
        )
    }

    /// Expands `name` (first dimension 1) to the batch of `like`.
    fn expand_to_batch(
        &mut self,
        name: String,
        rest: &[i64],
        like: &Value,
        shape: Vec<i64>,
    ) -> Value {
        let batch = self.batch_dim(like);
        let rest = self.const_i64(rest);
        let target = self.node(
            "Concat",
            vec![batch.name, rest],
            vec![attr_int("axis", 0)],
            vec![shape.len() as i64],
        );
        self.node("Expand", vec![name, target.name], vec![], shape)
    }
}

impl Ops for OnnxOps<'_> {
    type T = Value;

    fn conv2d(&mut self, x: &Value, layer: &str, out: i64, kernel: i64, stride: i64) -> Value {
        let shape = self.shapes.conv2d(&x.shape, layer, out, kernel, stride);
        let weight = self.param(&format!("{layer}.weight"));
        let bias = self.param(&format!("{layer}.bias"));
        let pad = kernel / 2;
        let attributes = vec![
            attr_ints("kernel_shape", &[kernel, kernel]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[pad, pad, pad, pad]),
        ];
        self.node(
            "Conv",
            vec![x.name.clone(), weight, bias],
            attributes,
            shape,
        )
    }

    fn linear(&mut self, x: &Value, layer: &str, out: i64, init: ParamInit) -> Value {
        let shape = self.shapes.linear(&x.shape, layer, out, init);
        let weight = self.param(&format!("{layer}.weight"));
        let bias = self.param(&format!("{layer}.bias"));
        let attributes = vec![attr_int("transB", 1)];
        self.node(
            "Gemm",
            vec![x.name.clone(), weight, bias],
            attributes,
            shape,
        )
    }

    fn learned_constant(&mut self, name: &str, shape: &[i64], like: &Value) -> Value {
        let out = self.shapes.learned_constant(name, shape, &like.shape);
        let param = self.param(name);
        self.expand_to_batch(param, shape, like, out)
    }

    fn expand_batch(&mut self, x: &Value, like: &Value) -> Value {
        let out = self.shapes.expand_batch(&x.shape, &like.shape);
        self.expand_to_batch(x.name.clone(), &x.shape[1..], like, out)
    }

    fn leaky_relu(&mut self, x: &Value, slope: f64) -> Value {
        let attributes = vec![attr_float("alpha", slope as f32)];
        self.node(
            "LeakyRelu",
            vec![x.name.clone()],
            attributes,
            x.shape.clone(),
        )
    }

    fn avg_pool(&mut self, x: &Value, k: i64) -> Value {
        let shape = self.shapes.avg_pool(&x.shape, k);
        let attributes = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[k, k]),
        ];
        self.node("AveragePool", vec![x.name.clone()], attributes, shape)
    }

    fn upsample2x(&mut self, x: &Value) -> Value {
        let out = self.shapes.upsample2x(&x.shape);
        let [_, c, h, w] = x.shape[..] else {
            panic!("upsample2x: input shape {:?} is not NCHW", x.shape)
        };
        let split = self.reshape(x, &[0, 0, 0, 1, -1, 1]);
        let wide = self.concat(&[&split, &split], 5);
        let tall = self.concat(&[&wide, &wide], 3);
        let up = self.reshape(&tall, &[0, c, 2 * h, 2 * w]);
        debug_assert_eq!(up.shape, out);
        up
    }

    fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        let shapes: Vec<&Vec<i64>> = xs.iter().map(|x| &x.shape).collect();
        let shape = self.shapes.concat(&shapes, axis);
        let inputs = xs.iter().map(|x| x.name.clone()).collect();
        self.node("Concat", inputs, vec![attr_int("axis", axis)], shape)
    }

    fn mean_hw(&mut self, x: &Value) -> Value {
        let shape = self.shapes.mean_hw(&x.shape);
        let attributes = vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 1)];
        self.node("ReduceMean", vec![x.name.clone()], attributes, shape)
    }

    fn sum(&mut self, x: &Value, axes: &[i64], keep_dims: bool) -> Value {
        let shape = self.shapes.sum(&x.shape, axes, keep_dims);
        let axes = self.const_i64(axes);
        let attributes = vec![attr_int("keepdims", i64::from(keep_dims))];
        self.node("ReduceSum", vec![x.name.clone(), axes], attributes, shape)
    }

    fn add(&mut self, a: &Value, b: &Value) -> Value {
        let shape = self.shapes.add(&a.shape, &b.shape);
        self.binary("Add", a, b, shape)
    }

    fn sub(&mut self, a: &Value, b: &Value) -> Value {
        let shape = self.shapes.sub(&a.shape, &b.shape);
        self.binary("Sub", a, b, shape)
    }

    fn mul(&mut self, a: &Value, b: &Value) -> Value {
        let shape = self.shapes.mul(&a.shape, &b.shape);
        self.binary("Mul", a, b, shape)
    }

    fn div(&mut self, a: &Value, b: &Value) -> Value {
        let shape = self.shapes.div(&a.shape, &b.shape);
        self.binary("Div", a, b, shape)
    }

    fn add_scalar(&mut self, x: &Value, c: f32) -> Value {
        let c = self.const_f32(c);
        self.node("Add", vec![x.name.clone(), c], vec![], x.shape.clone())
    }

    fn sqrt(&mut self, x: &Value) -> Value {
        self.unary("Sqrt", x)
    }

    fn tanh(&mut self, x: &Value) -> Value {
        self.unary("Tanh", x)
    }

    fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let out = self.shapes.reshape(&x.shape, shape);
        let target = self.const_i64(shape);
        self.node("Reshape", vec![x.name.clone(), target], vec![], out)
    }

    fn narrow(&mut self, x: &Value, axis: i64, start: i64, len: i64) -> Value {
        let out = self.shapes.narrow(&x.shape, axis, start, len);
        let starts = self.const_i64(&[start]);
        let ends = self.const_i64(&[start + len]);
        let axes = self.const_i64(&[axis]);
        self.node(
            "Slice",
            vec![x.name.clone(), starts, ends, axes],
            vec![],
            out,
        )
    }

    fn argmin(&mut self, x: &Value, axis: i64) -> Value {
        let out = self.shapes.argmin(&x.shape, axis);
        let attributes = vec![attr_int("axis", axis), attr_int("keepdims", 1)];
        self.node("ArgMin", vec![x.name.clone()], attributes, out)
    }

    fn gather(&mut self, x: &Value, indices: &Value, axis: i64) -> Value {
        let out = self.shapes.gather(&x.shape, &indices.shape, axis);
        let attributes = vec![attr_int("axis", axis)];
        self.node(
            "Gather",
            vec![x.name.clone(), indices.name.clone()],
            attributes,
            out,
        )
    }
}
