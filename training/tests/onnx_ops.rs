//! Every operator of `onnx::Graph`, run in ONNX Runtime, against the same computation in
//! candle on seeded random data. Skips with a printed reason when ONNX Runtime is absent.

mod onnx_support;

use candle_core::{DType, Device, Tensor, D};
use fabric_train::onnx::{
    bn_scale_shift, fold_bn_into_conv, fold_bn_into_conv_transpose, BnParams, ConvSpec, Dim, Graph,
    PoolSpec, Value,
};
use onnx_support::{assert_close, ort_env, rand_vec, run, session, Buf};

/// Relative tolerance of one operator (the export's parity bound is 1e-4).
const REL: f32 = 1e-5;

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
}

fn flat(x: &Tensor) -> Vec<f32> {
    x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    let mut d = vec![Dim::Batch];
    d.extend(shape[1..].iter().map(|&n| Dim::Fixed(n)));
    d
}

/// Builds a graph with one NCHW input `x` of `in_shape`, lets `body` add nodes, declares the
/// result as output `y` of `out_shape`, runs it in ONNX Runtime on `x` and compares with
/// `want`.
fn check(
    what: &str,
    x: &Buf,
    out_shape: &[usize],
    want: &Tensor,
    body: impl FnOnce(&mut Graph, &Value) -> Value,
) {
    let Some(env) = ort_env(what) else { return };
    let mut g = Graph::new(what);
    let xin = g.input("x", &dims(&x.shape)).unwrap();
    let y = body(&mut g, &xin);
    g.output(&y, "y", &dims(out_shape)).unwrap();
    let bytes = g.to_bytes().unwrap();
    let mut s = session(&env, &bytes, 1);
    let out = run(&mut s, &[("x", x)], &["y"]);
    assert_eq!(out[0].shape, want.dims(), "{what}: output shape");
    assert_eq!(out[0].shape, out_shape, "{what}: declared output shape");
    assert_close(what, &out[0].data, &flat(want), REL);
}

fn input(seed: u64, shape: &[usize]) -> (Buf, Tensor) {
    let n = shape.iter().product();
    let data = rand_vec(seed, n, -2.0, 2.0);
    let b = Buf {
        shape: shape.to_vec(),
        data,
    };
    let x = t(shape, &b.data);
    (b, x)
}

fn bn(seed: u64, c: usize, eps: f32) -> BnParams {
    BnParams {
        gamma: rand_vec(seed, c, 0.5, 1.5),
        beta: rand_vec(seed + 1, c, -0.5, 0.5),
        mean: rand_vec(seed + 2, c, -0.3, 0.3),
        var: rand_vec(seed + 3, c, 0.2, 2.0),
        eps,
    }
}

fn candle_bn(x: &Tensor, p: &BnParams) -> Tensor {
    let c = p.channels();
    let v = |d: &[f32]| t(&[1, c, 1, 1], d);
    let var_eps: Vec<f32> = p.var.iter().map(|v| v + p.eps).collect();
    x.broadcast_sub(&v(&p.mean))
        .unwrap()
        .broadcast_div(&v(&var_eps).sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&v(&p.gamma))
        .unwrap()
        .broadcast_add(&v(&p.beta))
        .unwrap()
}

/// Asymmetric constant padding of the two spatial axes in candle.
fn candle_pad(x: &Tensor, [top, left, bottom, right]: [usize; 4], value: f32) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let full = |s: &[usize]| Tensor::full(value, s, &Device::Cpu).unwrap();
    let mut parts = vec![];
    if top > 0 {
        parts.push(full(&[n, c, top, w]));
    }
    parts.push(x.clone());
    if bottom > 0 {
        parts.push(full(&[n, c, bottom, w]));
    }
    let x = Tensor::cat(&parts, 2).unwrap();
    let h2 = h + top + bottom;
    let mut parts = vec![];
    if left > 0 {
        parts.push(full(&[n, c, h2, left]));
    }
    parts.push(x);
    if right > 0 {
        parts.push(full(&[n, c, h2, right]));
    }
    Tensor::cat(&parts, 3).unwrap()
}

fn add_bias(y: &Tensor, b: &[f32]) -> Tensor {
    y.broadcast_add(&t(&[1, b.len(), 1, 1], b)).unwrap()
}

