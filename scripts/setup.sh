#!/usr/bin/env bash
# Installs everything beemesh needs to build and test on a fresh Debian 12 host:
# Debian's rustc-web (1.96, with library sources) for the eBPF crate, bpf-linker 0.13
# linked against Debian's libLLVM 22, and the packages the end-to-end tests and benches use.
# Idempotent: a second run only checks. See ../shared/ebpf-toolchain.md for why these pieces.
set -euo pipefail

PREFIX=${BEEMESH_TOOLCHAIN_PREFIX:-/opt/beemesh-toolchain}
BPF_LINKER_VERSION=0.13.0
APT_PACKAGES=(rustc-web cargo-web rust-web-src libllvm22 nftables iproute2 socat slirp4netns uidmap busybox-static podman runc openssl)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against Debian libLLVM 22"
  mkdir -p "$PREFIX/lib"
  ln -sfn /usr/lib/x86_64-linux-gnu/libLLVM.so.22.1 "$PREFIX/lib/libLLVM.so"
  LLVM_PREFIX=$PREFIX cargo +stable install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22
fi

/usr/bin/rustc --version | grep -q '1\.9[6-9]' || { log "Debian rustc is not 1.96+: $(/usr/bin/rustc --version)"; exit 1; }
[ -d /usr/lib/rustlib/src/rust/library/core ] || { log "rust-web-src missing"; exit 1; }
log "toolchain ready: $(/usr/bin/rustc --version), $(bpf-linker --version)"
