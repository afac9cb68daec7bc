//! Giving up root after set-up. A VMM needs root only to set itself up
//! (open /dev/kvm and /dev/userfaultfd or make a kernel-mode userfaultfd,
//! open the daemon's files); afterwards it works on fds it already holds.
//!
//! With a target user: supplementary groups cleared, then real, effective
//! and saved group and user IDs set, which also empties every capability
//! set; no new privileges; not dumpable; the parent-death signal re-armed
//! (the kernel clears it when credentials change) and the parent checked
//! again.
//! Without one: the user ID stays, every capability (and the bounding set,
//! so even an exec could not regain them) is dropped.

use std::io;

/// The user and group a VMM becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

impl Credentials {
    /// The conventional unprivileged user and group (`nobody`/`nogroup`).
    pub const NOBODY: Credentials = Credentials {
        uid: 65534,
        gid: 65534,
    };
}

impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)
    }
}

impl std::str::FromStr for Credentials {
    type Err = String;

    /// `UID` or `UID:GID` (numeric; a VMM resolves no names).
    fn from_str(s: &str) -> Result<Credentials, String> {
        let bad = || format!("{s:?} is not UID or UID:GID (numbers, e.g. 65534:65534)");
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        let uid: u32 = u.parse().map_err(|_| bad())?;
        let gid: u32 = g.parse().map_err(|_| bad())?;
        if uid == 0 || gid == 0 {
            return Err(format!("{s:?}: the sandbox user must not be root"));
        }
        Ok(Credentials { uid, gid })
    }
}

/// What [`drop`] took away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Now runs as this user, with no capabilities.
    ToUser(Credentials),
    /// Still the same user ID, with no capabilities.
    Capabilities,
    /// Was not root to begin with: nothing to drop (no new privileges is
    /// still set by the filter).
    NotRoot,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn drop(to: Option<Credentials>) -> io::Result<Dropped> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Dropped::NotRoot);
    }
    // SAFETY: prctl/getppid with integer arguments and a valid out-pointer.
    let (mut pdeath, parent) = (0 as libc::c_int, unsafe { libc::getppid() });
    // SAFETY: PR_GET_PDEATHSIG writes one int.
    check(unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut libc::c_int) })?;
    let dropped = match to {
        Some(c) => {
            // SAFETY: plain credential calls; glibc applies them to every
            // thread of the process.
            unsafe {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(c.gid, c.gid, c.gid))?;
                check(libc::setresuid(c.uid, c.uid, c.uid))?;
            }
            // Root must be gone for good.
            // SAFETY: as above.
            if unsafe { libc::setresuid(0, 0, 0) } == 0 {
                return Err(io::Error::other("still able to become root after dropping"));
            }
            Dropped::ToUser(c)
        }
        None => {
            drop_capabilities()?;
            Dropped::Capabilities
        }
    };
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    // Every VMM runs as the same user: not dumpable, another VMM cannot
    // read this one's memory through /proc (whatever fs.suid_dumpable is).
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    if pdeath != 0 {
        // SAFETY: as above.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeath as libc::c_ulong) })?;
        // The parent may have died while the signal was cleared.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            crate::clone::process::exit_now(1);
        }
    }
    Ok(dropped)
}

/// Empties the bounding, ambient, permitted, effective and inheritable
/// capability sets.
fn drop_capabilities() -> io::Result<()> {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments; EINVAL past the last
        // capability the kernel knows ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            break;
        }
    }
    // SAFETY: as above.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and two data words (version 3).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(rc as libc::c_int)
}