#[test]
fn conv_with_bias_stride_and_padding() {
    let (xb, x) = input(1, &[2, 3, 9, 9]);
    let w = rand_vec(2, 4 * 3 * 3 * 3, -0.5, 0.5);
    let b = rand_vec(3, 4, -0.5, 0.5);
    let want = add_bias(&x.conv2d(&t(&[4, 3, 3, 3], &w), 1, 2, 1, 1).unwrap(), &b);
    check("conv", &xb, &[2, 4, 5, 5], &want, |g, x| {
        g.conv("conv", x, &w, [4, 3, 3, 3], Some(&b), &ConvSpec::new(2, 1))
            .unwrap()
    });
}

#[test]
fn conv_dilated_without_bias() {
    let (xb, x) = input(4, &[1, 2, 8, 8]);
    let w = rand_vec(5, 3 * 2 * 3 * 3, -0.5, 0.5);
    let want = x.conv2d(&t(&[3, 2, 3, 3], &w), 2, 1, 2, 1).unwrap();
    check("conv_dilated", &xb, &[1, 3, 8, 8], &want, |g, x| {
        let spec = ConvSpec::new(1, 2).with_dilation(2);
        g.conv("conv", x, &w, [3, 2, 3, 3], None, &spec).unwrap()
    });
}

#[test]
fn depthwise_conv_with_tf_same_asymmetric_padding() {
    // TensorFlow "SAME" for k = 5, stride 2 on an even side: 1 cell before, 2 after.
    let (xb, x) = input(6, &[2, 4, 8, 8]);
    let w = rand_vec(7, 4 * 5 * 5, -0.5, 0.5);
    let pads = [1, 1, 2, 2];
    let want = candle_pad(&x, pads, 0.0)
        .conv2d(&t(&[4, 1, 5, 5], &w), 0, 2, 1, 4)
        .unwrap();
    check("conv_depthwise_same", &xb, &[2, 4, 4, 4], &want, |g, x| {
        let spec = ConvSpec::new(2, 0).with_pads(pads).with_group(4);
        g.conv("dw", x, &w, [4, 1, 5, 5], None, &spec).unwrap()
    });
}

#[test]
fn explicit_pad_then_conv() {
    let (xb, x) = input(8, &[1, 3, 6, 6]);
    let pads = [0, 1, 1, 0];
    let want = candle_pad(&x, pads, 0.0);
    check("pad", &xb, &[1, 3, 7, 7], &want, |g, x| {
        g.pad("pad", x, pads, 0.0).unwrap()
    });
}

#[test]
fn conv_transpose_upsampling_and_same_resolution() {
    let (xb, x) = input(9, &[2, 4, 5, 5]);
    let w = rand_vec(10, 4 * 3 * 2 * 2, -0.5, 0.5);
    let want = x
        .conv_transpose2d(&t(&[4, 3, 2, 2], &w), 0, 0, 2, 1)
        .unwrap();
    check(
        "conv_transpose_2x2_s2",
        &xb,
        &[2, 3, 10, 10],
        &want,
        |g, x| {
            g.conv_transpose("up", x, &w, [4, 3, 2, 2], None, &ConvSpec::new(2, 0))
                .unwrap()
        },
    );
    let w3 = rand_vec(11, 4 * 2 * 3 * 3, -0.5, 0.5);
    let b3 = rand_vec(12, 2, -0.5, 0.5);
    let want = add_bias(
        &x.conv_transpose2d(&t(&[4, 2, 3, 3], &w3), 1, 0, 1, 1)
            .unwrap(),
        &b3,
    );
    check(
        "conv_transpose_3x3_p1",
        &xb,
        &[2, 2, 5, 5],
        &want,
        |g, x| {
            g.conv_transpose("ct", x, &w3, [4, 2, 3, 3], Some(&b3), &ConvSpec::new(1, 1))
                .unwrap()
        },
    );
}

#[test]
fn batch_norm_in_inference_form() {
    let (xb, x) = input(13, &[3, 5, 4, 4]);
    let p = bn(14, 5, 1e-5);
    let want = candle_bn(&x, &p);
    check("batch_norm", &xb, &[3, 5, 4, 4], &want, |g, x| {
        g.batch_norm("bn", x, &p).unwrap()
    });
    let (scale, shift) = bn_scale_shift(&p).unwrap();
    check("channel_affine", &xb, &[3, 5, 4, 4], &want, |g, x| {
        g.channel_affine("bn", x, &scale, &shift).unwrap()
    });
}

