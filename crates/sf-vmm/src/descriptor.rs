//! The VM descriptor: everything about a running VM except its RAM, as a
//! versioned, checksummed, serializable record. A clone starts from one;
//! it is what a remote host would receive, so it must stay small
//! (kilobytes) and be rejected cleanly when corrupt or from another version.
//!
//! Wire format: magic `SFVMDESC` (8 bytes), format version (u32 LE),
//! payload length (u32 LE), CRC-32 of the payload (u32 LE), payload
//! (bincode of [`VmDescriptor`]).

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"SFVMDESC";
/// Bumped on any change to the payload's layout.
pub const FORMAT_VERSION: u32 = 1;
/// Refuse payloads larger than this before decoding them.
pub const MAX_PAYLOAD: u32 = 1 << 20;
const HEADER: usize = 8 + 4 + 4 + 4;

/// One vCPU's architectural state.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_bindings::kvm_regs,
    pub sregs: kvm_bindings::kvm_sregs,
    pub xsave: kvm_bindings::kvm_xsave,
    pub xcrs: kvm_bindings::kvm_xcrs,
    pub debugregs: kvm_bindings::kvm_debugregs,
    pub events: kvm_bindings::kvm_vcpu_events,
    /// (index, value) of the MSRs KVM would report.
    pub msrs: Vec<(u32, u64)>,
}

/// Where a new VM finds the RAM the descriptor's state runs on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemorySource {
    /// The clone was forked and shares the parent's RAM copy-on-write.
    Inherited,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VmDescriptor {
    pub mem_size: u64,
    pub vcpu: VcpuState,
    pub memory: MemorySource,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("VM descriptor is {0} bytes, shorter than its {HEADER}-byte header")]
    Short(usize),
    #[error("not a VM descriptor (bad magic)")]
    BadMagic,
    #[error("VM descriptor has format version {found}; this VMM reads version {expected}")]
    Version { found: u32, expected: u32 },
    #[error("VM descriptor payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u32),
    #[error("VM descriptor is truncated: header promises {promised} payload bytes, {got} present")]
    Truncated { promised: u32, got: usize },
    #[error("VM descriptor is corrupt: checksum {found:#010x}, expected {expected:#010x}")]
    Checksum { found: u32, expected: u32 },
    #[error("VM descriptor payload does not decode: {0}")]
    Decode(String),
}

impl VmDescriptor {
    pub fn encode(&self) -> Vec<u8> {
        let payload = bincode::serialize(self).expect("descriptor types always serialize");
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<VmDescriptor, DescriptorError> {
        if bytes.len() < HEADER {
            return Err(DescriptorError::Short(bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err(DescriptorError::BadMagic);
        }
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let (version, len, crc) = (word(8), word(12), word(16));
        if version != FORMAT_VERSION {
            return Err(DescriptorError::Version {
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        if len > MAX_PAYLOAD {
            return Err(DescriptorError::TooLarge(len));
        }
        let payload = &bytes[HEADER..];
        if payload.len() != len as usize {
            return Err(DescriptorError::Truncated {
                promised: len,
                got: payload.len(),
            });
        }
        let actual = crc32fast::hash(payload);
        if actual != crc {
            return Err(DescriptorError::Checksum {
                found: actual,
                expected: crc,
            });
        }
        use bincode::Options;
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(MAX_PAYLOAD as u64)
            .deserialize(payload)
            .map_err(|e| DescriptorError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmDescriptor {
        let regs = kvm_bindings::kvm_regs {
            rip: 0x10_1234,
            ..Default::default()
        };
        VmDescriptor {
            mem_size: 64 << 20,
            vcpu: VcpuState {
                regs,
                sregs: Default::default(),
                xsave: Default::default(),
                xcrs: Default::default(),
                debugregs: Default::default(),
                events: Default::default(),
                msrs: vec![(0x10, 12345)],
            },
            memory: MemorySource::Inherited,
        }
    }

    #[test]
    fn round_trips_and_stays_in_kilobytes() {
        let bytes = sample().encode();
        assert!(bytes.len() < 8 << 10, "descriptor is {} bytes", bytes.len());
        let d = VmDescriptor::decode(&bytes).unwrap();
        assert_eq!(
            (d.vcpu.regs.rip, d.mem_size, d.vcpu.msrs.clone()),
            (0x10_1234, 64 << 20, vec![(0x10, 12345)])
        );
    }

    #[test]
    fn corruption_is_named() {
        let good = sample().encode();
        assert_eq!(
            VmDescriptor::decode(&good[..10]).unwrap_err(),
            DescriptorError::Short(10)
        );
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(
            VmDescriptor::decode(&b).unwrap_err(),
            DescriptorError::BadMagic
        );
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(
            VmDescriptor::decode(&b).unwrap_err(),
            DescriptorError::Version {
                found: 9,
                expected: 1
            }
        );
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            VmDescriptor::decode(&b),
            Err(DescriptorError::Checksum { .. })
        ));
        assert!(matches!(
            VmDescriptor::decode(&good[..good.len() - 1]),
            Err(DescriptorError::Truncated { .. })
        ));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            VmDescriptor::decode(&b).unwrap_err(),
            DescriptorError::TooLarge(u32::MAX)
        );
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a peer sends, decoding answers with a descriptor or an
        /// error, never a panic or a huge allocation.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = VmDescriptor::decode(&bytes);
        }

        /// A valid header in front of garbage is caught by the checksum or
        /// the decoder.
        #[test]
        fn garbage_behind_a_valid_header_is_refused(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            b.extend_from_slice(&payload);
            prop_assert!(VmDescriptor::decode(&b).is_err());
        }
    }
}
