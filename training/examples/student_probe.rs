use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use fabric_inspect::meta::Variant;
use fabric_train::{loss, model, student::Student};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ch: [usize; 4] = if args.get(1).map(|s| s.as_str()) == Some("lite0") { [16, 24, 40, 112] } else { [64, 64, 128, 256] };
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = model::seeded_var_builder(&vm, 1, DType::F32, &dev);
    let st = Student::new(vb, ch, Variant::Residual)?;
    let n = 4;
    let sizes = [64, 64, 32, 16];
    let t: Vec<Tensor> = (0..4).map(|i| Tensor::randn(0f32, 1., (n, ch[i], sizes[i], sizes[i]), &dev).unwrap().relu().unwrap()).collect();
    let mut opt = candle_nn::AdamW::new(model::trainable_vars(&vm), candle_nn::ParamsAdamW { lr: 1e-3, weight_decay: 0.0, ..Default::default() })?;
    for it in 0..3 {
        let t0 = Instant::now();
        let s = st.forward_t(&t, true)?;
        let l = loss::rrd_loss(&t, &s, &loss::DEFAULT_ALPHA)?;
        let lv = l.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let g = l.backward()?;
        let t2 = Instant::now();
        opt.step(&g)?;
        let t3 = Instant::now();
        println!("it {it}: loss {lv:.4} fwd {:?} bwd {:?} opt {:?}", t1 - t0, t2 - t1, t3 - t2);
    }
    Ok(())
}
