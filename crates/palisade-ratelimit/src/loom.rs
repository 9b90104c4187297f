//! Swaps the atomics for loom's under `cfg(palisade_loom)` (not `loom`: tokio reads that one too and drops its net module), so the model tests explore every
//! interleaving of the GCRA compare-and-swap loop.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
