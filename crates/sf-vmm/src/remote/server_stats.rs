//! The page server's counters: kept in a small `MAP_SHARED` mapping, so
//! the VMM that forked a memory holder reads what the holder did (sent,
//! pushed, shared or private) after the join, without a channel back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (hello accepted).
    pub connections: u64,
    pub requests: u64,
    /// Pages sent with data.
    pub pages_sent: u64,
    /// Pages answered as zero (no data sent).
    pub zero_pages: u64,
    pub bytes_sent: u64,
    /// Refused hellos and refused requests.
    pub refused: u64,
    /// Requests answered "pushed" (lockstep: the pages went by multicast).
    pub pushed_answers: u64,
    /// Requests with the unicast flag: a push that never arrived.
    pub unicast_fallbacks: u64,
    /// Datagrams sent to the group's multicast.
    pub multicast_datagrams: u64,
    /// Pages of the recorded working set pushed ahead of faults.
    pub working_set_pushed: u64,
    /// Receivers' loss and backlog reports.
    pub reports: u64,
    /// The pace of bulk pushes now (pages per second).
    pub push_rate_pps: u64,
    /// Lockstep: 2 MiB chunks that turned shared (a second connection
    /// asked in them within the window); their pages go by multicast.
    pub lockstep_shared_chunks: u64,
    /// Lockstep: chunks a followed connection (one whose chunks another
    /// asked for) entered as shared before any other asked there.
    pub lockstep_predicted_chunks: u64,
    /// Lockstep: pages answered by unicast alone because only one
    /// connection was asking in their chunk (nothing pushed).
    pub unicast_private_pages: u64,
    /// Connections that turned lossy (served by unicast alone from then
    /// on, see [`super::lockstep::LossyReceiver`]).
    pub lossy_receivers: u64,
}

/// The live counters (all atomics: zeroed memory is a valid start).
#[repr(C)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub pages_sent: AtomicU64,
    pub zero_pages: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub refused: AtomicU64,
    pub pushed_answers: AtomicU64,
    pub unicast_fallbacks: AtomicU64,
    pub multicast_datagrams: AtomicU64,
    pub working_set_pushed: AtomicU64,
    pub reports: AtomicU64,
    /// The pacer's rate after the last report (0 before any).
    pub push_rate_pps: AtomicU64,
    pub lockstep_shared_chunks: AtomicU64,
    pub lockstep_predicted_chunks: AtomicU64,
    pub unicast_private_pages: AtomicU64,
    pub lossy_receivers: AtomicU64,
}

/// [`Counters`] in an anonymous shared mapping: a process forked after
/// [`SharedStats::new`] counts into the same memory its parent reads.
pub struct SharedStats {
    counters: *const Counters,
}

// SAFETY: the mapping lives as long as this value and is only reached
// through atomics.
unsafe impl Send for SharedStats {}
// SAFETY: as above.
unsafe impl Sync for SharedStats {}

const LEN: usize = std::mem::size_of::<Counters>();

impl SharedStats {
    pub fn new() -> std::io::Result<SharedStats> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SharedStats { counters: p.cast() })
    }

    pub fn stats(&self) -> ServerStats {
        let c: &Counters = self;
        ServerStats {
            connections: c.connections.load(Relaxed),
            requests: c.requests.load(Relaxed),
            pages_sent: c.pages_sent.load(Relaxed),
            zero_pages: c.zero_pages.load(Relaxed),
            bytes_sent: c.bytes_sent.load(Relaxed),
            refused: c.refused.load(Relaxed),
            pushed_answers: c.pushed_answers.load(Relaxed),
            unicast_fallbacks: c.unicast_fallbacks.load(Relaxed),
            multicast_datagrams: c.multicast_datagrams.load(Relaxed),
            working_set_pushed: c.working_set_pushed.load(Relaxed),
            reports: c.reports.load(Relaxed),
            push_rate_pps: c.push_rate_pps.load(Relaxed),
            lockstep_shared_chunks: c.lockstep_shared_chunks.load(Relaxed),
            lockstep_predicted_chunks: c.lockstep_predicted_chunks.load(Relaxed),
            unicast_private_pages: c.unicast_private_pages.load(Relaxed),
            lossy_receivers: c.lossy_receivers.load(Relaxed),
        }
    }
}

impl std::ops::Deref for SharedStats {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        // SAFETY: a live mapping of LEN bytes, page-aligned, zero-filled
        // at creation: every field an AtomicU64 of 0.
        unsafe { &*self.counters }
    }
}

impl Drop for SharedStats {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no reference outlives `self`.
        unsafe { libc::munmap(self.counters as *mut libc::c_void, LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_counts_into_what_the_parent_reads() {
        let s = SharedStats::new().unwrap();
        s.pages_sent.fetch_add(3, Relaxed);
        // SAFETY: the child only touches the shared atomics and leaves with
        // _exit, running no destructor and no code of the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            s.unicast_private_pages.fetch_add(512, Relaxed);
            s.pages_sent.fetch_add(4, Relaxed);
            // SAFETY: see above.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let got = s.stats();
        assert_eq!((got.pages_sent, got.unicast_private_pages), (7, 512));
    }
}
