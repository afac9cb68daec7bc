//! Run timeouts without a watchdog thread (a VMM process that forks must not
//! have stray threads): a POSIX timer aimed at the vCPU thread sends SIGALRM,
//! which makes KVM_RUN return EINTR, and the run loop checks the deadline.
//! The timer belongs to the calling thread, so VMs on other threads (tests)
//! keep their own, and a fork()ed child starts without it.

use std::time::Duration;

extern "C" fn on_alarm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Fires after `first`, then every `period` until dropped, so an alarm that
/// lands while the vCPU is outside KVM_RUN is followed by another.
pub struct Alarm(libc::timer_t);

/// Makes SIGALRM interrupt KVM_RUN instead of ending the process (also
/// used by threads that kick the vCPU thread).
pub fn install_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGALRM, on_alarm)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

impl Alarm {
    pub fn arm(first: Duration, period: Duration) -> std::io::Result<Alarm> {
        install_handler()?;
        // SAFETY: sigevent is plain data; zero is a valid starting value.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = libc::SIGALRM;
        // SAFETY: gettid has no preconditions.
        ev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a sigevent and a timer id to fill in.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let alarm = Alarm(timer);
        let spec = libc::itimerspec {
            it_value: timespec(first),
            it_interval: timespec(period),
        };
        // SAFETY: `timer` was just created; the old value is not wanted.
        if unsafe { libc::timer_settime(alarm.0, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(alarm)
    }
}

fn timespec(d: Duration) -> libc::timespec {
    // A zero it_value would disarm the timer.
    let d = d.max(Duration::from_micros(1));
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        // SAFETY: deletes the timer this value owns.
        unsafe { libc::timer_delete(self.0) };
    }
}

thread_local! {
    /// The deadline of the VM running on this thread, for code that may
    /// block outside KVM_RUN (console writes to a consumer that stopped
    /// reading) and must give up when the family's time is up.
    static DEADLINE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

pub fn set_thread_deadline(d: Option<std::time::Instant>) {
    DEADLINE.with(|c| c.set(d));
}

pub fn thread_deadline() -> Option<std::time::Instant> {
    DEADLINE.with(|c| c.get())
}

/// The `poll(2)` timeout until `deadline`, in whole milliseconds rounded up
/// (so a wait ends at or after it, never just before): -1 (no limit)
/// without one, 0 once it has passed, and at most `i32::MAX` however far
/// away it is (`--timeout` takes up to 10^9 s, past what an int holds).
pub fn poll_timeout_ms(deadline: Option<std::time::Instant>) -> i32 {
    let Some(d) = deadline else {
        return -1;
    };
    let left = d.saturating_duration_since(std::time::Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    ms.min(i32::MAX as u128) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn poll_timeouts_round_up_and_stay_in_range() {
        assert_eq!(poll_timeout_ms(None), -1);
        assert_eq!(poll_timeout_ms(Some(Instant::now())), 0);
        let soon = poll_timeout_ms(Some(Instant::now() + Duration::from_micros(1500)));
        assert!((1..=2).contains(&soon), "{soon}");
        let far = Instant::now() + Duration::from_secs(1_000_000_000);
        assert_eq!(poll_timeout_ms(Some(far)), i32::MAX);
    }
}
