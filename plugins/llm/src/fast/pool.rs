//! A fixed thread pool for the decoder's parallel regions: the workers live as long as the model
//! and wait for the next region by spinning briefly, then yielding, then sleeping, so that a
//! region costs a few hundred nanoseconds to start instead of spawning or queueing work per op.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins before a waiting thread starts yielding, and yields before it sleeps.
const SPINS: u32 = 20_000;
const YIELDS: u32 = 2_000;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current region's closure; written by the caller before `epoch` is bumped (Release),
    /// read by workers after they see the new epoch (Acquire).
    job: UnsafeCell<Option<&'static Job>>,
    epoch: AtomicU64,
    /// Workers still running the current region.
    running: AtomicUsize,
    sleepers: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the thread holding `ThreadPool::region` while no worker runs
// (all have decremented `running` for the previous region), and only read by workers between
// seeing a new epoch and decrementing `running`; the epoch/running atomics order these accesses.
unsafe impl Sync for Shared {}

/// A pool of `threads - 1` workers plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One region at a time (two sessions on one model take turns per region).
    region: Mutex<()>,
}

impl ThreadPool {
    /// A pool running regions on `threads` threads (at least 1, the caller included).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            epoch: AtomicU64::new(0),
            running: AtomicUsize::new(0),
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

    /// Threads that run a region, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(thread_index)` once on every thread (index 0 is the caller) and wait for all.
    pub fn broadcast(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _region = self.region.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the reference is extended to 'static only for the duration of this call: this
        // function does not return before every worker has finished with it (`running` == 0 below,
        // also when the caller's own part panics, see `Finish`), and it is cleared before return.
        let job: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        // SAFETY: no worker reads `job` now (the previous region has finished), see `Shared`.
        unsafe { *s.job.get() = Some(job) };
        s.running.store(self.workers.len(), Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        struct Finish<'a>(&'a Shared);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                wait_until(|| self.0.running.load(Ordering::Acquire) == 0);
                // SAFETY: every worker is done with this region's job.
                unsafe { *self.0.job.get() = None };
            }
        }
        let finish = Finish(s);
        f(0);
        drop(finish);
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a decoder thread panicked");
        }
    }

    /// Run `f(task)` for every task in `0..n`, spread over the threads (tasks taken in order from
    /// a shared counter). A single task runs on the caller without waking anyone.
    pub fn for_each(&self, n: usize, f: impl Fn(usize) + Sync) {
        match n {
            0 => {}
            1 => f(0),
            _ => {
                let next = AtomicUsize::new(0);
                self.broadcast(&|_| {
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

fn wait_until(done: impl Fn() -> bool) {
    let mut n = 0u32;
    while !done() {
        if n < SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        n = n.saturating_add(1);
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new region (or shutdown): spin, then yield, then sleep on the condvar.
        let mut n = 0u32;
        loop {
            if s.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if n < SPINS {
                std::hint::spin_loop();
            } else if n < SPINS + YIELDS {
                std::thread::yield_now();
            } else {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                n = 0;
                continue;
            }
            n = n.saturating_add(1);
        }
        // SAFETY: the caller set `job` before bumping the epoch we just saw, and keeps it alive
        // until we decrement `running` below.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| job(index))).is_err()
        {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.running.fetch_sub(1, Ordering::AcqRel);
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
            pool.broadcast(&|t| {
                seen[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(seen.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.broadcast(&|t| assert!(t != 1, "boom"))));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.for_each(10, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}
