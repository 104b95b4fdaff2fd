use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use std::time::Instant;

fn time<F: FnMut() -> Tensor>(name: &str, mut f: F) -> Tensor {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..7 {
        let t0 = Instant::now();
        let y = f();
        best = best.min(t0.elapsed().as_secs_f64());
        out = Some(y);
    }
    println!("{name:<28} {:8.2} ms", best * 1e3);
    out.unwrap()
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let y = Tensor::randn(0f32, 1., (4, 24, 64, 64), &dev)?.relu()?;
    let w = Tensor::randn(0f32, 1., (24, 24, 1, 1), &dev)?;
    let b = Tensor::randn(0f32, 1., 24, &dev)?;
    let conv = Conv2d::new(w.clone(), Some(b.clone()), Conv2dConfig::default());
    let convnb = Conv2d::new(w.clone(), None, Conv2dConfig::default());
    time("conv nobias", || convnb.forward(&y).unwrap());
    time("conv bias", || conv.forward(&y).unwrap());
    time("bias add", || y.broadcast_add(&b.reshape((1, 24, 1, 1)).unwrap()).unwrap());
    time("bias mul", || y.broadcast_mul(&b.reshape((1, 24, 1, 1)).unwrap()).unwrap());
    let b3 = b.reshape((1, 24, 1)).unwrap();
    let y3 = y.reshape((4, 24, 4096)).unwrap();
    time("bias add 3d", || y3.broadcast_add(&b3).unwrap());
    time("relu", || y.relu().unwrap());
    time("mul", || (&y * &y).unwrap());
    time("softmax_last_dim", || candle_nn::ops::softmax_last_dim(&y).unwrap());
    time("exp", || y.exp().unwrap());
    time("sum dim1", || y.sum(1).unwrap());
    time("sqrt", || y.sqrt().unwrap());
    time("affine", || y.affine(2.0, 1.0).unwrap());
    let ys = Tensor::randn(0f32, 1., (4, 24, 64, 64), &dev)?;
    time("mean keepdim(0,2,3)", || ys.mean_keepdim((0, 2, 3)).unwrap());
    let vm = candle_nn::VarMap::new();
    let vb = fabric_train::model::seeded_var_builder(&vm, 1, DType::F32, &dev);
    let att = fabric_train::residual::Attention::new(vb.pp("a"), 24)?;
    time("attention", || att.forward(&y).unwrap());
    time("manual attention", || {
        let a = conv.forward(&y).unwrap().relu().unwrap();
        let bb = conv.forward(&a).unwrap().relu().unwrap();
        let z = conv.forward(&bb).unwrap();
        (candle_nn::ops::softmax_last_dim(&z).unwrap() * a).unwrap()
    });
    let c3 = fabric_train::student::ConvReluBn::c3(vb.pp("c3"), 24, 24)?;
    time("c3 eval", || c3.forward_t(&y, false).unwrap());
    time("c3 train", || c3.forward_t(&y, true).unwrap());
    let w3 = Tensor::randn(0f32, 1., (24, 24, 3, 3), &dev)?;
    time("conv3", || y.conv2d(&w3, 1, 1, 1, 1).unwrap());
    println!("threads {}", candle_core::utils::get_num_threads());
    let _ = DType::F32;
    Ok(())
}
