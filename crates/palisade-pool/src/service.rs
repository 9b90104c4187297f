//! [`Pool`]: the pool as a `tower::Service`.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::config::Config;
use crate::future::ResponseFuture;
use crate::handle::PoolHandle;
use crate::lease::PoolKey;
use crate::pool::Shared;
use crate::BoxError;

/// A keyed pool of connections made by a connector, as a `Service<Req>`.
///
/// `C` is the connector, a `Service<K>` whose response is a connection; each connection is a
/// `Service<Req>`. `F` picks the key of a request (for HTTP: scheme and authority). Clones
/// share the pool, as do all services made by one [`PoolLayer`](crate::PoolLayer).
///
/// # Readiness
///
/// `poll_ready` is always `Ready` and reserves nothing: the key comes from the request, so
/// which connection, slot or queue applies is known only in `call` (hyper-util's keyed pool
/// reaches the same conclusion). The response future does the checkout — an idle connection,
/// a reserved slot to connect in, or a place in the key's FIFO queue — then waits for the
/// connection's own `poll_ready` before sending. Dropping the future at any point gives back
/// what it held. A closed pool answers `call` with [`PoolClosed`](crate::PoolClosed).
pub struct Pool<C, K, F>
where
    C: Service<K>,
    K: PoolKey,
{
    connector: C,
    key_fn: F,
    shared: Arc<Shared<K, C::Response>>,
}

impl<C, K, F> Pool<C, K, F>
where
    C: Service<K>,
    C::Response: Send + 'static,
    K: PoolKey,
{
    /// A pool of its own over `connector`, keyed by `key_fn`.
    pub fn new(connector: C, config: Config, key_fn: F) -> Self {
        Pool {
            connector,
            key_fn,
            shared: Arc::new(Shared::new(config)),
        }
    }

    pub(crate) fn from_shared(
        connector: C,
        key_fn: F,
        shared: Arc<Shared<K, C::Response>>,
    ) -> Self {
        Pool {
            connector,
            key_fn,
            shared,
        }
    }

    /// A handle to inspect and close this pool.
    pub fn handle(&self) -> PoolHandle<K> {
        PoolHandle::new(self.shared.clone())
    }

    /// The connector.
    pub fn get_ref(&self) -> &C {
        &self.connector
    }
}

impl<C, K, F> Clone for Pool<C, K, F>
where
    C: Service<K> + Clone,
    F: Clone,
    K: PoolKey,
{
    fn clone(&self) -> Self {
        Pool {
            connector: self.connector.clone(),
            key_fn: self.key_fn.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C, K, F> fmt::Debug for Pool<C, K, F>
where
    C: Service<K> + fmt::Debug,
    K: PoolKey,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("connector", &self.connector)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<C, K, F, Req> Service<Req> for Pool<C, K, F>
where
    C: Service<K> + Clone,
    C::Error: Into<BoxError>,
    C::Response: Service<Req> + Send + 'static,
    <C::Response as Service<Req>>::Error: Into<BoxError>,
    F: Fn(&Req) -> K,
    K: PoolKey,
    Req: 'static,
{
    type Response = <C::Response as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<C, K, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key_fn)(&req);
        ResponseFuture::new(self.shared.clone(), self.connector.clone(), key, req)
    }
}
