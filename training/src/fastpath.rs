//! Per-thread switches of the training step's fast CPU paths: the convolutions of
//! [`crate::fastconv`], the fused BatchNorm of [`crate::fastbn`] and the fused element-wise
//! operations of [`crate::fastops`]. All are on by default; turned off on a thread, layers run
//! from it use candle's own operations, the straightforward path that tests compare against.

use std::cell::Cell;

/// One fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPath {
    /// Convolutions as matrix products.
    Convs = 0,
    /// Fused train-mode BatchNorm (and BatchNorm + ReLU).
    BatchNorm = 1,
    /// Fused ReLU, add + ReLU, attention and cosine distance.
    Elementwise = 2,
}

thread_local! {
    static ON: Cell<[bool; 3]> = const { Cell::new([true; 3]) };
}

/// Turns one fast path on or off for the calling thread.
pub fn set(path: FastPath, enabled: bool) {
    ON.with(|on| {
        let mut v = on.get();
        v[path as usize] = enabled;
        on.set(v);
    });
}

/// Turns every fast path on or off for the calling thread.
pub fn set_all(enabled: bool) {
    ON.with(|on| on.set([enabled; 3]));
}

/// Whether the calling thread uses this fast path.
pub fn enabled(path: FastPath) -> bool {
    ON.with(|on| on.get()[path as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_independent_and_per_thread() {
        set(FastPath::BatchNorm, false);
        assert!(enabled(FastPath::Convs) && !enabled(FastPath::BatchNorm));
        std::thread::spawn(|| assert!(enabled(FastPath::BatchNorm)))
            .join()
            .unwrap();
        set_all(true);
        assert!(enabled(FastPath::BatchNorm));
    }
}
