//! sidewire: a reverse-proxy sidecar adding Centrifugo-compatible real-time transports in
//! front of any backend.
//!
//! Module map (one duty each):
//! - [`edge`]: listeners, routing, origin and CORS policy, connection caps, the transports
//!   (WebSocket, HTTP-streaming, SSE, `/emulation`, and the unidirectional ones);
//! - [`session`]: the transport-independent session loop and its bounded outbox;
//! - [`link`]: the multiplexed stream to the upstream, reconnects, local fan-out;
//! - [`protocol`]: client protocol v2 types, JSON dialect, framing, codes;
//! - [`hub`]: the reference upstream (embedded or `sidewire hub`);
//! - [`engine`]: state shared by replicas (memory or Redis);
//! - [`passthrough`]: every other path, reverse-proxied to the backend;
//! - [`admin`]: health, readiness, the embedded hub's server API;
//! - [`config`]: YAML schema, defaults, validation;
//! - [`reload`]: config and certificate watching, SIGHUP, atomic swap;
//! - [`server`]: the one accept loop, TLS acceptor and task tracker of every listener
//!   (depends on nothing else in the crate);
//! - [`lifecycle`]: run phases (running, draining, closing) shared by every task;
//! - [`app`]: wiring it all together;
//! - [`cli`]: command-line tools (`gentoken`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod engine;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod link;
pub mod metrics;
pub mod passthrough;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;

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
