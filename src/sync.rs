//! The one lock policy of the crate: a poisoned lock is a bug that is reported, not ignored.
//!
//! A std lock is poisoned when a thread panicked while holding it, that is, possibly in the
//! middle of an update: a hub session table with its channel shard half-written, a counter
//! bumped without its entry. Taking the guard anyway (`unwrap_or_else(|e| e.into_inner())`)
//! would go on serving that inconsistent state silently. So every lock in the crate is taken
//! through [`lock`], [`read`] or [`write`], which panic again, with the reason, when the lock
//! is poisoned: the task that meets the broken state fails loudly (its session or Link ends
//! and reconnects) instead of acting on it.
//!
//! One exception, for the same reason: while the current thread is already unwinding (a guard
//! taken in a `Drop` during a panic, e.g. a connection permit released), a second panic would
//! abort the whole process, so the guard is returned as is; nothing after that point acts on
//! the state beyond releasing what the unwinding task held.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Why a poisoned lock panics.
const POISONED: &str = "lock poisoned: a task panicked while holding it, the state it guards \
                        may be half-updated";

fn unpoisoned<G>(result: Result<G, PoisonError<G>>) -> G {
    match result {
        Ok(guard) => guard,
        Err(poisoned) if std::thread::panicking() => poisoned.into_inner(),
        Err(_) => panic!("{POISONED}"),
    }
}

/// Locks `mutex`; panics if a panic poisoned it (see the module doc).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    unpoisoned(mutex.lock())
}

/// Read-locks `lock`; panics if a panic poisoned it (see the module doc).
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    unpoisoned(lock.read())
}

/// Write-locks `lock`; panics if a panic poisoned it (see the module doc).
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    unpoisoned(lock.write())
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;

    use super::*;

    /// A mutex poisoned by a panic in mid-update.
    fn poisoned() -> Arc<Mutex<(u32, u32)>> {
        let mutex = Arc::new(Mutex::new((0, 0)));
        let shared = mutex.clone();
        let _ = std::thread::spawn(move || {
            let mut pair = shared.lock().unwrap();
            pair.0 += 1;
            panic!("in mid-update");
        })
        .join();
        assert!(mutex.is_poisoned());
        mutex
    }

    #[test]
    fn a_healthy_lock_is_taken() {
        let mutex = Mutex::new(1);
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
        let rw = RwLock::new(1);
        *write(&rw) += 1;
        assert_eq!(*read(&rw), 2);
    }

    #[test]
    fn a_poisoned_lock_panics_with_the_reason_instead_of_serving_half_updated_state() {
        let mutex = poisoned();
        let taken = catch_unwind(AssertUnwindSafe(|| *lock(&mutex)));
        let panic = taken.expect_err("a poisoned lock must not be served");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("lock poisoned"), "{message}");
    }

    #[test]
    fn while_unwinding_a_poisoned_lock_is_released_without_aborting() {
        struct Release(Arc<Mutex<(u32, u32)>>);
        impl Drop for Release {
            fn drop(&mut self) {
                // Would abort the test process if it panicked during the unwind.
                lock(&self.0).1 += 1;
            }
        }
        let mutex = poisoned();
        let release = Release(mutex.clone());
        let unwound = catch_unwind(AssertUnwindSafe(move || {
            let _release = release;
            panic!("another failure");
        }));
        assert!(unwound.is_err());
        assert_eq!(mutex.lock().unwrap_or_else(|e| e.into_inner()).1, 1);
    }
}
