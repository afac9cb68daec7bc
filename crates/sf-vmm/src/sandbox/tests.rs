//! Each role's filter, installed for real in a forked child: a forbidden call
//! kills the child by SIGSYS with the logged line, allowed calls still work.
//! The child allocates nothing (the test harness is threaded): programs are
//! compiled before the fork, and the child makes raw calls only.

use super::*;
use crate::clone::process::{self, ExitStatus, Forked};
use std::os::fd::AsRawFd;

/// Runs `child` in a forked process with stderr on a pipe; its return value
/// is the exit status. Returns how it ended and what it wrote to stderr.
fn in_child(child: impl FnOnce() -> i32) -> (ExitStatus, String) {
    let (r, w) = process::pipe().expect("pipe");
    match process::fork().expect("fork") {
        Forked::Child => {
            // SAFETY: dup2 of two valid fds in the child.
            unsafe { libc::dup2(w.as_raw_fd(), libc::STDERR_FILENO) };
            let code = child();
            process::exit_now(code)
        }
        Forked::Parent(pid) => {
            drop(w);
            let out = process::read_all(&r, 1 << 16).expect("child's stderr");
            let status = process::wait(pid).expect("wait");
            (status, String::from_utf8_lossy(&out).into_owned())
        }
    }
}

fn prog(role: Role) -> seccompiler::BpfProgram {
    compile(role).expect("compiles")
}

/// Installs `role`'s filter the way `enter` does (no privilege change).
fn sandboxed(role: Role, p: &seccompiler::BpfProgram) {
    if install(role, p).is_err() {
        process::exit_now(90);
    }
}

fn assert_killed(res: (ExitStatus, String), nr: i64, name: &str, role: &str) {
    let (status, stderr) = res;
    assert_eq!(
        status,
        ExitStatus::Signal(libc::SIGSYS),
        "not killed by SIGSYS; stderr: {stderr}"
    );
    let want = format!(
        "snowflock: seccomp: syscall {nr} ({name}) is not allowed for the {role} role (arguments "
    );
    assert!(
        stderr.starts_with(&want),
        "stderr {stderr:?} lacks {want:?}"
    );
}

const BIN_TRUE: &[u8] = b"/bin/true\0";

fn execve() -> i32 {
    let argv = [BIN_TRUE.as_ptr(), std::ptr::null()];
    // SAFETY: a valid path and NULL-terminated argv; on success the child is replaced.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            BIN_TRUE.as_ptr(),
            argv.as_ptr(),
            std::ptr::null::<u8>(),
        )
    };
    10
}

#[test]
fn runner_dies_logged_on_execve_ptrace_and_packet_sockets() {
    let p = prog(Role::Runner);
    assert_killed(
        in_child(|| {
            sandboxed(Role::Runner, &p);
            execve()
        }),
        libc::SYS_execve,
        "execve",
        "runner",
    );
    assert_killed(
        in_child(|| {
            sandboxed(Role::Runner, &p);
            // SAFETY: a plain ptrace request; it must never run.
            unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            10
        }),
        libc::SYS_ptrace,
        "ptrace",
        "runner",
    );
    assert_killed(
        in_child(|| {
            sandboxed(Role::Runner, &p);
            // SAFETY: socket(2) with integer arguments.
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            10
        }),
        libc::SYS_socket,
        "socket",
        "runner",
    );
    assert_killed(
        in_child(|| {
            sandboxed(Role::Runner, &p);
            // SAFETY: socket(2) with integer arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            10
        }),
        libc::SYS_socket,
        "socket",
        "runner",
    );
}

/// kill(2) is for the VMM's own clones, which it names by PID. A PID of 0
/// or below names a process group or, with -1, every process the VMM's user
/// may signal: all the host's VMMs, which run as the same user.
#[test]
fn runner_may_not_kill_a_process_group_or_every_process_of_its_user() {
    let p = &prog(Role::Runner);
    for pid in [-1_000_000, 0] {
        assert_killed(
            in_child(move || {
                // Its own group: were the call let through, only this child dies.
                // SAFETY: setpgid of the calling process.
                unsafe { libc::setpgid(0, 0) };
                sandboxed(Role::Runner, p);
                // SAFETY: kill(2) with integer arguments; -1_000_000 names no group.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                10
            }),
            libc::SYS_kill,
            "kill",
            "runner",
        );
    }
}

