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

/// Waits for SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn os_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
