//! Safety regressions: passthrough.
