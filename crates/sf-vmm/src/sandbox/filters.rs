//! The seccomp allow-list of each VMM role, as data: every entry names the
//! system call, the arguments it is limited to, and why the role needs it.
//!
//! A role's list is the [`base`] entries plus the role's own. To let a role
//! do something new, add an entry with its reason to the role's function
//! (or to [`base`] if every role needs it); the tests in `tests.rs` print
//! and check the sizes. A forked memory holder inherits its parent's filter
//! and stacks its own, so its effective list is the intersection.

use super::Role;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;

/// One allowed system call.
pub struct Entry {
    pub nr: i64,
    /// Allowed when any of these holds (none: always).
    pub rules: Vec<SeccompRule>,
    /// Why the role needs it.
    pub why: &'static str,
}

/// The allow-list of one role.
pub struct AllowList {
    pub role: Role,
    pub entries: Vec<Entry>,
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

/// `arg` (a 32-bit argument) equals one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![cond(arg, Len::Dword, Op::Eq, v)]).expect("one condition"))
        .collect()
}

/// `arg` has none of the bits in `mask`.
fn none_of(arg: u8, mask: u64) -> Vec<SeccompRule> {
    vec![
        SeccompRule::new(vec![cond(arg, Len::Qword, Op::MaskedEq(mask), 0)])
            .expect("one condition"),
    ]
}

/// `arg` has all of the bits in `mask` and none of `forbidden`.
fn all_but_none_of(arg: u8, mask: u64, forbidden: u64) -> Vec<SeccompRule> {
    vec![SeccompRule::new(vec![
        cond(arg, Len::Qword, Op::MaskedEq(mask), mask),
        cond(arg, Len::Qword, Op::MaskedEq(forbidden), 0),
    ])
    .expect("two conditions")]
}

/// kill(2) of SIGKILL to one process: a PID above 0 (as the kernel reads
/// it, a 32-bit int: not 0 and without the sign bit).
fn sigkill_to_one_pid() -> Vec<SeccompRule> {
    vec![SeccompRule::new(vec![
        cond(0, Len::Dword, Op::Ne, 0),
        cond(0, Len::Dword, Op::MaskedEq(0x8000_0000), 0),
        cond(1, Len::Dword, Op::Eq, libc::SIGKILL as u64),
    ])
    .expect("three conditions")]
}

/// setpriority(PRIO_PROCESS, 0, nice) with `nice` the service level or
/// normal: the calling thread's own priority, between these two only.
fn own_priority() -> Vec<SeccompRule> {
    [crate::thread_priority::SERVICE_NICE, 0]
        .iter()
        .map(|&nice| {
            SeccompRule::new(vec![
                cond(0, Len::Dword, Op::Eq, libc::PRIO_PROCESS as u64),
                cond(1, Len::Dword, Op::Eq, 0),
                cond(2, Len::Dword, Op::Eq, u64::from(nice as u32)),
            ])
            .expect("three conditions")
        })
        .collect()
}

/// socket(2) of one of `families`, of type stream or datagram (whatever
/// the SOCK_CLOEXEC/SOCK_NONBLOCK flags).
fn stream_or_datagram(families: &[u64]) -> Vec<SeccompRule> {
    const TYPE_MASK: u64 = 0xf;
    let mut rules = Vec::new();
    for &f in families {
        for t in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
            rules.push(
                SeccompRule::new(vec![
                    cond(0, Len::Dword, Op::Eq, f),
                    cond(1, Len::Dword, Op::MaskedEq(TYPE_MASK), t as u64),
                ])
                .expect("two conditions"),
            );
        }
    }
    rules
}

macro_rules! allow {
    ($list:expr, $sys:ident, $why:expr) => {
        $list.push(Entry {
            nr: libc::$sys,
            rules: Vec::new(),
            why: $why,
        })
    };
    ($list:expr, $sys:ident if $rules:expr, $why:expr) => {
        $list.push(Entry {
            nr: libc::$sys,
            rules: $rules,
            why: $why,
        })
    };
}