/// `snowflock run` without peers never talks to the network: a
/// compromised VMM gets no socket to reach other hosts with (the runner's
/// list, made for clone groups spread over hosts, gave it every TCP and UDP
/// call), yet still forks and reaps its clones.
#[test]
fn a_runner_without_peers_has_no_network() {
    let p = &prog(Role::LoneRunner);
    assert_killed(
        in_child(|| {
            sandboxed(Role::LoneRunner, p);
            // SAFETY: socket(2) with integer arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            10
        }),
        libc::SYS_socket,
        "socket",
        "runner",
    );
    let (status, stderr) = in_child(|| {
        sandboxed(Role::LoneRunner, p);
        // SAFETY: fork and waitpid in a single-threaded child.
        unsafe {
            match libc::fork() {
                0 => libc::_exit(7),
                -1 => 13,
                pid => {
                    let mut st = 0;
                    if libc::waitpid(pid, &mut st, 0) != pid || libc::WEXITSTATUS(st) != 7 {
                        return 14;
                    }
                    0
                }
            }
        }
    });
    assert_eq!(status, ExitStatus::Code(0), "stderr: {stderr}");
    // It makes, binds and connects no socket; it may only talk on the one
    // it inherited from set-up (the family's network broker, for its
    // clones' TAPs).
    let lone = allow_list(Role::LoneRunner);
    for nr in [
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_accept,
        libc::SYS_seccomp,
    ] {
        assert!(
            lone.entries.iter().all(|e| e.nr != nr),
            "{}",
            names::NAMES[nr as usize]
        );
    }
}

#[test]
fn runner_keeps_what_it_needs_and_clone3_falls_back() {
    let p = prog(Role::Runner);
    let (status, stderr) = in_child(|| {
        sandboxed(Role::Runner, &p);
        // SAFETY: raw calls with valid arguments.
        unsafe {
            if libc::write(libc::STDERR_FILENO, b"still here\n".as_ptr().cast(), 11) != 11 {
                return 11;
            }
            // glibc must see ENOSYS and fall back to clone(2).
            let r = libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
            if r != -1 || *libc::__errno_location() != libc::ENOSYS {
                return 12;
            }
            // A clone process (fork) and an internet socket are the runner's job.
            match libc::fork() {
                0 => libc::_exit(7),
                -1 => return 13,
                pid => {
                    let mut st = 0;
                    if libc::waitpid(pid, &mut st, 0) != pid || libc::WEXITSTATUS(st) != 7 {
                        return 14;
                    }
                }
            }
            // Killing a clone by its PID.
            match libc::fork() {
                0 => loop {
                    std::hint::spin_loop();
                },
                -1 => return 16,
                pid => {
                    let mut st = 0;
                    if libc::kill(pid, libc::SIGKILL) != 0
                        || libc::waitpid(pid, &mut st, 0) != pid
                        || !libc::WIFSIGNALED(st)
                    {
                        return 17;
                    }
                }
            }
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                return 15;
            }
            libc::close(s);
        }
        0
    });
    assert_eq!(status, ExitStatus::Code(0), "stderr: {stderr}");
    assert_eq!(stderr, "still here\n");
}

