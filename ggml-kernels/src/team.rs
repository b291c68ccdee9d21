//! A team of threads that runs one parallel region: every thread executes the same chain of
//! ops, sharing each op's work out and waiting for the op to be complete before the next one,
//! as llama.cpp's graph executor does.
//!
//! A decode step of a small model is a chain of about a hundred small ops (matrix-vector
//! products of 20-50 microseconds, norms, RoPE, attention). A fork-join per product
//! ([`crate::pool::run`]) pays a wake-up and a join for each; here the threads are started once
//! per region (a decode token) and go from one op to the next as soon as the op is complete.
//! The serial work between products (norms, RoPE, attention heads) is split between the
//! threads too.
//!
//! **Ops, not threads, are waited for.** Each op is cut into pieces ([`Ctx::parallel`]): the
//! threads claim pieces until none is left, then wait until every piece is done, by whichever
//! thread claimed it. A thread that has lost its core (a loaded machine) therefore holds back
//! only the op whose piece it holds; when it gets its core back it finds the ops it missed
//! complete and runs through them, claiming nothing, until it catches up. A thread that never
//! arrives costs nothing: the caller does every piece itself, as with the fork-join. (A
//! barrier that waits for every thread, the usual design, turns each lost time slice into a
//! stall of the whole team: on the 2-vCPU dev VM beside another process, 35% slower than the
//! fork-join.)
//!
//! The state of the current op is one 64-bit word ([`Slot`]): the op's number in the
//! sequence, its piece count, and the pieces claimed and done, changed by compare-and-swap.
//! Every thread numbers the ops of a region the same way (they run the same code), and the
//! word moves to op `k + 1` only after op `k` is complete, so a thread at op `k` that finds a
//! later number knows op `k` is done.
//!
//! [`run`] calls `f(ctx)` on the calling thread and on the workers that arrive while the
//! caller is still in `f` (the workers are a [`crate::crew`], as the fork-join pool's are: kept
//! between regions, they spin for [`crate::pool::SPIN`] for the next one, then sleep). Waits inside a
//! region spin a little, then yield the core at each turn.
//!
//! Rules for the code a region runs (the collective-op discipline): every thread calls the same
//! ops in the same order with the same piece counts; a piece writes shared data
//! ([`TeamVec`]) only at elements no other piece of the op touches, and reads only what
//! earlier ops wrote. Shared data is read and written inside pieces only: between two ops a
//! thread may lag behind another that has already gone on to later ops (which may overwrite
//! what the lagging thread would read), but while a piece of op `k` is claimed, no thread can
//! be past op `k`. A team of one ([`Ctx::solo`]) is the plain serial case.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

use crate::crew::Crew;

/// Spins of a wait before it starts yielding its core at every turn: about a microsecond of
/// `pause`, longer than most waits between two ops of one token on an otherwise idle machine,
/// short enough that a waiting thread does not keep a runnable one off the core.
const WAIT_SPINS: u32 = 1 << 10;

/// Most pieces of one op.
pub const MAX_PIECES: usize = (1 << PIECE_BITS) - 1;

const PIECE_BITS: u32 = 13;
const ID_BITS: u32 = 64 - 3 * PIECE_BITS;
const PIECE_MASK: u64 = (1 << PIECE_BITS) - 1;
const ID_MASK: u64 = (1 << ID_BITS) - 1;

/// The state of the op in progress, packed in one word: `id` (the op's number, modulo
/// 2^ID_BITS), `n` pieces, `claimed` and `done` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    id: u64,
    n: u64,
    claimed: u64,
    done: u64,
}

impl Slot {
    fn pack(self) -> u64 {
        (self.id & ID_MASK) << (3 * PIECE_BITS) | self.n << (2 * PIECE_BITS) | self.claimed << PIECE_BITS | self.done
    }