/// Namespaces a process could enter or create: never, in any role.
const NEW_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u64;

/// What a thread of std (glibc's pthread_create) passes to clone(2).
const THREAD: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Opening a path for anything but reading.
const NOT_READ_ONLY: u64 = (libc::O_WRONLY
    | libc::O_RDWR
    | libc::O_CREAT
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_TMPFILE
    | libc::O_PATH) as u64;

/// Creating a new file for writing, and nothing else: it must not exist
/// and must not be a symlink.
const CREATE_NEW: u64 = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW) as u64;
const NOT_CREATE_NEW: u64 =
    (libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND | libc::O_TMPFILE | libc::O_PATH) as u64;

/// Every role: memory, threads' synchronization, its own fds, time, exit.
fn base(l: &mut Vec<Entry>) {
    allow!(
        l,
        SYS_read,
        "fds the role owns: pipes, sockets, console; frames from the NIC's TAP"
    );
    allow!(
        l,
        SYS_write,
        "console, logs, pipes, sockets; the SIGSYS message"
    );
    allow!(l, SYS_readv, "std's vectored reads");
    allow!(
        l,
        SYS_writev,
        "std's vectored writes (eprintln); a NIC frame to its TAP straight from guest RAM"
    );
    allow!(l, SYS_pread64, "std reads at offsets");
    allow!(
        l,
        SYS_pwrite64,
        "the memory counters file, rewritten in place"
    );
    allow!(l, SYS_lseek, "std's file handling");
    allow!(l, SYS_close, "every fd the role drops");
    allow!(l, SYS_fcntl if one_of(1, &[
        libc::F_DUPFD_CLOEXEC as u64, libc::F_GETFD as u64, libc::F_SETFD as u64,
        libc::F_GETFL as u64, libc::F_SETFL as u64,
    ]), "std's try_clone (F_DUPFD_CLOEXEC) and non-blocking flags; no locks or leases");
    allow!(l, SYS_fstat, "std sizes buffers from fstat");
    allow!(l, SYS_statx if one_of(2, &[libc::AT_EMPTY_PATH as u64]),
        "std's fstat of an open fd (AT_EMPTY_PATH)");
    allow!(l, SYS_newfstatat if one_of(3, &[libc::AT_EMPTY_PATH as u64]),
        "glibc's fstat of an open fd (AT_EMPTY_PATH)");
    allow!(l, SYS_brk, "the allocator");
    allow!(l, SYS_mmap if none_of(2, libc::PROT_EXEC as u64),
        "the allocator, thread stacks, the vCPU's run area, the working set record (MAP_SHARED, shared with the memory holders); never executable");
    allow!(l, SYS_mprotect if none_of(2, libc::PROT_EXEC as u64),
        "thread stack guards; never executable");
    allow!(l, SYS_munmap, "the allocator");
    allow!(l, SYS_mremap, "the allocator (realloc of large buffers)");
    allow!(l, SYS_mincore,
        "a new memory holder reads which guest pages the parent touched, to compare with the recorded working set");
    allow!(
        l,
        SYS_madvise,
        "the allocator returns memory (MADV_DONTNEED)"
    );
    allow!(l, SYS_futex, "std's locks and condition variables");
    allow!(l, SYS_setpriority if own_priority(),
        "a thread sets its own priority, to the service level or back to normal (see thread_priority)");
    allow!(l, SYS_sched_yield, "std's spin loops");
    allow!(
        l,
        SYS_rt_sigreturn,
        "return from the SIGALRM and SIGSYS handlers"
    );
    allow!(
        l,
        SYS_rt_sigprocmask,
        "std and glibc mask signals around thread starts"
    );
    allow!(
        l,
        SYS_sigaltstack,
        "std's per-thread stack-overflow handler"
    );
    allow!(l, SYS_getpid, "clone bookkeeping, log lines");
    allow!(l, SYS_gettid, "the watchdog timer targets the vCPU thread");
    allow!(
        l,
        SYS_getppid,
        "a fresh child checks its parent is still alive"
    );
    allow!(
        l,
        SYS_clock_gettime,
        "Instant::now when the vDSO falls back"
    );
    allow!(
        l,
        SYS_clock_nanosleep,
        "thread::sleep (heartbeats, polling)"
    );
    allow!(l, SYS_nanosleep, "thread::sleep on older glibc");
    allow!(
        l,
        SYS_getrandom,
        "guest reseeds at a clone, group tokens, TLS keys"
    );
    allow!(
        l,
        SYS_eventfd2,
        "wake-ups between threads (page server, fault handler)"
    );
    allow!(
        l,
        SYS_poll,
        "waiting for clone reports, sockets, userfaultfd; the NIC's wait register on its TAP"
    );
    allow!(l, SYS_ppoll, "glibc's poll on some versions");
    allow!(l, SYS_restart_syscall,
        "the kernel resumes a sleep or poll that a stop interrupted: a VMM stopped (SIGSTOP, a debugger, the cgroup freezer) and continued died of SIGSYS without it");
    allow!(l, SYS_exit, "a thread ends");
    allow!(l, SYS_exit_group, "the process ends");
    allow!(
        l,
        SYS_sched_getaffinity,
        "std::thread::available_parallelism"
    );
}

