//! `resnet export`: a network as an ONNX graph (NCHW input, as PyTorch's exports), with
//! the input normalization, view and class names in the model's metadata. The graph walks
//! the network's spec (`ModelConfig::spec`): stem, each block's conv→BN units and shortcut
//! (none, identity, option A as Slice and Pad, or a projection), pool and classifier; the
//! weights come from the state dict by name.
//! BatchNorm is exported as BatchNormalization, or folded into the convolutions.

#[allow(clippy::all, missing_docs)]
pub mod onnx_proto;

use crate::model::{ResNet, ShortcutSpec, UnitSpec};
use crate::weights::state_dict;
use anyhow::{Context, Result, bail};
use onnx_proto as onnx;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Images per call fixed in the graph; None: a dynamic `batch` dimension.
    pub batch: Option<usize>,
    pub opset: i64,
    /// Fold each BatchNorm into the convolution before it (conv weights scaled, a bias added).
    pub fold_bn: bool,
}

/// The opsets whose Conv, BatchNormalization, Slice, Pad and Gemm the exporter writes.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// The ONNX model of `net` (with its weights), `metadata` recorded as its properties.
pub fn export(net: &mut ResNet, metadata: &HashMap<String, String>, opts: ExportOptions) -> Result<Vec<u8>> {
    if !OPSETS.contains(&opts.opset) {
        bail!("--opset {}: the exporter writes opsets {} to {}", opts.opset, OPSETS.start(), OPSETS.end());
    }
    let tensors = state_dict(&net.named()).into_iter().map(|e| (e.name.clone(), (e.shape, e.values))).collect();
    let eps = net.stem.bn.eps;
    let mut g = Graph { tensors, fold_bn: opts.fold_bn, eps, nodes: Vec::new(), initializers: Vec::new(), count: 0 };
    let (projection, classifier) = net.config.naming();
    let spec = net.config.spec();
    let mut x = g.conv_bn("input".into(), &spec.stem, "conv1", "bn1", None, true)?;
    if spec.max_pool {
        let attrs = vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])];
        x = g.node("MaxPool", vec![x], attrs);
    }
    for block in &spec.blocks {
        let (input, prefix) = (x.clone(), &block.name);
        let shortcut = match &block.shortcut {
            ShortcutSpec::None => None,
            ShortcutSpec::Identity => Some(input.clone()),
            ShortcutSpec::ZeroPad { stride, pad } => Some(g.option_a(input.clone(), *stride, *pad)),
            ShortcutSpec::Projection(p) => {
                let (conv, bn) = (format!("{prefix}.{projection}.0"), format!("{prefix}.{projection}.1"));
                Some(g.conv_bn(input.clone(), p, &conv, &bn, None, false)?)
            }
        };
        let last = block.units.len() - 1;
        for (i, u) in block.units.iter().enumerate() {
            let (conv, bn) = (format!("{prefix}.conv{}", i + 1), format!("{prefix}.bn{}", i + 1));
            let residual = if i == last { shortcut.clone() } else { None };
            x = g.conv_bn(x, u, &conv, &bn, residual, true)?;
        }
    }
    x = g.node("GlobalAveragePool", vec![x], vec![]);
    x = g.node("Flatten", vec![x], vec![int("axis", 1)]);
    let w = g.weight(&format!("{classifier}.weight"))?;
    let b = g.weight(&format!("{classifier}.bias"))?;
    let logits = g.node("Gemm", vec![x, w, b], vec![int("transB", 1)]);
    g.nodes.last_mut().expect("the Gemm node").output = vec!["logits".into()];
    let _ = logits;

    let side = net.config.image_size as i64;
    let batch = match opts.batch {
        Some(n) => Dim::Value(n as i64),
        None => Dim::Param("batch"),
    };
    let graph = onnx::GraphProto {
        node: g.nodes,
        name: Some(net.config.name()),
        initializer: g.initializers,
        input: vec![value_info("input", &[batch, Dim::Value(3), Dim::Value(side), Dim::Value(side)])],
        output: vec![value_info("logits", &[batch, Dim::Value(net.config.classes as i64)])],
        ..Default::default()
    };
    let mut props: Vec<(String, String)> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    props.push((
        "input".into(),
        "NCHW float32 RGB: pixels / 255, normalized as 'norm' says, at the size 'view' says".into(),
    ));
    props.sort();
    let model = onnx::ModelProto {
        ir_version: Some(match opts.opset {
            ..=18 => 8,
            19 | 20 => 9,
            _ => 10,
        }),
        opset_import: vec![onnx::OperatorSetIdProto { domain: Some(String::new()), version: Some(opts.opset) }],
        producer_name: Some("resnet-rs".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        metadata_props: props
            .into_iter()
            .map(|(k, v)| onnx::StringStringEntryProto { key: Some(k), value: Some(v) })
            .collect(),
        ..Default::default()
    };
    Ok(prost::Message::encode_to_vec(&model))
}

