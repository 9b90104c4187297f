//! Swaps the atomics for loom's under `cfg(palisade_loom)` (not `loom`: tokio reads that one too and drops its net module), so the model tests explore every
//! interleaving of the GCRA compare-and-swap loop.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Waits a moment for another thread (a quota change in progress): loom's yield in the model,
/// so that it schedules the other thread; the OS scheduler's otherwise.
#[cfg(palisade_loom)]
pub(crate) fn yield_now() {
    loom::thread::yield_now();
}

/// Waits a moment for another thread (a quota change in progress).
#[cfg(not(palisade_loom))]
pub(crate) fn yield_now() {
    std::thread::yield_now();
}
