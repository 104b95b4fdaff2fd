//! [`Graph`]: a builder for ONNX inference graphs over f32 NCHW tensors.

use super::fold::BnParams;
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use super::{OnnxError, Result, BATCH_DIM, IR_VERSION, OPSET};
use prost::Message;
use std::collections::HashSet;
use std::path::Path;

/// A named value (graph input, initializer or node output) of a [`Graph`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    /// The value's unique name inside its graph.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// The dynamic batch axis, named [`BATCH_DIM`].
    Batch,
    /// A fixed size.
    Fixed(usize),
}

/// Geometry of a convolution (or transposed convolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Zero padding (top, left, bottom, right); may be asymmetric (TensorFlow "SAME").
    pub pads: [usize; 4],
    /// Dilation (rows, columns).
    pub dilation: [usize; 2],
    /// Number of groups (1 = dense, channels = depthwise).
    pub group: usize,
}

impl ConvSpec {
    /// A dense convolution with the same stride and padding on both axes.
    pub fn new(stride: usize, pad: usize) -> Self {
        ConvSpec {
            stride: [stride, stride],
            pads: [pad; 4],
            dilation: [1, 1],
            group: 1,
        }
    }

    /// The same geometry with asymmetric padding (top, left, bottom, right).
    pub fn with_pads(mut self, pads: [usize; 4]) -> Self {
        self.pads = pads;
        self
    }

    /// The same geometry with `group` groups.
    pub fn with_group(mut self, group: usize) -> Self {
        self.group = group;
        self
    }

    /// The same geometry with a dilation on both axes.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation = [dilation, dilation];
        self
    }
}

/// Geometry of a max or average pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    /// Window (rows, columns).
    pub kernel: [usize; 2],
    /// Stride (rows, columns).
    pub stride: [usize; 2],
    /// Padding (top, left, bottom, right); max pooling ignores padded cells.
    pub pads: [usize; 4],
    /// Average pooling only: whether padded cells count in the divisor.
    pub count_include_pad: bool,
}

impl PoolSpec {
    /// A square window with the same stride and padding on both axes.
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        PoolSpec {
            kernel: [kernel, kernel],
            stride: [stride, stride],
            pads: [pad; 4],
            count_include_pad: false,
        }
    }

    /// The same window with asymmetric padding (top, left, bottom, right).
    pub fn with_pads(mut self, pads: [usize; 4]) -> Self {
        self.pads = pads;
        self
    }

    /// The same window with padded cells counted in the average.
    pub fn counting_pad(mut self) -> Self {
        self.count_include_pad = true;
        self
    }
}

/// Builder of one ONNX inference graph.
///
/// Every method that adds a node takes a `hint` that becomes the node's and its output's
/// name (made unique with a numeric suffix when taken) and returns the output [`Value`].
/// Weights become f32 initializers stored as little-endian `raw_data`.
#[derive(Debug, Clone)]
pub struct Graph {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
    doc: String,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn attr_ints_i64(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Batch => dimension::Value::DimParam(BATCH_DIM.to_string()),
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Graph {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            names: HashSet::new(),
            doc: String::new(),
        }
    }

    /// Sets the model's documentation string.
    pub fn set_doc(&mut self, doc: &str) {
        self.doc = doc.to_string();
    }

    /// Number of nodes added so far.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of f32 weights stored as initializers.
    pub fn weight_count(&self) -> usize {
        self.initializers
            .iter()
            .filter(|t| t.data_type == Some(DataType::Float as i32))
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum()
    }

    fn err(&self, msg: impl Into<String>) -> OnnxError {
        OnnxError::Graph {
            graph: self.name.clone(),
            msg: msg.into(),
        }
    }

