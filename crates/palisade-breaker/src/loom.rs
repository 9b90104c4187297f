//! Swaps the atomics and the mutex for loom's under `cfg(palisade_loom)` (not `loom`: tokio
//! reads that one too), so the model tests explore every interleaving of the state machine.

#[cfg(palisade_loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(palisade_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(not(palisade_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
