//! Locks taken one way, and a few spare values lent out and given back.
//!
//! Every lock of the crate guards data that each critical section leaves whole (a map, a
//! list, a counter), so a panic in another thread while it held the lock leaves nothing to
//! repair: the lock is taken anyway rather than spreading the panic to every later caller.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, whether or not a panic poisoned it.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes `lock` for reading, whether or not a panic poisoned it.
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// Takes `lock` for writing, whether or not a panic poisoned it.
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// A few spare values of one kind: work that comes and goes (a job's chunks, a server's
/// requests) borrows warm buffers instead of asking the allocator, and the kernel, for fresh
/// memory each time. Clones share the spares.
#[derive(Debug)]
pub(crate) struct Pool<T> {
    spares: Arc<Mutex<Vec<T>>>,
    keep: usize,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            spares: self.spares.clone(),
            keep: self.keep,
        }
    }
}

impl<T> Pool<T> {
    /// A pool that keeps at most `keep` spares; more given back are dropped.
    pub(crate) fn new(keep: usize) -> Pool<T> {
        Pool {
            spares: Arc::default(),
            keep,
        }
    }

    /// A spare, if there is one.
    pub(crate) fn take(&self) -> Option<T> {
        lock(&self.spares).pop()
    }

    /// Gives `spare` back.
    pub(crate) fn put(&self, spare: T) {
        let mut spares = lock(&self.spares);
        if spares.len() < self.keep {
            spares.push(spare);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_keeps_what_it_may() {
        let pool = Pool::new(2);
        let shared = pool.clone();
        for i in 0..3 {
            shared.put(i);
        }
        assert_eq!(
            (pool.take(), pool.take(), pool.take()),
            (Some(1), Some(0), None)
        );
    }

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let mutex = Arc::new(Mutex::new(1));
        let held = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("while holding the lock");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 1);
    }
}