/// The runner may create new output files (and only new ones): opening an
/// existing file for writing, or creating without O_EXCL or O_NOFOLLOW,
/// kills it.
#[test]
fn runner_creates_only_new_files() {
    let dir = std::env::temp_dir().join(format!("sf-sandbox-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("old"), b"keep").unwrap();
    let path = |n: &str| std::ffi::CString::new(dir.join(n).to_str().unwrap()).unwrap();
    let (new, old, sub) = (path("new"), path("old"), path("sub"));
    let p = prog(Role::Runner);
    let (status, stderr) = in_child(|| {
        sandboxed(Role::Runner, &p);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        // SAFETY: valid NUL-terminated paths.
        unsafe {
            if libc::mkdirat(libc::AT_FDCWD, sub.as_ptr(), 0o755) != 0 {
                return 11;
            }
            let fd = libc::open(new.as_ptr(), flags, 0o644);
            if fd < 0 {
                return 12;
            }
            // O_EXCL: an existing file is refused by the kernel, not opened.
            if libc::open(old.as_ptr(), flags, 0o644) >= 0 {
                return 13;
            }
        }
        0
    });
    assert_eq!(status, ExitStatus::Code(0), "stderr: {stderr}");
    for flags in [
        libc::O_WRONLY | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
    ] {
        let p = &p;
        let old = &old;
        assert_killed(
            in_child(move || {
                sandboxed(Role::Runner, p);
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::open(old.as_ptr(), flags, 0o644) };
                10
            }),
            libc::SYS_openat,
            "openat",
            "runner",
        );
    }
    assert_eq!(std::fs::read(dir.join("old")).unwrap(), b"keep");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn local_clone_keeps_the_runner_list_under_its_own_name() {
    let p = prog(Role::Runner);
    assert_killed(
        in_child(|| {
            sandboxed(Role::Runner, &p);
            if narrow(Role::LocalClone).is_err() {
                return 91;
            }
            execve()
        }),
        libc::SYS_execve,
        "execve",
        "local clone",
    );
}

#[test]
fn memory_holder_stacks_a_filter_without_kvm_fork_or_file_writes() {
    let (runner, holder) = (prog(Role::Runner), prog(Role::MemoryHolder));
    let holder_child = |act: fn() -> i32| {
        let (runner, holder) = (&runner, &holder);
        in_child(move || {
            sandboxed(Role::Runner, runner);
            sigsys::set_role(Role::MemoryHolder);
            if apply(Role::MemoryHolder, holder).is_err() {
                return 92;
            }
            act()
        })
    };
    assert_killed(
        holder_child(|| {
            // SAFETY: fork in a single-threaded child.
            if unsafe { libc::fork() } == 0 {
                process::exit_now(0);
            }
            10
        }),
        libc::SYS_clone,
        "clone",
        "memory holder",
    );
    assert_killed(
        holder_child(|| {
            // KVM_CREATE_VM on a bad fd: the filter decides before the fd is looked at.
            // SAFETY: ioctl with integer arguments.
            unsafe { libc::ioctl(-1, 0xae01, 0) };
            10
        }),
        libc::SYS_ioctl,
        "ioctl",
        "memory holder",
    );
    assert_killed(
        holder_child(|| {
            // Reading is allowed (glibc's arena set-up); writing is not.
            // SAFETY: a valid NUL-terminated path.
            unsafe {
                libc::open(
                    c"/tmp/sf-holder-probe".as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o600,
                )
            };
            10
        }),
        libc::SYS_openat,
        "openat",
        "memory holder",
    );
}

#[test]
fn page_receiver_opens_no_socket_file_or_process() {
    let p = prog(Role::PageReceiver);
    let receiver = |act: fn() -> i32| {
        let p = &p;
        in_child(move || {
            sandboxed(Role::PageReceiver, p);
            act()
        })
    };
    assert_killed(
        receiver(|| {
            // SAFETY: plain socket(2) call.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            10
        }),
        libc::SYS_socket,
        "socket",
        "page receiver",
    );
    assert_killed(
        receiver(|| {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::open(c"/proc/self/mem".as_ptr(), libc::O_RDONLY) };
            10
        }),
        libc::SYS_openat,
        "openat",
        "page receiver",
    );
    assert_killed(
        receiver(|| {
            // SAFETY: fork in a single-threaded child.
            if unsafe { libc::fork() } == 0 {
                process::exit_now(0);
            }
            10
        }),
        libc::SYS_clone,
        "clone",
        "page receiver",
    );
}

#[test]
fn clone_host_refuses_unix_sockets_writes_to_paths_and_executable_memory() {
    let p = prog(Role::CloneHost);
    let host_child = |act: fn() -> i32| {
        let p = &p;
        in_child(move || {
            sandboxed(Role::CloneHost, p);
            act()
        })
    };
    assert_killed(
        host_child(|| {
            // SAFETY: socket(2) with integer arguments.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            10
        }),
        libc::SYS_socket,
        "socket",
        "clone host",
    );
    assert_killed(
        host_child(|| {
            // SAFETY: an anonymous mapping; it must never be made.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            10
        }),
        libc::SYS_mmap,
        "mmap",
        "clone host",
    );
    assert_killed(
        host_child(|| {
            // SAFETY: a valid NUL-terminated path.
            unsafe {
                libc::open(
                    c"/tmp/sandbox-must-not-exist".as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o600,
                )
            };
            10
        }),
        libc::SYS_openat,
        "openat",
        "clone host",
    );
}

#[test]
fn no_role_may_exec_trace_load_code_or_escape() {
    let forbidden = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_setuid,
        libc::SYS_setresuid,
        libc::SYS_keyctl,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_memfd_create,
        sigsys::DEATH_CALL,
    ];
    for role in Role::ALL {
        let list = allow_list(role);
        for e in &list.entries {
            assert!(
                !forbidden.contains(&e.nr),
                "{} allows {} ({})",
                role.name(),
                names::NAMES[e.nr as usize],
                e.why
            );
            assert!(!e.why.is_empty());
        }
        // The sizes the documentation quotes.
        println!(
            "{} ({role:?}): {} system calls",
            role.name(),
            list.syscalls()
        );
    }
    let holder = allow_list(Role::MemoryHolder).syscalls();
    let runner = allow_list(Role::Runner).syscalls();
    assert!(holder < runner, "the holder's list must be the narrowest");
}

#[test]
fn root_is_dropped_for_good() {
    let (status, stderr) = in_child(|| {
        if privileges::drop(Some(Credentials::NOBODY)).is_err() {
            return 20;
        }
        // SAFETY: credential queries and an attempt that must fail.
        unsafe {
            if libc::getuid() != 65534 || libc::getegid() != 65534 {
                return 21;
            }
            if libc::setuid(0) == 0 || libc::getgroups(0, std::ptr::null_mut()) != 0 {
                return 22;
            }
            if libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 {
                return 23;
            }
            if libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) != 0 {
                return 24;
            }
        }
        0
    });
    assert_eq!(status, ExitStatus::Code(0), "{stderr}");
}

