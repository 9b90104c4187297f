//! [`CircuitBreakerLayer`].

use std::fmt;

use tower_layer::Layer;

use crate::classify::ErrorsAsFailures;
use crate::config::Config;
use crate::service::CircuitBreaker;
use crate::state::Breaker;

/// Applies a circuit breaker to a service.
///
/// The breaker is created with the layer, so every service the layer makes — clones and
/// repeated [`layer`](Layer::layer) calls alike — sees one state. While it is open,
/// `poll_ready` answers `Ready` without polling the inner service, and `call` returns
/// [`CircuitOpen`](crate::CircuitOpen) at once (boxed, as tower reports errors). Admission is
/// decided in `poll_ready`: a service readied while closed still makes its call after the
/// breaker opens, and its outcome, stale, changes nothing.
///
/// Put a timeout *inside* the breaker, so that a hung upstream is a recorded failure, and a
/// retry *outside*, so retries of refusals do not hammer.
///
/// ```
/// use palisade_breaker::{CircuitBreakerLayer, CircuitOpen, Config, State};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = CircuitBreakerLayer::new(Config::builder().consecutive_failures(2).build()?);
/// let breaker = layer.breaker().clone();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|fail: bool| async move { if fail { Err("down") } else { Ok("up") } });
///
/// assert_eq!(svc.ready().await?.call(false).await?, "up");
/// let _ = svc.ready().await?.call(true).await;
/// let _ = svc.ready().await?.call(true).await;
/// assert_eq!(breaker.state(), State::Open);
/// let err = svc.ready().await?.call(false).await.unwrap_err();
/// assert!(err.is::<CircuitOpen>());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    breaker: Breaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer with a new breaker of `config`, counting every `Err` as a failure.
    pub fn new(config: Config) -> CircuitBreakerLayer {
        CircuitBreakerLayer::from_breaker(Breaker::new(config))
    }

    /// A layer applying an existing breaker.
    pub fn from_breaker(breaker: Breaker) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classify results with `classifier` (e.g. the HTTP preset).
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }

    /// The shared breaker: inspect it, force it, reset it.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.breaker.clone(), self.classifier.clone())
    }
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .field("classifier", &self.classifier)
            .finish()
    }
}
