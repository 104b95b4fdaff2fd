use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use fabric_train::{model, residual::*, student::*};
use std::time::Instant;

fn time<F: FnMut() -> Tensor>(name: &str, mut f: F) -> Tensor {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..5 {
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
    let vm = VarMap::new();
    let vb = model::seeded_var_builder(&vm, 1, DType::F32, &dev);
    let x = Tensor::randn(0f32, 1., (4, 16, 64, 64), &dev)?.relu()?;
    let w1 = Tensor::randn(0f32, 1., (40, 16, 1, 1), &dev)?;
    time("1x1 s2 16->40", || x.conv2d(&w1, 0, 2, 1, 1).unwrap());
    time("1x1 s1 16->40", || x.conv2d(&w1, 0, 1, 1, 1).unwrap());
    let w3 = Tensor::randn(0f32, 1., (24, 16, 3, 3), &dev)?;
    time("3x3 16->24", || x.conv2d(&w3, 1, 1, 1, 1).unwrap());
    let y = x.conv2d(&w3, 1, 1, 1, 1)?;
    time("avgpool", || y.avg_pool2d(2).unwrap());
    time("softmax", || fabric_train::loss::cos_distance(&y, &y).unwrap());
    let c3 = ConvReluBn::c3(vb.pp("c3"), 16, 24)?;
    time("c3 unit train", || c3.forward_t(&x, true).unwrap());
    time("c3 unit eval", || c3.forward_t(&x, false).unwrap());
    let att = Attention::new(vb.pp("att"), 24)?;
    time("attention 24", || att.forward(&y).unwrap());
    let w11 = Tensor::randn(0f32, 1., (24, 24, 1, 1), &dev)?;
    time("1x1 24->24", || y.conv2d(&w11, 0, 1, 1, 1).unwrap());
    time("relu", || y.relu().unwrap());
    let v: Vec<f32> = y.flatten_all()?.to_vec1()?;
    let t0 = Instant::now();
    let s: f32 = v.iter().map(|x| x.exp()).sum();
    println!("raw exp loop {:?} {s}", t0.elapsed());
    Ok(())
}