#[test]
fn keeping_the_uid_still_drops_every_capability() {
    let (status, stderr) = in_child(|| {
        if privileges::drop(None).is_err() {
            return 30;
        }
        // SAFETY: credential calls with integer arguments.
        unsafe {
            if libc::getuid() != 0 {
                return 31;
            }
            // CAP_SETUID is gone: root cannot change its user.
            if libc::setresuid(1, 1, 1) == 0 {
                return 32;
            }
            // The bounding set is empty, so not even an exec could regain it.
            if libc::prctl(libc::PR_CAPBSET_READ, 21 /* CAP_SYS_ADMIN */, 0, 0, 0) != 0 {
                return 33;
            }
        }
        0
    });
    assert_eq!(status, ExitStatus::Code(0), "{stderr}");
}

#[test]
fn the_kill_line_names_call_role_and_arguments() {
    let (buf, len) = sigsys::message(59, [1, 2], "runner");
    assert_eq!(
        std::str::from_utf8(&buf[..len]).unwrap(),
        "snowflock: seccomp: syscall 59 (execve) is not allowed for the runner role (arguments 1, 2)\n"
    );
    let (buf, len) = sigsys::message(99_999, [u64::MAX, 0], "memory holder");
    assert!(std::str::from_utf8(&buf[..len])
        .unwrap()
        .starts_with("snowflock: seccomp: syscall 99999 (unknown)"));
}

/// The NIC's host side after set-up: frames out with writev, in with
/// non-blocking reads, the wait register's poll, and F_SETFL on a clone's
/// new TAP. Every VMM role that runs a VM may do them (a datagram socket
/// pair stands in for the TAP: the calls are the same).
#[test]
fn every_vm_role_may_drive_a_nic() {
    for role in [Role::Runner, Role::LoneRunner, Role::CloneHost] {
        let p = prog(role);
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let (status, stderr) = in_child(|| {
            sandboxed(role, &p);
            let frame = [0x5au8; 64];
            let iov = [
                libc::iovec {
                    iov_base: frame.as_ptr() as *mut _,
                    iov_len: 12,
                },
                libc::iovec {
                    iov_base: frame[12..].as_ptr() as *mut _,
                    iov_len: 52,
                },
            ];
            let mut buf = [0u8; 128];
            // SAFETY: raw calls on the two fds with buffers on the stack.
            unsafe {
                let fl = libc::fcntl(fds[0], libc::F_GETFL);
                if fl < 0 || libc::fcntl(fds[0], libc::F_SETFL, fl | libc::O_NONBLOCK) != 0 {
                    return 21;
                }
                if libc::writev(fds[1], iov.as_ptr(), 2) != 64 {
                    return 22;
                }
                let mut pfd = libc::pollfd {
                    fd: fds[0],
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut pfd, 1, 1000) != 1 {
                    return 23;
                }
                if libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) != 64 {
                    return 24;
                }
                if libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) != -1
                    || *libc::__errno_location() != libc::EAGAIN
                {
                    return 25;
                }
            }
            0
        });
        // SAFETY: closing the parent's copies.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_eq!(status, ExitStatus::Code(0), "{role:?}: {stderr}");
    }
}

/// A sandboxed thread may move its own priority between normal and the
/// service level (`thread_priority`), nothing else: not another process's,
/// not higher than the service level, not lower than normal.
#[test]
fn a_thread_may_set_only_its_own_priority_and_only_to_two_levels() {
    let service = crate::thread_priority::SERVICE_NICE;
    for role in [
        Role::Runner,
        Role::CloneHost,
        Role::MemoryHolder,
        Role::PageReceiver,
    ] {
        let p = &prog(role);
        let (status, stderr) = in_child(move || {
            sandboxed(role, p);
            // SAFETY: setpriority of the calling thread.
            let up = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, service) };
            // SAFETY: as above.
            let back = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
            // Allowed calls that fail (no CAP_SYS_NICE) still return here.
            i32::from(up == 0) + 2 * i32::from(back == 0) + 10
        });
        assert!(
            matches!(status, ExitStatus::Code(c) if (10..14).contains(&c)),
            "{}: {status:?} {stderr}",
            role.name()
        );
        for (who, nice) in [(1, service), (0, -20), (0, 19)] {
            assert_killed(
                in_child(move || {
                    sandboxed(role, p);
                    // SAFETY: setpriority with integer arguments.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) };
                    10
                }),
                libc::SYS_setpriority,
                "setpriority",
                role.name(),
            );
        }
    }
}
