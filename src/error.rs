//! Walking an error's source chain: the one formatter (`outer: cause: root`, for logs) and the
//! one search for a given error type anywhere in the chain (hyper and tonic wrap the error a
//! caller maps to a status several levels deep).

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, separated by `": "`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The first error of type `E` in `error`'s chain (`error` itself included).
pub fn find_in_chain<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// Whether an error of type `E` is anywhere in `error`'s chain.
pub fn in_chain<E: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
    find_in_chain::<E>(error).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("root cause")]
    struct Root;

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] Root);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[test]
    fn chain_is_formatted_outer_to_root_and_searched_at_any_depth() {
        let error = Outer(Middle(Root));
        assert_eq!(Chain(&error).to_string(), "outer: middle: root cause");
        assert!(in_chain::<Root>(&error));
        assert!(in_chain::<Outer>(&error));
        assert!(!in_chain::<std::io::Error>(&error));
        assert_eq!(Chain(&Root).to_string(), "root cause");
    }
}
