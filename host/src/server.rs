//! A running Tenon: the runtime's workers plus HTTP ingress, started and stopped as one.

use crate::config::Config;
use crate::runtime::Runtime;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A started server.
#[derive(Debug)]
pub struct Server {
    /// Where ingress and the admin API listen.
    pub addr: SocketAddr,
    /// The runtime behind it.
    pub runtime: Arc<Runtime>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Server {
    /// Load everything, bind, and start serving. `listen` overrides the config's
    /// address (port 0 picks a free port; [`Server::addr`] tells which).
    pub async fn start(
        config: Config,
        data_dir: &Path,
        listen: Option<SocketAddr>,
    ) -> anyhow::Result<Server> {
        let addr = match listen {
            Some(addr) => addr,
            None => config.server.listen.parse().context("server.listen")?,
        };
        let data_dir = data_dir.to_owned();
        // Loading compiles components (or loads them from the cache): not on the reactor.
        let runtime = tokio::task::spawn_blocking(move || Runtime::open(config, &data_dir))
            .await
            .context("loading task failed")??;
        let runtime = Arc::new(runtime);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let (shutdown, signal) = watch::channel(false);
        runtime.start(signal.clone());
        let mut tasks = JoinSet::new();
        // New plugin versions dropped into their directories go live without a restart.
        tasks.spawn(crate::swap::watch(runtime.clone(), signal.clone())?);
        tasks.spawn(crate::ingress::serve(runtime.clone(), listener, signal));
        tracing::info!(%addr, "tenon started");
        Ok(Server {
            addr,
            runtime,
            shutdown,
            tasks,
        })
    }

    /// Stop accepting, let every worker finish and commit its current message, return.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.runtime.stopped().await;
        tracing::info!("tenon stopped");
    }
}
