//! `stream`: VM-to-VM round trip and throughput. The parent listens; its
//! one clone connects, times `rounds` 64-byte ping-pongs, then sends `mib`
//! MiB; the parent times the stream (first byte to last, on its clock),
//! checks its checksum, and prints both measurements and whether the NIC
//! offloads TCP. The clone writes
//! 256 KiB at a time, as a bulk sender would (the host reference writes
//! 1 MiB): each write costs one exit to flush it, and with 32 KiB writes
//! the stack sent 32 KiB segments (1.1-1.8 Gbit/s; 2.6-4.6 with 256 KiB,
//! on a machine at load 10-14).

use crate::wire::{self, connect_retry};
use alloc::vec;
use alloc::vec::Vec;
use sf_guest::clone::{self, CloneStatus};
use sf_guest::net::{self, TcpListener};
use sf_guest::{println, time};

/// Socket buffers of the stream's sockets, as a bulk sender on Linux gets
/// by autotuning: the stream is clocked by acknowledgements, and each one
/// costs both VMs an exit (~25-30 us under the nested hypervisor), so a
/// bigger window moves more per exit. A 256 MiB stream between two VMs
/// on one host (rounds=1, load average 6-10): the default 512 KiB took
/// 1,850 exits in the sender and 2,050 in the receiver at 4.5-6.6
/// Gbit/s; 1 MiB 1,060-1,080 and 1,140-1,240 at 4.5-8.5; 2 MiB 470-690 and
/// 570-850 at 5.0-10.1; 4 MiB 450-470 and 600-630 at 6.8-8.6.
const STREAM_BUFFER: usize = 2 << 20;
/// Bytes per write and per read (a whole number of them make a MiB).
const CHUNK: usize = 256 << 10;

/// Chunk `i` of the stream, written into `c`: a word at a time, so making
/// and checking the data costs the VMs little next to moving it (bytewise
/// FNV took ~40 us per chunk, a third of a 1 Gbit/s stream's time).
fn fill(c: &mut [u8], i: u64) {
    for (j, w) in c.chunks_exact_mut(8).enumerate() {
        let v = (j as u64) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// FNV-1a over 64-bit words: a checksum of the stream that catches
/// reordered, lost or corrupted words.
fn sum(c: &[u8]) -> u64 {
    c.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        (h ^ v).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn run(port: u16, mib: u64, rounds: u64, timeout_ms: u64) -> i32 {
    let deadline = time::now_ns() + timeout_ms * 1_000_000;
    // One clone connects: a backlog of one keeps the listener at 4 MiB.
    let _ = net::with(|n| {
        n.tcp_buffer = STREAM_BUFFER;
        n.backlog = 1;
        Ok(())
    });
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
                let mut total = 0u64;
                let mut c = vec![0u8; CHUNK];
                for i in 0..chunks {
                    fill(&mut c, i);
                    total = total.rotate_left(1) ^ sum(&c);
                    s.write_all(&c)?;
                }
                s.write_all(&total.to_le_bytes())?;
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
        let mut total = 0u64;
        let t0 = time::now_ns();
        for _ in 0..chunks {
            s.read_exact(&mut c)?;
            total = total.rotate_left(1) ^ sum(&c);
        }
        let secs = (time::now_ns() - t0) as f64 / 1e9;
        s.read_exact(&mut w)?;
        Ok::<_, net::Error>((rtt, secs, total == u64::from_le_bytes(w)))
    })();
    let joined = clone::join(&t).map(|r| {
        r.iter()
            .all(|c| c.status == CloneStatus::Exited && c.code == 0)
    });
    match (r, joined) {
        (Ok((rtt, secs, true)), Ok(true)) => {
            let mbit = (chunks * CHUNK as u64) as f64 * 8.0 / secs / 1e6;
            println!(
                "stream: rtt_median_us={:.1} mbit_s={mbit:.1} bytes={} offloads={}",
                rtt as f64 / 1e3,
                chunks * CHUNK as u64,
                if net::offloads() { "on" } else { "off" }
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