/// A thread (never a process) may be started.
fn threads_only(l: &mut Vec<Entry>) {
    allow!(l, SYS_clone if all_but_none_of(0, THREAD, NEW_NAMESPACES),
        "std::thread::spawn (glibc falls back from clone3, see compile)");
    thread_start(l);
}

/// What a new thread does first.
fn thread_start(l: &mut Vec<Entry>) {
    // glibc's own real-time signals: SIGCANCEL (32) and SIGSETXID (33).
    allow!(l, SYS_rt_sigaction if one_of(0, &[32, 33]),
        "glibc installs its thread-cancel and set-ID handlers at the first thread start");
    allow!(l, SYS_prctl if one_of(0, &[libc::PR_SET_NAME as u64]),
        "std names threads (page-server connections)");
    allow!(
        l,
        SYS_set_robust_list,
        "every new thread registers its robust futex list"
    );
    allow!(
        l,
        SYS_rseq,
        "every new thread registers restartable sequences"
    );
}

/// Network sockets of the given address families.
fn sockets(l: &mut Vec<Entry>, families: &[u64]) {
    allow!(l, SYS_socket if stream_or_datagram(families),
        "connections of this role: these families only, stream or datagram (no raw or packet sockets)");
    allow!(l, SYS_connect, "connecting the sockets above");
    allow!(l, SYS_getsockopt, "connect_timeout reads SO_ERROR");
    allow!(
        l,
        SYS_setsockopt,
        "timeouts, TCP_NODELAY, multicast TTL and interface"
    );
    allow!(
        l,
        SYS_getsockname,
        "local_addr of listeners and connections"
    );
    allow!(l, SYS_getpeername, "peer_addr of connections");
    allow!(l, SYS_sendto, "TCP writes, multicast datagrams");
    allow!(l, SYS_recvfrom, "TCP reads, multicast datagrams");
    allow!(l, SYS_sendmsg, "std's vectored socket writes");
    allow!(l, SYS_recvmsg, "std's vectored socket reads");
    allow!(
        l,
        SYS_shutdown,
        "closing a connection or stopping a listener"
    );
    allow!(l, SYS_ioctl if one_of(1, &[libc::FIONBIO]), "std's set_nonblocking");
}

