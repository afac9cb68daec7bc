//! Run timeouts without a watchdog thread (a VMM process that forks must not
//! have stray threads): an interval timer sends SIGALRM, which makes KVM_RUN
//! return EINTR, and the run loop checks the deadline.

use std::time::Duration;

extern "C" fn on_alarm(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Re-fires every `period` until disarmed (dropped), so an alarm that lands
/// while the vCPU is outside KVM_RUN is followed by another.
pub struct Alarm;

impl Alarm {
    pub fn arm(first: Duration, period: Duration) -> std::io::Result<Alarm> {
        vmm_sys_util::signal::register_signal_handler(libc::SIGALRM, on_alarm).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        set_timer(first, period)?;
        Ok(Alarm)
    }
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval { tv_sec: d.as_secs() as libc::time_t, tv_usec: d.subsec_micros() as libc::suseconds_t }
}

fn set_timer(first: Duration, period: Duration) -> std::io::Result<()> {
    let t = libc::itimerval { it_value: timeval(first), it_interval: timeval(period) };
    // SAFETY: plain system call with a valid struct; the old value is not wanted.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let _ = set_timer(Duration::ZERO, Duration::ZERO);
    }
}
