//! A fixed thread pool for the decoder's parallel regions: the workers live as long as the model
//! and wait for the next region by spinning briefly, then yielding, then sleeping, so that a
//! region costs well under a microsecond to start instead of spawning or queueing work per op.
//!
//! The caller always works on its own region, taking tasks from a shared counter like the
//! workers. A worker joins a region only while it is open; when the caller has run out of tasks
//! it closes the region and waits only for the workers that joined. So a worker that the OS has
//! not scheduled (a loaded machine) delays nothing: the caller does its share of the work instead.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins before a waiting worker starts yielding, and yields before it sleeps.
const SPINS: u32 = 20_000;
const YIELDS: u32 = 200;

/// `ticket` = region number << 32 | OPEN | workers joined.
const OPEN: u64 = 1 << 31;
const COUNT: u64 = OPEN - 1;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current region's closure; written by the caller before the region opens, read by
    /// workers that joined it (their join is an Acquire on `ticket`).
    job: UnsafeCell<Option<&'static Job>>,
    /// Region number (bumped when a region opens), the open flag and the joined count.
    ticket: AtomicU64,
    /// Workers of the current region that have finished.
    finished: AtomicUsize,
    sleepers: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `ThreadPool::region`, while the previous
// region is closed and every worker that joined it has finished; it is read only by workers that
// joined the current (open) region, and the caller waits for them before the region ends.
unsafe impl Sync for Shared {}

/// A pool of `threads - 1` workers plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One region at a time (two sessions on one model take turns per region).
    region: Mutex<()>,
}

impl ThreadPool {
    /// A pool running regions on up to `threads` threads (at least 1, the caller included).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            ticket: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("ecr-llm-{index}"))
                    .spawn(move || worker(&shared, index))
                    .expect("spawning a decoder thread")
            })
            .collect();
        Self { shared, workers, region: Mutex::new(()) }
    }

    /// Threads that may run a region, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(thread_index)` on the caller (index 0) and on every worker that joins before the
    /// caller's `f` returns; wait for those. `f` must share out its work itself (see `for_each`).
    fn region(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _region = self.region.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the reference is extended to 'static only while this region is open or has
        // joined workers: `Close` (also on unwinding) closes the region, waits for every worker
        // that joined, and clears `job` before this function returns.
        let job: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        // SAFETY: the previous region is closed and its workers finished (see `Shared`).
        unsafe { *s.job.get() = Some(job) };
        s.finished.store(0, Ordering::SeqCst);
        let number = (s.ticket.load(Ordering::SeqCst) >> 32) + 1;
        s.ticket.store(number << 32 | OPEN, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        struct Close<'a>(&'a Shared, u64);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                let joined = (self.0.ticket.swap(self.1 << 32, Ordering::SeqCst) & COUNT) as usize;
                let mut n = 0u32;
                while self.0.finished.load(Ordering::Acquire) < joined {
                    if n < SPINS {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    n = n.saturating_add(1);
                }
                // SAFETY: the region is closed and every worker that joined it has finished.
                unsafe { *self.0.job.get() = None };
            }
        }
        let close = Close(s, number);
        f(0);
        drop(close);
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a decoder thread panicked");
        }
    }

    /// Run `f(task)` for every task in `0..n`, spread over the threads (tasks taken in order from
    /// a shared counter, each exactly once). A single task runs on the caller without waking anyone.
    pub fn for_each(&self, n: usize, f: impl Fn(usize) + Sync) {
        match n {
            0 => {}
            1 => f(0),
            _ => {
                let next = AtomicUsize::new(0);
                self.region(&|_| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        f(i);
                    }
                });
            }
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Join the open region numbered `number`, if it is still open.
fn join(s: &Shared, number: u64) -> bool {
    let mut t = s.ticket.load(Ordering::Acquire);
    loop {
        if t >> 32 != number || t & OPEN == 0 {
            return false;
        }
        match s.ticket.compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => t = now,
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new region (or shutdown): spin, then yield, then sleep on the condvar.
        let mut n = 0u32;
        let number = loop {
            if s.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let t = s.ticket.load(Ordering::Acquire);
            if t >> 32 != seen && t & OPEN != 0 {
                break t >> 32;
            }
            if n < SPINS {
                std::hint::spin_loop();
            } else if n < SPINS + YIELDS {
                std::thread::yield_now();
            } else {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                loop {
                    let t = s.ticket.load(Ordering::SeqCst);
                    if (t >> 32 != seen && t & OPEN != 0) || s.shutdown.load(Ordering::SeqCst) {
                        break;
                    }
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                n = 0;
                continue;
            }
            n = n.saturating_add(1);
        };
        seen = number;
        if !join(s, number) {
            continue; // closed before we got here: the caller did the work
        }
        // SAFETY: we joined the open region, so `job` is set and stays valid until we report
        // finishing below (the caller waits for every joined worker).
        let job = unsafe { *s.job.get() };
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| job(index))).is_err()
        {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.finished.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads}, n {n}");
            }
            let seen: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            pool.region(&|t| {
                seen[t].fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(seen[0].load(Ordering::Relaxed), 1, "the caller always runs its region");
            assert!(seen.iter().all(|h| h.load(Ordering::Relaxed) <= 1), "a thread ran a region twice");
        }
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        // Enough tasks that both threads take some; the one that panics is reported either way.
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(1000, |i| {
                std::thread::sleep(std::time::Duration::from_micros(10));
                assert!(i != 500, "boom")
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.for_each(10, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}
