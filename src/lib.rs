//! sidewire: a reverse-proxy sidecar adding Centrifugo-compatible real-time transports in
//! front of any backend.
//!
//! Module map (one duty each; imports run one way, checked by `tests/module_graph.rs`):
//! - `edge`: listeners, routing, origin and CORS policy, connection caps, the transports
//!   (WebSocket, HTTP-streaming, SSE, `/emulation`, and the unidirectional ones);
//! - `session`: the transport-independent session loop and its bounded outbox;
//! - `link`: the multiplexed stream to the upstream, reconnects, local fan-out; it defines the
//!   `Member` and `Connector` traits that `session` and `hub` implement;
//! - [`protocol`]: client protocol v2 types, JSON dialect, framing, codes, the server version;
//! - `hub`: the reference upstream (embedded or `sidewire hub`);
//! - `engine`: state shared by replicas (memory or Redis);
//! - `cluster`: emulation routing between replicas;
//! - `passthrough`: every other path, reverse-proxied to the backend;
//! - `metrics`: every counter, depending on nothing else in the crate;
//! - `admin`: health, readiness, metrics export, the embedded hub's server API;
//! - [`config`]: YAML schema, defaults, validation;
//! - [`reload`]: config and certificate watching, SIGHUP, atomic swap;
//! - `server`: the one accept loop, TLS acceptor and task tracker of every listener
//!   (depends on nothing else in the crate);
//! - `body`: bounded body reads with a typed error, the progress deadline on any body;
//! - `error`: walking an error's source chain (formatting, finding a type);
//! - [`lifecycle`]: run phases (running, draining, closing) shared by every task;
//! - `sync`: the lock policy (a poisoned lock panics: state may be half-updated);
//! - [`app`]: wiring it all together;
//! - [`cli`]: command-line tools (`gentoken`).
//!
//! The public API is what the binary, the bench crate and the integration tests use: the
//! modules above in links, the generated Link types ([`linkproto`]) and a few constants.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod app;
pub(crate) mod body;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod edge;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod hub;
pub mod lifecycle;
pub(crate) mod link;
pub(crate) mod metrics;
pub(crate) mod passthrough;
pub mod protocol;
pub mod reload;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod sync;

pub use cluster::ROUTE_TIMEOUT as CLUSTER_ROUTE_TIMEOUT;
pub use hub::grpc::bind as bind_hub_link_listener;
pub use link::UPLINK_SEND_TIMEOUT;
pub use session::driver::MAX_IN_FLIGHT;

/// Generated Protobuf code, laid out by package as prost expects.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// Package `sidewire.*`.
    pub mod sidewire {
        /// Package `sidewire.client.*`.
        pub mod client {
            /// Client protocol v2 (package `sidewire.client.v2`).
            pub mod v2 {
                include!(concat!(env!("OUT_DIR"), "/sidewire.client.v2.rs"));
            }
        }
        /// The Link contract (package `sidewire.v1`).
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/sidewire.v1.rs"));
        }
    }
}

pub use pb::sidewire::v1 as linkproto;
