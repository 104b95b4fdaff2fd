//! ResNet-18 / ResNet-34 encoder (He et al., "Deep Residual Learning for Image Recognition",
//! 2016) with torchvision's parameter names, up to the deepest requested unit.
//!
//! Units (output channels, stride at the input resolution):
//!
//! | unit | ops | channels | stride |
//! |---|---|---|---|
//! | `stem` | `conv1` 7×7/2 pad 3, `bn1`, ReLU | 64 | 2 |
//! | `stem_pool` | max-pool 3×3/2 pad 1 | 64 | 4 |
//! | `layer1` | BasicBlocks (ResNet-18: 2, ResNet-34: 3) | 64 | 4 |
//! | `layer2` | BasicBlocks (2 / 4), first strided with a 1×1 `downsample` | 128 | 8 |
//! | `layer3` | BasicBlocks (2 / 6), likewise | 256 | 16 |
//! | `layer4` | BasicBlocks (2 / 3), likewise | 512 | 32 |
//!
//! BasicBlock: `conv1` 3×3 (stride s) → `bn1` → ReLU → `conv2` 3×3 → `bn2`, plus the shortcut
//! (identity, or `downsample.0` 1×1/s + `downsample.1` BN), then ReLU. BatchNorm ε = 1e-5.

use super::ops::{MaxPool, Padding, TeacherOp};
use super::{Params, TeacherError, Unit, UnitInfo};

const BN_EPS: f64 = 1e-5;
const WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// Blocks per layer.
pub(crate) fn blocks(depth: usize) -> [usize; 4] {
    if depth == 18 {
        [2, 2, 2, 2]
    } else {
        [3, 4, 6, 3]
    }
}

/// Names, channels and strides of the units, in order.
pub(crate) fn catalog() -> Vec<UnitInfo> {
    let mut units = vec![
        UnitInfo::new("stem", 64, 2),
        UnitInfo::new("stem_pool", 64, 4),
    ];
    for (i, &c) in WIDTHS.iter().enumerate() {
        units.push(UnitInfo::new(&format!("layer{}", i + 1), c, 4 << i));
    }
    units
}

/// Builds the first `count` units of a ResNet of `depth` 18 or 34.
pub(crate) fn build(
    depth: usize,
    params: &mut Params,
    count: usize,
) -> Result<Vec<Unit>, TeacherError> {
    let info = catalog();
    let mut units = Vec::with_capacity(count);
    for (index, unit) in info.iter().take(count).enumerate() {
        let ops = match index {
            0 => vec![
                TeacherOp::Conv(params.conv_bn(
                    "conv1",
                    "bn1",
                    [64, 3, 7, 7],
                    2,
                    Padding::Symmetric(3),
                    1,
                    BN_EPS,
                )?),
                TeacherOp::Relu,
            ],
            1 => vec![TeacherOp::MaxPool(MaxPool::STEM)],
            _ => {
                let layer = index - 1;
                let cout = WIDTHS[layer - 1];
                let cin = if layer == 1 { 64 } else { WIDTHS[layer - 2] };
                let mut ops = Vec::new();
                for b in 0..blocks(depth)[layer - 1] {
                    let stride = if b == 0 && layer > 1 { 2 } else { 1 };
                    let c_in = if b == 0 { cin } else { cout };
                    ops.extend(basic_block(
                        params,
                        &format!("layer{layer}.{b}"),
                        c_in,
                        cout,
                        stride,
                    )?);
                }
                ops
            }
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

fn basic_block(
    params: &mut Params,
    prefix: &str,
    cin: usize,
    cout: usize,
    stride: usize,
) -> Result<[TeacherOp; 2], TeacherError> {
    let p3 = Padding::Symmetric(1);
    let body = vec![
        TeacherOp::Conv(params.conv_bn(
            &format!("{prefix}.conv1"),
            &format!("{prefix}.bn1"),
            [cout, cin, 3, 3],
            stride,
            p3,
            1,
            BN_EPS,
        )?),
        TeacherOp::Relu,
        TeacherOp::Conv(params.conv_bn(
            &format!("{prefix}.conv2"),
            &format!("{prefix}.bn2"),
            [cout, cout, 3, 3],
            1,
            p3,
            1,
            BN_EPS,
        )?),
    ];
    let shortcut = if stride != 1 || cin != cout {
        vec![TeacherOp::Conv(params.conv_bn(
            &format!("{prefix}.downsample.0"),
            &format!("{prefix}.downsample.1"),
            [cout, cin, 1, 1],
            stride,
            Padding::Symmetric(0),
            1,
            BN_EPS,
        )?)]
    } else {
        Vec::new()
    };
    Ok([TeacherOp::Residual { body, shortcut }, TeacherOp::Relu])
}
