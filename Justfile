# Mirrors CI (.ci/run). Run as root: the tests and benches load eBPF programs.

# everything CI does: setup, fmt check, clippy -D warnings, all tests, a quick bench pass
ci:
    cargo xtask test

setup:
    cargo xtask setup

fmt:
    cargo fmt --all --check

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

test:
    cargo xtask test --no-lint

# full benchmark: ratios against no programs, nftables (linear and set), revocation latency
bench:
    cargo xtask bench

ebpf:
    cargo xtask build-ebpf

run:
    cargo xtask run
