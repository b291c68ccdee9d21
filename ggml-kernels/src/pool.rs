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

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before it sleeps: longer than the serial work
/// between two products of a decode step (norms, RoPE, attention over a short context: a few to
/// tens of microseconds), short enough that a worker does not hold a core that another thread
/// of a loaded machine (the caller itself, often) could use.
pub const SPIN: Duration = Duration::from_micros(100);

/// Spins between `sched_yield` calls while a worker waits: if another thread is runnable on
/// this core, it gets to run (a loaded machine); if not, the yield returns at once.
const SPINS_PER_YIELD: u32 = 64;

/// A job: called once per thread with the thread's index.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job (and once at shutdown); workers wait for it to change.
    gen: AtomicU64,
    /// The current job, valid from its `gen` bump until the caller has closed it and `active`
    /// is zero. Written only by the thread that holds the pool's lock, while no worker is in.
    job: UnsafeCell<Option<*const Job>>,
    /// Set when the caller's own call has returned: workers that arrive later stay out.
    closed: AtomicBool,
    /// Workers inside the current job (or checking whether they may enter).
    active: AtomicUsize,
    /// Workers asleep (or about to sleep) on `cv`.
    sleeping: AtomicUsize,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

// SAFETY: `job` is written only by the dispatching thread between jobs (no worker is in then:
// the last job was closed with `active` at zero, and `gen` has not moved) and read by workers
// only after entering a job, which the dispatcher waits for; the pointee is `Sync`. Everything
// else is atomics and locks.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// The workers of one thread count.
struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            gen: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            closed: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        });
        let handles = (1..threads)
            .filter_map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("decode-{i}")).spawn(move || worker(&s, i)).ok()
            })
            .collect::<Vec<_>>();
        // If a thread could not be started, the pool has fewer workers; `threads` counts them.
        let threads = handles.len() + 1;
        Pool { threads, shared, handles }
    }

    /// Runs `f(0)` here and `f(i)` on each worker that arrives before `f(0)` returns; returns
    /// when all those calls have.
    fn run<'f>(&self, f: &'f (dyn Fn(usize) + Sync + 'f)) {
        let s = &*self.shared;
        // SAFETY: no worker is in a job (the previous `run` closed its job and waited for
        // `active` to fall to zero), so none reads `job`; the pointer is used only until this
        // function returns (see below), so erasing the closure's lifetime is sound.
        unsafe {
            let erased: *const Job = std::mem::transmute::<*const (dyn Fn(usize) + Sync + 'f), *const Job>(f);
            *s.job.get() = Some(erased);
        }
        s.closed.store(false, Ordering::SeqCst);
        s.gen.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock();
            s.cv.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        // Close the job, then wait for the workers inside it, which hold the pointer to `f`.
        // (A worker increments `active` before it checks `closed`, and this thread sets `closed`
        // before it reads `active`, so a worker either is counted here or stays out.)
        s.closed.store(true, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a decode pool worker panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.gen.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock();
            s.cv.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: &Shared, index: usize) {
    // The generation the pool was created with (not the current one: the first job may have
    // been posted before this thread started).
    let mut seen = 0;
    loop {
        // Spin for the next job, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.gen.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins % SPINS_PER_YIELD == 0 {
                std::thread::yield_now();
            }
            if spins % 256 == 0 && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.gen.load(Ordering::SeqCst) == seen {
                    g = s.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        }
        let g = s.gen.load(Ordering::SeqCst);
        seen = g;
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        s.active.fetch_add(1, Ordering::SeqCst);
        // Enter only the job this thread was woken for, and only while it is open.
        if s.gen.load(Ordering::SeqCst) == g && !s.closed.load(Ordering::SeqCst) {
            // SAFETY: the job is open and this thread is counted in `active`, so the dispatcher
            // has stored it and waits for this thread before it changes `job` or lets the
            // closure go.
            if let Some(job) = unsafe { *s.job.get() } {
                // SAFETY: as above: the pointee outlives this call.
                let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) }));
                if r.is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
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
    if guard.as_ref().map(|p| p.threads) != Some(threads) {
        *guard = None; // Joins the old workers first.
        *guard = Some(Pool::new(threads));
    }
    let Some(pool) = guard.as_ref() else { return run_rayon(threads, f) };
    let n = pool.threads;
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
