//! Safety regressions: hub.