    fn unpack(w: u64) -> Slot {
        Slot { id: w >> (3 * PIECE_BITS), n: (w >> (2 * PIECE_BITS)) & PIECE_MASK, claimed: (w >> PIECE_BITS) & PIECE_MASK, done: w & PIECE_MASK }
    }

    /// How op `id` relates to this slot's op: `Less` if the slot still holds an earlier op
    /// (op `id` not started), `Equal`, or `Greater` (op `id` complete). Ids wrap; ops in
    /// flight are never half the id space apart.
    fn compare(self, id: u64) -> std::cmp::Ordering {
        let d = self.id.wrapping_sub(id) & ID_MASK;
        if d == 0 {
            std::cmp::Ordering::Equal
        } else if d < 1 << (ID_BITS - 1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Less
        }
    }
}

/// The state the threads of a team share.
struct Shared {
    /// Threads a region may have (the caller and `threads - 1` workers).
    threads: usize,
    /// The workers; [`Crew::panicked`] tells the waits of a region that a thread panicked, so
    /// they panic too instead of waiting for it.
    crew: Crew,
    /// The number of the region's first op.
    first_op: AtomicU64,
    /// The op in progress ([`Slot`]).
    slot: AtomicU64,
    /// Set (for the rest of the region) when a step of [`Ctx::single_ok`] failed.
    failed: AtomicBool,
}

/// One thread's view of the team inside a region.
pub struct Ctx<'t> {
    ith: usize,
    nth: usize,
    /// `None` for a team of one.
    shared: Option<&'t Shared>,
    /// The number of this thread's next op.
    next_op: Cell<u64>,
    /// A team of one's failure flag ([`Ctx::single_ok`]).
    solo_failed: Cell<bool>,
}

impl Ctx<'static> {
    /// A team of one thread: every op runs whole on the caller.
    pub fn solo() -> Ctx<'static> {
        Ctx { ith: 0, nth: 1, shared: None, next_op: Cell::new(0), solo_failed: Cell::new(false) }
    }
}

