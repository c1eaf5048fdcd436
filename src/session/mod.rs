//! Client sessions, independent of the transport that carries them.
//!
//! - `outbox`: the bounded outbound queue (overflow → 3008 slow, never blocks producers);
//! - `handle`: what the Link router shares with a session (phase, encoding, outbox);
//! - `driver`: the one session loop every transport runs.

pub mod driver;
pub mod emulation;
pub mod handle;
pub mod outbox;

pub use driver::{Inbound, SessionParams, SessionSettings, Transport, run};
