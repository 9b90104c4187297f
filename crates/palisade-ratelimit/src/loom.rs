//! Swaps the atomics for loom's under `cfg(loom)`, so the model tests explore every
//! interleaving of the GCRA compare-and-swap loop.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
