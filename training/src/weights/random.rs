//! Seeded random teacher weights, for timing and parity runs without a pretrained file.
//!
//! Every tensor draws from its own generator, seeded from the run's seed and the tensor's
//! name, so a tensor's values do not depend on which other layers are built. Convolutions
//! are He-normal (std √(2 / fan_in)); BatchNorm gets γ ~ U(0.8, 1.2), β ~ 0.1·N(0, 1),
//! running mean ~ 0.1·N(0, 1) and running variance ~ U(0.5, 1.5), so that no layer folds to
//! zero and activations keep a similar scale through the network.

/// A small, fast generator (SplitMix64); enough for initial weights, not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from the raw state `state`.
    pub fn from_state(state: u64) -> Self {
        SplitMix64(state)
    }

    /// A generator for tensor `name` under run seed `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> Self {
        // FNV-1a over the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        SplitMix64(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// He-normal convolution weights of `shape` = (Cout, Cin/groups, kh, kw).
pub fn conv_weight(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let std = (2.0 / fan_in as f64).sqrt();
    let mut rng = SplitMix64::for_tensor(seed, name);
    let n: usize = shape.iter().product();
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

/// BatchNorm parameters and statistics for `c` channels, named from `prefix`.
pub fn batch_norm(seed: u64, prefix: &str, c: usize) -> [Vec<f32>; 4] {
    let mut g = SplitMix64::for_tensor(seed, &format!("{prefix}.weight"));
    let mut b = SplitMix64::for_tensor(seed, &format!("{prefix}.bias"));
    let mut m = SplitMix64::for_tensor(seed, &format!("{prefix}.running_mean"));
    let mut v = SplitMix64::for_tensor(seed, &format!("{prefix}.running_var"));
    [
        (0..c).map(|_| (0.8 + 0.4 * g.uniform()) as f32).collect(),
        (0..c).map(|_| (0.1 * b.normal()) as f32).collect(),
        (0..c).map(|_| (0.1 * m.normal()) as f32).collect(),
        (0..c).map(|_| (0.5 + v.uniform()) as f32).collect(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let a = conv_weight(7, "conv1.weight", &[4, 3, 3, 3]);
        let b = conv_weight(7, "conv1.weight", &[4, 3, 3, 3]);
        let c = conv_weight(8, "conv1.weight", &[4, 3, 3, 3]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn statistics_are_in_range() {
        let [g, _, _, v] = batch_norm(1, "bn1", 256);
        assert!(g.iter().all(|&x| (0.8..1.2).contains(&x)));
        assert!(v.iter().all(|&x| (0.5..1.5).contains(&x)));
        let w = conv_weight(1, "w", &[64, 64, 3, 3]);
        let var = w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64;
        let expected = 2.0 / 576.0;
        assert!(
            (var / expected - 1.0).abs() < 0.1,
            "var {var} vs {expected}"
        );
    }
}
