//! `allpairs`: every clone opens a TCP connection to every other clone and
//! sends it a checksummed frame; the receiver checks it and answers with
//! its checksum. Each clone then reports to the parent which frames it
//! received (their checksums folded into one digest); the parent
//! recomputes every expected frame and checks all `k * (k - 1)` of them.
//!
//! No clone ever waits for another clone's program inside the sending
//! phase (a frame fits in the socket buffers, so `write_all` returns once
//! it is queued), so the phases cannot deadlock: send to all, then
//! receive from all and acknowledge, then read all acknowledgements.

use crate::wire::{self, checksum_of, connect_retry, encode, fnv64, payload, read_frame};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use sf_guest::clone::{self, CloneStatus};
use sf_guest::net::{self, TcpListener, TcpStream};
use sf_guest::{println, time};

/// The digest clone `me` of `k` reports: its received frames' checksums,
/// in sender order, folded with FNV.
fn expected_digest(me: u32, k: u32, bytes: usize) -> u64 {
    let sums: Vec<u8> = (1..=k)
        .filter(|&j| j != me)
        .flat_map(|j| checksum_of(&encode(j, me, &payload(j, me, bytes))).to_le_bytes())
        .collect();
    fnv64(&sums)
}

fn clone_side(me: u32, k: u32, port: u16, bytes: usize, deadline: u64) -> Result<u64, String> {
    let listener = TcpListener::bind(port).map_err(|e| format!("listen: {e:?}"))?;
    let peers: Vec<u32> = (1..=k).filter(|&j| j != me).collect();
    // Phase 1: send to everyone.
    let mut out: Vec<(u32, TcpStream, u64)> = Vec::new();
    for &j in &peers {
        let addr = net::sibling_addr(j).ok_or("no address for a peer")?;
        let mut s = connect_retry(addr, port, deadline)
            .map_err(|e| format!("connect to {j} ({addr}): {e:?}"))?;
        s.set_timeout(Some(wire::left(deadline)));
        let f = encode(me, j, &payload(me, j, bytes));
        s.write_all(&f).map_err(|e| format!("send to {j}: {e:?}"))?;
        out.push((j, s, checksum_of(&f)));
    }
    // Phase 2: receive from everyone, check, acknowledge.
    let mut got: Vec<(u32, u64)> = Vec::new();
    let mut incoming = Vec::new();
    for _ in &peers {
        let mut l = listener.accept();
        if let Ok(s) = &mut l {
            s.set_timeout(Some(wire::left(deadline)));
        }
        let mut s = l.map_err(|e| format!("accept: {e:?}"))?;
        let f = read_frame(&mut s)?;
        if f.to != me || !peers.contains(&f.from) || got.iter().any(|g| g.0 == f.from) {
            return Err(format!("unexpected frame from {} to {}", f.from, f.to));
        }
        if f.payload != payload(f.from, me, bytes) {
            return Err(format!("the frame from {} has the wrong bytes", f.from));
        }
        s.write_all(&f.checksum.to_le_bytes())
            .map_err(|e| format!("ack to {}: {e:?}", f.from))?;
        got.push((f.from, f.checksum));
        incoming.push(s);
    }
    // Phase 3: every peer acknowledged exactly what was sent.
    for (j, s, sum) in &mut out {
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack)
            .map_err(|e| format!("ack from {j}: {e:?}"))?;
        if u64::from_le_bytes(ack) != *sum {
            return Err(format!("{j} acknowledged a different checksum"));
        }
    }
    for (_, s, _) in out {
        let _ = s.close();
    }
    for s in incoming {
        let _ = s.close();
    }
    got.sort();
    let sums: Vec<u8> = got.iter().flat_map(|g| g.1.to_le_bytes()).collect();
    println!(
        "allpairs: clone {me} verified {} in, {} out",
        got.len(),
        peers.len()
    );
    Ok(fnv64(&sums))
}

