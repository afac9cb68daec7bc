//! The boot information block the VMM (or the guest's own PVH set-up) writes
//! at [`crate::layout::BOOT_INFO`] for the application runtime.

/// `BootInfo::magic`: "SFBOOT01" as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SFBOOT01");

/// `BootInfo::flags`: hypercalls are available (a SnowFlock VMM runs us).
pub const FLAG_HYPERCALLS: u64 = 1 << 0;
/// `BootInfo::flags`: `tsc_khz` was measured by the host, not guessed.
pub const FLAG_TSC_CALIBRATED: u64 = 1 << 1;
/// `BootInfo::flags`: booted through the PVH entry rather than entered
/// directly in ring 3 by the VMM.
pub const FLAG_PVH_BOOT: u64 = 1 << 2;

/// Plain data, all `u64`, so its `repr(C)` layout has no padding and both
/// sides can read it as little-endian words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BootInfo {
    pub magic: u64,
    pub abi_version: u64,
    pub flags: u64,
    /// Bytes of guest RAM, starting at physical 0.
    pub mem_size: u64,
    /// TSC frequency, for the guest's monotonic clock.
    pub tsc_khz: u64,
    /// Guest physical address and length (without NUL) of the arguments.
    pub cmdline_addr: u64,
    pub cmdline_len: u64,
    pub heap_start: u64,
    pub heap_end: u64,
    pub stack_top: u64,
    /// Written by the guest: the TSC at its first ring-3 instruction.
    pub first_tsc: u64,
    /// Fresh host entropy for the guest's random-number source.
    pub seed: [u64; 4],
    /// Guest physical address and byte length of the input table (the
    /// files given with `--input`); 0 and 0 when there are none.
    pub inputs_table: u64,
    pub inputs_table_len: u64,
    /// Guest physical base of the virtio-mmio window
    /// ([`crate::layout::MMIO_BASE`]); 0 when the VM has no devices there.
    pub mmio_base: u64,
    /// This VM's IPv4 address (host byte order in the low 32 bits); 0 when
    /// it has no network interface. Rewritten for every clone.
    pub net_ip: u64,
    pub net_prefix_len: u64,
    /// The family's network number ([`crate::net::FamilyNet`]), from which
    /// the guest computes any clone's address.
    pub family_net: u64,
}

impl BootInfo {
    pub const WORDS: usize = 21;
    pub const SIZE: usize = Self::WORDS * 8;
    /// Byte offset of `first_tsc`, which the guest's entry stub writes.
    pub const FIRST_TSC_OFFSET: usize = 10 * 8;
    /// Byte offset of `inputs_table` (`inputs_table_len` follows), which
    /// the VMM reads to find an input range the guest names.
    pub const INPUTS_TABLE_OFFSET: usize = 15 * 8;
    /// Byte offset of `seed`, which the VMM rewrites after each clone.
    pub const SEED_OFFSET: usize = 11 * 8;
    /// Byte offset of `net_ip`, which the VMM rewrites for each clone with
    /// a network interface.
    pub const NET_IP_OFFSET: usize = 18 * 8;

    /// The block as little-endian words, in memory order.
    pub fn words(&self) -> [u64; Self::WORDS] {
        let s = self.seed;
        [
            self.magic,
            self.abi_version,
            self.flags,
            self.mem_size,
            self.tsc_khz,
            self.cmdline_addr,
            self.cmdline_len,
            self.heap_start,
            self.heap_end,
            self.stack_top,
            self.first_tsc,
            s[0],
            s[1],
            s[2],
            s[3],
            self.inputs_table,
            self.inputs_table_len,
            self.mmio_base,
            self.net_ip,
            self.net_prefix_len,
            self.family_net,
        ]
    }

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        for (i, w) in self.words().iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> BootInfo {
        let w = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(x)
        };
        BootInfo {
            magic: w(0),
            abi_version: w(1),
            flags: w(2),
            mem_size: w(3),
            tsc_khz: w(4),
            cmdline_addr: w(5),
            cmdline_len: w(6),
            heap_start: w(7),
            heap_end: w(8),
            stack_top: w(9),
            first_tsc: w(10),
            seed: [w(11), w(12), w(13), w(14)],
            inputs_table: w(15),
            inputs_table_len: w(16),
            mmio_base: w(17),
            net_ip: w(18),
            net_prefix_len: w(19),
            family_net: w(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_match_repr_c() {
        let b = BootInfo {
            magic: MAGIC,
            first_tsc: 0x1122,
            seed: [1, 2, 3, 4],
            ..Default::default()
        };
        let bytes = b.to_bytes();
        assert_eq!(BootInfo::from_bytes(&bytes), b);
        assert_eq!(core::mem::size_of::<BootInfo>(), BootInfo::SIZE);
        let off = BootInfo::FIRST_TSC_OFFSET;
        assert_eq!(&bytes[off..off + 2], &[0x22, 0x11]);
        let net = BootInfo {
            net_ip: 0x0a01_0001,
            ..Default::default()
        }
        .to_bytes();
        let off = BootInfo::NET_IP_OFFSET;
        assert_eq!(&net[off..off + 4], &[1, 0, 1, 10]);
    }
}