#[test]
fn conv_followed_by_batch_norm_folds() {
    let (xb, x) = input(15, &[2, 3, 8, 8]);
    let w = rand_vec(16, 6 * 3 * 3 * 3, -0.5, 0.5);
    let p = bn(17, 6, 1e-3);
    let want = candle_bn(&x.conv2d(&t(&[6, 3, 3, 3], &w), 1, 1, 1, 1).unwrap(), &p);
    let (fw, fb) = fold_bn_into_conv(&w, [6, 3, 3, 3], None, &p).unwrap();
    check("conv_bn_folded", &xb, &[2, 6, 8, 8], &want, |g, x| {
        g.conv(
            "conv",
            x,
            &fw,
            [6, 3, 3, 3],
            Some(&fb),
            &ConvSpec::new(1, 1),
        )
        .unwrap()
    });
    // Depthwise conv + BN (EfficientNet-Lite blocks).
    let wd = rand_vec(18, 3 * 3 * 3, -0.5, 0.5);
    let pd = bn(19, 3, 1e-3);
    let want = candle_bn(&x.conv2d(&t(&[3, 1, 3, 3], &wd), 1, 1, 1, 3).unwrap(), &pd);
    let (fw, fb) = fold_bn_into_conv(&wd, [3, 1, 3, 3], None, &pd).unwrap();
    check("depthwise_bn_folded", &xb, &[2, 3, 8, 8], &want, |g, x| {
        let spec = ConvSpec::new(1, 1).with_group(3);
        g.conv("dw", x, &fw, [3, 1, 3, 3], Some(&fb), &spec)
            .unwrap()
    });
}

#[test]
fn conv_transpose_followed_by_batch_norm_folds() {
    let (xb, x) = input(20, &[2, 4, 4, 4]);
    let w = rand_vec(21, 4 * 3 * 2 * 2, -0.5, 0.5);
    let p = bn(22, 3, 1e-5);
    let want = candle_bn(
        &x.conv_transpose2d(&t(&[4, 3, 2, 2], &w), 0, 0, 2, 1)
            .unwrap(),
        &p,
    );
    let (fw, fb) = fold_bn_into_conv_transpose(&w, [4, 3, 2, 2], 1, None, &p).unwrap();
    check(
        "conv_transpose_bn_folded",
        &xb,
        &[2, 3, 8, 8],
        &want,
        |g, x| {
            g.conv_transpose("up", x, &fw, [4, 3, 2, 2], Some(&fb), &ConvSpec::new(2, 0))
                .unwrap()
        },
    );
}

#[test]
fn activations() {
    let (xb, x) = input(23, &[2, 3, 4, 5]);
    check("relu", &xb, &[2, 3, 4, 5], &x.relu().unwrap(), |g, x| {
        g.relu("r", x).unwrap()
    });
    let x4 = (&x * 4.0).unwrap();
    let xb4 = Buf {
        shape: xb.shape.clone(),
        data: flat(&x4),
    };
    check(
        "clip_relu6",
        &xb4,
        &[2, 3, 4, 5],
        &x4.clamp(0f32, 6f32).unwrap(),
        |g, x| g.clip("r6", x, 0.0, 6.0).unwrap(),
    );
    check(
        "sigmoid",
        &xb4,
        &[2, 3, 4, 5],
        &candle_nn::ops::sigmoid(&x4).unwrap(),
        |g, x| g.sigmoid("s", x).unwrap(),
    );
}

#[test]
fn pooling() {
    let (xb, x) = input(24, &[2, 3, 9, 9]);
    let want = candle_pad(&x, [1; 4], f32::NEG_INFINITY)
        .max_pool2d_with_stride(3, 2)
        .unwrap();
    check("max_pool_3x3_s2_p1", &xb, &[2, 3, 5, 5], &want, |g, x| {
        g.max_pool("mp", x, &PoolSpec::new(3, 2, 1)).unwrap()
    });
    let (xb, x) = input(25, &[2, 3, 8, 8]);
    let want = x.avg_pool2d(2).unwrap();
    check("avg_pool_2x2_s2", &xb, &[2, 3, 4, 4], &want, |g, x| {
        g.avg_pool("ap", x, &PoolSpec::new(2, 2, 0)).unwrap()
    });
    let want = x.mean_keepdim(D::Minus1).unwrap().mean_keepdim(2).unwrap();
    check("global_avg_pool", &xb, &[2, 3, 1, 1], &want, |g, x| {
        g.global_avg_pool("gap", x).unwrap()
    });
    check("reduce_mean_hw", &xb, &[2, 3, 1, 1], &want, |g, x| {
        g.reduce_mean("rm", x, &[2, 3], true).unwrap()
    });
}