/// The runner VMM: runs its VM, serves hypercalls, forks local clones (which
/// build new KVM VMs, so those ioctls stay allowed), and, with `peers` (the
/// peer list its daemon gave), at a clone call with clones for peer hosts
/// opens the group's listeners and forks the memory holder. Without peers
/// it has no use for the network: it creates no socket, and only talks on
/// the family network broker's, inherited from set-up (a clone's TAP).
/// A local clone keeps exactly its runner's list: it may clone in turn.
fn runner(l: &mut Vec<Entry>, peers: bool) {
    base(l);
    thread_start(l);
    allow!(l, SYS_clone if none_of(0, NEW_NAMESPACES),
        "fork of the first clone, clones as siblings (CLONE_PARENT), threads; never namespaces");
    let mut ioctls = kvm_ioctls(true);
    ioctls.extend(one_of(1, &[crate::net::tap::TUNSETOFFLOAD]));
    allow!(l, SYS_ioctl if ioctls,
        "the vCPU and VM, and building a clone's VM on the inherited /dev/kvm fd; TUNSETOFFLOAD: the NIC's TAP takes the offloads its driver acked");
    allow!(l, SYS_wait4, "reaping clones");
    allow!(l, SYS_kill if sigkill_to_one_pid(),
        "SIGKILL to this VM's own clones, by PID: never 0 or below (a process group, or with -1 every process of the user, which all VMMs share)");
    allow!(l, SYS_prctl if one_of(0, &[libc::PR_SET_PDEATHSIG as u64, libc::PR_SET_NO_NEW_PRIVS as u64]),
        "a new clone dies with its parent; a memory holder sets no-new-privs (already set) to stack its filter");
    allow!(l, SYS_pipe2, "report and PID pipes of a clone call");
    allow!(
        l,
        SYS_timer_create,
        "the run timeout (re-armed in every clone)"
    );
    allow!(l, SYS_timer_settime, "the run timeout");
    allow!(l, SYS_timer_delete, "the run timeout");
    allow!(l, SYS_rt_sigaction if one_of(0, &[libc::SIGALRM as u64]),
        "the timeout's no-op SIGALRM handler, installed when armed");
    allow!(l, SYS_openat if none_of(2, NOT_READ_ONLY),
        "read-only: a clone reads /proc/self/smaps_rollup at its end (its memory use); a VM's output directory");
    allow!(l, SYS_openat if all_but_none_of(2, CREATE_NEW, NOT_CREATE_NEW),
        "the guest's output files: only new ones (O_CREAT|O_EXCL|O_NOFOLLOW, write-only), never an existing file");
    allow!(
        l,
        SYS_mkdirat,
        "a VM's output directory DIR/<vm-id>, relative to the DIR fd opened at set-up"
    );
    allow!(
        l,
        SYS_ftruncate,
        "a guest rewriting an output file this VM created"
    );
    if !peers {
        allow!(
            l,
            SYS_sendto,
            "a new clone asks the family's network broker for its TAP (an inherited Unix socket)"
        );
        allow!(l, SYS_sendmsg, "the same, as a vectored write");
        allow!(l, SYS_recvmsg, "the TAP comes back as SCM_RIGHTS");
        return;
    }
    allow!(l, SYS_seccomp if one_of(0, &[libc::SECCOMP_SET_MODE_FILTER as u64]),
        "a forked memory holder stacks its tighter filter (a filter can only narrow)");
    // No Unix sockets: placement comes from the peer list the daemon gave,
    // so no VMM talks to a daemon's socket.
    sockets(l, &[libc::AF_INET as u64, libc::AF_INET6 as u64]);
    allow!(
        l,
        SYS_bind,
        "a clone call's page-server and report listeners (port 0)"
    );
    allow!(l, SYS_listen, "a clone call's listeners");
    allow!(l, SYS_accept4, "remote clones' report connections");
    allow!(l, SYS_accept, "remote clones' report connections");
}

