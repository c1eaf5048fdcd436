//! Command-line tools beside running the server.

pub mod gentoken;