#[test]
fn softmax_along_width_and_channels() {
    let (xb, x) = input(26, &[2, 3, 4, 6]);
    let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
    check("softmax_axis_-1", &xb, &[2, 3, 4, 6], &want, |g, x| {
        g.softmax("sm", x, -1).unwrap()
    });
    check("softmax_axis_3", &xb, &[2, 3, 4, 6], &want, |g, x| {
        g.softmax("sm", x, 3).unwrap()
    });
    let want = candle_nn::ops::softmax(&x, 1).unwrap();
    check("softmax_axis_1", &xb, &[2, 3, 4, 6], &want, |g, x| {
        g.softmax("sm", x, 1).unwrap()
    });
}

#[test]
fn elementwise_with_broadcasting() {
    let (xb, x) = input(27, &[2, 3, 4, 4]);
    let c = rand_vec(28, 3, -1.0, 1.0);
    let ct = t(&[1, 3, 1, 1], &c);
    check(
        "add_broadcast",
        &xb,
        &[2, 3, 4, 4],
        &x.broadcast_add(&ct).unwrap(),
        |g, x| {
            let v = g.init_f32("c", &[1, 3, 1, 1], &c).unwrap();
            g.add("add", x, &v).unwrap()
        },
    );
    check(
        "mul_broadcast",
        &xb,
        &[2, 3, 4, 4],
        &x.broadcast_mul(&ct).unwrap(),
        |g, x| {
            let v = g.init_f32("c", &[1, 3, 1, 1], &c).unwrap();
            g.mul("mul", x, &v).unwrap()
        },
    );
    check(
        "add_self",
        &xb,
        &[2, 3, 4, 4],
        &(&x + &x).unwrap(),
        |g, x| g.add("add", x, x).unwrap(),
    );
}

#[test]
fn linear_layers_and_reshapes() {
    let (xb, x) = input(29, &[3, 4, 2, 2]);
    let w = rand_vec(30, 5 * 16, -0.5, 0.5);
    let b = rand_vec(31, 5, -0.5, 0.5);
    let flat_x = x.flatten_from(1).unwrap();
    let want = flat_x
        .matmul(&t(&[5, 16], &w).t().unwrap())
        .unwrap()
        .broadcast_add(&t(&[1, 5], &b))
        .unwrap()
        .reshape((3, 5, 1, 1))
        .unwrap();
    check("flatten_gemm_reshape", &xb, &[3, 5, 1, 1], &want, |g, x| {
        let f = g.flatten("flat", x, 1).unwrap();
        let y = g.gemm("fc", &f, &w, [5, 16], Some(&b)).unwrap();
        g.reshape("back", &y, &[0, -1, 1, 1]).unwrap()
    });
    let m = rand_vec(32, 2 * 3, -0.5, 0.5);
    let want = x
        .broadcast_matmul(&t(&[2, 3], &m))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    check("matmul_last_axes", &xb, &[3, 4, 2, 3], &want, |g, x| {
        let mv = g.init_f32("m", &[2, 3], &m).unwrap();
        g.matmul("mm", x, &mv).unwrap()
    });
}

#[test]
fn batch_axis_is_dynamic_and_items_independent() {
    let Some(env) = ort_env("batch_axis_is_dynamic_and_items_independent") else {
        return;
    };
    let p = bn(33, 3, 1e-5);
    let w = rand_vec(34, 3 * 3 * 3 * 3, -0.5, 0.5);
    let mut g = Graph::new("batch");
    let x = g.input("x", &dims(&[0, 3, 6, 6])).unwrap();
    let y = g
        .conv("c", &x, &w, [3, 3, 3, 3], None, &ConvSpec::new(1, 1))
        .unwrap();
    let y = g.relu("r", &y).unwrap();
    let y = g.batch_norm("bn", &y, &p).unwrap();
    let y = g.softmax("sm", &y, -1).unwrap();
    g.output(&y, "y", &dims(&[0, 3, 6, 6])).unwrap();
    let mut s = session(&env, &g.to_bytes().unwrap(), 1);
    let per = 3 * 6 * 6;
    let all = rand_vec(35, 8 * per, -1.0, 1.0);
    let batch = run(
        &mut s,
        &[(
            "x",
            &Buf {
                shape: vec![8, 3, 6, 6],
                data: all.clone(),
            },
        )],
        &["y"],
    );
    for (i, n) in [(0usize, 1usize), (5, 1), (1, 7)] {
        let part = Buf {
            shape: vec![n, 3, 6, 6],
            data: all[i * per..(i + n) * per].to_vec(),
        };
        let out = run(&mut s, &[("x", &part)], &["y"]);
        assert_eq!(out[0].shape, vec![n, 3, 6, 6]);
        assert_close(
            &format!("items {i}..{} alone vs in a batch of 8", i + n),
            &out[0].data,
            &batch[0].data[i * per..(i + n) * per],
            1e-6,
        );
    }
}
