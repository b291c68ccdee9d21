//! A team of threads that runs one parallel region: every thread executes the same chain of
//! ops, sharing each op's work out and meeting at a barrier before the next one, as llama.cpp's
//! graph executor does.
//!
//! A decode step of a small model is a chain of about a hundred small ops (matrix-vector
//! products of 20-50 microseconds, norms, RoPE, attention). A fork-join per product
//! ([`crate::pool::run`]) pays a wake-up and a join for each; here the threads are started once
//! per region (a decode token) and pass from one op to the next through a [`Ctx::barrier`], a
//! counter that the last thread to arrive moves on. The serial work between products (norms,
//! RoPE, attention heads) is split between the threads too.
//!
//! [`run`] calls `f(ctx)` on the calling thread and on `threads - 1` workers. The workers are
//! kept between regions: after a region they spin for [`crate::pool::SPIN`] for the next one,
//! then sleep on a condition variable. Every thread of a region must reach every barrier, so
//! the threads of a region wait for each other; a barrier spins a while, then yields its core
//! at each turn (a loaded machine gets the core back for whichever thread is runnable), so a
//! thread that lost its core delays the region but does not stall it.
//!
//! Work inside an op is claimed from the team's counter ([`Ctx::claim`], reset by each
//! barrier), so a thread that arrives late at an op takes fewer pieces of it.
//!
//! Rules for the code a region runs (the collective-op discipline): every thread calls the same
//! ops in the same order with the same arguments, so each reaches the same barriers; an op
//! writes shared data ([`TeamVec`]) only at elements no other thread touches during the op, and
//! reads only what earlier ops wrote (a barrier lies between). A team of one ([`Ctx::solo`]) is
//! the plain serial case: its barriers are no-ops.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::Instant;

use crate::pool::SPIN;

/// Spins of a barrier wait before it starts yielding its core at every turn: about a
/// microsecond of `pause`, longer than most waits between two ops of one token on an otherwise
/// idle machine, short enough that a waiting thread does not keep a runnable one off the core.
const BARRIER_SPINS: u32 = 1 << 10;

/// The state the threads of a team share.
struct Shared {
    /// Threads in a region (the caller and `threads - 1` workers).
    threads: usize,
    /// Bumped once per region (and once at shutdown); workers wait for it to change.
    gen: AtomicU64,
    /// The current region's function, valid from its `gen` bump until every worker has left.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers still inside the current region.
    active: AtomicUsize,
    /// Workers asleep (or about to sleep) on `cv`.
    sleeping: AtomicUsize,
    shutdown: AtomicBool,
    /// Set when a thread of the region panicked: the barriers then panic too instead of
    /// waiting for it.
    poisoned: AtomicBool,
    /// Threads arrived at the current barrier.
    arrived: AtomicUsize,
    /// Barriers passed; the last thread to arrive bumps it.
    passed: AtomicU64,
    /// The pieces of the current op claimed so far ([`Ctx::claim`]).
    next: AtomicUsize,
    /// Set (for the rest of the region) when a step of [`Ctx::single_ok`] failed.
    failed: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

/// A region's function: called once per thread with that thread's view of the team.
type Job = dyn Fn(&Ctx<'_>) + Sync;

// SAFETY: `job` is written only by the thread that holds the team (the `TEAM` lock) while no
// worker is inside a region (`active` is zero and `gen` has not moved), and read by workers only
// inside a region, which the caller waits out before it returns; the pointee is `Sync`.
// Everything else is atomics and locks.
unsafe impl Sync for Shared {}
// SAFETY: as above.
unsafe impl Send for Shared {}

/// One thread's view of the team inside a region.
pub struct Ctx<'t> {
    ith: usize,
    nth: usize,
    /// `None` for a team of one.
    shared: Option<&'t Shared>,
    /// A team of one's piece counter.
    solo_next: AtomicUsize,
}

impl Ctx<'static> {
    /// A team of one thread: every op runs whole on the caller, barriers are no-ops.
    pub fn solo() -> Ctx<'static> {
        Ctx { ith: 0, nth: 1, shared: None, solo_next: AtomicUsize::new(0) }
    }
}

