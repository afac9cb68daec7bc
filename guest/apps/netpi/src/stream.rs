//! `stream`: VM-to-VM round trip and throughput. The parent listens; its
//! one clone connects, times `rounds` 64-byte ping-pongs, then sends `mib`
//! MiB; the parent times the stream (first byte to last, on its clock),
//! checks its checksum, and prints both measurements.

use crate::wire::{self, connect_retry, fnv64};
use alloc::vec;
use alloc::vec::Vec;
use sf_guest::clone::{self, CloneStatus};
use sf_guest::net::{self, TcpListener};
use sf_guest::{println, time};

const CHUNK: usize = 32 << 10;

fn chunk(i: u64) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| (j as u64 ^ i.wrapping_mul(0x9e37)) as u8)
        .collect()
}

pub fn run(port: u16, mib: u64, rounds: u64, timeout_ms: u64) -> i32 {
    let deadline = time::now_ns() + timeout_ms * 1_000_000;
    let mut l = match TcpListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            println!(
                "stream: FAIL {}",
                net::why_down().unwrap_or("listen failed")
            );
            let _ = e;
            return 1;
        }
    };
    let Ok(t) = clone::request_ticket(1) else {
        println!("stream: FAIL no clone available");
        return 1;
    };
    let chunks = mib * (1 << 20) / CHUNK as u64;
    match clone::clone(&t) {
        Ok(0) => {}
        Ok(_) => {
            drop(l);
            let r = (|| {
                let parent = net::parent_addr().ok_or(net::Error::InvalidArgument)?;
                let mut s = connect_retry(parent, port, deadline)?;
                s.set_timeout(Some(wire::left(deadline)));
                let mut b = [0u8; 64];
                let mut rtts = Vec::new();
                for i in 0..rounds {
                    b[0] = i as u8;
                    let t0 = time::now_ns();
                    s.write_all(&b)?;
                    s.read_exact(&mut b)?;
                    rtts.push(time::now_ns() - t0);
                }
                rtts.sort_unstable();
                let rtt = rtts.get(rtts.len() / 2).copied().unwrap_or(0);
                s.write_all(&rtt.to_le_bytes())?;
                let mut sum = 0u64;
                for i in 0..chunks {
                    let c = chunk(i);
                    sum ^= fnv64(&c);
                    s.write_all(&c)?;
                }
                s.write_all(&sum.to_le_bytes())?;
                s.close()
            })();
            clone::exit(r.is_err() as i32, &[]);
            return 1;
        }
        Err(e) => {
            println!("stream: FAIL clone: {e:?}");
            return 1;
        }
    }
    l.set_timeout(Some(wire::left(deadline)));
    let r = (|| {
        let mut s = l.accept()?;
        s.set_timeout(Some(wire::left(deadline)));
        let mut b = [0u8; 64];
        for _ in 0..rounds {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        let mut w = [0u8; 8];
        s.read_exact(&mut w)?;
        let rtt = u64::from_le_bytes(w);
        let mut c = vec![0u8; CHUNK];
        let mut sum = 0u64;
        let t0 = time::now_ns();
        for _ in 0..chunks {
            s.read_exact(&mut c)?;
            sum ^= fnv64(&c);
        }
        let secs = (time::now_ns() - t0) as f64 / 1e9;
        s.read_exact(&mut w)?;
        Ok::<_, net::Error>((rtt, secs, sum == u64::from_le_bytes(w)))
    })();
    let joined = clone::join(&t).map(|r| {
        r.iter()
            .all(|c| c.status == CloneStatus::Exited && c.code == 0)
    });
    match (r, joined) {
        (Ok((rtt, secs, true)), Ok(true)) => {
            let mbit = (chunks * CHUNK as u64) as f64 * 8.0 / secs / 1e6;
            println!(
                "stream: rtt_median_us={:.1} mbit_s={mbit:.1} bytes={}",
                rtt as f64 / 1e3,
                chunks * CHUNK as u64
            );
            0
        }
        (Ok((_, _, false)), _) => {
            println!("stream: FAIL checksum mismatch");
            1
        }
        (r, j) => {
            println!("stream: FAIL {:?} {:?}", r.err(), j);
            1
        }
    }
}
