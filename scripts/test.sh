#!/usr/bin/env bash
# The project's test command (README): the formatting and lint gates, then
# everything, including end-to-end tests that boot real guests on /dev/kvm
# and in network namespaces. Needs root (or access to /dev/kvm); the QEMU
# comparison test installs Debian's qemu-system-x86 itself when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "error: /dev/kvm is missing or not accessible; the tests boot real VMs" >&2
    exit 1
fi
step() { printf '\n== %s\n' "$*" >&2; }
step "formatting (host and guest workspaces)"
cargo fmt --all --check
(cd guest && cargo fmt --all --check)
step "clippy, warnings are errors"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
step "build every binary (the end-to-end tests run the daemon next to the CLI)"
cargo build --release --workspace --locked
step "tests"
# The guest network stack is a no_std crate tested on the host.
(cd guest && cargo test --locked -p sf-net)
cargo test --release --workspace --locked "$@"
