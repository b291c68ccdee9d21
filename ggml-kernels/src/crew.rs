//! Worker threads that wait for jobs: the machinery the decode fork-join ([`crate::pool`]) and
//! the decode team ([`crate::team`]) share.
//!
//! A job is posted by bumping a generation counter. Idle workers spin on it for [`SPIN`] after
//! each job (yielding their core every [`SPINS_PER_YIELD`] turns), so a job that follows within
//! that time starts on every thread within a fraction of a microsecond; after that they sleep on
//! a condition variable, so an idle process does not keep burning cores.
//!
//! [`Crew::run`] runs the caller's part on the calling thread and the workers' part on each
//! worker that arrives while the caller's part is still running, and returns when every one of
//! those calls has returned. A worker arriving after that stays out: the caller never waits for
//! a worker that has not started, which matters on a loaded machine, where a worker may not get
//! a core for milliseconds. So the work must be shared out dynamically: the caller's part alone
//! must be able to do all of it.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before it sleeps: longer than the serial work
/// between two products of a decode step (norms, RoPE, attention over a short context: a few to
/// tens of microseconds), short enough that a worker does not hold a core that another thread
/// of a loaded machine (the caller itself, often) could use.
pub const SPIN: Duration = Duration::from_micros(100);

/// Spins between `sched_yield` calls while a worker waits: if another thread is runnable on
/// this core, it gets to run (a loaded machine); if not, the yield returns at once.
const SPINS_PER_YIELD: u32 = 64;

/// Spins of the caller's wait for the workers still inside a job before it yields at each turn.
const CLOSE_SPINS: u32 = 1 << 12;

/// The workers' part of a job: called with the worker's index (1 .. threads).
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job (and once at shutdown); workers wait for it to change.
    gen: AtomicU64,
    /// The current job, valid from its `gen` bump until the caller has closed it and `active`
    /// is zero. Written only by [`Crew::run`], while no worker is in a job.
    job: UnsafeCell<Option<*const Job>>,
    /// Set when the caller's part has returned: workers that arrive later stay out.
    closed: AtomicBool,
    /// Workers inside the current job (or checking whether they may enter).
    active: AtomicUsize,
    /// Workers asleep (or about to sleep) on `cv`.
    sleeping: AtomicUsize,
    shutdown: AtomicBool,
    /// Set as soon as a part of the current job panics (cleared when the next one is posted).
    panicked: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

// SAFETY: `job` is written only by `Crew::run` between jobs (no worker is in then: the last job
// was closed with `active` at zero, and `gen` has not moved) and read by workers only after
// entering a job, which `run` waits out; the pointee is `Sync`. Everything else is atomics and
// locks.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// `threads - 1` workers (fewer if the OS would not start them all), stopped and joined on drop.
pub(crate) struct Crew {
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Crew {
    /// Workers named `{name}-1` .. `{name}-{threads - 1}`.
    pub(crate) fn new(threads: usize, name: &str) -> Crew {
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
                std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || worker(&s, i)).ok()
            })
            .collect();
        Crew { shared, handles }
    }

    /// The threads a job can run on: the caller and the workers that were started.
    pub(crate) fn threads(&self) -> usize {
        self.handles.len() + 1
    }

    /// Whether a part of the current (or last) job has panicked, the caller's included.
    pub(crate) fn panicked(&self) -> bool {
        self.shared.panicked.load(Ordering::SeqCst)
    }

    /// Runs `mine` here and `theirs(i)` on each worker `i` that arrives before `mine` returns;
    /// returns when all those calls have, with the result of `mine` (its panic, caught). A
    /// worker's panic is caught too and shows in [`Crew::panicked`].
    pub(crate) fn run<'f>(&self, mine: impl FnOnce(), theirs: &'f (dyn Fn(usize) + Sync + 'f)) -> std::thread::Result<()> {
        let s = &*self.shared;
        // SAFETY: no worker is in a job (the previous `run` closed its job and waited for
        // `active` to fall to zero), so none reads `job`; the pointer is used only until this
        // function returns (see below), so erasing the closure's lifetime is sound.
        unsafe {
            let erased: *const Job = std::mem::transmute::<*const (dyn Fn(usize) + Sync + 'f), *const Job>(theirs);
            *s.job.get() = Some(erased);
        }
        s.panicked.store(false, Ordering::SeqCst);
        s.closed.store(false, Ordering::SeqCst);
        s.gen.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock();
            s.cv.notify_all();
        }
        let result = catch_unwind(AssertUnwindSafe(mine));
        if result.is_err() {
            // (Workers waiting on the caller's share of the work see this and stop waiting.)
            s.panicked.store(true, Ordering::SeqCst);
        }
        // Close the job, then wait for the workers inside it, which hold the pointer to
        // `theirs`. (A worker increments `active` before it checks `closed`, and this thread sets
        // `closed` before it reads `active`, so a worker either is counted here or stays out.)
        s.closed.store(true, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) != 0 {
            spins = spins.saturating_add(1);
            if spins < CLOSE_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        result
    }
}

impl Drop for Crew {
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
    // The generation the crew was created with (not the current one: the first job may have
    // been posted before this thread started).
    let mut seen = 0;
    loop {
        // Spin for the next job, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.gen.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins.is_multiple_of(SPINS_PER_YIELD) {
                std::thread::yield_now();
            }
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.gen.load(Ordering::SeqCst) == seen {
                    g = s.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
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
            // SAFETY: the job is open and this thread is counted in `active`, so `run` has
            // stored it and waits for this thread before it changes `job` or lets the closure go.
            if let Some(job) = unsafe { *s.job.get() } {
                // SAFETY: as above: the pointee outlives this call.
                let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) }));
                if r.is_err() {
                    s.panicked.store(true, Ordering::SeqCst);
                }
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}
