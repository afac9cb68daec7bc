//! The `virtio_net_hdr` side of TCP offloads, for a NIC driver: marking
//! a frame the stack built for checksum and segmentation offload by the
//! host, and settling a received frame's checksums. Plain functions on
//! byte slices, so they are tested on the host.
//!
//! Every `hdr` here is the 12-byte header of virtio 1.x (`flags`,
//! `gso_type`, `hdr_len`, `gso_size`, `csum_start`, `csum_offset`,
//! `num_buffers`; little-endian) and every `frame` an Ethernet frame.

use crate::MTU;

/// `virtio_net_hdr` with `VERSION_1` (`num_buffers` included).
pub const HDR: usize = 12;
/// `flags`: the checksum from `csum_start` on is partial.
pub const NEEDS_CSUM: u8 = 1;
/// `flags`: the host already checked the checksum.
pub const DATA_VALID: u8 = 2;
/// `gso_type`: a TCPv4 segment to cut at `gso_size`.
pub const GSO_TCPV4: u8 = 1;

/// Where a TCPv4 frame's headers are: (IP header length, TCP header
/// length, IP total length); `None` for anything else.
pub fn tcp4_layout(frame: &[u8]) -> Option<(usize, usize, usize)> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let thl = usize::from(*frame.get(14 + ihl + 12)? >> 4) * 4;
    if ihl < 20 || thl < 20 || total < ihl + thl || 14 + total > frame.len() {
        return None;
    }
    Some((ihl, thl, total))
}

