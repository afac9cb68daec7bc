//! The VM descriptor: everything about a running VM except its RAM, as a
//! versioned, checksummed, serializable record. A clone starts from one;
//! it is what a remote host would receive, so it must stay small
//! (kilobytes) and be rejected cleanly when corrupt or from another version.
//!
//! Version 2 carries every vCPU (at most [`MAX_VCPUS`]), every device's
//! saved state (at most [`crate::devices::MAX_DEVICES`], each at most
//! [`crate::devices::MAX_DEVICE_STATE`] bytes) and the free-page hint
//! settings a clone's own clones need ([`HintSettings`]).
//!
//! Wire format: magic `SFVMDESC` (8 bytes), format version (u32 LE),
//! payload length (u32 LE), CRC-32 of the payload (u32 LE), payload
//! (bincode of [`VmDescriptor`]).

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"SFVMDESC";
/// Bumped on any change to the payload's layout.
pub const FORMAT_VERSION: u32 = 2;
/// Most vCPUs a descriptor may carry.
pub const MAX_VCPUS: usize = 64;
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

/// The free-page hint settings of the VM, so that a clone's own clones
/// honour the guest's hints (or ignore them) as the root did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintSettings {
    /// First guest page a hint may cover (the end of the image: ring 0's
    /// structures and code lie below). `None`: the clone's clones get no
    /// hints.
    pub floor: Option<u64>,
    /// Where the guest registered its hint bitmap (its guest-physical
    /// address; read and checked again at each clone call).
    pub bitmap_gpa: Option<u64>,
    /// `--no-hints`: the whole family ignores hints.
    pub no_hints: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VmDescriptor {
    pub mem_size: u64,
    /// One state per vCPU, vCPU 0 first (1..=[`MAX_VCPUS`]).
    pub vcpus: Vec<VcpuState>,
    /// The devices a clone must rebuild (the built-in ports are not here).
    pub devices: Vec<crate::devices::DeviceState>,
    pub hints: HintSettings,
    pub memory: MemorySource,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    #[error("VM descriptor is {0} bytes, shorter than its {HEADER}-byte header")]
    Short(usize),
    #[error("not a VM descriptor (bad magic)")]
    BadMagic,
    #[error("VM descriptor has format version {found}; this VMM reads version {expected} only: run the same snowflock version on every host of the cluster (upgrade the older one)")]
    Version { found: u32, expected: u32 },
    #[error("VM descriptor is invalid: {0}")]
    Invalid(String),
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
            .deserialize::<VmDescriptor>(payload)
            .map_err(|e| DescriptorError::Decode(e.to_string()))
            .and_then(|d| d.check().map(|()| d))
    }

    /// The limits a peer's descriptor must respect.
    fn check(&self) -> Result<(), DescriptorError> {
        let bad = |why: String| Err(DescriptorError::Invalid(why));
        if self.vcpus.is_empty() || self.vcpus.len() > MAX_VCPUS {
            return bad(format!(
                "{} vCPUs (1..={MAX_VCPUS} allowed)",
                self.vcpus.len()
            ));
        }
        if self.devices.len() > crate::devices::MAX_DEVICES {
            return bad(format!(
                "{} devices (at most {} allowed)",
                self.devices.len(),
                crate::devices::MAX_DEVICES
            ));
        }
        for d in &self.devices {
            d.check().or_else(bad)?;
        }
        let pages = self.mem_size / sf_abi::layout::PAGE;
        if self.hints.floor.is_some_and(|f| f > pages) {
            return bad(format!(
                "hint floor at page {:?} is past the end of guest RAM",
                self.hints.floor
            ));
        }
        Ok(())
    }

    /// vCPU 0's state (a checked descriptor has at least one vCPU).
    pub fn boot_vcpu(&self) -> &VcpuState {
        &self.vcpus[0]
    }

    /// vCPU 0's state, to change (a clone puts its ID in `rax`).
    pub fn boot_vcpu_mut(&mut self) -> &mut VcpuState {
        &mut self.vcpus[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{BusKind, BusRange, DeviceState};

    fn vcpu(rip: u64) -> VcpuState {
        VcpuState {
            regs: kvm_bindings::kvm_regs {
                rip,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            events: Default::default(),
            msrs: vec![(0x10, 12345)],
        }
    }

    pub(super) fn sample() -> VmDescriptor {
        VmDescriptor {
            mem_size: 64 << 20,
            vcpus: vec![vcpu(0x10_1234)],
            devices: vec![DeviceState {
                id: "net0".into(),
                kind: "virtio-net".into(),
                bus: BusKind::Mmio,
                range: BusRange {
                    base: 0xf000_0000,
                    len: 0x1000,
                },
                state: vec![1, 2, 3],
            }],
            hints: HintSettings {
                floor: Some(0x200),
                bitmap_gpa: Some(0x40_0000),
                no_hints: true,
            },
            memory: MemorySource::Inherited,
        }
    }

    /// Encodes without the checks `decode` applies (as a hostile peer could).
    pub(super) fn encode_raw(payload: &[u8], version: u32) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn round_trips_and_stays_in_kilobytes() {
        let bytes = sample().encode();
        // A real 1-vCPU descriptor is ~5.4 KB (the xsave area is 4 KiB);
        // `snowflock bench remote` prints it.
        assert!(bytes.len() < 8 << 10, "descriptor is {} bytes", bytes.len());
        let d = VmDescriptor::decode(&bytes).unwrap();
        assert_eq!(
            (
                d.boot_vcpu().regs.rip,
                d.mem_size,
                d.boot_vcpu().msrs.clone()
            ),
            (0x10_1234, 64 << 20, vec![(0x10, 12345)])
        );
        assert_eq!(d.devices, sample().devices);
        assert_eq!(d.hints, sample().hints);
    }

    #[test]
    fn other_versions_are_refused_naming_both_and_the_fix() {
        let good = sample().encode();
        for other in [1, 3, u32::MAX] {
            let mut b = good.clone();
            b[8..12].copy_from_slice(&other.to_le_bytes());
            let e = VmDescriptor::decode(&b).unwrap_err();
            assert_eq!(
                e,
                DescriptorError::Version {
                    found: other,
                    expected: 2
                }
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!("version {other}"))
                    && text.contains("version 2")
                    && text.contains("same snowflock version"),
                "{text}"
            );
        }
    }

    #[test]
    fn vcpu_and_device_counts_and_sizes_are_bounded() {
        let too_many = |d: VmDescriptor| {
            let b = encode_raw(&bincode::serialize(&d).unwrap(), FORMAT_VERSION);
            matches!(VmDescriptor::decode(&b), Err(DescriptorError::Invalid(_)))
        };
        let mut d = sample();
        d.vcpus = (0..65).map(vcpu).collect();
        assert!(too_many(d), "65 vCPUs");
        let mut d = sample();
        d.vcpus.clear();
        assert!(too_many(d), "no vCPU");
        let mut d = sample();
        d.devices = vec![d.devices[0].clone(); crate::devices::MAX_DEVICES + 1];
        assert!(too_many(d), "too many devices");
        let mut d = sample();
        d.devices[0].state = vec![0; crate::devices::MAX_DEVICE_STATE + 1];
        assert!(too_many(d), "oversized device state");
        let mut d = sample();
        d.devices[0].range.len = 0;
        assert!(too_many(d), "empty device range");
        let mut d = sample();
        d.hints.floor = Some(u64::MAX);
        assert!(too_many(d), "hint floor past RAM");
        let mut d = sample();
        d.vcpus = (0..64).map(vcpu).collect();
        let b = encode_raw(&bincode::serialize(&d).unwrap(), FORMAT_VERSION);
        assert_eq!(VmDescriptor::decode(&b).unwrap().vcpus.len(), 64);
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
    use super::tests::{encode_raw, sample};
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
            prop_assert!(VmDescriptor::decode(&encode_raw(&payload, FORMAT_VERSION)).is_err());
        }

        /// The version-2 fields under attack: a valid descriptor with any
        /// byte of its payload changed, or with hostile counts written
        /// where the vCPU and device lists begin, decodes to something
        /// within the limits or is refused; never a panic or huge
        /// allocation.
        #[test]
        fn hostile_v2_fields_stay_within_limits(
            at in 0usize..6000,
            byte in any::<u8>(),
            count in any::<u64>(),
        ) {
            let mut payload = bincode::serialize(&sample()).unwrap();
            let i = at % payload.len();
            payload[i] = byte;
            // vcpus' length follows mem_size (bytes 8..16).
            let mut counts = bincode::serialize(&sample()).unwrap();
            counts[8..16].copy_from_slice(&count.to_le_bytes());
            for p in [payload, counts] {
                if let Ok(d) = VmDescriptor::decode(&encode_raw(&p, FORMAT_VERSION)) {
                    prop_assert!((1..=MAX_VCPUS).contains(&d.vcpus.len()));
                    prop_assert!(d.devices.len() <= crate::devices::MAX_DEVICES);
                    prop_assert!(d.devices.iter().all(|s| s.state.len() <= crate::devices::MAX_DEVICE_STATE));
                }
            }
        }
    }
}
