//! Request and response bodies.

use serde::{Deserialize, Serialize};

/// Where a VM's clones may go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Spread evenly over this host and its peers.
    #[default]
    Spread,
    /// Keep every clone on this host.
    Local,
    /// Spread evenly over the peers only (benchmarks of remote cloning).
    Remote,
}

/// `POST /v1/vms`: boot a VM.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateVm {
    /// A shipped guest's name or a path on the daemon's host.
    pub guest: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Guest RAM, e.g. "256M" (default 256M).
    #[serde(default)]
    pub mem: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_clones: Option<u32>,
    #[serde(default)]
    pub placement: Placement,
    /// Readahead limit for its remote clones (pages; 1 = none).
    #[serde(default)]
    pub prefetch_window: Option<u32>,
    /// Ignore the guest's free-page hints: clones fetch every page they
    /// touch (`snowflock run --no-hints`), to measure what hints save.
    #[serde(default)]
    pub no_hints: bool,
    /// Input name -> file name inside the daemon's `--image-dir` (as for
    /// `guest`), loaded read-only into guest RAM (`snowflock run --input`).
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, String>,
    /// Keep the guest's output files, under the daemon's `--output-dir`
    /// in the directory named by the VM's ID.
    #[serde(default)]
    pub output: bool,
    /// Most bytes of output per VM of the family, e.g. "1G" (default 1G).
    #[serde(default)]
    pub output_cap: Option<String>,
    /// No page pushes to its remote clones' multicast group (`snowflock
    /// run --no-multicast`).
    #[serde(default)]
    pub no_multicast: bool,
    /// Multicast without lockstep detection (`snowflock run --no-lockstep`).
    #[serde(default)]
    pub no_lockstep: bool,
    /// No recorded working set pushed ahead of its remote clones' faults
    /// (`snowflock run --no-working-set`).
    #[serde(default)]
    pub no_working_set: bool,
    /// A private network for the VM's family (`snowflock run --net`).
    #[serde(default)]
    pub net: Option<VmNet>,
}

/// `CreateVm::net`: the family gets a NIC in every VM, a bridge per host
/// and VXLAN between hosts (see `snowflock run --net`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// The daemon's host gets 10.F.255.254 on the family network.
    #[serde(default)]
    pub host_access: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmKind {
    /// Booted from an image.
    Vm,
    /// A clone received from another host.
    Clone,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub kind: VmKind,
    /// Guest image, or the origin for a clone.
    pub guest: String,
    pub pid: u32,
    /// "running" or "exited".
    pub state: String,
    pub exit_code: Option<i32>,
    pub clone_id: Option<u32>,
    pub started_unix_ms: u64,
}

/// `GET /v1/vms/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmDetail {
    pub info: VmInfo,
    /// The guest's console so far (at most the last 64 KiB).
    pub console: String,
    /// How many bytes the console has had in all; `console` ends there.
    /// A follower prints the last `console_end - seen` bytes of each look.
    #[serde(default)]
    pub console_end: u64,
    /// The VMM's own messages (stderr), at most the last 16 KiB.
    pub log: String,
    pub memory: Option<FetchStats>,
}

/// Memory-on-demand counters of one remote clone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FetchStats {
    pub faults: u64,
    pub pages_fetched: u64,
    pub zero_pages: u64,
    pub bytes_received: u64,
    pub requests: u64,
    pub fault_latency_p50_us: u64,
    pub fault_latency_p99_us: u64,
    /// Pages that arrived by the clone group's multicast before a fault.
    #[serde(default)]
    pub multicast_pages: u64,
    /// Pages the guest hinted free that the clone's fault handler
    /// installed as zero pages: never requested from the memory holder.
    #[serde(default)]
    pub zero_local_pages: u64,
    /// Faults on pages that were not there yet: touches that nothing
    /// (readahead, multicast, working set) had brought in before.
    #[serde(default)]
    pub misses: u64,
    /// Requests the memory holder answered "pushed": the pages were on
    /// their way by multicast (lockstep detection).
    #[serde(default)]
    pub pushed_answers: u64,
    /// Pushed pages that did not arrive in time and came by unicast.
    #[serde(default)]
    pub push_timeouts: u64,
    /// The group's multicast datagrams that never reached this clone host.
    #[serde(default)]
    pub multicast_lost: u64,
    /// Datagrams the group's memory holder had sent by the time of the
    /// last one this clone host took (its newest sequence number + 1).
    #[serde(default)]
    pub multicast_seen: u64,
    /// Pushed pages that were already there when they came (counted by
    /// the clone host's receiver of the group, once per host).
    #[serde(default)]
    pub multicast_stale_drops: u64,
    /// The group's datagrams this clone's own process received (0 when
    /// the host's one receiver of the group receives for all its clones).
    #[serde(default)]
    pub multicast_datagrams_received: u64,
    /// The group's datagrams the host's receiver received, once for every
    /// clone of the group on this host.
    #[serde(default)]
    pub multicast_host_datagrams: u64,
    /// The process id of that receiver (0: none, the clone received
    /// itself); the same for every clone of the group on one host.
    #[serde(default)]
    pub multicast_receiver_pid: u64,
    /// Pages of whole hinted 2 MiB blocks left to the kernel (huge pages):
    /// never requested, zero-filled by the kernel on first touch.
    #[serde(default)]
    pub released_hinted_pages: u64,
    /// Whole 2 MiB blocks installed as one huge page each (they arrived
    /// at once), and blocks installed page by page after their move failed.
    #[serde(default)]
    pub huge_blocks: u64,
    #[serde(default)]
    pub huge_fallbacks: u64,
    /// The clone's guest RAM maps its host's cache of pushed pages (they
    /// cost it no copy; see the clone host's `SNOWFLOCK_MAP_HOST_CACHE`).
    #[serde(default)]
    pub maps_host_cache: bool,
}

