//! Fork safety: the helper threads of a VMM (a remote clone's fault
//! handler, heartbeat and origin-link threads) park at known points before
//! the vCPU thread forks, and resume after.
//!
//! The rule: a VMM process forks only while every other thread is parked
//! here, holding no lock and in the middle of no stream operation the child
//! could need. A `fork()` child gets only the forking thread; a lock another
//! thread held at that instant (the standard error lock, a log writer, a
//! TLS session's mutex, a counters mutex) stays locked forever in the child,
//! and a stream half written by another thread is left mid-record. So each
//! helper thread is registered ([`register`]) and either passes
//! [`Helper::checkpoint`]s between units of work, or does its blocking
//! waits (poll, sleep, connect) inside [`Helper::idle`], where it holds no
//! lock. [`park_all`] waits until every registered helper is at one of
//! those points and keeps them there until the fork is done; the parent
//! then resumes them, and the child, which has none of them, starts its own
//! helpers afresh if it needs any (a local clone of a remote clone needs
//! none: its memory is whole and it reports over a pipe).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a fork waits for the helpers to park. A helper's unit of work
/// is a page batch, a heartbeat or a frame (milliseconds); one stuck past
/// this (a peer that stopped reading) makes the clone call fail, and the
/// guest may try again, rather than fork with a lock held.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Gate {
    /// A fork is waiting or in progress: helpers stay parked.
    parking: bool,
    /// Registered helpers outside a parking point, by id.
    running: BTreeMap<u64, &'static str>,
    next_id: u64,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    parking: false,
    running: BTreeMap::new(),
    next_id: 0,
});
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, Gate> {
    GATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks while a fork is parking the helpers.
fn wait_for_fork(g: MutexGuard<'static, Gate>) -> MutexGuard<'static, Gate> {
    CHANGED
        .wait_while(g, |g| g.parking)
        .unwrap_or_else(|e| e.into_inner())
}

/// A helper thread's membership; made on the thread itself, at its start.
pub struct Helper {
    id: u64,
    name: &'static str,
}

/// Registers the calling thread as a helper that a fork must park.
pub fn register(name: &'static str) -> Helper {
    let mut g = wait_for_fork(lock());
    let id = g.next_id;
    g.next_id += 1;
    g.running.insert(id, name);
    Helper { id, name }
}

impl Helper {
    fn leave(&self, g: &mut Gate) {
        g.running.remove(&self.id);
        CHANGED.notify_all();
    }

    /// A parking point between units of work: holds no lock.
    pub fn checkpoint(&self) {
        let mut g = lock();
        if g.parking {
            self.leave(&mut g);
            let mut g = wait_for_fork(g);
            g.running.insert(self.id, self.name);
        }
    }

    /// Runs `f`, a blocking wait that holds no lock and touches no shared
    /// stream (poll, sleep, a connect on a socket of its own); a fork may
    /// happen meanwhile. When `f` returns during a fork, the thread waits
    /// for the fork to end before going on.
    pub fn idle<T>(&self, f: impl FnOnce() -> T) -> T {
        self.leave(&mut lock());
        let r = f();
        let mut g = wait_for_fork(lock());
        g.running.insert(self.id, self.name);
        r
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.leave(&mut lock());
    }
}

#[derive(Debug, thiserror::Error)]
#[error("helper threads {busy:?} did not reach a parking point within {PARK_TIMEOUT:?}, so the VMM cannot fork safely; the clone call fails and the guest may retry")]
pub struct ParkError {
    busy: Vec<&'static str>,
}

/// Every helper parked; held across the fork. Holding the gate's lock
/// itself through the fork means no other thread holds it at that instant.
pub struct Parked {
    gate: MutexGuard<'static, Gate>,
}

/// Parks every registered helper thread (see the module's rule). With no
/// helpers (a VMM that has only its vCPU thread) this costs one lock.
pub fn park_all() -> Result<Parked, ParkError> {
    park_all_within(PARK_TIMEOUT)
}

fn park_all_within(timeout: Duration) -> Result<Parked, ParkError> {
    let start = Instant::now();
    let mut g = wait_for_fork(lock());
    g.parking = true;
    while !g.running.is_empty() {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            let busy = g.running.values().copied().collect();
            g.parking = false;
            CHANGED.notify_all();
            return Err(ParkError { busy });
        }
        g = CHANGED
            .wait_timeout(g, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    Ok(Parked { gate: g })
}

impl Parked {
    /// In the parent after the fork: the helpers go on.
    pub fn resume(mut self) {
        self.gate.parking = false;
        CHANGED.notify_all();
    }

    /// In the child after the fork: none of the parent's helpers exist
    /// here, so none is registered; the child starts its own if needed.
    pub fn in_child(mut self) {
        self.gate.parking = false;
        self.gate.running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;

    /// Helpers doing work under a lock of their own never hold it while
    /// parked: the parker can take every such lock while they are parked.
    /// (One test, as the gate is process-wide.)
    #[test]
    fn parked_helpers_hold_no_lock_and_resume() {
        let work = Arc::new(Mutex::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let idles = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let (work, stop, idles) = (work.clone(), stop.clone(), idles.clone());
                std::thread::spawn(move || {
                    let h = register("test helper");
                    while !stop.load(SeqCst) {
                        {
                            let mut w = work.lock().unwrap();
                            *w += 1;
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        if i == 0 {
                            h.idle(|| std::thread::sleep(Duration::from_millis(1)));
                            idles.fetch_add(1, SeqCst);
                        } else {
                            h.checkpoint();
                        }
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            let parked = park_all().expect("helpers park");
            // Nobody holds the work lock, and nobody takes it while parked.
            let before = *work.try_lock().expect("no parked helper holds the lock");
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(*work.try_lock().unwrap(), before, "a parked helper ran");
            parked.resume();
            std::thread::sleep(Duration::from_millis(1));
        }
        let n = *work.lock().unwrap();
        stop.store(true, SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            n > 50 && idles.load(SeqCst) > 0,
            "helpers did not resume: {n}"
        );

        // A helper that never reaches a parking point makes the fork fail
        // (named), rather than fork with its lock held.
        // It stays stuck until the park has failed (not for a fixed time,
        // which a loaded machine could overrun before the park looked).
        let (registered, stuck) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
        let busy = std::thread::spawn(move || {
            let _h = register("stuck helper");
            registered.0.send(()).unwrap();
            stuck.1.recv().unwrap();
        });
        registered.1.recv().unwrap();
        let e = park_all_within(Duration::from_millis(50))
            .err()
            .expect("times out");
        assert!(e.to_string().contains("stuck helper"), "{e}");
        stuck.0.send(()).unwrap();
        busy.join().unwrap();
        park_all().expect("the helper left").resume();

        forked_children_find_the_helpers_locks_free_only_when_parked();
    }

    /// Forks while a helper holds its lock most of the time: without
    /// parking, some child finds the lock taken (it would wait forever for
    /// a thread it does not have: the hazard of forking a clone host as it
    /// was); with parking, every child finds it free.
    fn forked_children_find_the_helpers_locks_free_only_when_parked() {
        let lock = Arc::new(Mutex::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let helper = {
            let (lock, stop) = (lock.clone(), stop.clone());
            std::thread::spawn(move || {
                let h = register("lock-holding helper");
                while !stop.load(SeqCst) {
                    {
                        let _g = lock.lock().unwrap();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    h.checkpoint();
                }
            })
        };
        // Whether the child of one fork could take the lock (exit 0) or
        // found it held (exit 1).
        let fork_and_try = |park: bool| -> bool {
            let parked = park.then(|| park_all().expect("helper parks"));
            let forked = crate::clone::process::fork().expect("fork");
            match forked {
                crate::clone::process::Forked::Child => {
                    let free = lock.try_lock().is_ok();
                    crate::clone::process::exit_now(!free as i32)
                }
                crate::clone::process::Forked::Parent(pid) => {
                    if let Some(p) = parked {
                        p.resume();
                    }
                    let st = crate::clone::process::wait(pid).expect("wait");
                    st == crate::clone::process::ExitStatus::Code(0)
                }
            }
        };
        std::thread::sleep(Duration::from_millis(5));
        // Until one child finds the lock held: 20 forks were not always
        // enough with 16 test threads on 2 busy cores (none of the 20
        // children found it held once).
        let started = std::time::Instant::now();
        let unparked_blocked = (0..2000)
            .take_while(|_| started.elapsed() < Duration::from_secs(10))
            .any(|_| !fork_and_try(false));
        let parked_blocked = (0..20).filter(|_| !fork_and_try(true)).count();
        stop.store(true, SeqCst);
        helper.join().unwrap();
        assert!(
            unparked_blocked,
            "without parking no child ever found the lock held"
        );
        assert_eq!(
            parked_blocked, 0,
            "a child of a parked fork found the lock held"
        );
    }
}