/// A clone from another host: the runner's list (its VM may clone locally)
/// plus the userfaultfd requests of the page-fault thread, without
/// listeners (its clones stay on this host).
fn clone_host(l: &mut Vec<Entry>) {
    runner(l, true);
    let dropped = [
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_socket,
        libc::SYS_ioctl,
    ];
    l.retain(|e| !dropped.contains(&e.nr));
    allow!(l, SYS_socket if stream_or_datagram(&[libc::AF_INET as u64, libc::AF_INET6 as u64]),
        "the one reconnect to the memory holder");
    let mut rules = kvm_ioctls(true);
    rules.extend(one_of(
        1,
        &[
            crate::net::tap::TUNSETOFFLOAD,
            UFFDIO_COPY,
            UFFDIO_ZEROPAGE,
            UFFDIO_MOVE,
            UFFDIO_WAKE,
            UFFDIO_UNREGISTER,
            libc::FIONREAD,
        ],
    ));
    allow!(l, SYS_ioctl if rules,
        "KVM and TUNSETOFFLOAD as the runner; userfaultfd COPY/ZEROPAGE/MOVE (a whole 2 MiB block as a huge page)/WAKE from the fault thread, UNREGISTER when the origin is gone; FIONREAD: the multicast backlog the fault thread reports to the holder");
    allow!(
        l,
        SYS_ftruncate,
        "cuts the counters file (opened at set-up) to length"
    );
    allow!(l, SYS_tgkill if one_of(2, &[libc::SIGALRM as u64]),
        "the fault thread kicks the vCPU thread out of KVM_RUN when memory fails");
}

/// The memory holder: a frozen copy of guest RAM served over TCP (and
/// pushed by multicast). No KVM, no processes, no file writes, no
/// listeners of its own (it inherits one).
fn memory_holder(l: &mut Vec<Entry>) {
    base(l);
    threads_only(l);
    sockets(l, &[libc::AF_INET as u64, libc::AF_INET6 as u64]);
    allow!(l, SYS_accept4, "clone hosts' page connections");
    allow!(l, SYS_accept, "clone hosts' page connections");
    allow!(l, SYS_openat if none_of(2, NOT_READ_ONLY),
        "read-only: glibc reads /sys/devices/system/cpu/online when a connection thread makes a malloc arena (seen with 300 connections)");
}

/// A clone host's page receiver: reads one group's datagrams, writes the
/// pages into the shared cache (pwrite), and answers each of the
/// group's clone VMMs on this host once, on a Unix connection it accepts.
/// No KVM, no threads or processes, no files, no new sockets.
fn page_receiver(l: &mut Vec<Entry>) {
    base(l);
    allow!(l, SYS_accept4, "the group's clone VMMs on this host");
    allow!(l, SYS_accept, "the group's clone VMMs on this host");
    allow!(
        l,
        SYS_getsockopt,
        "SO_PEERCRED: only root's clients are admitted"
    );
    allow!(l, SYS_recvfrom, "the group's datagrams; a client's hello");
    allow!(
        l,
        SYS_sendmsg,
        "the answer to a client, with the cache's descriptors"
    );
    allow!(l, SYS_ioctl if one_of(1, &[libc::FIONREAD, libc::FIONBIO]),
        "FIONREAD: the backlog the host reports to the holder; FIONBIO: std's set_nonblocking");
}

pub fn allow_list(role: Role) -> AllowList {
    let mut entries = Vec::new();
    match role {
        // A local clone installs nothing: it keeps its runner's filter, at
        // most this list (the list of a runner with peers).
        Role::Runner | Role::LocalClone => runner(&mut entries, true),
        Role::LoneRunner => runner(&mut entries, false),
        Role::CloneHost => clone_host(&mut entries),
        Role::MemoryHolder => memory_holder(&mut entries),
        Role::PageReceiver => page_receiver(&mut entries),
    }
    AllowList { role, entries }
}

