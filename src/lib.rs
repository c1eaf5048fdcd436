//! sidewire: a reverse-proxy sidecar adding Centrifugo-compatible real-time transports in
//! front of any backend.
#![forbid(unsafe_code)]

pub mod protocol;

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
