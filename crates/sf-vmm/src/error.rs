//! Errors of the host side: everything that stops a VM from being built or
//! run, as opposed to what the guest did (see [`crate::Outcome`]).

use crate::image::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    KvmUnavailable(kvm_ioctls::Error),
    #[error("KVM refused {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory of {size} bytes: {why}")]
    MemorySize { size: u64, why: &'static str },
    #[error("cannot allocate {size} bytes of guest memory: {why}")]
    MemoryAlloc { size: u64, why: String },
    #[error(
        "only 1 vCPU is supported for now (asked for {0}); SMP guests are not implemented yet"
    )]
    Vcpus(u32),
    #[error("guest arguments are {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot write the guest console: {0}")]
    Console(std::io::Error),
    #[error("cannot arm the run timeout: {0}")]
    Timer(std::io::Error),
    #[error("cloning failed while {what}: {source}")]
    Clone {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Descriptor(#[from] crate::descriptor::DescriptorError),
    #[error("remote memory: {0}")]
    Remote(#[source] crate::remote::RemoteError),
    #[error(transparent)]
    Input(#[from] crate::inputs::InputError),
    #[error(transparent)]
    Device(#[from] crate::devices::DeviceError),
    #[error("cannot add the device: {0}")]
    AddDevice(#[source] crate::devices::AddError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

impl Error {
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }
}