/// `GET /v1/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub host: String,
    pub peers: Vec<String>,
    pub vms_running: u32,
    pub vms_total: u32,
    pub clones_received: u32,
    pub clones: Vec<CloneMetrics>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloneMetrics {
    pub vm: String,
    pub clone_id: u32,
    pub state: String,
    pub memory: FetchStats,
}

/// `POST /v1/clones`: start clones of a VM that runs on another host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloneRequest {
    /// The VM descriptor (versioned, checksummed), hex encoded.
    pub descriptor_hex: String,
    pub mem_size: u64,
    /// The origin's page server, "ip:port".
    pub memory_server: String,
    /// Where each clone reports its end, "ip:port".
    pub report_to: String,
    /// Shared secret of this clone group, 32 hex digits.
    pub token_hex: String,
    /// Clone IDs to start here.
    pub ids: Vec<u32>,
    pub timeout_ms: Option<u64>,
    pub max_clones: u32,
    /// Clone path of the parent ("" for a root VM), for console prefixes.
    pub parent_path: String,
    /// Largest readahead batch in pages (default: the fetcher's, 64);
    /// 1 turns prefetching off.
    #[serde(default)]
    pub prefetch_window: Option<u32>,
    /// The clone group's multicast address, "ip:port": pages the holder
    /// serves to any clone are pushed there for all of them.
    #[serde(default)]
    pub multicast: Option<String>,
    /// When the parent asked to clone (Unix time, ns), so the clone can
    /// report its start latency (meaningful where host clocks agree).
    #[serde(default)]
    pub requested_unix_ns: Option<u64>,
    /// Pages the guest hinted free, as (first_page, count) pairs: a clone
    /// may get a zero page for them instead of the parent's bytes. At most
    /// [`MAX_FREE_RANGES`]; the clone host clamps and merges them again.
    #[serde(default)]
    pub free_pages: Vec<[u64; 2]>,
    /// The origin takes this clone's output files (`--output`), at most
    /// this many bytes of them; none when absent.
    #[serde(default)]
    pub output_cap: Option<u64>,
    /// The most result bytes each clone may hand back at its exit (the
    /// origin's ticket fixed it, and the origin checks it again); the
    /// 64 KiB floor when absent.
    #[serde(default)]
    pub result_cap: Option<u64>,
    /// The family's private network, when it has one: the clone host joins
    /// the family's segment (bridge + VXLAN) before starting the clones.
    #[serde(default)]
    pub net: Option<CloneNet>,
}

/// A clone family's network as a clone request carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneNet {
    /// Family number F (1..=255): the subnet 10.F.0.0/16.
    pub family: u8,
    /// The family's VXLAN network identifier (origin host id << 8 | F).
    pub vni: u32,
    /// The parent's member number.
    pub parent: u32,
    /// For each entry of `ids`, in order: the clone's member number and the
    /// first number of its descendants' block (`max_clones` long).
    pub members: Vec<[u32; 2]>,
}

impl CloneNet {
    /// From the numbers of all of a clone call's clones (entry `k - 1` for
    /// clone `k`), those of `ids`, for the request that carries them.
    pub fn for_ids(&self, ids: &[u32]) -> CloneNet {
        CloneNet {
            members: ids
                .iter()
                .filter_map(|&k| self.members.get((k as usize).wrapping_sub(1)).copied())
                .collect(),
            ..self.clone()
        }
    }
}

/// Most `CloneRequest::free_pages` ranges a daemon accepts.
pub const MAX_FREE_RANGES: usize = 16384;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloneAccepted {
    pub vms: Vec<String>,
}

/// Any error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub version: String,
    pub host: String,
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string; `None` if it is not hex of even length.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é1"), None);
    }

    #[test]
    fn create_vm_defaults_are_filled_in() {
        let v: CreateVm = serde_json::from_str(r#"{"guest":"hello"}"#).unwrap();
        assert_eq!(
            (v.placement, v.args.len(), v.mem),
            (Placement::Spread, 0, None)
        );
    }
}