impl Ctx<'_> {
    /// This thread's index in the team (0 is the thread that called [`run`]).
    pub fn ith(&self) -> usize {
        self.ith
    }

    /// Threads in the team.
    pub fn nth(&self) -> usize {
        self.nth
    }

    /// This thread's share of `0..n` when it is cut into `nth` contiguous ranges.
    pub fn share(&self, n: usize) -> std::ops::Range<usize> {
        let per = n.div_ceil(self.nth);
        (self.ith * per).min(n)..((self.ith + 1) * per).min(n)
    }

    /// The next piece of the current op: `0, 1, 2, ...` across the whole team, each handed out
    /// once; a thread loops until the value passes the op's piece count. The count restarts at
    /// each [`Ctx::barrier`].
    pub fn claim(&self) -> usize {
        match self.shared {
            Some(s) => s.next.fetch_add(1, Ordering::Relaxed),
            None => self.solo_next.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Waits until every thread of the team has arrived here; what each wrote before is then
    /// visible to all. Resets the piece counter of [`Ctx::claim`].
    pub fn barrier(&self) {
        let Some(s) = self.shared else {
            self.solo_next.store(0, Ordering::Relaxed);
            return;
        };
        let passed = s.passed.load(Ordering::Acquire);
        // The increment is a release (this thread's writes) and an acquire (the writes of those
        // that arrived before); the last arriver publishes them all with its bump of `passed`.
        if s.arrived.fetch_add(1, Ordering::AcqRel) == self.nth - 1 {
            s.arrived.store(0, Ordering::Relaxed);
            s.next.store(0, Ordering::Relaxed);
            s.passed.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let mut spins = 0u32;
        while s.passed.load(Ordering::Acquire) == passed {
            if s.poisoned.load(Ordering::Relaxed) {
                panic!("another thread of the decode team panicked");
            }
            spins = spins.saturating_add(1);
            if spins < BARRIER_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Runs `f` on thread 0 only, then waits at a barrier: the serial steps of a region.
    pub fn single(&self, f: impl FnOnce()) {
        if self.ith == 0 {
            f();
        }
        self.barrier();
    }

    /// [`Ctx::single`] for a step that may fail: thread 0 runs `f`, and every thread learns
    /// whether it (or an earlier such step of the region) failed, so that all of them leave
    /// the region together instead of waiting at a barrier for one that left.
    pub fn single_ok(&self, f: impl FnOnce() -> bool) -> bool {
        let Some(s) = self.shared else {
            return f();
        };
        if self.ith == 0 && !f() {
            s.failed.store(true, Ordering::Relaxed);
        }
        // The flag only ever goes up within a region, so a later step cannot hide this one.
        self.barrier();
        !s.failed.load(Ordering::Relaxed)
    }
}

/// Shared `f32` data of a region ([`TeamVec`]): a buffer that every thread of a team may write
/// (at elements no other thread touches meanwhile) and read (after a barrier), by the rules in
/// the module documentation.
pub struct TeamVec {
    data: UnsafeCell<Vec<f32>>,
}

// SAFETY: access goes through the unsafe accessors, whose callers follow the collective-op
// discipline (disjoint writes within an op, reads after a barrier).
unsafe impl Sync for TeamVec {}

impl TeamVec {
    /// `n` zeros.
    pub fn new(n: usize) -> TeamVec {
        TeamVec { data: UnsafeCell::new(vec![0.0; n]) }
    }

    /// Takes `v` as the buffer.
    pub fn from_vec(v: Vec<f32>) -> TeamVec {
        TeamVec { data: UnsafeCell::new(v) }
    }

    pub fn len(&self) -> usize {
        // SAFETY: the length never changes while the buffer is shared.
        unsafe { (*self.data.get()).len() }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer, once no thread shares it any more.
    pub fn into_vec(self) -> Vec<f32> {
        self.data.into_inner()
    }

    /// The contents.
    ///
    /// # Safety
    ///
    /// No thread writes the buffer while the slice lives.
    pub unsafe fn get(&self) -> &[f32] {
        // SAFETY: by the caller's promise.
        unsafe { &*self.data.get() }
    }

    /// The contents, to write.
    ///
    /// # Safety
    ///
    /// No other thread reads or writes the buffer while the slice lives (use [`TeamVec::ptr`]
    /// where threads write disjoint parts).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self) -> &mut [f32] {
        // SAFETY: by the caller's promise.
        unsafe { &mut *self.data.get() }
    }

    /// The first element, for threads that write disjoint parts through it.
    pub fn ptr(&self) -> *mut f32 {
        // SAFETY: taking the pointer reads nothing; the vector is never reallocated while shared.
        unsafe { (*self.data.get()).as_mut_ptr() }
    }
}

/// The workers of one thread count.
struct Team {
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Team {
    /// `threads - 1` workers; `None` if one could not be started.
    fn new(threads: usize) -> Option<Team> {
        let shared = Arc::new(Shared {
            threads,
            gen: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            active: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            arrived: AtomicUsize::new(0),
            passed: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        });
        let mut team = Team { shared: Arc::clone(&shared), handles: Vec::new() };
        for i in 1..threads {
            let s = Arc::clone(&shared);
            // If a thread cannot be started, dropping `team` stops those that were.
            let h = std::thread::Builder::new().name(format!("team-{i}")).spawn(move || worker(&s, i)).ok()?;
            team.handles.push(h);
        }
        Some(team)
    }

    fn run<'f>(&self, f: &'f (dyn Fn(&Ctx<'_>) + Sync + 'f)) {
        let s = &*self.shared;
        // SAFETY: no worker is inside a region (the last `run` waited for `active` to reach
        // zero), so none reads `job`; the pointer is used only until this function returns,
        // which waits for every worker to leave, so erasing the closure's lifetime is sound.
        unsafe {
            let erased: *const Job = std::mem::transmute::<*const (dyn Fn(&Ctx<'_>) + Sync + 'f), *const Job>(f);
            *s.job.get() = Some(erased);
        }
        s.poisoned.store(false, Ordering::Relaxed);
        s.failed.store(false, Ordering::Relaxed);
        s.active.store(s.threads - 1, Ordering::SeqCst);
        s.gen.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock();
            s.cv.notify_all();
        }
        let ctx = Ctx { ith: 0, nth: s.threads, shared: Some(s), solo_next: AtomicUsize::new(0) };
        let mine = catch_unwind(AssertUnwindSafe(|| f(&ctx)));
        if mine.is_err() {
            s.poisoned.store(true, Ordering::SeqCst);
        }
        // Wait for the workers, which hold the pointer to `f`.
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) != 0 {
            spins = spins.saturating_add(1);
            if spins < BARRIER_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // A region left early (a panic) may leave a barrier half counted.
        s.arrived.store(0, Ordering::SeqCst);
        s.next.store(0, Ordering::SeqCst);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.poisoned.load(Ordering::SeqCst) {
            panic!("a decode team worker panicked");
        }
    }
}

impl Drop for Team {
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

fn worker(s: &Shared, ith: usize) {
    let mut seen = 0;
    loop {
        // Spin for the next region, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.gen.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins % 64 == 0 {
                std::thread::yield_now();
            }
            if spins % 256 == 0 && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.gen.load(Ordering::SeqCst) == seen {
                    g = s.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.gen.load(Ordering::SeqCst);
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: a region is open (`gen` moved and this worker is counted in `active`, which
        // the caller waits out), so `job` holds its function, alive until then.
        if let Some(job) = unsafe { *s.job.get() } {
            let ctx = Ctx { ith, nth: s.threads, shared: Some(s), solo_next: AtomicUsize::new(0) };
            // SAFETY: as above.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(&ctx) }));
            if r.is_err() {
                s.poisoned.store(true, Ordering::SeqCst);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

static TEAM: Mutex<Option<Team>> = Mutex::new(None);

/// Runs `f` as one parallel region on `threads` threads (the caller is thread 0) and returns
/// when every thread has returned from it. `threads <= 1`, a team whose threads could not be
/// started, and a call while the team is busy (another thread's region, or a region started
/// from inside one) run `f` on the caller alone, as a team of one, so `f` must be correct for
/// any team size.
pub fn run(threads: usize, f: &(dyn Fn(&Ctx<'_>) + Sync)) {
    if threads <= 1 {
        return f(&Ctx::solo());
    }
    let mut guard = match TEAM.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return f(&Ctx::solo()),
    };
    if guard.as_ref().map(|t| t.shared.threads) != Some(threads) {
        *guard = None; // Stops the old workers first.
        *guard = Team::new(threads);
    }
    match guard.as_ref() {
        Some(team) => team.run(f),
        None => f(&Ctx::solo()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of dependent ops: each step reads what every thread wrote in the step before,
    /// so a barrier that let a thread through early would show up as a wrong sum.
    fn chain(threads: usize, steps: usize, width: usize) -> Vec<u64> {
        let bufs = [TeamVec::new(width), TeamVec::new(width)];
        let sums: Vec<AtomicU64> = (0..steps).map(|_| AtomicU64::new(0)).collect();
        run(threads, &|ctx| {
            for step in 0..steps {
                let (src, dst) = (&bufs[step % 2], &bufs[(step + 1) % 2]);
                // Read the whole of the previous step's output (written by every thread).
                // SAFETY: nobody writes `src` during this step.
                let total: f32 = unsafe { src.get() }.iter().sum();
                if ctx.ith() == 0 {
                    sums[step].store(total as u64, Ordering::Relaxed);
                }
                // Write this step's output, element `i` by whichever thread claims it.
                loop {
                    let i = ctx.claim();
                    if i >= width {
                        break;
                    }
                    // SAFETY: element `i` is claimed by this thread only.
                    unsafe { *dst.ptr().add(i) = (step + 1) as f32 };
                }
                ctx.barrier();
            }
        });
        sums.iter().map(|s| s.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn barriers_order_every_step() {
        for threads in [1usize, 2, 3, 2] {
            for _ in 0..50 {
                let got = chain(threads, 40, 97);
                let want: Vec<u64> = (0..40).map(|s| (s * 97) as u64).collect();
                assert_eq!(got, want, "{threads} threads");
            }
        }
    }

    #[test]
    fn claims_cover_each_piece_once_and_restart_at_barriers() {
        let hits: Vec<AtomicUsize> = (0..3 * 50).map(|_| AtomicUsize::new(0)).collect();
        run(2, &|ctx| {
            for op in 0..3 {
                loop {
                    let c = ctx.claim();
                    if c >= 50 {
                        break;
                    }
                    hits[op * 50 + c].fetch_add(1, Ordering::Relaxed);
                }
                ctx.barrier();
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn single_and_share() {
        let buf = TeamVec::new(10);
        let n = AtomicUsize::new(0);
        run(2, &|ctx| {
            ctx.single(|| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            for i in ctx.share(10) {
                // SAFETY: the shares of the threads are disjoint.
                unsafe { *buf.ptr().add(i) = (ctx.ith() + 1) as f32 };
            }
            ctx.barrier();
        });
        assert_eq!(n.load(Ordering::Relaxed), 1);
        // SAFETY: the region is over.
        assert!(unsafe { buf.get() }.iter().all(|&v| v >= 1.0));
    }

    #[test]
    fn nested_region_runs_alone_and_sleepers_wake() {
        let sum = AtomicUsize::new(0);
        run(2, &|_| {
            sum.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 2);
        std::thread::sleep(SPIN * 4);
        run(2, &|ctx| {
            // A region inside a region finds the team busy and runs as a team of one.
            run(2, &|inner| {
                assert_eq!(inner.nth(), 1);
                sum.fetch_add(10, Ordering::Relaxed);
            });
            ctx.barrier();
        });
        assert_eq!(sum.load(Ordering::Relaxed), 22);
    }

    #[test]
    fn a_panicking_thread_reaches_the_caller() {
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(2, &|ctx| {
                if ctx.ith() == 1 {
                    panic!("worker fails");
                }
                ctx.barrier();
            })
        }));
        assert!(r.is_err());
        // The team still works afterwards.
        let got = chain(2, 5, 8);
        assert_eq!(got, vec![0, 8, 16, 24, 32]);
    }
}
