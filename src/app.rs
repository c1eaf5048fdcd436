//! Assembles a running sidewire from a validated config — the Link (to the embedded hub or an
//! external upstream), the client listener (plain or TLS) and the admin listener — and owns
//! what a config reload may rebuild. Also the standalone hub.
//!
//! Guarantees: a reload builds the new settings completely before swapping them in, so a
//! rejected reload leaves the old config in force; sessions keep the Link they opened on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::admin::{Admin, ApiAccess, EdgeView};
use crate::config::{Config, TlsConfig};
use crate::edge::origin::OriginPolicy;
use crate::edge::tls::{CertResolver, TlsAcceptor, TlsError};
use crate::edge::{self, ConnectionPolicy, Edge, PlainAcceptor, Settings};
use crate::hub::{self, Hub};
use crate::lifecycle::{PhaseWatch, RunPhase};
use crate::link::backoff::Backoff;
use crate::link::{Link, LinkState, Upstream};
use crate::metrics::{Metrics, ResultLabels};
use crate::passthrough::{Backend, BackendError};
use crate::reload::prepare::{BackendPlan, Candidate, Current, Prepared, prepare};

/// Startup failures.
#[derive(Debug, Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address from the config.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The backend could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The TLS certificate could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The hub's Link token could not be loaded.
    #[error(transparent)]
    LinkAuth(#[from] crate::hub::link_auth::LinkAuthError),
    /// The Redis engine could not be set up.
    #[error(transparent)]
    Engine(#[from] crate::engine::redis::ConnectError),
}

/// Starts the hub over the engine `engine.type` names (Redis connects in the background;
/// readiness waits for it).
fn start_hub(config: &Config, phase: &PhaseWatch) -> Result<Hub, AppError> {
    let engine = match config.engine.kind {
        crate::config::engine::EngineKind::Memory => None,
        crate::config::engine::EngineKind::Redis => Some(Arc::new(
            crate::engine::redis::RedisEngine::open(&config.engine.redis)?,
        )),
    };
    Ok(Hub::start_with_engine(
        config.hub.clone(),
        phase.clone(),
        engine,
    ))
}

pub use crate::reload::ReloadOutcome;

/// Swaps the log filter at run time (installed by the binary); cannot fail.
pub type LogControl = Box<dyn Fn(EnvFilter) + Send + Sync>;

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AppError::Bind {
            what,
            address,
            source,
        })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// What a reload may rebuild, and how.
pub struct Runtime {
    edge: Arc<Edge>,
    hub: Hub,
    node: Arc<str>,
    phase: PhaseWatch,
    metrics: Arc<Metrics>,
    tls: Option<Arc<CertResolver>>,
    log: Option<LogControl>,
    /// The config the process started with (listeners, TLS on/off, engine: restart-only).
    started: Arc<Config>,
    /// Serialises reloads.
    reloading: Mutex<()>,
}

impl crate::reload::Target for Runtime {
    fn config(&self) -> Arc<Config> {
        self.edge.settings().config.clone()
    }

