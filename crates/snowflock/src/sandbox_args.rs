//! The sandbox options every VMM-running command shares (`run`, and the
//! daemon's clone hosts): whether to install the seccomp filter and drop
//! root, and to whom.

/// How a VMM process sandboxes itself after set-up.
#[derive(clap::Args)]
pub struct SandboxArgs {
    /// Run without the seccomp filter and without dropping root (for
    /// debugging only: a compromised VMM then has the host's root).
    #[arg(long)]
    pub(crate) no_sandbox: bool,
    /// The user the VMM becomes after set-up, UID or UID:GID.
    #[arg(long, value_name = "UID[:GID]", default_value = "65534:65534")]
    pub(crate) sandbox_user: sf_vmm::sandbox::Credentials,
    /// Check the sandbox on this host: once set up, try an execve(2) as a
    /// compromised VMM would; the sandbox must kill the VMM (SIGSYS).
    #[arg(long, hide = true)]
    pub(crate) sandbox_selftest: bool,
}

impl SandboxArgs {
    /// The policy (become `--sandbox-user`), or none with --no-sandbox.
    pub fn policy(&self) -> Option<sf_vmm::sandbox::Policy> {
        (!self.no_sandbox).then_some(sf_vmm::sandbox::Policy {
            user: Some(self.sandbox_user),
        })
    }
}
