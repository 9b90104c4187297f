//! [`PoolLayer`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;
use tower_service::Service;

use crate::config::Config;
use crate::handle::PoolHandle;
use crate::lease::PoolKey;
use crate::pool::Shared;
use crate::service::Pool;

/// Wraps a connector into a [`Pool`]. The pool's state is created here, so every service this
/// layer makes — through clones and repeated `layer()` calls — shares one set of connections
/// and one set of limits.
///
/// `Conn` is the connection type (the connector's response); it is usually inferred from the
/// connector passed to `layer()`.
pub struct PoolLayer<K, Conn, F>
where
    K: PoolKey,
{
    shared: Arc<Shared<K, Conn>>,
    key_fn: F,
}

impl<K, Conn, F> PoolLayer<K, Conn, F>
where
    K: PoolKey,
    Conn: Send + 'static,
{
    /// A layer whose pool follows `config` and keys requests by `key_fn`.
    pub fn new(config: Config, key_fn: F) -> Self {
        PoolLayer {
            shared: Arc::new(Shared::new(config)),
            key_fn,
        }
    }

    /// A handle to inspect and close the pool.
    pub fn handle(&self) -> PoolHandle<K> {
        PoolHandle::new(self.shared.clone())
    }
}

impl<K, Conn, F: Clone> Clone for PoolLayer<K, Conn, F>
where
    K: PoolKey,
{
    fn clone(&self) -> Self {
        PoolLayer {
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, Conn, F> fmt::Debug for PoolLayer<K, Conn, F>
where
    K: PoolKey,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<C, K, F> Layer<C> for PoolLayer<K, C::Response, F>
where
    C: Service<K>,
    C::Response: Send + 'static,
    K: PoolKey,
    F: Clone,
{
    type Service = Pool<C, K, F>;

    fn layer(&self, connector: C) -> Self::Service {
        Pool::from_shared(connector, self.key_fn.clone(), self.shared.clone())
    }
}
