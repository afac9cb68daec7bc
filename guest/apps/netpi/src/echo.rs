//! `echo`: a server for tests from the host. Echoes `conns` TCP
//! connections (one after another, each until the peer closes), then
//! `dgrams` UDP datagrams, all on `port`; the ICMP echo (ping) is
//! answered by the stack meanwhile.

use crate::wire;
use alloc::vec;
use sf_guest::net::{self, TcpListener, UdpSocket};
use sf_guest::{println, time};

pub fn run(port: u16, conns: u64, dgrams: u64, timeout_ms: u64) -> i32 {
    let deadline = time::now_ns() + timeout_ms * 1_000_000;
    let (Ok(mut l), Ok(mut u)) = (TcpListener::bind(port), UdpSocket::bind(port)) else {
        let why = net::why_down().unwrap_or("the port is taken");
        println!("echo: FAIL {why}");
        return 1;
    };
    println!("echo: listening on {:?}:{port}", net::my_addr());
    let mut buf = vec![0u8; 64 << 10];
    for c in 0..conns {
        l.set_timeout(Some(wire::left(deadline)));
        let mut s = match l.accept() {
            Ok(s) => s,
            Err(e) => {
                println!("echo: FAIL accept: {e:?}");
                return 1;
            }
        };
        s.set_timeout(Some(wire::left(deadline)));
        let mut total = 0u64;
        loop {
            match s.recv(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = s.write_all(&buf[..n]) {
                        println!("echo: FAIL send: {e:?}");
                        return 1;
                    }
                    total += n as u64;
                }
                Err(e) => {
                    println!("echo: FAIL recv: {e:?}");
                    return 1;
                }
            }
        }
        let _ = s.close();
        println!("echo: connection {c} echoed {total} bytes");
    }
    for _ in 0..dgrams {
        u.set_timeout(Some(wire::left(deadline)));
        match u.recv_from(&mut buf[..2048]) {
            Ok((n, a, p)) => {
                if let Err(e) = u.send_to(&buf[..n], a, p) {
                    println!("echo: FAIL send_to: {e:?}");
                    return 1;
                }
            }
            Err(e) => {
                println!("echo: FAIL recv_from: {e:?}");
                return 1;
            }
        }
    }
    println!("echo: done");
    0
}
