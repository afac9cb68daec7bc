//! The work-splitting driver of the application guests: a job is cut into
//! numbered shares; `clones=N` forks the VM and each clone computes one
//! share (in rounds of at most N when the job has more shares than
//! clones, e.g. when a share's bytes would exceed what a clone may hand
//! back), `split=K` computes the same shares one after another in one VM.
//! Either way the app merges the shares' bytes in share order, so both
//! modes give the same answer.
//!
//! Console lines the host reads (`APP` is the app's name):
//! - `APP: share S/N clone_ns=X ref_ns=Y match=yes` per share on clones
//!   (`ref_ns` and `match` with `warm=1`: the parent computed every share
//!   itself before the clone call, timed it, and compared the bytes);
//! - `APP: share S/N ns=X` per share in one VM;
//! - `APP: wall_ns=X` from the first share to the merged answer (without
//!   the warm pass), printed by [`Done::finish`];
//! - `APP: clone_call_ns=X join_wait_ns=Y` on clones: the parent's time in
//!   the clone calls and in the joins (summed over rounds), so the host can
//!   tell the clones' start and join from the shares' own time.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use sf_guest::clone::{self, CloneStatus};
use sf_guest::{env, println, time};

/// How the job is run, from the command line.
pub struct Plan {
    pub clones: u64,
    pub split: u64,
    pub warm: bool,
}

/// `name=N` from the command line, `default` when absent.
pub fn arg_u64(app: &str, name: &str, default: u64) -> Result<u64, i32> {
    match env::arg(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            println!("{app}: {name}= takes an unsigned integer, not {v:?}");
            2
        }),
    }
}

impl Plan {
    /// `clones=N` (0: no clones), `split=K` (default 1), `warm=0|1`.
    pub fn from_args(app: &str) -> Result<Plan, i32> {
        let p = Plan {
            clones: arg_u64(app, "clones", 0)?,
            split: arg_u64(app, "split", 1)?,
            warm: arg_u64(app, "warm", 0)? != 0,
        };
        if p.split == 0 {
            println!("{app}: split= must be positive");
            return Err(2);
        }
        Ok(p)
    }
}

/// How many shares a job has.
pub enum Shares<'a> {
    /// One per clone granted (or per `split` in one VM).
    PerClone,
    /// `fit(clones, share_max)`: as many as the job needs for `clones`
    /// clones (or `split` in one VM) when one share's bytes may not exceed
    /// `share_max` (unbounded in one VM); more than `clones` means rounds.
    Fit(&'a dyn Fn(u64, usize) -> u64),
}

/// The shares' results, in share order.
pub struct Done {
    pub results: Vec<Vec<u8>>,
    start_ns: u64,
}

/// Bytes of a clone's result that are not its share: its time.
const TIMING_BYTES: usize = 8;

impl Done {
    /// Prints the job's wall time (call after merging).
    pub fn finish(&self, app: &str) {
        println!("{app}: wall_ns={}", time::now_ns() - self.start_ns);
    }
}

/// Runs every share of the job with `work(share, shares)` (share 1-based).
/// Errors are the guest's exit status (the reason is printed).
pub fn run(
    app: &str,
    plan: &Plan,
    shares: Shares,
    work: impl Fn(u64, u64) -> Vec<u8>,
) -> Result<Done, i32> {
    if plan.clones == 0 {
        let n = match shares {
            Shares::PerClone => plan.split,
            Shares::Fit(fit) => fit(plan.split, usize::MAX).max(1),
        };
        let start_ns = time::now_ns();
        let mut results = Vec::with_capacity(n as usize);
        for s in 1..=n {
            let t = time::now_ns();
            results.push(work(s, n));
            println!("{app}: share {s}/{n} ns={}", time::now_ns() - t);
        }
        return Ok(Done { results, start_ns });
    }
    on_clones(app, plan, shares, work)
}

fn on_clones(
    app: &str,
    plan: &Plan,
    shares: Shares,
    work: impl Fn(u64, u64) -> Vec<u8>,
) -> Result<Done, i32> {
    let mut ticket = clone::request_ticket(plan.clones).map_err(|e| {
        println!("{app}: no clones available ({e:?})");
        3
    })?;
    let granted = ticket.granted() as u64;
    let cap = clone::result_cap(&ticket).map_err(|e| {
        println!("{app}: no result cap for the ticket ({e:?})");
        3
    })?;
    let share_max = cap.saturating_sub(TIMING_BYTES);
    let n = match shares {
        Shares::PerClone => granted,
        Shares::Fit(fit) => fit(granted, share_max).max(1),
    };
    println!(
        "{app}: granted={granted} of {} clones, {n} shares of at most {share_max} bytes",
        plan.clones
    );
    let mut reference = Vec::new();
    if plan.warm {
        for s in 1..=n {
            let t = time::now_ns();
            let r = work(s, n);
            reference.push((r, time::now_ns() - t));
        }
    }
    let start_ns = time::now_ns();
    let mut results: Vec<Vec<u8>> = Vec::new();
    let mut clone_ns = Vec::new();
    let mut first = 0u64; // shares done before this round
    let (mut clone_call_ns, mut join_wait_ns) = (0, 0);
    while first < n {
        let this = ticket.granted() as u64;
        let t = time::now_ns();
        let id = clone::clone(&ticket).map_err(|e| {
            println!("{app}: clone failed ({e:?})");
            3
        })? as u64;
        if id != 0 {
            let s = first + id;
            let t = time::now_ns();
            let mut out = if s <= n { work(s, n) } else { Vec::new() };
            let took = time::now_ns() - t;
            out.extend_from_slice(&took.to_le_bytes());
            let e = clone::exit(0, &out);
            println!(
                "{app}: share {s} cannot be handed back ({e:?}, {} bytes)",
                out.len()
            );
            return Err(5);
        }
        let joining = time::now_ns();
        clone_call_ns += joining - t;
        let joined = clone::join(&ticket).map_err(|e| {
            println!("{app}: join failed ({e:?})");
            3
        })?;
        join_wait_ns += time::now_ns() - joining;
        for r in &joined {
            let s = first + r.id as u64;
            if s > n {
                continue;
            }
            if r.status != CloneStatus::Exited || r.result.len() < 8 {
                println!("{app}: share {s} failed: {:?} {}", r.status, r.detail);
                return Err(1);
            }
            let (bytes, ns) = r.result.split_at(r.result.len() - 8);
            results.push(bytes.to_vec());
            clone_ns.push(u64::from_le_bytes(ns.try_into().unwrap_or_default()));
        }
        first += this;
        if first < n {
            ticket = clone::request_ticket((n - first).min(granted)).map_err(|e| {
                println!("{app}: no clones for the next round ({e:?})");
                3
            })?;
        }
    }
    if results.len() as u64 != n {
        println!("{app}: {} of {n} shares came back", results.len());
        return Err(1);
    }
    println!("{app}: clone_call_ns={clone_call_ns} join_wait_ns={join_wait_ns}");
    let mut all_match = true;
    for (i, ns) in clone_ns.iter().enumerate() {
        match reference.get(i) {
            Some((r, ref_ns)) => {
                let ok = *r == results[i];
                all_match &= ok;
                let m = if ok { "yes" } else { "no" };
                println!(
                    "{app}: share {}/{n} clone_ns={ns} ref_ns={ref_ns} match={m}",
                    i + 1
                );
            }
            None => println!("{app}: share {}/{n} clone_ns={ns}", i + 1),
        }
    }
    if !all_match {
        println!("{app}: a clone's share differs from the parent's");
        return Err(1);
    }
    Ok(Done { results, start_ns })
}
