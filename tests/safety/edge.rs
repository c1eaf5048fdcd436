//! Safety regressions: edge.
