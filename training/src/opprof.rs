//! Time per kind of operation inside a training step (`fabric-train bench --profile`).
//!
//! The fast convolutions and the fused BatchNorm time their own passes here, keyed by the
//! phase of the step (set by the bench: teacher, student, backward, optimiser), the pass and
//! its geometry. Everything else candle computes (element-wise operations, reductions,
//! matrix products of the attention) shows up as the phase's remainder. Off by default;
//! turned on, a timer costs two clock reads and a short locked map update per pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PHASE: AtomicU8 = AtomicU8::new(0);
static TABLE: Mutex<BTreeMap<(u8, String), Entry>> = Mutex::new(BTreeMap::new());

/// Names of the phases, by index.
pub const PHASES: [&str; 4] = ["teacher", "student", "backward", "optimizer"];

/// Calls and accumulated time of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Entry {
    /// Passes timed.
    pub calls: u64,
    /// Seconds spent in them.
    pub secs: f64,
}

/// Turns the timers on or off and clears what they collected.
pub fn enable(on: bool) {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the timers are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Sets the phase that the following passes count under (an index into [`PHASES`]).
pub fn set_phase(phase: usize) {
    PHASE.store(phase.min(PHASES.len() - 1) as u8, Ordering::Relaxed);
}

/// A running timer; adds its time under its key when dropped.
pub struct Timer {
    key: Option<(u8, String)>,
    start: Instant,
}

/// Starts a timer for the pass that `key` names; `key` is only called while the timers are
/// on.
pub fn timer(key: impl FnOnce() -> String) -> Timer {
    let key = enabled().then(|| (PHASE.load(Ordering::Relaxed), key()));
    Timer {
        key,
        start: Instant::now(),
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let secs = self.start.elapsed().as_secs_f64();
            let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let e = t.entry(key).or_default();
            e.calls += 1;
            e.secs += secs;
        }
    }
}

/// What the timers collected: `(phase, key, entry)`, by phase then key.
pub fn snapshot() -> Vec<(&'static str, String, Entry)> {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    t.iter()
        .map(|((p, k), e)| (PHASES[*p as usize], k.clone(), *e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_count_only_while_enabled() {
        enable(false);
        drop(timer(|| "off".into()));
        enable(true);
        set_phase(2);
        drop(timer(|| "on".into()));
        drop(timer(|| "on".into()));
        let s = snapshot();
        enable(false);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].0, s[0].1.as_str(), s[0].2.calls),
            ("backward", "on", 2)
        );
    }
}
