//! Process signals: SIGINT/SIGTERM start a graceful shutdown.

/// Installs the SIGINT and SIGTERM handlers at once (call it before
/// start-up work, so an early signal is caught rather than fatal) and
/// resolves on the first of them. Needs a tokio runtime.
pub(crate) fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    wait(term, int)
}

async fn wait(
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
) {
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
