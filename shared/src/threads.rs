//! Serving threads, each with a current-thread runtime of its own: the connector's connection
//! threads and the edge's shards. A task then never moves between threads, and waking it costs
//! no cross-thread hand-off (docs/performance.md, "Thread per core").

use std::future::Future;

use anyhow::{Context, Result};

/// Run `serve` on a new thread called `name`; the returned future ends with its result, or an
/// error if the thread died without one.
pub fn spawn<F>(name: String, serve: F) -> Result<impl Future<Output = Result<()>> + Send + 'static>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(serve));
            let _ = done_tx.send(served);
        })
        .with_context(|| format!("starting thread {name}"))?;
    Ok(async move {
        done.await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("thread {name} died")))
    })
}

/// Wait for every task; the first error is the result, and it cancels `shutdown` so that the
/// other tasks stop too.
pub async fn first_error(
    mut tasks: tokio::task::JoinSet<Result<()>>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}