impl Ctx<'_> {
    /// This thread's index in the team (0 is the thread that called [`run`]).
    pub fn ith(&self) -> usize {
        self.ith
    }

    /// Threads the team may have (the pieces of an op are sized for them; fewer may come).
    pub fn nth(&self) -> usize {
        self.nth
    }

    /// Runs the next op of the region, of `n` pieces (at most [`MAX_PIECES`]): claims pieces
    /// and calls `body(i)` for each until none is left, then waits until every piece of the op
    /// is done, by whichever thread. What the pieces wrote is then visible to this thread.
    pub fn parallel(&self, n: usize, body: &mut dyn FnMut(usize)) {
        let Some(s) = self.shared else {
            (0..n).for_each(body);
            return;
        };
        assert!(n <= MAX_PIECES, "an op of {n} pieces (at most {MAX_PIECES})");
        let id = self.advance();
        let n = n as u64;
        let mut cur = Slot::unpack(s.slot.load(Ordering::Acquire));
        // Pieces this thread has done, counted into the slot once it finds none left to claim
        // (one shared write per thread and op rather than one per piece).
        let mut mine = 0;
        loop {
            let next = match cur.compare(id) {
                // Complete: every piece was claimed and done before the slot moved on.
                std::cmp::Ordering::Greater => return,
                // This thread starts the op (the one before is complete: this thread waited
                // for it) and claims its first piece.
                std::cmp::Ordering::Less => Slot { id, n, claimed: n.min(1), done: 0 },
                std::cmp::Ordering::Equal if cur.claimed < cur.n => Slot { claimed: cur.claimed + 1, ..cur },
                std::cmp::Ordering::Equal => break,
            };
            match s.slot.compare_exchange_weak(cur.pack(), next.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if next.n == 0 {
                        return;
                    }
                    body(next.claimed as usize - 1);
                    mine += 1;
                    cur = Slot::unpack(s.slot.load(Ordering::Acquire));
                }
                Err(now) => cur = Slot::unpack(now),
            }
        }
        if mine > 0 {
            // Count this thread's pieces done (a release of what they wrote). The op cannot
            // have moved on: it waits for these.
            let mut w = cur.pack();
            loop {
                let d = Slot::unpack(w);
                debug_assert!(d.compare(id).is_eq());
                match s.slot.compare_exchange_weak(w, Slot { done: d.done + mine, ..d }.pack(), Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(now) => w = now,
                }
            }
        }
        self.wait(s, id);
    }

    /// Whether the next op still has pieces to claim, or has not started. A thread that finds
    /// it has none can skip preparing for the op and call [`Ctx::parallel`] at once (it will
    /// only wait for it).
    pub fn next_op_open(&self) -> bool {
        let Some(s) = self.shared else { return true };
        let cur = Slot::unpack(s.slot.load(Ordering::Acquire));
        match cur.compare(self.next_op.get()) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => cur.claimed < cur.n,
            std::cmp::Ordering::Greater => false,
        }
    }

    /// Waits for the next op without preparing for it, after [`Ctx::next_op_open`] said it has
    /// no pieces left.
    pub fn skip_op(&self) {
        self.parallel(0, &mut |_| {});
    }

    /// Piece `i` of `0..n` cut into `pieces` contiguous ranges (a thread's share, when an op has
    /// one piece per thread).
    pub fn piece(i: usize, pieces: usize, n: usize) -> std::ops::Range<usize> {
        let per = n.div_ceil(pieces.max(1));
        (i * per).min(n)..((i + 1) * per).min(n)
    }

    /// The number of this thread's next op, which it now starts.
    fn advance(&self) -> u64 {
        let id = self.next_op.get();
        self.next_op.set(id.wrapping_add(1) & ID_MASK);
        id
    }

    /// Waits until op `id` is complete.
    fn wait(&self, s: &Shared, id: u64) {
        let mut spins = 0u32;
        loop {
            let cur = Slot::unpack(s.slot.load(Ordering::Acquire));
            match cur.compare(id) {
                std::cmp::Ordering::Greater => return,
                std::cmp::Ordering::Equal if cur.done == cur.n => return,
                _ => {}
            }
            if s.crew.panicked() {
                panic!("another thread of the decode team panicked");
            }
            spins = spins.saturating_add(1);
            if spins < WAIT_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Runs `f` as an op of one piece (on whichever thread claims it): the serial steps of a
    /// region.
    pub fn single(&self, f: impl FnOnce()) {
        let mut f = Some(f);
        self.parallel(1, &mut |_| {
            if let Some(f) = f.take() {
                f();
            }
        });
    }

    /// [`Ctx::single`] for a step that may fail: every thread learns whether it (or an earlier
    /// such step of the region) failed, so that all of them can leave the region. A thread that
    /// lags so far behind that a later step has already failed (ops wait for pieces, not for
    /// threads) learns of that failure here already; it leaves the region a step sooner, which
    /// the region's failure makes it do anyway.
    pub fn single_ok(&self, f: impl FnOnce() -> bool) -> bool {
        let Some(s) = self.shared else {
            if !f() {
                self.solo_failed.set(true);
            }
            return !self.solo_failed.get();
        };
        self.single(|| {
            if !f() {
                s.failed.store(true, Ordering::Relaxed);
            }
        });
        // The flag only ever goes up within a region, so a later step cannot hide this one;
        // it was set before the op's piece was counted done.
        !s.failed.load(Ordering::Relaxed)
    }
}

/// Shared `f32` data of a region ([`TeamVec`]): a buffer that every thread of a team may write
/// (at elements no other thread touches meanwhile) and read (in a later op), by the rules in
/// the module documentation.
pub struct TeamVec {
    data: UnsafeCell<Vec<f32>>,
}

// SAFETY: access goes through the unsafe accessors, whose callers follow the collective-op
// discipline (disjoint writes within an op, reads in a later op).
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
    shared: Shared,
    /// The number of the next region's first op.
    next_op: u64,
}