impl AllowList {
    /// How many distinct system calls the role may make.
    pub fn syscalls(&self) -> usize {
        let mut nrs: Vec<i64> = self.entries.iter().map(|e| e.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        nrs.len()
    }

    /// The BPF program: anything not listed traps (SIGSYS, see `sigsys`);
    /// clone3 answers ENOSYS first, so glibc falls back to clone(2), whose
    /// flags a filter can see.
    pub fn compile(&self) -> Result<BpfProgram, seccompiler::BackendError> {
        // seccompiler reads an empty rule list as "always".
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let always: Vec<i64> = self
            .entries
            .iter()
            .filter(|e| e.rules.is_empty())
            .map(|e| e.nr)
            .collect();
        for e in &self.entries {
            let r = rules.entry(e.nr).or_default();
            if !always.contains(&e.nr) {
                r.extend(e.rules.iter().cloned());
            }
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            seccompiler::TargetArch::x86_64,
        )?;
        let mut prog: BpfProgram = Vec::with_capacity(3);
        prog.extend(clone3_enosys());
        prog.extend(BpfProgram::try_from(filter)?);
        Ok(prog)
    }
}

/// BPF that answers clone3(2) with ENOSYS and falls through otherwise; the
/// jumps of the program appended after it are relative, so prepending is
/// safe.
fn clone3_enosys() -> [seccompiler::sock_filter; 3] {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    [
        // seccomp_data.nr is at offset 0.
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ]
}

// userfaultfd requests (linux/userfaultfd.h): _IOWR(0xAA, 3, uffdio_copy),
// _IOWR(0xAA, 4, uffdio_zeropage), _IOWR(0xAA, 5, uffdio_move),
// _IOR(0xAA, 2 and 1, uffdio_range).
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const UFFDIO_MOVE: u64 = 0xc028_aa05;
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const NONE: u64 = 0;
const W: u64 = 1;
const R: u64 = 2;

/// The KVM requests a VMM makes after set-up: running and reading/writing
/// the vCPU (hypercalls, crash dumps, capture at a clone call) and, with
/// `build`, creating a clone's VM and vCPU from a descriptor. Nothing else
/// (no device, IRQ chip, dirty-log or capability requests), and FIONBIO.
fn kvm_ioctls(build: bool) -> Vec<SeccompRule> {
    use kvm_bindings::*;
    use std::mem::size_of;
    let mut req = vec![
        ioc(NONE, 0x80, 0),                         // KVM_RUN
        ioc(R, 0x81, size_of::<kvm_regs>()),        // KVM_GET_REGS
        ioc(W, 0x82, size_of::<kvm_regs>()),        // KVM_SET_REGS
        ioc(R, 0x83, size_of::<kvm_sregs>()),       // KVM_GET_SREGS
        ioc(W, 0x84, size_of::<kvm_sregs>()),       // KVM_SET_SREGS
        ioc(R | W, 0x88, size_of::<kvm_msrs>()),    // KVM_GET_MSRS
        ioc(W, 0x89, size_of::<kvm_msrs>()),        // KVM_SET_MSRS
        ioc(R, 0x8c, size_of::<kvm_fpu>()),         // KVM_GET_FPU
        ioc(W, 0x8d, size_of::<kvm_fpu>()),         // KVM_SET_FPU
        ioc(R, 0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
        ioc(W, 0xa0, size_of::<kvm_vcpu_events>()), // KVM_SET_VCPU_EVENTS
        ioc(R, 0xa1, size_of::<kvm_debugregs>()),   // KVM_GET_DEBUGREGS
        ioc(W, 0xa2, size_of::<kvm_debugregs>()),   // KVM_SET_DEBUGREGS
        ioc(NONE, 0xa3, 0),                         // KVM_GET_TSC_KHZ
        ioc(R, 0xa4, size_of::<kvm_xsave>()),       // KVM_GET_XSAVE
        ioc(W, 0xa5, size_of::<kvm_xsave>()),       // KVM_SET_XSAVE
        ioc(R, 0xa6, size_of::<kvm_xcrs>()),        // KVM_GET_XCRS
        ioc(W, 0xa7, size_of::<kvm_xcrs>()),        // KVM_SET_XCRS
        libc::FIONBIO,
    ];
    if build {
        req.extend([
            ioc(NONE, 0x01, 0),                                     // KVM_CREATE_VM
            ioc(NONE, 0x04, 0),                                     // KVM_GET_VCPU_MMAP_SIZE
            ioc(NONE, 0x41, 0),                                     // KVM_CREATE_VCPU
            ioc(W, 0x46, size_of::<kvm_userspace_memory_region>()), // KVM_SET_USER_MEMORY_REGION
            ioc(W, 0x90, size_of::<kvm_cpuid2>()),                  // KVM_SET_CPUID2
        ]);
    }
    one_of(1, &req)
}