    fn apply(&self, candidate: Candidate) -> ReloadOutcome {
        Runtime::apply(self, candidate)
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

impl Runtime {
    fn spawn_link(&self, config: &Config) -> Link {
        spawn_link(config, &self.hub, &self.node, &self.phase, &self.metrics)
    }

    /// The edge (current settings, metrics).
    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    /// The embedded hub (used when no external upstream is configured).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Applies a candidate read by the reload's load step: [`prepare`] builds every new part
    /// from it (or rejects it, changing nothing), then [`Runtime::commit`] swaps them in.
    /// Listener addresses, switching TLS on or off and the other [`RESTART_ONLY`] keys are
    /// reported as needing a restart. Does no I/O; the caller reports the outcome.
    ///
    /// [`RESTART_ONLY`]: crate::reload::prepare::RESTART_ONLY
    pub fn apply(&self, candidate: Candidate) -> ReloadOutcome {
        // Held for the pure prepare and the swaps only (no I/O, no await).
        let _serial = crate::sync::lock(&self.reloading);
        let old = self.edge.settings();
        let current = Current {
            started: &self.started,
            config: &old.config,
            tls: self.tls.as_deref(),
        };
        match prepare(&current, candidate) {
            Ok(prepared) => self.commit(prepared),
            Err(rejection) => ReloadOutcome::Rejected(rejection.to_string()),
        }
    }

    /// Swaps in everything `prepared` holds; cannot fail. The certificate, the log filter and
    /// the hub settings go first, then the edge settings in one atomic store.
    fn commit(&self, prepared: Prepared) -> ReloadOutcome {
        if let (Some(resolver), Some(certificate)) = (&self.tls, prepared.certificate) {
            resolver.install(certificate);
        }
        if let (Some(log), Some(filter)) = (&self.log, prepared.log_filter) {
            log(filter);
        }
        if let Some(hub) = prepared.hub {
            self.hub.set_config(hub);
        }
        let Some(plan) = prepared.settings else {
            return ReloadOutcome::Unchanged;
        };
        let old = self.edge.settings();
        let link = if plan.relink {
            self.spawn_link(&plan.config)
        } else {
            old.link.clone()
        };
        let backend = match plan.backend {
            BackendPlan::Keep => old.backend.clone(),
            BackendPlan::Replace(backend) => backend,
        };
        let previous = self.edge.replace_settings(Settings {
            origins: plan.origins,
            config: plan.config,
            link,
            backend,
        });
        if plan.relink {
            previous.link.retire();
        }
        ReloadOutcome::Applied {
            restart_required: plan.restart_required,
        }
    }
}

fn spawn_link(
    config: &Config,
    hub: &Hub,
    node: &Arc<str>,
    phase: &PhaseWatch,
    metrics: &Arc<Metrics>,
) -> Link {
    let (upstream, backoff) = match &config.upstream {
        Some(upstream) => (
            Upstream::Grpc(Box::new(upstream.clone())),
            Backoff::new(
                *upstream.reconnect_backoff_min,
                *upstream.reconnect_backoff_max,
            ),
        ),
        None => (
            Upstream::Embedded(Arc::new(hub.clone())),
            Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
        ),
    };
    Link::spawn(
        upstream,
        node.clone(),
        backoff,
        phase.clone(),
        metrics.clone(),
    )
}

/// How long startup waits for the Link to the embedded hub (in-process, normally ~1 ms).
const EMBEDDED_LINK_WAIT: Duration = Duration::from_secs(5);

/// Waits until the Link to the embedded hub is up, so that the first clients after
/// "listening" are not closed with 3004 while the in-process stream is still opening. Bounded:
/// past [`EMBEDDED_LINK_WAIT`] startup goes on and readiness reports the Link as down.
async fn await_embedded_link(link: &Link) {
    let mut state = link.watch_state();
    let up = state.wait_for(|state| *state == LinkState::Up);
    if tokio::time::timeout(EMBEDDED_LINK_WAIT, up).await.is_err() {
        tracing::warn!(waited = ?EMBEDDED_LINK_WAIT, "embedded hub link not up yet; serving anyway");
    }
}

/// A sidecar with its listeners bound, ready to serve.
pub struct Sidecar {
    client: TcpListener,
    admin: TcpListener,
    runtime: Arc<Runtime>,
    admin_state: Arc<Admin>,
    tls: Option<TlsAcceptor>,
}

impl Sidecar {
    /// Starts the Link (and the embedded hub) and binds both listeners.
    pub async fn bind(
        config: Config,
        phase: PhaseWatch,
        log: Option<LogControl>,
    ) -> Result<Sidecar, AppError> {
        let client = bind("listen", config.listen).await?;
        let admin = bind("admin_listen", config.admin_listen).await?;
        let node: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let metrics = Arc::new(Metrics::default());
        let hub = start_hub(&config, &phase)?;
        let resolver = config.tls.as_ref().map(CertResolver::new).transpose()?;
        let compact = config
            .tls
            .as_ref()
            .is_some_and(TlsConfig::compact_record_keys);
        let tls = resolver
            .as_ref()
            .map(|resolver| resolver.client_acceptor(compact))
            .transpose()?;
        let backend = config.backend.as_ref().map(Backend::new).transpose()?;
        let link = spawn_link(&config, &hub, &node, &phase, &metrics);
        if config.upstream.is_none() {
            await_embedded_link(&link).await;
        }
        let started = Arc::new(config);
        let settings = Settings {
            origins: OriginPolicy::new(&started.allowed_origins),
            config: started.clone(),
            link,
            backend,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let edge = Arc::new(Edge::new(
            settings,
            node.clone(),
            phase.clone(),
            metrics.clone(),
            scheme,
        ));
        if edge.settings().config.engine.kind == crate::config::engine::EngineKind::Redis {
            let redis = edge.settings().config.engine.redis.clone();
            let cluster =
                crate::cluster::Cluster::start(&redis, node.clone(), edge.emulation.clone())?;
            edge.set_cluster(cluster);
        }
        let admin_listen = local_addr(&admin, edge.settings().config.admin_listen);
        if edge.settings().config.upstream.is_none() {
            ApiAccess::decide(admin_listen, &edge.settings().config.hub)
                .log_startup("admin_listen", admin_listen);
        }
        let admin_state = Arc::new(Admin {
            edge: edge.clone(),
            metrics: metrics.clone(),
            hub: Some(hub.clone()),
            listen: admin_listen,
        });
        let runtime = Arc::new(Runtime {
            edge,
            hub,
            node,
            phase,
            metrics,
            tls: resolver,
            log,
            started,
            reloading: Mutex::new(()),
        });
        Ok(Sidecar {
            client,
            admin,
            runtime,
            admin_state,
            tls,
        })
    }

    /// Bound client and admin addresses.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let config = self.runtime.edge.settings().config.clone();
        (
            local_addr(&self.client, config.listen),
            local_addr(&self.admin, config.admin_listen),
        )
    }

    /// The reload handle.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// Serves until the process phase reaches `Closing`, then waits for every connection,
    /// request in flight, session (they close with 3001 over the drain window) and upgraded
    /// tunnel to end, up to `deadline` ([`drain`]).
    pub async fn serve(self, deadline: watch::Receiver<Option<tokio::time::Instant>>) {
        let edge = self.runtime.edge.clone();
        let phase = self.runtime.phase.clone();
        let admin = self.admin_state;
        let handler_edge = edge.clone();
        let handler = move |request, peer| handler_edge.clone().handle(request, peer);
        let policy = ConnectionPolicy::client(&edge, &edge.settings().config);
        let client = async {
            match self.tls {
                Some(tls) => edge::serve(self.client, tls, handler, phase.clone(), policy).await,
                None => {
                    edge::serve(self.client, PlainAcceptor, handler, phase.clone(), policy).await
                }
            }
        };
        // The admin listener keeps serving /readyz and /metrics while sessions drain: its
        // phase never reaches Closing (the sender lives until this function returns).
        let (_admin_phase_sender, admin_phase) = crate::lifecycle::channel();
        let admin_server = edge::serve(
            self.admin,
            PlainAcceptor,
            move |request, _peer| admin.clone().handle(request),
            admin_phase,
            ConnectionPolicy::internal(),
        );
        let admin_task = tokio::spawn(admin_server);
        client.await;
        drain(edge.tracker(), deadline).await;
        admin_task.abort();
    }
}

/// Drain by completion: closes `tracker` (the listener has stopped, so nothing new joins) and
/// waits until its last task or token is gone, or until the hard deadline once one is
/// published. Returns at once when nothing is left; nothing here polls.
pub async fn drain(
    tracker: &crate::server::TaskTracker,
    mut deadline: watch::Receiver<Option<tokio::time::Instant>>,
) {
    tracker.close();
    let deadline_passed = async {
        let until = match deadline.wait_for(Option::is_some).await {
            Ok(until) => *until,
            // No deadline will ever come: wait for completion alone.
            Err(_) => None,
        };
        match until {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tracker.wait() => tracing::info!("drained: every connection and session ended"),
        _ = deadline_passed => tracing::warn!(
            left = tracker.len(),
            "shutdown.timeout passed: exiting with connections or sessions still open"
        ),
    }
}

/// Drives the shutdown sequence after a signal: publishes the hard deadline (`timeout` from
/// now), turns readiness false at once, and `delay` later moves the phase to `Closing`, which
/// closes the listener and spreads the sessions' 3001 disconnects over `drain_window`.
pub async fn shutdown_sequence(
    runtime: Arc<Runtime>,
    phase: watch::Sender<RunPhase>,
    deadline: watch::Sender<Option<tokio::time::Instant>>,
) {
    let settings = runtime.edge.settings();
    let shutdown = settings.config.shutdown.clone();
    let started = tokio::time::Instant::now();
    deadline.send_replace(Some(started + *shutdown.timeout));
    phase.send_replace(RunPhase::Draining);
    tracing::info!(delay = ?shutdown.delay, window = ?shutdown.drain_window, "draining: readiness false");
    tokio::time::sleep(*shutdown.delay).await;
    tracing::info!("draining: listener closed, disconnecting sessions with 3001");
    phase.send_replace(RunPhase::Closing {
        window: *shutdown.drain_window,
    });
}

/// The standalone hub: Link (gRPC) listener and server API listener.
pub struct StandaloneHub {
    link: TcpListener,
    tls: Option<TlsAcceptor>,
    api: TcpListener,
    hub: Hub,
    access: ApiAccess,
    body_timeout: Duration,
    keepalive: hub::grpc::LinkKeepalive,
    link_auth: hub::link_auth::LinkAuth,
    phase: PhaseWatch,
}

impl StandaloneHub {
    /// Binds `hub.link_listen` and `hub.api_listen`.
    pub async fn bind(config: Config, phase: PhaseWatch) -> Result<StandaloneHub, AppError> {
        let link = bind("hub.link_listen", config.hub.link_listen).await?;
        let api = bind("hub.api_listen", config.hub.api_listen).await?;
        let api_listen = local_addr(&api, config.hub.api_listen);
        let access = ApiAccess::decide(api_listen, &config.hub);
        access.log_startup("hub.api_listen", api_listen);
        let tls = match &config.hub.tls {
            Some(tls) => {
                let resolver = CertResolver::new(tls)?;
                Some(match &tls.client_ca_file {
                    Some(ca) => resolver.acceptor_with_client_ca(ca)?,
                    None => resolver.acceptor()?,
                })
            }
            None => None,
        };
        let keepalive = hub::grpc::LinkKeepalive::from_config(&config.hub);
        let body_timeout = config.request_body_timeout;
        let link_auth = hub::link_auth::LinkAuth::from_config(&config.hub)?;
        let hub = start_hub(&config, &phase)?;
        Ok(StandaloneHub {
            link,
            tls,
            api,
            hub,
            access,
            body_timeout: *body_timeout,
            keepalive,
            link_auth,
            phase,
        })
    }

    /// Bound Link and API addresses.
    pub fn addresses(&self) -> (SocketAddr, SocketAddr) {
        let unspecified: SocketAddr = "0.0.0.0:0".parse().expect("constant");
        (
            local_addr(&self.link, unspecified),
            local_addr(&self.api, unspecified),
        )
    }

    /// Serves until closing. The API listener also answers `GET /readyz` (503 once draining).
    pub async fn serve(self) {
        let hub = self.hub.clone();
        let access = Arc::new(self.access);
        let body_timeout = self.body_timeout;
        let ready_phase = self.phase.clone();
        let api = edge::serve(
            self.api,
            PlainAcceptor,
            move |request: http::Request<hyper::body::Incoming>, _peer| {
                let hub = hub.clone();
                let access = access.clone();
                let draining = ready_phase.borrow().is_shutting_down();
                let engine_up = hub.engine().is_none_or(|e| e.connected());
                async move {
                    if request.uri().path() == "/readyz" {
                        return if draining {
                            crate::http::json(
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                r#"{"ready":false,"draining":true}"#,
                            )
                        } else if !engine_up {
                            crate::http::json(
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                r#"{"ready":false,"engine_up":false}"#,
                            )
                        } else {
                            crate::http::json(http::StatusCode::OK, r#"{"ready":true}"#)
                        };
                    }
                    crate::admin::api_call(&hub, &access, body_timeout, request).await
                }
            },
            self.phase.clone(),
            ConnectionPolicy::internal(),
        );
        let phase = self.phase.clone();
        let keepalive = self.keepalive;
        let link = async move {
            match self.tls {
                Some(tls) => {
                    hub::grpc::serve(self.link, tls, self.hub, keepalive, self.link_auth, phase)
                        .await
                }
                None => {
                    hub::grpc::serve(
                        self.link,
                        PlainAcceptor,
                        self.hub,
                        keepalive,
                        self.link_auth,
                        phase,
                    )
                    .await
                }
            }
        };
        tokio::join!(api, link);
    }
}

/// The standalone hub's shutdown after a signal: readiness false at once, `shutdown.delay`
/// later the listeners close and every Link's sessions get 3001 at random moments within
/// `shutdown.drain_window` ([`hub::drain`]); returns (the process exits) once the window and
/// a short flush have passed, never later than `shutdown.timeout` after the signal.
pub async fn hub_shutdown_sequence(
    shutdown: crate::config::ShutdownConfig,
    phase: watch::Sender<RunPhase>,
) {
    let started = tokio::time::Instant::now();
    phase.send_replace(RunPhase::Draining);
    tracing::info!(delay = ?shutdown.delay, window = ?shutdown.drain_window, "hub draining: readiness false");
    tokio::time::sleep(*shutdown.delay).await;
    tracing::info!("hub draining: listeners closed, sessions get 3001 spread over the window");
    phase.send_replace(RunPhase::Closing {
        window: *shutdown.drain_window,
    });
    let done = tokio::time::Instant::now() + *shutdown.drain_window + HUB_DRAIN_FLUSH;
    tokio::time::sleep_until(done.min(started + *shutdown.timeout)).await;
    tracing::info!("hub drained");
}

/// Time the last 3001 frames get to reach the sidecars before the standalone hub exits.
const HUB_DRAIN_FLUSH: Duration = Duration::from_millis(500);

/// The admin listener reads the edge through this narrow view.
impl EdgeView for Edge {
    fn config(&self) -> Arc<Config> {
        self.settings().config.clone()
    }

    fn link_up(&self) -> bool {
        self.settings().link.state() == LinkState::Up
    }

    fn draining(&self) -> bool {
        self.is_draining()
    }

    fn cluster_ready(&self) -> bool {
        self.cluster().is_none_or(|cluster| cluster.is_ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drain returns as soon as the last tracked task ends, not at the deadline.
    #[tokio::test(start_paused = true)]
    async fn drain_returns_when_the_last_task_ends() {
        let tracker = crate::server::TaskTracker::new();
        let (_deadline_tx, deadline) =
            watch::channel(Some(tokio::time::Instant::now() + Duration::from_secs(60)));
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        tracker.spawn(async move {
            let _ = finished.await;
        });
        let token = tracker.token();
        let started = tokio::time::Instant::now();
        let draining = tokio::spawn({
            let tracker = tracker.clone();
            async move { drain(&tracker, deadline).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!draining.is_finished(), "drain returned with tasks left");
        finish.send(()).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!draining.is_finished(), "drain returned with a token left");
        drop(token);
        draining.await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(11));
    }

    /// Drain gives up at the deadline, published late, with a task still running.
    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let tracker = crate::server::TaskTracker::new();
        tracker.spawn(std::future::pending::<()>());
        let (deadline_tx, deadline) = watch::channel(None);
        let started = tokio::time::Instant::now();
        let draining = tokio::spawn({
            let tracker = tracker.clone();
            async move { drain(&tracker, deadline).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        deadline_tx.send_replace(Some(started + Duration::from_secs(3)));
        draining.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(!tracker.is_empty());
    }

    /// With the embedded hub, `bind` returns only once the Link is up, so no client accepted
    /// after "listening" meets a Link that is still opening (it would be closed with 3004).
    #[tokio::test]
    async fn bind_returns_with_the_embedded_link_up() {
        let config =
            Config::from_yaml("listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n").unwrap();
        let (_phase_sender, phase) = crate::lifecycle::channel();
        let sidecar = Sidecar::bind(config, phase, None).await.unwrap();
        let state = sidecar.runtime.edge.settings().link.state();
        assert_eq!(state, LinkState::Up);
    }

    fn candidate(yaml: &str) -> Candidate {
        Candidate {
            config: Config::from_yaml(yaml).unwrap(),
            tls_pem: None,
            backend: None,
        }
    }

    /// `apply` commits every prepared part (settings, hub settings; the Link only when
    /// `upstream` changed), reports restart-only keys against the started config, and a
    /// rejected candidate changes nothing.
    #[tokio::test]
    async fn apply_commits_everything_or_nothing() {
        let base = "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n";
        let (_phase_sender, phase) = crate::lifecycle::channel();
        let sidecar = Sidecar::bind(Config::from_yaml(base).unwrap(), phase, None)
            .await
            .unwrap();
        let runtime = sidecar.runtime();
        assert_eq!(runtime.apply(candidate(base)), ReloadOutcome::Unchanged);

        let link_before = runtime.edge.settings().link.clone();
        let changed = format!("{base}allowed_origins: [\"http://b\"]\nhub:\n  history_size: 7\n");
        assert_eq!(
            runtime.apply(candidate(&changed)),
            ReloadOutcome::Applied {
                restart_required: vec![]
            }
        );
        let settings = runtime.edge.settings();
        assert_eq!(settings.config.allowed_origins, ["http://b"]);
        assert_eq!(runtime.hub.config().history_size, 7);
        assert_eq!(settings.link.state(), link_before.state(), "same Link kept");

        // A backend section without the backend the load step builds: rejected, nothing moves.
        let rejected =
            format!("{changed}backend:\n  url: \"http://127.0.0.1:9\"\nmax_connections: 5\n");
        assert!(matches!(
            runtime.apply(candidate(&rejected)),
            ReloadOutcome::Rejected(_)
        ));
        assert!(Arc::ptr_eq(&runtime.edge.settings(), &settings));

        let moved = format!("{changed}max_connections: 5\n");
        assert_eq!(
            runtime.apply(candidate(&moved)),
            ReloadOutcome::Applied {
                restart_required: vec!["max_connections"]
            }
        );
    }
}
