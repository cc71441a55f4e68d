//! Types and pure logic shared by the XDP program (`lb-ebpf`) and the daemon (`lb-userspace`).
//!
//! Everything here compiles for the bpf target without `std`, so the logic the kernel runs is
//! unit-tested on the host.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod checksum;
pub mod flow;
pub mod hash;
#[cfg(not(target_arch = "bpf"))]
pub mod maglev;
pub mod maps;
pub mod stats;
pub mod wire;
