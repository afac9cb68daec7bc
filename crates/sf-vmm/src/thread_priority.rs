//! Which threads of a VMM go first when the host's cores are
//! oversubscribed: the ones that unblock a vCPU (remote memory's fault
//! handler, the host's page receiver, the link to the origin and its
//! heartbeats) run ahead of the vCPU threads, which are CPU-bound and
//! would otherwise hold them back.
//!
//! Measured with `bench remote` at 32 clones of a 1 GiB guest on 2 cores
//! (one word read from each of 64 MiB of pages, 3 runs each, same idle
//! machine): with every thread at the same priority, a vCPU slept in a
//! userfault ~11,000 times per clone, mostly for pages already in the
//! host's cache that its fault handler, queued behind 32 busy vCPUs, had
//! not yet installed (1.0 million context switches in the run). Slowest
//! clone 5.3, 5.3 and 6.5 s. Fault handler at nice -10: 2.0, 2.5 and 2.9 s;
//! vCPUs at nice +10 instead: 3.2, 3.4 and 3.8 s. With every service thread
//! here at -10 (and the handler taking faults before installing what was
//! pushed, see `remote::handler`): 2.0, 2.7 and 3.1 s, and fault p99 at 16
//! clones 1.6, 4.9 and 6.4 ms (it rose to 7-37 ms while the memory holder
//! stayed at the normal level behind raised clone hosts).
//!
//! Threads inherit their creator's nice value, so a clone host raises its
//! main thread before it creates anything and lowers it back to the normal
//! level just before that thread becomes the vCPU. The memory holder (a
//! fork of the origin's vCPU thread, which serves every clone) raises
//! itself first thing. Nice -20 was too much: 32 fault handlers installing
//! at once kept the origin's link from sending a heartbeat for 3 s, and
//! clones were reported lost.
//!
//! A sandboxed VMM has no CAP_SYS_NICE; [`allow_service_priority`], called
//! while it still does, sets RLIMIT_NICE so that it may go as high as
//! [`SERVICE_NICE`] and no higher, and its seccomp filter allows exactly
//! `setpriority(PRIO_PROCESS, 0, SERVICE_NICE or 0)`: a thread can change
//! only its own priority, and only between these two levels.

/// The service threads' nice value (0 is normal, -20 the highest).
pub const SERVICE_NICE: i32 = -10;

/// The calling thread and every thread (and process) it creates from now
/// on run at [`SERVICE_NICE`]. Needs CAP_SYS_NICE, or the RLIMIT_NICE of
/// [`allow_service_priority`]; without either everything stays at the
/// normal priority, as before.
pub fn serve_first() {
    set_own(SERVICE_NICE);
}

/// The calling thread, about to run a vCPU, goes back to the normal
/// priority (always allowed: it only lowers it).
pub fn become_vcpu() {
    set_own(0);
}

/// Lets this process raise its threads to [`SERVICE_NICE`] after it gave
/// up its capabilities (the sandbox): RLIMIT_NICE `20 - SERVICE_NICE`.
/// Needs CAP_SYS_RESOURCE; without it nothing changes.
pub fn allow_service_priority() {
    let lim = libc::rlimit {
        rlim_cur: (20 - SERVICE_NICE) as libc::rlim_t,
        rlim_max: (20 - SERVICE_NICE) as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one valid `rlimit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NICE, &lim) } != 0 {
        tracing::debug!("RLIMIT_NICE not set: {}", std::io::Error::last_os_error());
    }
}

fn set_own(nice: i32) {
    // SAFETY: setpriority with PRIO_PROCESS and `who` 0 changes the calling
    // thread's scheduling weight only (the form the sandbox allows).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        tracing::debug!(
            "thread priority {nice} not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        // SAFETY: as in `set_own`; getpriority returns the nice value (-1
        // is also an error value, but not one these tests can produce).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    /// Threads made after `serve_first` inherit its priority; the thread
    /// that becomes the vCPU goes back to normal. (Run as root, as CI is;
    /// without CAP_SYS_NICE nothing changes and the test says so.)
    #[test]
    fn service_threads_inherit_the_raise_and_the_vcpu_drops_it() {
        std::thread::spawn(|| {
            serve_first();
            if own_nice() != SERVICE_NICE {
                eprintln!("no CAP_SYS_NICE here: priorities unchanged");
                return;
            }
            let child = std::thread::spawn(own_nice).join().unwrap();
            assert_eq!(child, SERVICE_NICE, "a service thread made after the raise");
            become_vcpu();
            assert_eq!(own_nice(), 0);
            let later = std::thread::spawn(own_nice).join().unwrap();
            assert_eq!(later, 0, "threads made by the vCPU thread are normal");
        })
        .join()
        .unwrap();
    }
}
