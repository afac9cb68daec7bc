#!/usr/bin/env bash
# The project's test command (README): everything, including end-to-end
# tests that boot real guests on /dev/kvm. Needs root (or access to
# /dev/kvm); the QEMU comparison test installs Debian's qemu-system-x86
# itself when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "error: /dev/kvm is missing or not accessible; the tests boot real VMs" >&2
    exit 1
fi
# Every binary first: the end-to-end tests run the daemon next to the CLI.
cargo build --release --workspace --locked
cargo test --release --workspace --locked "$@"