pub fn run(wanted: u64, port: u16, bytes: usize, timeout_ms: u64) -> i32 {
    let deadline = time::now_ns() + timeout_ms * 1_000_000;
    let report_port = port.wrapping_add(1).max(1);
    if !net::available() {
        println!("allpairs: FAIL no network interface");
        return 1;
    }
    let _ = net::with(|n| {
        n.backlog = wanted.clamp(1, 64) as usize;
        n.tcp_buffer = (bytes + 64).max(16 << 10);
        Ok(())
    });
    let reports = match TcpListener::bind(report_port) {
        Ok(l) => l,
        Err(e) => {
            println!("allpairs: FAIL cannot listen on {report_port}: {e:?}");
            return 1;
        }
    };
    let Ok(t) = clone::request_ticket(wanted) else {
        println!("allpairs: FAIL no clones available");
        return 1;
    };
    let k = t.granted();
    println!(
        "allpairs: {k} clones, {bytes} bytes per message, parent at {:?}",
        net::my_addr()
    );
    let id = match clone::clone(&t) {
        Ok(id) => id,
        Err(e) => {
            println!("allpairs: FAIL clone: {e:?}");
            return 1;
        }
    };
    if id != 0 {
        drop(reports);
        let _ = net::with(|n| {
            n.backlog = (k as usize).saturating_sub(1).clamp(1, 64);
            Ok(())
        });
        let r = clone_side(id, k, port, bytes, deadline).and_then(|digest| {
            let mut p = Vec::new();
            p.extend_from_slice(&digest.to_le_bytes());
            let parent = net::parent_addr().ok_or("no parent address")?;
            let mut s = connect_retry(parent, report_port, deadline)
                .map_err(|e| format!("report: {e:?}"))?;
            s.write_all(&encode(id, 0, &p))
                .map_err(|e| format!("report: {e:?}"))?;
            s.close().map_err(|e| format!("report: {e:?}"))
        });
        if let Err(e) = r {
            println!("allpairs: clone {id} FAIL {e}");
            clone::exit(1, e.as_bytes());
            return 1;
        }
        clone::exit(0, &[]);
        return 4;
    }
    let mut reports = reports;
    let mut ok = Vec::new();
    let mut failure = None;
    for _ in 0..k {
        reports.set_timeout(Some(wire::left(deadline)));
        let frame = reports
            .accept()
            .map_err(|e| format!("accept a report: {e:?}"))
            .and_then(|mut s| {
                s.set_timeout(Some(wire::left(deadline)));
                read_frame(&mut s)
            });
        match frame {
            Ok(f) if (1..=k).contains(&f.from) && f.payload.len() == 8 => {
                let digest = u64::from_le_bytes(f.payload[..8].try_into().unwrap());
                if digest == expected_digest(f.from, k, bytes) && !ok.contains(&f.from) {
                    ok.push(f.from);
                } else {
                    failure = Some(format!(
                        "clone {} reported frames that were not all right",
                        f.from
                    ));
                    break;
                }
            }
            Ok(f) => {
                failure = Some(format!("a bad report from {}", f.from));
                break;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_some() {
        let _ = clone::kill(&t);
    }
    match clone::join(&t) {
        Ok(results) => {
            for r in results
                .iter()
                .filter(|r| r.status != CloneStatus::Exited || r.code != 0)
            {
                println!(
                    "allpairs: clone {} ended {:?} {}: {}",
                    r.id,
                    r.status,
                    r.code,
                    String::from_utf8_lossy(&r.result)
                );
                failure.get_or_insert_with(|| format!("clone {} failed", r.id));
            }
        }
        Err(e) => {
            failure.get_or_insert_with(|| format!("join: {e:?}"));
        }
    }
    match failure {
        None => {
            println!("allpairs: ok pairs={} clones={k}", k * (k - 1));
            0
        }
        Some(e) => {
            println!("allpairs: FAIL {e} ({} of {k} clones verified)", ok.len());
            1
        }
    }
}
