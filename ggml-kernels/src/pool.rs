//! A low-latency fork-join for decode: the calling thread plus `threads - 1` workers that spin
//! between jobs.
//!
//! A decode step of a small model is a chain of about a hundred matrix-vector products of 20-50
//! microseconds each, with a little serial work between them. Handing each product to rayon costs
//! a wake-up of a sleeping worker (a futex round trip, several microseconds) and a join, a large
//! share of such a product. Here the workers spin on a generation counter for a while
//! ([`SPIN`]) after each job, as llama.cpp's threads do, so a job that follows within that time
//! starts on every thread within a fraction of a microsecond; after that they sleep on a condition
//! variable, so an idle process (or one doing prefill on rayon) does not keep burning cores.
//!
//! The spinning workers are used only when [`polling`] is on (`ENGINE_DECODE_POLL=1`); by
//! default [`run`] hands the same job to rayon, which is the better choice on a loaded machine.
//!
//! [`run`] calls `f(0)` on the caller and `f(i)` on each worker `i` that arrives while the caller
//! is still in `f(0)`, and returns when every call has returned. So `f` must share its work out
//! dynamically (the decode products claim row chunks from an atomic counter until none is
//! left): the caller never waits for a worker that has not started, which matters on a loaded
//! machine, where a worker may not get a core for milliseconds (rayon's work stealing has the
//! same property). One job runs at a time: a caller that finds the pool busy (another thread's
//! job, or a job started from inside a job) makes the calls on rayon instead.

use std::sync::{Mutex, TryLockError};

use crate::crew::Crew;
pub use crate::crew::SPIN;

/// The workers of one thread count.
struct Pool {
    crew: Crew,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        Pool { crew: Crew::new(threads, "decode") }
    }

    /// The threads a job runs on (fewer than asked for if a worker could not be started).
    fn threads(&self) -> usize {
        self.crew.threads()
    }

    /// Runs `f(0)` here and `f(i)` on each worker that arrives before `f(0)` returns; returns
    /// when all those calls have.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if let Err(p) = self.crew.run(|| f(0), f) {
            std::panic::resume_unwind(p);
        }
        if self.crew.panicked() {
            panic!("a decode pool worker panicked");
        }
    }
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Whether decode jobs go to the spinning workers: only when `ENGINE_DECODE_POLL=1` is set (as
/// llama.cpp's `--poll`). By default they go to rayon, because on a machine shared with other
/// work a spinning worker holds a core that the caller or another process needs: on the 2-vCPU
/// dev VM at a load average of 4-7, the spinning pool decoded no faster than rayon and
/// sometimes 10-30% slower (docs/PERFORMANCE.md). Read once.
pub fn polling() -> bool {
    static POLL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POLL.get_or_init(|| std::env::var("ENGINE_DECODE_POLL").is_ok_and(|v| v == "1"))
}

/// Calls `f(0)` on the calling thread and `f(i)`, `0 < i < threads`, on other threads that
/// start before `f(0)` returns; returns when all those calls have returned. `f` must therefore
/// share its work out dynamically, so that `f(0)` alone would do it all. `threads <= 1` calls
/// `f(0)` only. The other threads are the spinning workers when [`polling`] is on, else rayon's.
pub fn run(threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if polling() {
        run_spinning(threads, f);
    } else {
        run_rayon(threads, f);
    }
}

/// [`run`] on rayon: `f(0..threads)` as a parallel iterator. The caller runs `f(0)` and, if no
/// idle rayon thread took the other calls meanwhile, the rest, which then find no work left.
pub fn run_rayon(threads: usize, f: &(dyn Fn(usize) + Sync)) {
    use rayon::prelude::*;
    if threads <= 1 {
        f(0);
    } else {
        (0..threads).into_par_iter().for_each(f);
    }
}

/// [`run`] on the spinning workers. If the pool is busy (another thread's job, or a call from
/// inside a job) the calls run on rayon instead.
pub fn run_spinning(threads: usize, f: &(dyn Fn(usize) + Sync)) {
    if threads <= 1 {
        f(0);
        return;
    }
    let mut guard = match POOL.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return run_rayon(threads, f),
    };
    if guard.as_ref().map(Pool::threads) != Some(threads) {
        *guard = None; // Joins the old workers first.
        *guard = Some(Pool::new(threads));
    }
    let Some(pool) = guard.as_ref() else { return run_rayon(threads, f) };
    let n = pool.threads();
    if n < threads {
        // Some workers could not be started: the missing calls run here.
        pool.run(&|i| {
            f(i);
            if i == 0 {
                (n..threads).for_each(f);
            }
        });
    } else {
        pool.run(f);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A job as decode runs them: `items` claimed one by one from a counter.
    fn count_items(spinning: bool, threads: usize, items: usize) -> Vec<usize> {
        let next = AtomicUsize::new(0);
        let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
        let callers: Vec<AtomicUsize> = (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect();
        let f = |i: usize| {
            callers[i].fetch_add(1, Ordering::Relaxed);
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= items {
                    break;
                }
                hits[c].fetch_add(1, Ordering::Relaxed);
            }
        };
        if spinning {
            run_spinning(threads, &f);
        } else {
            run_rayon(threads, &f);
        }
        assert_eq!(callers[0].load(Ordering::Relaxed), 1);
        assert!(callers.iter().all(|c| c.load(Ordering::Relaxed) <= 1));
        hits.iter().map(|h| h.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn every_item_runs_once() {
        for threads in [1usize, 2, 3, 2] {
            for round in 0..300 {
                let items = round % 7 * 50;
                for spinning in [true, false] {
                    assert!(count_items(spinning, threads, items).iter().all(|&h| h == 1), "{threads} threads, {items} items");
                }
            }
        }
    }

    #[test]
    fn wakes_after_sleeping_and_nests() {
        let sum = AtomicUsize::new(0);
        run_spinning(2, &|_| {
            sum.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 4);
        run_spinning(2, &|i| {
            // A nested call finds the pool busy and runs on rayon.
            run_spinning(2, &|_| {
                sum.fetch_add(10, Ordering::Relaxed);
            });
            sum.fetch_add(i, Ordering::Relaxed);
        });
        // The first job ran on the caller and perhaps the worker (1 or 2); the second on the
        // caller (i = 0) and perhaps the worker (i = 1), each running the nested job's two calls.
        let got = sum.load(Ordering::Relaxed);
        assert!([1 + 20, 2 + 20, 1 + 41, 2 + 41].contains(&got), "{got}");
    }
}
