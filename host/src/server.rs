//! A running Tenon: the runtime's workers plus its two listeners (ingestion and the
//! admin API), started and stopped as one.

use crate::config::Config;
use crate::http::Plane;
use crate::runtime::Runtime;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where to listen, overriding the config's addresses (port 0 picks a free port).
#[derive(Debug, Clone, Copy, Default)]
pub struct Listen {
    /// Ingestion (`/v1/sources/*`), instead of `server.listen`.
    pub ingest: Option<SocketAddr>,
    /// The admin API, instead of `server.admin_listen`.
    pub admin: Option<SocketAddr>,
}

/// A started server.
#[derive(Debug)]
pub struct Server {
    /// Where partner systems post (`/v1/sources/*`, `/healthz`).
    pub addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The admin key's token file, when this start created the first key.
    pub admin_key_file: Option<PathBuf>,
    /// The runtime behind it.
    pub runtime: Arc<Runtime>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    telemetry: crate::telemetry::Telemetry,
}

impl Server {
    /// Load everything, bind both listeners, and start serving. On a data directory
    /// without an API key, an admin key is created first ([`Server::admin_key_file`]).
    pub async fn start(config: Config, data_dir: &Path, listen: Listen) -> anyhow::Result<Server> {
        let ingest_addr = match listen.ingest {
            Some(addr) => addr,
            None => config.server.listen.parse().context("server.listen")?,
        };
        let admin_addr = match listen.admin {
            Some(addr) => addr,
            None => config
                .server
                .admin_listen
                .parse()
                .context("server.admin_listen")?,
        };
        let telemetry = crate::telemetry::Telemetry::start(&config.telemetry)?;
        let data_dir = data_dir.to_owned();
        let dir = data_dir.clone();
        // Loading compiles components (or loads them from the cache): not on the reactor.
        let runtime = tokio::task::spawn_blocking(move || Runtime::open(config, &dir))
            .await
            .context("loading task failed")??;
        let keys = crate::auth::Keys::open(runtime.node().clone())?;
        let admin_key_file = keys.bootstrap(&data_dir)?;
        let runtime = Arc::new(runtime);
        let state = Arc::new(crate::http::State::new(runtime.clone(), keys));
        let ingest = TcpListener::bind(ingest_addr)
            .await
            .with_context(|| format!("cannot listen on {ingest_addr}"))?;
        let admin = TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("cannot listen on {admin_addr} (the admin API)"))?;
        let (addr, admin_addr) = (ingest.local_addr()?, admin.local_addr()?);
        // No plugin may reach them, whatever its grants say.
        runtime.engine().listeners().add(addr);
        runtime.engine().listeners().add(admin_addr);
        let (shutdown, signal) = watch::channel(false);
        runtime.start(signal.clone()).await;
        let mut tasks = JoinSet::new();
        // New plugin versions dropped into their directories go live without a restart.
        tasks.spawn(crate::runtime::watch::watch(
            runtime.clone(),
            signal.clone(),
        )?);
        // On a shared store: announce this node, keep in step with the deployment.
        runtime.set_listeners(addr, admin_addr);
        tasks.spawn(runtime.clone().follow(signal.clone()));
        tasks.spawn(crate::http::serve(
            state.clone(),
            ingest,
            Plane::Ingest,
            signal.clone(),
        ));
        tasks.spawn(crate::http::serve(state, admin, Plane::Admin, signal));
        tracing::info!(%addr, %admin_addr, "tenon started");
        Ok(Server {
            addr,
            admin_addr,
            admin_key_file,
            runtime,
            shutdown,
            tasks,
            telemetry,
        })
    }

    /// Stop accepting, let every worker finish and commit its current message, return.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.runtime.stopped().await;
        // The exporter's thread blocks while it sends what is buffered.
        let telemetry = self.telemetry;
        let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
        tracing::info!("tenon stopped");
    }
}
