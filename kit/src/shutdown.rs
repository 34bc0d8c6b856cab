//! One shutdown signal, watched by every task.
//!
//! A `watch` channel rather than a broadcast: a task that subscribes late still sees that
//! shutdown began.

use tokio::sync::watch;

/// Starts shutdown for every [`Shutdown`] cloned from the same channel.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves once shutdown began.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger(sender), Shutdown(receiver))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the trigger (or for the trigger to be dropped, which also means stop).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    /// [`Self::wait`] as an owned future, for tasks that take one.
    pub async fn stopped(mut self) {
        self.wait().await;
    }
}

/// A shutdown that begins at SIGTERM (Kubernetes) or SIGINT (Ctrl-C). The handlers are
/// installed before this returns, so a signal that arrives during start-up still drains.
pub fn on_signal() -> Shutdown {
    let (trigger, shutdown) = channel();
    let signals = os_signal();
    tokio::spawn(async move {
        signals.await;
        trigger.trigger();
    });
    shutdown
}

/// Waits for SIGTERM (Kubernetes) or SIGINT (Ctrl-C); the handlers are installed when
/// this is called, not when the future is first polled.
pub fn os_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        let interrupt = async {
            match interrupt {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGINT");
                    std::future::pending::<()>().await;
                }
            }
        };
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = interrupt => tracing::info!("SIGINT received; shutting down"),
            () = terminate => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}