    fn shape_err(&self, what: &str, expected: impl ToString, got: impl ToString) -> OnnxError {
        OnnxError::Shape {
            graph: self.name.clone(),
            what: what.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        let base = if hint.is_empty() { "v" } else { hint };
        let mut name = base.to_string();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn check(&self, v: &Value) -> Result<()> {
        if self.names.contains(&v.0) {
            Ok(())
        } else {
            Err(self.err(format!("value `{}` does not belong to this graph", v.0)))
        }
    }

    /// Declares a graph input of f32 elements; `name` must be unused.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Result<Value> {
        if self.names.contains(name) {
            return Err(self.err(format!("input name `{name}` is already used")));
        }
        self.names.insert(name.to_string());
        self.inputs.push(value_info(name, dims));
        Ok(Value(name.to_string()))
    }

    /// Declares `value` as a graph output called `name` (through an Identity node; ONNX
    /// Runtime removes it when optimising).
    pub fn output(&mut self, value: &Value, name: &str, dims: &[Dim]) -> Result<()> {
        self.check(value)?;
        if self.names.contains(name) {
            return Err(self.err(format!("output name `{name}` is already used")));
        }
        self.names.insert(name.to_string());
        self.nodes.push(NodeProto {
            input: vec![value.0.clone()],
            output: vec![name.to_string()],
            name: Some(format!("{name}.identity")),
            op_type: Some("Identity".to_string()),
            ..Default::default()
        });
        self.outputs.push(value_info(name, dims));
        Ok(())
    }

    /// Adds an f32 initializer of shape `dims`.
    pub fn init_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> Result<Value> {
        let n: usize = dims.iter().product();
        if n != data.len() {
            return Err(self.shape_err(
                &format!("initializer `{hint}` {dims:?}"),
                format!("{n} values"),
                data.len(),
            ));
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(self.err(format!(
                "initializer `{hint}` holds a non-finite value at index {i}"
            )));
        }
        let name = self.fresh(hint);
        let mut raw = Vec::with_capacity(4 * data.len());
        for x in data {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        Ok(Value(name))
    }

    /// Adds an i64 initializer of shape `dims` (shapes, pads, axes).
    pub fn init_i64(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> Result<Value> {
        let n: usize = dims.iter().product();
        if n != data.len() {
            return Err(self.shape_err(
                &format!("initializer `{hint}` {dims:?}"),
                format!("{n} values"),
                data.len(),
            ));
        }
        let name = self.fresh(hint);
        let mut raw = Vec::with_capacity(8 * data.len());
        for x in data {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        Ok(Value(name))
    }

    /// Adds a node of any operator with one output; the building block of the typed methods.
    pub fn node(
        &mut self,
        op_type: &str,
        hint: &str,
        inputs: &[&Value],
        attributes: Vec<AttributeProto>,
    ) -> Result<Value> {
        for v in inputs {
            self.check(v)?;
        }
        let name = self.fresh(hint);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: vec![name.clone()],
            name: Some(name.clone()),
            op_type: Some(op_type.to_string()),
            attribute: attributes,
            ..Default::default()
        });
        Ok(Value(name))
    }

    fn conv_attrs(spec: &ConvSpec, kernel: [usize; 2]) -> Vec<AttributeProto> {
        vec![
            attr_ints("kernel_shape", &kernel),
            attr_ints("strides", &spec.stride),
            attr_ints("pads", &spec.pads),
            attr_ints("dilations", &spec.dilation),
            attr_int("group", spec.group as i64),
        ]
    }

    /// 2-D convolution; `weight` has shape `[out, in / group, kh, kw]`, `bias` `[out]`.
    pub fn conv(
        &mut self,
        hint: &str,
        x: &Value,
        weight: &[f32],
        wdims: [usize; 4],
        bias: Option<&[f32]>,
        spec: &ConvSpec,
    ) -> Result<Value> {
        if spec.group == 0 || !wdims[0].is_multiple_of(spec.group) {
            return Err(self.shape_err(
                &format!("conv `{hint}` groups"),
                format!("a divisor of {} output channels", wdims[0]),
                spec.group,
            ));
        }
        self.conv_like("Conv", hint, x, weight, wdims, wdims[0], bias, spec)
    }

    /// 2-D transposed convolution; `weight` has shape `[in, out / group, kh, kw]`,
    /// `bias` `[out]`. Padding removes cells from the full output, as in ONNX.
    pub fn conv_transpose(
        &mut self,
        hint: &str,
        x: &Value,
        weight: &[f32],
        wdims: [usize; 4],
        bias: Option<&[f32]>,
        spec: &ConvSpec,
    ) -> Result<Value> {
        if spec.group == 0 {
            return Err(self.shape_err(
                &format!("conv_transpose `{hint}` groups"),
                "at least 1",
                0,
            ));
        }
        let out = wdims[1] * spec.group;
        self.conv_like("ConvTranspose", hint, x, weight, wdims, out, bias, spec)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_like(
        &mut self,
        op: &str,
        hint: &str,
        x: &Value,
        weight: &[f32],
        wdims: [usize; 4],
        out_channels: usize,
        bias: Option<&[f32]>,
        spec: &ConvSpec,
    ) -> Result<Value> {
        self.check(x)?;
        if let Some(b) = bias {
            if b.len() != out_channels {
                return Err(self.shape_err(
                    &format!("{op} `{hint}` bias"),
                    format!("{out_channels} values"),
                    b.len(),
                ));
            }
        }
        let w = self.init_f32(&format!("{hint}.weight"), &wdims, weight)?;
        let mut inputs = vec![x.clone(), w];
        if let Some(b) = bias {
            inputs.push(self.init_f32(&format!("{hint}.bias"), &[b.len()], b)?);
        }
        let refs: Vec<&Value> = inputs.iter().collect();
        let attrs = Self::conv_attrs(spec, [wdims[2], wdims[3]]);
        self.node(op, hint, &refs, attrs)
    }

    /// Inference-form BatchNormalization (running statistics, never training mode).
    pub fn batch_norm(&mut self, hint: &str, x: &Value, bn: &BnParams) -> Result<Value> {
        let c = bn.gamma.len();
        if bn.beta.len() != c || bn.mean.len() != c || bn.var.len() != c {
            return Err(self.shape_err(
                &format!("batch_norm `{hint}` parameters"),
                format!("{c} values each"),
                format!(
                    "beta {}, mean {}, var {}",
                    bn.beta.len(),
                    bn.mean.len(),
                    bn.var.len()
                ),
            ));
        }
        let s = self.init_f32(&format!("{hint}.scale"), &[c], &bn.gamma)?;
        let b = self.init_f32(&format!("{hint}.bias"), &[c], &bn.beta)?;
        let m = self.init_f32(&format!("{hint}.mean"), &[c], &bn.mean)?;
        let v = self.init_f32(&format!("{hint}.var"), &[c], &bn.var)?;
        self.node(
            "BatchNormalization",
            hint,
            &[x, &s, &b, &m, &v],
            vec![attr_float("epsilon", bn.eps), attr_int("training_mode", 0)],
        )
    }

    /// Per-channel affine map `x·scale[c] + shift[c]` as Mul + Add (e.g. a BatchNorm that
    /// follows an activation and so cannot be folded into a convolution).
    pub fn channel_affine(
        &mut self,
        hint: &str,
        x: &Value,
        scale: &[f32],
        shift: &[f32],
    ) -> Result<Value> {
        let c = scale.len();
        if shift.len() != c {
            return Err(self.shape_err(
                &format!("channel_affine `{hint}` shift"),
                format!("{c} values"),
                shift.len(),
            ));
        }
        let s = self.init_f32(&format!("{hint}.scale"), &[1, c, 1, 1], scale)?;
        let b = self.init_f32(&format!("{hint}.shift"), &[1, c, 1, 1], shift)?;
        let m = self.mul(&format!("{hint}.mul"), x, &s)?;
        self.add(hint, &m, &b)
    }

    /// Rectified linear unit.
    pub fn relu(&mut self, hint: &str, x: &Value) -> Result<Value> {
        self.node("Relu", hint, &[x], vec![])
    }

    /// Logistic sigmoid.
    pub fn sigmoid(&mut self, hint: &str, x: &Value) -> Result<Value> {
        self.node("Sigmoid", hint, &[x], vec![])
    }

    /// Clamp to `[min, max]` (ReLU6 = `clip(x, 0, 6)`), bounds given as scalar inputs.
    pub fn clip(&mut self, hint: &str, x: &Value, min: f32, max: f32) -> Result<Value> {
        let lo = self.init_f32(&format!("{hint}.min"), &[], &[min])?;
        let hi = self.init_f32(&format!("{hint}.max"), &[], &[max])?;
        self.node("Clip", hint, &[x, &lo, &hi], vec![])
    }

    fn pool_attrs(spec: &PoolSpec) -> Vec<AttributeProto> {
        vec![
            attr_ints("kernel_shape", &spec.kernel),
            attr_ints("strides", &spec.stride),
            attr_ints("pads", &spec.pads),
        ]
    }

    /// Max pooling (padded cells never win).
    pub fn max_pool(&mut self, hint: &str, x: &Value, spec: &PoolSpec) -> Result<Value> {
        self.node("MaxPool", hint, &[x], Self::pool_attrs(spec))
    }

    /// Average pooling.
    pub fn avg_pool(&mut self, hint: &str, x: &Value, spec: &PoolSpec) -> Result<Value> {
        let mut attrs = Self::pool_attrs(spec);
        attrs.push(attr_int(
            "count_include_pad",
            i64::from(spec.count_include_pad),
        ));
        self.node("AveragePool", hint, &[x], attrs)
    }

    /// Constant padding of the two spatial axes of an NCHW tensor by
    /// (top, left, bottom, right) cells of `value`.
    pub fn pad(&mut self, hint: &str, x: &Value, pads: [usize; 4], value: f32) -> Result<Value> {
        let [t, l, b, r] = pads.map(|p| p as i64);
        let p = self.init_i64(&format!("{hint}.pads"), &[8], &[0, 0, t, l, 0, 0, b, r])?;
        let v = self.init_f32(&format!("{hint}.value"), &[], &[value])?;
        self.node(
            "Pad",
            hint,
            &[x, &p, &v],
            vec![AttributeProto {
                name: Some("mode".to_string()),
                r#type: Some(AttributeType::String as i32),
                s: Some(b"constant".to_vec()),
                ..Default::default()
            }],
        )
    }

    /// Elementwise sum (with broadcasting).
    pub fn add(&mut self, hint: &str, a: &Value, b: &Value) -> Result<Value> {
        self.node("Add", hint, &[a, b], vec![])
    }

    /// Elementwise product (with broadcasting).
    pub fn mul(&mut self, hint: &str, a: &Value, b: &Value) -> Result<Value> {
        self.node("Mul", hint, &[a, b], vec![])
    }

    /// Softmax along one axis (`-1` or `3` = width of an NCHW tensor).
    pub fn softmax(&mut self, hint: &str, x: &Value, axis: i64) -> Result<Value> {
        self.node("Softmax", hint, &[x], vec![attr_int("axis", axis)])
    }

    /// Mean over each channel's spatial positions: `[N, C, H, W]` → `[N, C, 1, 1]`.
    pub fn global_avg_pool(&mut self, hint: &str, x: &Value) -> Result<Value> {
        self.node("GlobalAveragePool", hint, &[x], vec![])
    }

    /// Mean over `axes` (opset 17 form, axes as an attribute).
    pub fn reduce_mean(
        &mut self,
        hint: &str,
        x: &Value,
        axes: &[i64],
        keepdims: bool,
    ) -> Result<Value> {
        self.node(
            "ReduceMean",
            hint,
            &[x],
            vec![
                attr_ints_i64("axes", axes),
                attr_int("keepdims", i64::from(keepdims)),
            ],
        )
    }

    /// Fully connected layer on `[N, in]`: `x·Wᵀ + b` with `weight` of shape `[out, in]`.
    pub fn gemm(
        &mut self,
        hint: &str,
        x: &Value,
        weight: &[f32],
        wdims: [usize; 2],
        bias: Option<&[f32]>,
    ) -> Result<Value> {
        self.check(x)?;
        if let Some(b) = bias {
            if b.len() != wdims[0] {
                return Err(self.shape_err(
                    &format!("gemm `{hint}` bias"),
                    format!("{} values", wdims[0]),
                    b.len(),
                ));
            }
        }
        let w = self.init_f32(&format!("{hint}.weight"), &wdims, weight)?;
        let mut inputs = vec![x.clone(), w];
        if let Some(b) = bias {
            inputs.push(self.init_f32(&format!("{hint}.bias"), &[b.len()], b)?);
        }
        let refs: Vec<&Value> = inputs.iter().collect();
        self.node("Gemm", hint, &refs, vec![attr_int("transB", 1)])
    }

    /// Matrix product of two values (numpy broadcasting rules).
    pub fn matmul(&mut self, hint: &str, a: &Value, b: &Value) -> Result<Value> {
        self.node("MatMul", hint, &[a, b], vec![])
    }

    /// Flattens to 2-D: dimensions before `axis` form the rows.
    pub fn flatten(&mut self, hint: &str, x: &Value, axis: i64) -> Result<Value> {
        self.node("Flatten", hint, &[x], vec![attr_int("axis", axis)])
    }

    /// Reshape; `0` copies the input's dimension (keeps the batch dynamic), `-1` is inferred.
    pub fn reshape(&mut self, hint: &str, x: &Value, shape: &[i64]) -> Result<Value> {
        let s = self.init_i64(&format!("{hint}.shape"), &[shape.len()], shape)?;
        self.node("Reshape", hint, &[x, &s], vec![])
    }

    /// The finished model: IR version 8, opset 17, producer `fabric-train`.
    pub fn to_model(&self) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("fabric-train".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            doc_string: (!self.doc.is_empty()).then(|| self.doc.clone()),
            graph: Some(GraphProto {
                node: self.nodes.clone(),
                name: Some(self.name.clone()),
                initializer: self.initializers.clone(),
                input: self.inputs.clone(),
                output: self.outputs.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The serialised `ModelProto`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.outputs.is_empty() {
            return Err(self.err("the graph has no outputs"));
        }
        Ok(self.to_model().encode_to_vec())
    }

    /// Writes the model to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        fabric_inspect::fsutil::atomic_write(path, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_foreign_values_rejected() {
        let mut g = Graph::new("g");
        let x = g.input("x", &[Dim::Batch, Dim::Fixed(3)]).unwrap();
        let a = g.relu("act", &x).unwrap();
        let b = g.relu("act", &a).unwrap();
        assert_ne!(a.name(), b.name());
        assert!(g.input("x", &[Dim::Batch]).is_err());
        let mut other = Graph::new("h");
        let y = other.input("y", &[Dim::Batch]).unwrap();
        assert!(g.relu("r", &y).is_err());
        g.output(&b, "out", &[Dim::Batch, Dim::Fixed(3)]).unwrap();
        assert!(g.output(&b, "out", &[Dim::Batch]).is_err());
    }

    #[test]
    fn initializer_shape_and_finiteness_are_checked() {
        let mut g = Graph::new("g");
        assert!(g.init_f32("w", &[2, 2], &[1.0; 3]).is_err());
        assert!(g.init_f32("w", &[2], &[1.0, f32::NAN]).is_err());
        let w = g.init_f32("w", &[2], &[1.0, -2.5]).unwrap();
        assert_eq!(w.name(), "w");
        let m = g.to_model();
        let t = &m.graph.as_ref().unwrap().initializer[0];
        let raw = t.raw_data.as_ref().unwrap();
        assert_eq!(&raw[4..8], &(-2.5f32).to_le_bytes());
        assert_eq!(g.weight_count(), 2);
    }

    #[test]
    fn model_round_trips_through_protobuf() {
        let mut g = Graph::new("g");
        let x = g
            .input(
                "x",
                &[Dim::Batch, Dim::Fixed(2), Dim::Fixed(4), Dim::Fixed(4)],
            )
            .unwrap();
        let y = g
            .conv(
                "c",
                &x,
                &[0.5; 8],
                [2, 2, 2, 1],
                Some(&[0.0, 1.0]),
                &ConvSpec::new(1, 0),
            )
            .unwrap();
        g.output(
            &y,
            "y",
            &[Dim::Batch, Dim::Fixed(2), Dim::Fixed(3), Dim::Fixed(4)],
        )
        .unwrap();
        let bytes = g.to_bytes().unwrap();
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        let gr = m.graph.unwrap();
        assert_eq!(gr.node.len(), 2);
        assert_eq!(gr.node[0].op_type.as_deref(), Some("Conv"));
        assert_eq!(gr.initializer.len(), 2);
        let dim0 = &gr.input[0].r#type.as_ref().unwrap();
        let Some(type_proto::Value::TensorType(t)) = &dim0.value else {
            panic!("not a tensor type")
        };
        assert_eq!(
            t.shape.as_ref().unwrap().dim[0].value,
            Some(dimension::Value::DimParam(BATCH_DIM.to_string()))
        );
    }

    #[test]
    fn conv_bias_length_is_checked() {
        let mut g = Graph::new("g");
        let x = g.input("x", &[Dim::Batch]).unwrap();
        let e = g
            .conv(
                "c",
                &x,
                &[0.0; 4],
                [2, 1, 1, 2],
                Some(&[0.0]),
                &ConvSpec::new(1, 0),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("bias"), "{e}");
        assert!(g
            .conv(
                "c",
                &x,
                &[0.0; 4],
                [2, 1, 1, 2],
                None,
                &ConvSpec::new(1, 0).with_group(3)
            )
            .is_err());
    }
}
