//! The PROXY header lb sends to servers (`proxy::upstream::proxy_header`), v1 and v2, for
//! any pair of addresses (v4, v6 and v4-mapped v6), read back with the ppp crate's parser:
//! one whole header, no byte more, saying the client and the VIP lb meant.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_userspace::{config::ProxyVersion, proxy::upstream::proxy_header};

use super::support::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let client = address(&mut input, flags);
    let local = address(&mut input, flags >> 2);
    let version = if flags & 16 == 0 {
        ProxyVersion::V1
    } else {
        ProxyVersion::V2
    };
    let header = proxy_header(version, client, local);
    let (client, local) = (canonical(client), canonical(local));
    let same_family = client.is_ipv4() == local.is_ipv4();
    // Whatever follows the header on the connection (the client's bytes) must not be
    // taken for part of it.
    let mut stream = header.clone();
    stream.extend_from_slice(input.rest());
    match version {
        ProxyVersion::V1 => {
            use ppp::v1::{Addresses, Header};
            assert!(header.len() <= 107, "a v1 header is at most 107 bytes");
            assert!(header.ends_with(b"\r\n"), "a v1 header ends in CRLF");
            let parsed = Header::try_from(&stream[..])
                .unwrap_or_else(|e| panic!("ppp refuses {:?}: {e:?}", text(&header)));
            assert_eq!(
                parsed.header.as_bytes(),
                &header[..],
                "the whole header, only"
            );
            let expected = Addresses::from((client, local));
            assert_eq!(parsed.addresses, expected, "{:?}", text(&header));
            if same_family {
                assert_ne!(parsed.addresses, Addresses::Unknown);
            }
        }
        ProxyVersion::V2 => {
            use ppp::v2::{Addresses, Command, Header, Protocol};
            let parsed = Header::try_from(&stream[..])
                .unwrap_or_else(|e| panic!("ppp refuses {header:02x?}: {e:?}"));
            assert_eq!(parsed.len(), header.len(), "the whole header, only");
            assert_eq!(parsed.command, Command::Proxy);
            assert_eq!(parsed.protocol, Protocol::Stream);
            let expected = Addresses::from((client, local));
            assert_eq!(parsed.addresses, expected);
            if same_family {
                assert_ne!(parsed.addresses, Addresses::Unspecified);
            }
            // A truncated header is incomplete, never a different header.
            for cut in [1, header.len() / 2, header.len() - 1] {
                assert!(
                    Header::try_from(&header[..cut]).is_err(),
                    "{cut} of {} bytes parsed",
                    header.len()
                );
            }
        }
    }
}

/// An address of the family the two low bits of `flags` say: v4, v6, or v4-mapped v6 (as
/// a dual-stack socket reports v4 peers).
fn address(input: &mut Input, flags: u8) -> SocketAddr {
    let ip = match flags & 3 {
        0 => IpAddr::V4(Ipv4Addr::from(input.array::<4>())),
        1 => IpAddr::V6(Ipv4Addr::from(input.array::<4>()).to_ipv6_mapped()),
        _ => IpAddr::V6(Ipv6Addr::from(input.array::<16>())),
    };
    SocketAddr::new(ip, input.u16())
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