/// Marks a TCPv4 frame the stack left unchecksummed for the host: the
/// pseudo-header sum in the checksum field, `NEEDS_CSUM`, and, beyond the
/// MTU, TSO with the MSS that fits the family MTU with these headers.
pub fn mark_tx(hdr: &mut [u8; HDR], frame: &mut [u8]) {
    let Some((ihl, thl, total)) = tcp4_layout(frame) else {
        return;
    };
    let tcp = 14 + ihl;
    let mut sum = sum16(&frame[14 + 12..14 + 20], 0);
    sum += 6 + (total - ihl) as u32;
    let pseudo = fold(sum);
    frame[tcp + 16..tcp + 18].copy_from_slice(&pseudo.to_be_bytes());
    hdr[0] = NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&(tcp as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    if total > MTU {
        hdr[1] = GSO_TCPV4;
        hdr[2..4].copy_from_slice(&((tcp + thl) as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&((MTU - ihl - thl) as u16).to_le_bytes());
    }
}

/// Whether a received frame may go to the stack, its checksums settled.
/// With offloads the stack checks no TCP checksum, so it is done here,
/// as Linux does: a partial one (`NEEDS_CSUM`: the frame never left this
/// host, its sender's kernel or VM handed it over in memory) or one the
/// host checked (`DATA_VALID`) passes as it is, any other TCPv4 frame is
/// summed. A partial checksum on anything else is completed for the stack.
/// Without offloads the stack checks everything.
pub fn rx_checksum_ok(hdr: &[u8; HDR], frame: &mut [u8], offloads: bool) -> bool {
    let tcp = if offloads { tcp4_layout(frame) } else { None };
    if hdr[0] & NEEDS_CSUM != 0 {
        return tcp.is_some() || complete_checksum(hdr, frame);
    }
    match tcp {
        Some((ihl, _, total)) if hdr[0] & DATA_VALID == 0 => {
            let pseudo = sum16(&frame[14 + 12..14 + 20], 6 + (total - ihl) as u32);
            fold(sum16(&frame[14 + ihl..14 + total], pseudo)) == 0xffff
        }
        _ => true,
    }
}

/// Completes a partial checksum: the field holds the pseudo-header sum,
/// the rest is summed from `csum_start`; false when the marks point
/// outside the frame.
fn complete_checksum(hdr: &[u8; HDR], frame: &mut [u8]) -> bool {
    let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let at = start + usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    if at + 2 > frame.len() {
        return false;
    }
    let c = !fold(sum16(&frame[start..], 0));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// The ones'-complement sum of `data` as big-endian 16-bit words (an odd
/// last byte padded with zero), added to `sum`, unfolded. Eight bytes at a
/// time: a 64 KiB segment takes ~10 us at ring 3.
pub fn sum16(data: &[u8], sum: u32) -> u32 {
    let mut acc = u64::from(sum);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a 32-bit ones'-complement sum to 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A TCPv4 frame with `payload` bytes and 12 bytes of options, its
    /// checksum field zero (as the stack leaves it with offloads).
    fn tcp_frame(payload: usize) -> Vec<u8> {
        let (ihl, thl) = (20, 32);
        let total = ihl + thl + payload;
        let mut f = vec![0u8; 14 + total];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[14 + 9] = 6;
        f[26..30].copy_from_slice(&[10, 9, 0, 2]);
        f[30..34].copy_from_slice(&[10, 9, 0, 1]);
        f[34 + 12] = ((thl / 4) as u8) << 4;
        for (i, b) in f[34 + thl..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(13) ^ 0x5a;
        }
        f
    }

    /// The TCP checksum the slow way, from RFC 793's definition.
    fn reference_checksum(f: &[u8]) -> u16 {
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let seg = &f[34..14 + total];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&f[26..34]);
        bytes.extend_from_slice(&[0, 6]);
        bytes.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        bytes.extend_from_slice(seg);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = 0;
        for w in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn field(h: &[u8; HDR], at: usize) -> u16 {
        u16::from_le_bytes([h[at], h[at + 1]])
    }

    #[test]
    fn a_segment_past_the_mtu_is_marked_for_tso_with_the_family_mss() {
        let mut f = tcp_frame(60_001);
        let mut h = [0u8; HDR];
        mark_tx(&mut h, &mut f);
        assert_eq!(h[0], NEEDS_CSUM);
        assert_eq!(h[1], GSO_TCPV4);
        assert_eq!(field(&h, 2), 14 + 20 + 32, "hdr_len");
        assert_eq!(usize::from(field(&h, 4)), MTU - 20 - 32, "gso_size");
        assert_eq!((field(&h, 6), field(&h, 8)), (34, 16));
        // The host completes it as a partial checksum: the result is the
        // segment's real checksum.
        let mut done = f.clone();
        assert!(complete_checksum(&h, &mut done));
        let got = u16::from_be_bytes([done[34 + 16], done[34 + 17]]);
        done[34 + 16..34 + 18].fill(0);
        assert_eq!(got, reference_checksum(&done));
    }

    #[test]
    fn small_tcp_frames_get_a_partial_checksum_only_and_others_nothing() {
        let mut f = tcp_frame(MTU - 52);
        let mut h = [0u8; HDR];
        mark_tx(&mut h, &mut f);
        assert_eq!((h[0], h[1], field(&h, 4)), (NEEDS_CSUM, 0, 0));
        let mut udp = tcp_frame(100);
        udp[14 + 9] = 17;
        let before = udp.clone();
        let mut h = [0u8; HDR];
        mark_tx(&mut h, &mut udp);
        assert_eq!((h, udp), ([0u8; HDR], before));
        let mut short = vec![0u8; 20];
        mark_tx(&mut h, &mut short);
        assert_eq!(h, [0u8; HDR]);
    }

    #[test]
    fn received_checksums_are_settled_as_linux_does() {
        let mut good = tcp_frame(3001);
        let c = reference_checksum(&good);
        good[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
        let plain = [0u8; HDR];
        assert!(rx_checksum_ok(&plain, &mut good.clone(), true));
        let mut bad = good.clone();
        bad[100] ^= 1;
        assert!(!rx_checksum_ok(&plain, &mut bad.clone(), true));
        // Checked by the host: passes; without offloads the stack checks.
        let mut valid = plain;
        valid[0] = DATA_VALID;
        assert!(rx_checksum_ok(&valid, &mut bad.clone(), true));
        assert!(rx_checksum_ok(&plain, &mut bad, false));
        // A partial TCP checksum passes as it is with offloads, and is
        // completed without.
        let mut partial = tcp_frame(3001);
        let mut h = [0u8; HDR];
        mark_tx(&mut h, &mut partial);
        let untouched = partial.clone();
        assert!(rx_checksum_ok(&h, &mut partial, true));
        assert_eq!(partial, untouched);
        assert!(rx_checksum_ok(&h, &mut partial, false));
        assert_eq!(partial, good);
    }

    #[test]
    fn hostile_headers_and_frames_are_refused_not_trusted() {
        let mut h = [0u8; HDR];
        h[0] = NEEDS_CSUM;
        for (start, offset, len) in [(60, 0, 50), (0, 49, 50), (u16::MAX, u16::MAX, 9), (0, 0, 0)] {
            h[6..8].copy_from_slice(&start.to_le_bytes());
            h[8..10].copy_from_slice(&offset.to_le_bytes());
            assert!(!rx_checksum_ok(&h, &mut vec![1u8; len], false));
        }
        // A TCP header claiming more than the frame holds is not TCP.
        let mut f = tcp_frame(10);
        f[16..18].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(tcp4_layout(&f), None);
        let mut f = tcp_frame(10);
        f[14] = 0x4f;
        assert_eq!(tcp4_layout(&f), None);
    }

    #[test]
    fn the_fast_sum_equals_the_slow_one_on_any_length() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 1000, 1001] {
            let mut slow: u32 = 0;
            for w in data[..len].chunks(2) {
                slow += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            assert_eq!(fold(sum16(&data[..len], 0)), fold(slow), "length {len}");
        }
    }
}
