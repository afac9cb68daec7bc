//! Monte-Carlo pi over clones that send their slices' counts to the parent
//! over TCP (checksummed frames) instead of through `join`; `join` then
//! only collects exit statuses and cross-checks the counts.

use crate::wire::{self, connect_retry, encode, read_frame};
use alloc::vec;
use alloc::vec::Vec;
use sf_apps::pi::{hits, slice};
use sf_guest::clone::{self, CloneStatus};
use sf_guest::net::{self, TcpListener};
use sf_guest::{println, time};

pub fn run(samples: u64, seed: u64, wanted: u64, port: u16, timeout_ms: u64) -> i32 {
    let deadline = time::now_ns() + timeout_ms * 1_000_000;
    let tcp = net::available();
    let listener = if tcp {
        let _ = net::with(|n| {
            n.backlog = wanted.clamp(1, 64) as usize;
            Ok(())
        });
        match TcpListener::bind(port) {
            Ok(l) => Some(l),
            Err(e) => {
                println!("netpi: cannot listen on port {port}: {e:?}");
                return 3;
            }
        }
    } else {
        println!("netpi: no network; gathering through join");
        None
    };
    let Ok(t) = clone::request_ticket(wanted) else {
        println!("netpi: no clones available");
        return 3;
    };
    let k = t.granted() as u64;
    let t0 = time::now_ns();
    let id = match clone::clone(&t) {
        Ok(id) => id,
        Err(e) => {
            println!("netpi: clone failed ({e:?})");
            return 3;
        }
    };
    if id != 0 {
        // The parent's listener is not ours: it was reset by the clone.
        drop(listener);
        let (n, s) = slice(samples, seed, id as u64, k);
        let inside = hits(n, s);
        if tcp {
            let mut p = Vec::new();
            p.extend_from_slice(&inside.to_le_bytes());
            p.extend_from_slice(&n.to_le_bytes());
            let parent = net::parent_addr().unwrap_or(sf_guest::net::Ipv4Addr::UNSPECIFIED);
            let sent = connect_retry(parent, port, deadline)
                .and_then(|mut c| c.write_all(&encode(id, 0, &p)).and_then(|()| c.close()));
            if let Err(e) = sent {
                println!("netpi: clone {id} could not report to {parent}:{port}: {e:?}");
                clone::exit(1, &[]);
            }
        }
        clone::exit(0, &inside.to_le_bytes());
        return 4;
    }
    let mut by_tcp = vec![None; k as usize];
    if let Some(l) = &mut { listener } {
        for _ in 0..k {
            l.set_timeout(Some(wire::left(deadline)));
            let frame = l
                .accept()
                .map_err(|e| alloc::format!("accept: {e:?}"))
                .and_then(|mut s| {
                    s.set_timeout(Some(wire::left(deadline)));
                    read_frame(&mut s)
                });
            match frame {
                Ok(f)
                    if f.to == 0 && (1..=k).contains(&(f.from as u64)) && f.payload.len() == 16 =>
                {
                    let inside = u64::from_le_bytes(f.payload[..8].try_into().unwrap());
                    by_tcp[f.from as usize - 1] = Some(inside);
                }
                Ok(f) => println!("netpi: unexpected frame from {} to {}", f.from, f.to),
                Err(e) => {
                    println!("netpi: FAIL {e}");
                    let _ = clone::kill(&t);
                    let _ = clone::join(&t);
                    return 1;
                }
            }
        }
    }
    let results = match clone::join(&t) {
        Ok(r) => r,
        Err(e) => {
            println!("netpi: join failed ({e:?})");
            return 3;
        }
    };
    let mut inside = 0;
    for r in &results {
        if r.status != CloneStatus::Exited || r.code != 0 || r.result.len() != 8 {
            println!("netpi: clone {} failed: {:?} {}", r.id, r.status, r.detail);
            return 1;
        }
        let joined = u64::from_le_bytes(r.result[..8].try_into().unwrap());
        if tcp && by_tcp[r.id as usize - 1] != Some(joined) {
            println!(
                "netpi: FAIL clone {} sent {:?} over TCP but {joined} through join",
                r.id,
                by_tcp[r.id as usize - 1]
            );
            return 1;
        }
        inside += joined;
    }
    let ms = (time::now_ns() - t0) as f64 / 1e6;
    let pi = 4.0 * inside as f64 / samples as f64;
    println!("pi ~= {pi:.6} from {samples} samples ({inside} inside) in {ms:.1} ms");
    println!(
        "netpi: inside={inside} samples={samples} slices={k} via={}",
        if tcp { "tcp" } else { "join" }
    );
    0
}
