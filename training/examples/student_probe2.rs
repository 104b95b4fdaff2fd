use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use fabric_train::{bottleneck::*, model, residual::*, student::*};
use std::time::Instant;

fn time<F: FnMut() -> Tensor>(name: &str, mut f: F) -> Tensor {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t0 = Instant::now();
        let y = f();
        best = best.min(t0.elapsed().as_secs_f64());
        out = Some(y);
    }
    println!("{name:<28} {:8.1} ms", best * 1e3);
    out.unwrap()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ch: [usize; 4] = if args.get(1).map(|s| s.as_str()) == Some("lite0") { [16, 24, 40, 112] } else { [64, 64, 128, 256] };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = model::seeded_var_builder(&vm, 1, DType::F32, &dev);
    let n = 4;
    let sizes = [64, 64, 32, 16];
    let t: Vec<Tensor> = (0..4).map(|i| Tensor::randn(0f32, 1., (n, ch[i], sizes[i], sizes[i]), &dev).unwrap().relu().unwrap()).collect();
    let b = Bottleneck::new(vb.pp("b"), ch)?;
    let fused = time("fuse", || b.fuse(&t, true).unwrap());
    let emb = time("embed", || b.embed(&fused, true).unwrap());
    let ss = Sspcab::new(vb.pp("ss"), 2 * ch[3])?;
    let s = time("sspcab", || ss.forward(&emb).unwrap());
    let a2 = Attention2::new(vb.pp("a2"), 2 * ch[3])?;
    let e = time("attention2", || a2.forward(&s).unwrap());
    let r = ResidualPaths::new(vb.pp("r"), ch)?;
    time("residual", || r.forward_t(&t, true).unwrap()[0].clone());
    let st0 = Stage::new(vb.pp("s0"), 2 * ch[3], ch[3], true)?;
    let st1 = Stage::new(vb.pp("s1"), ch[3], ch[2], true)?;
    let st2 = Stage::new(vb.pp("s2"), ch[2], ch[1], true)?;
    let st3 = Stage::new(vb.pp("s3"), ch[1], ch[0], false)?;
    let x0 = time("stage0", || st0.forward_t(&e, true).unwrap());
    let x1 = time("stage1", || st1.forward_t(&x0, true).unwrap());
    let x2 = time("stage2", || st2.forward_t(&x1, true).unwrap());
    time("stage3", || st3.forward_t(&x2, true).unwrap());
    time("stage3 eval", || st3.forward_t(&x2, false).unwrap());
    let x = x2.clone();
    let w = Tensor::randn(0f32, 1., (ch[0], ch[1], 3, 3), &dev)?;
    time("conv3x3 s3", || x.conv2d(&w, 1, 1, 1, 1).unwrap());
    let w2 = Tensor::randn(0f32, 1., (ch[0], ch[0], 3, 3), &dev)?;
    let y = x.conv2d(&w, 1, 1, 1, 1)?;
    time("conv3x3 s3 b", || y.conv2d(&w2, 1, 1, 1, 1).unwrap());
    let g = Tensor::ones(ch[0], DType::F32, &dev)?;
    time("bn-like mul", || y.broadcast_mul(&g.reshape((1, ch[0], 1, 1)).unwrap()).unwrap());
    time("relu", || y.relu().unwrap());
    time("add", || (&y + &y).unwrap());
    time("sqr", || y.sqr().unwrap());
    time("sum_keepdim2", || y.reshape((n, ch[0], 64 * 64)).unwrap().sum_keepdim(2).unwrap());
    let bn = {
        let vm = VarMap::new();
        candle_nn::batch_norm(ch[0], 1e-5, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev))?
    };
    time("candle bn train", || bn.forward_train(&y).unwrap());
    Ok(())
}
