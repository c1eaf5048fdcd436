//! Safety regressions: link.