impl Team {
    /// `threads - 1` workers; `None` if one could not be started.
    fn new(threads: usize) -> Option<Team> {
        let crew = Crew::new(threads, "team");
        if crew.threads() < threads {
            return None; // (Dropping the crew stops those that were started.)
        }
        let shared = Shared {
            threads,
            crew,
            first_op: AtomicU64::new(0),
            // An op before the first (which then counts as not started).
            slot: AtomicU64::new(Slot { id: ID_MASK, n: 0, claimed: 0, done: 0 }.pack()),
            failed: AtomicBool::new(false),
        };
        Some(Team { shared, next_op: 0 })
    }

    fn run(&mut self, f: &(dyn Fn(&Ctx<'_>) + Sync)) {
        let s = &self.shared;
        s.failed.store(false, Ordering::Relaxed);
        s.first_op.store(self.next_op, Ordering::Relaxed);
        let ctx = Ctx { ith: 0, nth: s.threads, shared: Some(s), next_op: Cell::new(self.next_op), solo_failed: Cell::new(false) };
        let theirs = |ith: usize| {
            let ctx = Ctx { ith, nth: s.threads, shared: Some(s), next_op: Cell::new(s.first_op.load(Ordering::Relaxed)), solo_failed: Cell::new(false) };
            f(&ctx);
        };
        let mine = s.crew.run(|| f(&ctx), &theirs);
        // The next region numbers its ops after every op this one started (a region left by
        // a panic may have fewer on the caller than on a worker).
        let last = Slot::unpack(s.slot.load(Ordering::SeqCst)).id;
        self.next_op = ctx.next_op.get().max(last.wrapping_add(1) & ID_MASK);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.crew.panicked() {
            panic!("a decode team worker panicked");
        }
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
    match guard.as_mut() {
        Some(team) => team.run(f),
        None => f(&Ctx::solo()),
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::pool::SPIN;

    /// A chain of dependent ops: each reads what every piece of the op before wrote, so an op
    /// that let a thread through before it was complete would show up as a wrong sum.
    fn chain(threads: usize, steps: usize, width: usize) -> Vec<u64> {
        let bufs = [TeamVec::new(width), TeamVec::new(width)];
        let sums: Vec<AtomicU64> = (0..steps).map(|_| AtomicU64::new(0)).collect();
        run(threads, &|ctx| {
            for step in 0..steps {
                let (src, dst) = (&bufs[step % 2], &bufs[(step + 1) % 2]);
                // Reads happen inside pieces only: a thread between two ops may be behind
                // another that is already at a later op (see the module documentation).
                ctx.single(|| {
                    // SAFETY: nobody writes `src` during this op.
                    let total: f32 = unsafe { src.get() }.iter().sum();
                    sums[step].store(total as u64, Ordering::Relaxed);
                });
                // Element `i` written by whichever thread claims piece `i`.
                ctx.parallel(width, &mut |i| {
                    // SAFETY: piece `i` is claimed by this thread only.
                    unsafe { *dst.ptr().add(i) = (step + 1) as f32 };
                });
            }
        });
        sums.iter().map(|s| s.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn ops_complete_in_order() {
        for threads in [1usize, 2, 3, 2] {
            for _ in 0..50 {
                let got = chain(threads, 40, 97);
                let want: Vec<u64> = (0..40).map(|s| (s * 97) as u64).collect();
                assert_eq!(got, want, "{threads} threads");
            }
        }
    }

    #[test]
    fn every_piece_runs_once() {
        for threads in [2usize, 3] {
            let hits: Vec<AtomicUsize> = (0..4 * 50).map(|_| AtomicUsize::new(0)).collect();
            run(threads, &|ctx| {
                for op in 0..4 {
                    // Ops of 0, 1, 50 and 3 pieces.
                    let n = [0, 1, 50, 3][op];
                    ctx.parallel(n, &mut |c| {
                        hits[op * 50 + c].fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
            for op in 0..4 {
                let n = [0, 1, 50, 3][op];
                assert!((0..50).all(|c| hits[op * 50 + c].load(Ordering::Relaxed) == usize::from(c < n)), "op {op}");
            }
        }
    }

    #[test]
    fn a_late_thread_runs_through_complete_ops() {
        // Thread 1 sleeps before its first op: thread 0 does every piece of the first ops
        // alone, and thread 1 must find them complete (never run them again) and catch up.
        let hits: Vec<AtomicUsize> = (0..20 * 8).map(|_| AtomicUsize::new(0)).collect();
        let by_late = AtomicUsize::new(0);
        for _ in 0..20 {
            hits.iter().for_each(|h| h.store(0, Ordering::Relaxed));
            run(2, &|ctx| {
                if ctx.ith() == 1 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                for op in 0..20 {
                    ctx.parallel(8, &mut |c| {
                        if ctx.ith() == 1 {
                            by_late.fetch_add(1, Ordering::Relaxed);
                        }
                        hits[op * 8 + c].fetch_add(1, Ordering::Relaxed);
                        if op % 5 == 0 {
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                    });
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn single_and_pieces() {
        let buf = TeamVec::new(10);
        let n = AtomicUsize::new(0);
        run(2, &|ctx| {
            ctx.single(|| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            ctx.parallel(2, &mut |i| {
                for j in Ctx::piece(i, 2, 10) {
                    // SAFETY: the pieces are disjoint.
                    unsafe { *buf.ptr().add(j) = (i + 1) as f32 };
                }
            });
            // (A thread that lags behind the failing step below may already see its failure
            // here, so success is checked in a region without one: the next test.)
            ctx.single_ok(|| true);
            assert!(!ctx.single_ok(|| false));
            // The failure stays visible for the rest of the region.
            assert!(!ctx.single_ok(|| true));
        });
        assert_eq!(n.load(Ordering::Relaxed), 1);
        // SAFETY: the region is over.
        assert_eq!(unsafe { buf.get() }, &[1., 1., 1., 1., 1., 2., 2., 2., 2., 2.]);
    }

    /// Steps that succeed report success to every thread while no step of the region fails.
    #[test]
    fn single_ok_reports_success_without_a_failure() {
        for _ in 0..200 {
            run(2, &|ctx| {
                for _ in 0..4 {
                    assert!(ctx.single_ok(|| true));
                }
            });
        }
    }

    #[test]
    fn nested_region_runs_alone_and_sleepers_wake() {
        let sum = AtomicUsize::new(0);
        run(2, &|ctx| {
            ctx.single(|| {
                sum.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(sum.load(Ordering::Relaxed), 1);
        std::thread::sleep(SPIN * 4);
        run(2, &|ctx| {
            // A region inside a region finds the team busy and runs as a team of one.
            ctx.single(|| {
                run(2, &|inner| {
                    assert_eq!(inner.nth(), 1);
                    sum.fetch_add(10, Ordering::Relaxed);
                })
            });
        });
        assert_eq!(sum.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn a_panicking_thread_reaches_the_caller() {
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(2, &|ctx| {
                ctx.parallel(2, &mut |_| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    panic!("a piece fails")
                });
            })
        }));
        assert!(r.is_err());
        // The team still works afterwards.
        let got = chain(2, 5, 8);
        assert_eq!(got, vec![0, 8, 16, 24, 32]);
    }

    #[test]
    fn slot_words_round_trip_and_ids_wrap() {
        let s = Slot { id: ID_MASK - 1, n: MAX_PIECES as u64, claimed: 5, done: 3 };
        assert_eq!(Slot::unpack(s.pack()), s);
        assert!(s.compare(ID_MASK - 1).is_eq());
        // Op 0 comes after op ID_MASK - 1 (two ops on): not started yet.
        assert!(s.compare(0).is_lt());
        assert!(s.compare(ID_MASK - 3).is_gt());
    }
}
