//! Process signals: SIGINT/SIGTERM start a graceful shutdown.

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers we can still stop on ctrl-c.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
