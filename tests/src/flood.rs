//! Spoofed TCP SYN floods, for the flood test and the flood benchmark: raw frames sent from
//! one thread (AF_PACKET with qdisc bypass, `sendmmsg`), each SYN from a source address and
//! port no host of the topology uses, with valid checksums so servers answer them.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use lb_common::checksum::{checksum, pseudo_header_sum};

use crate::{
    netns::NetNs,
    packets::{Frame, L4},
};

/// Where spoofed sources come from: 198.19.0.0/16 (inside 198.18.0.0/15, outside every
/// address the topologies use). Give lb a blackhole route for it, and the servers' SYN-ACKs
/// end there, as they do for sources that do not exist.
pub const SPOOFED_NET: &str = "198.19.0.0/16";

/// The `i`th spoofed source: 65536 addresses, then the next source port for all of them.
pub fn spoofed_source(i: u64) -> (Ipv4Addr, u16) {
    let addr = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
    (addr, 1024 + ((i >> 16) % 60000) as u16)
}

/// The MAC address of `ifname` in `ns`.
pub fn mac_of(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {text}"))
}

/// A flood: spoofed SYNs to `target`, leaving by `ifname` (in the namespace of the calling
/// thread) for the next hop `dst_mac`.
#[derive(Clone, Debug)]
pub struct SynFlood {
    pub ifname: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub target: SocketAddrV4,
    /// Index of the first spoofed source ([`spoofed_source`]); a later flood continues
    /// where an earlier one stopped, so every SYN is a new flow.
    pub first_source: u64,
}

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub packets: u64,
    pub elapsed: Duration,
    /// The index after the last source used.
    pub next_source: u64,
}

// Offsets in the untagged Ethernet + IPv4 + TCP frame the flood sends.
const IP: usize = 14;
const TCP: usize = 34;

impl SynFlood {
    /// Send SYNs for `duration`, at `rate` per second (paced in batches) or, with `None`,
    /// as fast as one thread can.
    pub fn run(&self, rate: Option<u64>, duration: Duration) -> Result<Sent> {
        const BATCH: usize = 32;
        let template = Frame {
            dst_mac: self.dst_mac,
            src_mac: self.src_mac,
            vlan: None,
            src: Ipv4Addr::UNSPECIFIED.into(),
            dst: (*self.target.ip()).into(),
            sport: 0,
            dport: self.target.port(),
            l4: L4::Tcp {
                flags: lb_common::wire::TCP_SYN,
            },
        }
        .build(b"");
        let mut frames = vec![template; BATCH];
        let ifindex = nix::net::if_::if_nametoindex(self.ifname.as_str())?;
        let mut next = self.first_source;
        // SAFETY: plain socket syscalls on a descriptor this function owns and closes; the
        // message headers point at `addr`, `iovs` and `frames`, which outlive every call.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&self.dst_mac);
            let mut iovs: Vec<libc::iovec> = frames
                .iter_mut()
                .map(|f| libc::iovec {
                    iov_base: f.as_mut_ptr().cast(),
                    iov_len: f.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    let mut m: libc::mmsghdr = std::mem::zeroed();
                    m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
                    m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < duration {
                if let Some(rate) = rate {
                    // Kept: pacing to the requested rate, not a wait for anything.
                    let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                for frame in frames.iter_mut() {
                    spoof(frame, spoofed_source(next));
                    next += 1;
                }
                let n = libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0);
                if n < 0 {
                    let error = std::io::Error::last_os_error();
                    if error.raw_os_error() != Some(libc::ENOBUFS) {
                        libc::close(fd);
                        bail!("sendmmsg: {error}");
                    }
                } else {
                    sent += n as u64;
                }
            }
            let elapsed = start.elapsed();
            libc::close(fd);
            Ok(Sent {
                packets: sent,
                elapsed,
                next_source: next,
            })
        }
    }
}

/// Give a SYN frame of the template another source address and port, checksums updated.
fn spoof(frame: &mut [u8], (addr, port): (Ipv4Addr, u16)) {
    frame[IP + 12..IP + 16].copy_from_slice(&addr.octets());
    frame[TCP..TCP + 2].copy_from_slice(&port.to_be_bytes());
    frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let c = checksum(0, &frame[IP..TCP]);
    frame[IP + 10..IP + 12].copy_from_slice(&c);
    let tcp_checksum = TCP + lb_common::wire::TCP_CHECKSUM_OFFSET;
    frame[tcp_checksum..tcp_checksum + 2].copy_from_slice(&[0, 0]);
    let segment_len = (frame.len() - TCP) as u32;
    let pseudo = pseudo_header_sum(
        &frame[IP + 12..IP + 16],
        &frame[IP + 16..IP + 20],
        lb_common::wire::IPPROTO_TCP,
        segment_len,
    );
    let c = checksum(pseudo, &frame[TCP..]);
    frame[tcp_checksum..tcp_checksum + 2].copy_from_slice(&c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_frames_are_valid_syns_from_distinct_sources() {
        let template = Frame {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlan: None,
            src: Ipv4Addr::UNSPECIFIED.into(),
            dst: Ipv4Addr::new(198, 18, 100, 1).into(),
            sport: 0,
            dport: 80,
            l4: L4::Tcp {
                flags: lb_common::wire::TCP_SYN,
            },
        };
        let mut frame = template.build(b"");
        for i in [0u64, 1, 255, 65535, 65536, 1 << 20] {
            let (addr, port) = spoofed_source(i);
            spoof(&mut frame, (addr, port));
            let expected = Frame {
                src: addr.into(),
                sport: port,
                ..template
            }
            .build(b"");
            assert_eq!(frame, expected, "source {i}");
            assert!(crate::packets::checksums_valid(&frame));
        }
        let sources: std::collections::HashSet<_> = (0..200_000).map(spoofed_source).collect();
        assert_eq!(sources.len(), 200_000);
        assert!(
            sources
                .iter()
                .all(|(a, _)| a.octets()[..2] == [198, 19] && *a != Ipv4Addr::new(198, 18, 0, 2))
        );
    }
}
