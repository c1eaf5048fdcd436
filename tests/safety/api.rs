//! Safety regressions: api.