#[derive(Clone, Copy)]
enum Dim {
    Value(i64),
    Param(&'static str),
}

fn value_info(name: &str, dims: &[Dim]) -> onnx::ValueInfoProto {
    use onnx::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Value(v) => Value::DimValue(*v),
                Dim::Param(p) => Value::DimParam(p.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    let tensor = onnx::type_proto::Tensor {
        elem_type: Some(onnx::tensor_proto::DataType::Float as i32),
        shape: Some(onnx::TensorShapeProto { dim }),
    };
    onnx::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> onnx::AttributeProto {
    onnx::AttributeProto {
        name: Some(name.into()),
        r#type: Some(onnx::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> onnx::AttributeProto {
    onnx::AttributeProto {
        name: Some(name.into()),
        r#type: Some(onnx::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> onnx::AttributeProto {
    onnx::AttributeProto {
        name: Some(name.into()),
        r#type: Some(onnx::attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// The graph being written: nodes in order, weights as initializers.
struct Graph {
    /// The network's state dict in PyTorch's layout, by name.
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    fold_bn: bool,
    /// BatchNorm's epsilon (the same in every layer).
    eps: f32,
    nodes: Vec<onnx::NodeProto>,
    initializers: Vec<onnx::TensorProto>,
    count: usize,
}

impl Graph {
    /// Adds a node of one output, named after its operator; returns that name.
    fn node(&mut self, op: &str, input: Vec<String>, attribute: Vec<onnx::AttributeProto>) -> String {
        self.count += 1;
        let output = format!("{}_{}", op.to_ascii_lowercase(), self.count);
        self.nodes.push(onnx::NodeProto {
            input,
            output: vec![output.clone()],
            name: Some(format!("{op}_{}", self.count)),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
        output
    }

    fn float_init(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(onnx::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(onnx::tensor_proto::DataType::Float as i32),
            name: Some(name.into()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.into()
    }

    fn int_init(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(onnx::TensorProto {
            dims: vec![values.len() as i64],
            data_type: Some(onnx::tensor_proto::DataType::Int64 as i32),
            name: Some(name.into()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        name.into()
    }

    /// (shape, values) of a state-dict tensor.
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.tensors.get(name).cloned().with_context(|| format!("the network has no tensor '{name}'"))
    }

    /// A state-dict tensor as an initializer of the same name.
    fn weight(&mut self, name: &str) -> Result<String> {
        let (shape, values) = self.tensor(name)?;
        Ok(self.float_init(name, &shape, &values))
    }

    /// `[relu](bn(conv(x)) [+ residual])`, the BatchNorm folded into the conv if asked.
    fn conv_bn(
        &mut self,
        x: String,
        unit: &UnitSpec,
        conv: &str,
        bn: &str,
        residual: Option<String>,
        relu: bool,
    ) -> Result<String> {
        let (k, s, p) = (unit.kernel as i64, unit.stride as i64, unit.pad() as i64);
        let attrs = vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s]), ints("pads", &[p, p, p, p])];
        let get = |g: &Self, what: &str| g.tensor(&format!("{bn}.{what}")).map(|e| e.1);
        let (gamma, beta, mean, var) =
            (get(self, "weight")?, get(self, "bias")?, get(self, "running_mean")?, get(self, "running_var")?);
        let (w_shape, w) = self.tensor(&format!("{conv}.weight"))?;
        let mut y = if self.fold_bn {
            // w' = w·γ/√(σ²+ε) per output channel, b' = β − μ·γ/√(σ²+ε).
            let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + self.eps).sqrt()).collect();
            let per_out = w.len() / scale.len();
            let folded: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * scale[i / per_out]).collect();
            let bias: Vec<f32> = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
            let wn = self.float_init(&format!("{conv}.weight"), &w_shape, &folded);
            let bn_bias = self.float_init(&format!("{conv}.bias"), &[bias.len()], &bias);
            self.node("Conv", vec![x, wn, bn_bias], attrs)
        } else {
            let wn = self.float_init(&format!("{conv}.weight"), &w_shape, &w);
            let y = self.node("Conv", vec![x, wn], attrs);
            let n = gamma.len();
            let inputs = vec![
                y,
                self.float_init(&format!("{bn}.weight"), &[n], &gamma),
                self.float_init(&format!("{bn}.bias"), &[n], &beta),
                self.float_init(&format!("{bn}.running_mean"), &[n], &mean),
                self.float_init(&format!("{bn}.running_var"), &[n], &var),
            ];
            self.node("BatchNormalization", inputs, vec![float("epsilon", self.eps)])
        };
        if let Some(r) = residual {
            y = self.node("Add", vec![y, r], vec![]);
        }
        if relu {
            y = self.node("Relu", vec![y], vec![]);
        }
        Ok(y)
    }

    /// Option A: every `stride`-th pixel, channels zero-padded by `pad` on each side.
    fn option_a(&mut self, x: String, stride: usize, pad: usize) -> String {
        self.count += 1;
        let k = self.count;
        let s = stride as i64;
        let inputs = vec![
            x,
            self.int_init(&format!("shortcut_{k}.starts"), &[0, 0]),
            self.int_init(&format!("shortcut_{k}.ends"), &[i64::MAX, i64::MAX]),
            self.int_init(&format!("shortcut_{k}.axes"), &[2, 3]),
            self.int_init(&format!("shortcut_{k}.steps"), &[s, s]),
        ];
        let sliced = self.node("Slice", inputs, vec![]);
        let p = pad as i64;
        let pads = self.int_init(&format!("shortcut_{k}.pads"), &[0, p, 0, 0, 0, p, 0, 0]);
        self.node("Pad", vec![sliced, pads], vec![])
    }
}
