//! The sync protocol on the wire. A session is one-way: the receiver opens it with a
//! greeting (magic and a fresh nonce); then the sender sends frames, each
//! `u32 length | body | HMAC-SHA256(secret, nonce | sequence | body)`. The nonce and the
//! sequence number make a recorded frame useless in any other place or session. Bodies are
//! a type byte and fixed-width little-endian fields; ids in them are the sender's, made
//! meaningful by the last `Names`; times are ages, since the two clocks differ.

use std::{
    io::{self, Read, Write},
    net::IpAddr,
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_common::maps::{Addr, FlowKey, NatEntry};
use ring::hmac;

use super::role::Role;

pub const MAGIC: &[u8; 8] = b"LBSYNC01";
pub const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// Largest frame body: bounds what a peer can make the receiver buffer.
pub const MAX_BODY: usize = 1 << 20;
/// Flows per `Flows` message, so a message stays well under [`MAX_BODY`].
pub const FLOWS_PER_MESSAGE: usize = 4096;
const FLOW_LEN: usize = 87;
const STICKY_LEN: usize = 28;

/// A tracked flow as sent: its client-side key and entry (ids are the sender's; the
/// entry's timestamp is not sent) and how long ago it last saw a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFlow {
    pub key: FlowKey,
    pub entry: NatEntry,
    pub age_ms: u32,
}

/// A source-IP stickiness entry as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSticky {
    pub backend: u32,
    pub addr: Addr,
    pub server: u32,
    pub age_ms: u32,
}

/// The sender's ids and their names.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireNames {
    pub frontends: Vec<(u32, String)>,
    pub backends: Vec<(u32, String)>,
    pub servers: Vec<(u32, String, IpAddr, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// First of a session: the sender's role, and whether it was master at some time
    /// while the two nodes could not reach each other (two such hellos: a split brain).
    Hello {
        role: Role,
        mastered_apart: bool,
    },
    Names(WireNames),
    Flows(Vec<WireFlow>),
    Sticky(Vec<WireSticky>),
    /// Everything the sender tracked when the session began has been sent.
    BulkDone {
        flows: u64,
        sticky: u64,
    },
    /// Sent when there is nothing else to say, so a silent peer is a dead one.
    Heartbeat {
        role: Role,
    },
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Starting => 0,
        Role::Backup => 1,
        Role::Master => 2,
        Role::Fault => 3,
    }
}

fn role_of(b: u8) -> Result<Role> {
    Ok(match b {
        0 => Role::Starting,
        1 => Role::Backup,
        2 => Role::Master,
        3 => Role::Fault,
        _ => bail!("unknown role {b}"),
    })
}

impl Message {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello {
                role,
                mastered_apart,
            } => out.extend([1, role_byte(*role), u8::from(*mastered_apart)]),
            Message::Names(names) => {
                out.push(2);
                out.extend(serde_json::to_vec(names).expect("names serialize"));
            }
            Message::Flows(flows) => {
                out.push(3);
                out.reserve(flows.len() * FLOW_LEN);
                for f in flows {
                    let (k, e) = (&f.key, &f.entry);
                    out.extend(k.src);
                    out.extend(k.dst);
                    out.extend(k.sport.to_le_bytes());
                    out.extend(k.dport.to_le_bytes());
                    out.push(k.proto);
                    out.extend(e.src);
                    out.extend(e.dst);
                    out.extend(e.sport.to_le_bytes());
                    out.extend(e.dport.to_le_bytes());
                    out.extend(e.server_id.to_le_bytes());
                    out.extend(e.frontend_id.to_le_bytes());
                    out.extend(e.backend_id.to_le_bytes());
                    out.push(e.state);
                    out.push(e.flags);
                    out.extend(f.age_ms.to_le_bytes());
                }
            }
            Message::Sticky(entries) => {
                out.push(4);
                for s in entries {
                    out.extend(s.backend.to_le_bytes());
                    out.extend(s.addr);
                    out.extend(s.server.to_le_bytes());
                    out.extend(s.age_ms.to_le_bytes());
                }
            }
            Message::BulkDone { flows, sticky } => {
                out.push(5);
                out.extend(flows.to_le_bytes());
                out.extend(sticky.to_le_bytes());
            }
            Message::Heartbeat { role } => out.extend([6, role_byte(*role)]),
        }
    }

    pub fn decode(body: &[u8]) -> Result<Message> {
        let (&kind, mut rest) = body.split_first().context("empty message")?;
        let fixed = |rest: &[u8], len: usize| -> Result<usize> {
            ensure!(
                rest.len().is_multiple_of(len),
                "message of {} bytes is not whole entries of {len}",
                rest.len()
            );
            Ok(rest.len() / len)
        };
        Ok(match kind {
            1 => {
                ensure!(rest.len() == 2, "hello of {} bytes", rest.len());
                Message::Hello {
                    role: role_of(rest[0])?,
                    mastered_apart: rest[1] != 0,
                }
            }
            6 => {
                ensure!(rest.len() == 1, "heartbeat of {} bytes", rest.len());
                Message::Heartbeat {
                    role: role_of(rest[0])?,
                }
            }
            2 => Message::Names(serde_json::from_slice(rest).context("names")?),
            3 => {
                let mut flows = Vec::with_capacity(fixed(rest, FLOW_LEN)?);
                while !rest.is_empty() {
                    let mut r = Reader(&rest[..FLOW_LEN]);
                    rest = &rest[FLOW_LEN..];
                    let key = FlowKey {
                        src: r.addr(),
                        dst: r.addr(),
                        sport: r.u16(),
                        dport: r.u16(),
                        proto: r.u8(),
                        _pad: [0; 3],
                    };
                    let entry = NatEntry {
                        src: r.addr(),
                        dst: r.addr(),
                        sport: r.u16(),
                        dport: r.u16(),
                        server_id: r.u32(),
                        frontend_id: r.u16(),
                        backend_id: r.u16(),
                        state: r.u8(),
                        flags: r.u8(),
                        last_seen_ns: 0,
                        _pad: 0,
                    };
                    flows.push(WireFlow {
                        key,
                        entry,
                        age_ms: r.u32(),
                    });
                }
                Message::Flows(flows)
            }
            4 => {
                let mut entries = Vec::with_capacity(fixed(rest, STICKY_LEN)?);
                while !rest.is_empty() {
                    let mut r = Reader(&rest[..STICKY_LEN]);
                    rest = &rest[STICKY_LEN..];
                    entries.push(WireSticky {
                        backend: r.u32(),
                        addr: r.addr(),
                        server: r.u32(),
                        age_ms: r.u32(),
                    });
                }
                Message::Sticky(entries)
            }
            5 => {
                ensure!(
                    rest.len() == 16,
                    "bulk-done message of {} bytes",
                    rest.len()
                );
                let mut r = Reader(rest);
                Message::BulkDone {
                    flows: r.u64(),
                    sticky: r.u64(),
                }
            }
            other => bail!("unknown message type {other}"),
        })
    }
}

/// Fixed-width fields off a slice whose length the caller checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        head.try_into().expect("length checked")
    }
    fn addr(&mut self) -> Addr {
        self.take::<16>()
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// The shared secret as an HMAC key.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes.trim_ascii()))
    }

    fn tag(&self, nonce: &[u8; NONCE_LEN], seq: u64, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(nonce);
        ctx.update(&seq.to_be_bytes());
        ctx.update(body);
        ctx.sign()
    }
}

/// The receiving end's greeting: the magic and its nonce.
pub fn greet(stream: &mut impl Write) -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
    let mut hello = MAGIC.to_vec();
    hello.extend(nonce);
    stream.write_all(&hello)?;
    Ok(nonce)
}

/// The sending end reads the greeting.
pub fn read_greeting(stream: &mut impl Read) -> Result<[u8; NONCE_LEN]> {
    let mut buf = [0u8; 8 + NONCE_LEN];
    stream
        .read_exact(&mut buf)
        .context("reading the greeting")?;
    ensure!(
        &buf[..8] == MAGIC,
        "the peer does not speak lb's sync protocol (or another version of it)"
    );
    Ok(buf[8..].try_into().expect("16 bytes"))
}

/// Writes authenticated frames.
pub struct FrameWriter {
    secret: Secret,
    nonce: [u8; NONCE_LEN],
    seq: u64,
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(secret: Secret, nonce: [u8; NONCE_LEN]) -> Self {
        FrameWriter {
            secret,
            nonce,
            seq: 0,
            buf: Vec::new(),
        }
    }

    /// Encode a message as one frame; returns its size on the wire.
    pub fn send(&mut self, stream: &mut impl Write, message: &Message) -> io::Result<usize> {
        self.buf.clear();
        self.buf.extend([0; 4]);
        message.encode(&mut self.buf);
        let body_len = self.buf.len() - 4;
        assert!(body_len <= MAX_BODY, "message of {body_len} bytes");
        let tag = self.secret.tag(&self.nonce, self.seq, &self.buf[4..]);
        self.seq += 1;
        self.buf.extend(tag.as_ref());
        let len = u32::try_from(self.buf.len() - 4).expect("bounded");
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        stream.write_all(&self.buf)?;
        Ok(self.buf.len())
    }
}

/// Reads and checks frames.
pub struct FrameReader {
    secret: Secret,
    nonce: [u8; NONCE_LEN],
    seq: u64,
    buf: Vec<u8>,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is past the limit")]
    TooLong(usize),
    #[error("frame fails authentication: the peers' secrets differ, or it was altered")]
    BadMac,
    #[error("malformed message: {0:#}")]
    Malformed(anyhow::Error),
}

impl FrameReader {
    pub fn new(secret: Secret, nonce: [u8; NONCE_LEN]) -> Self {
        FrameReader {
            secret,
            nonce,
            seq: 0,
            buf: Vec::new(),
        }
    }

    /// The next message, and its size on the wire.
    pub fn next(&mut self, stream: &mut impl Read) -> Result<(Message, usize), FrameError> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(MAC_LEN + 1..=MAX_BODY + MAC_LEN).contains(&len) {
            return Err(FrameError::TooLong(len));
        }
        self.buf.resize(len, 0);
        stream.read_exact(&mut self.buf)?;
        let (body, mac) = self.buf.split_at(len - MAC_LEN);
        let expected = self.secret.tag(&self.nonce, self.seq, body);
        if !constant_time_eq(expected.as_ref(), mac) {
            return Err(FrameError::BadMac);
        }
        self.seq += 1;
        let message = Message::decode(body).map_err(FrameError::Malformed)?;
        Ok((message, len + 4))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u8) -> WireFlow {
        WireFlow {
            key: FlowKey {
                src: [i; 16],
                dst: [2; 16],
                sport: 1000 + u16::from(i),
                dport: 80,
                proto: 6,
                _pad: [0; 3],
            },
            entry: NatEntry {
                src: [3; 16],
                dst: [4; 16],
                sport: 2000,
                dport: 8080,
                server_id: 7,
                last_seen_ns: 0,
                frontend_id: 1,
                backend_id: 2,
                state: 2,
                flags: 18,
                _pad: 0,
            },
            age_ms: 1234,
        }
    }

    fn session() -> (FrameWriter, FrameReader) {
        let secret = Secret::new(b"0123456789abcdef\n");
        let nonce = [9; NONCE_LEN];
        (
            FrameWriter::new(secret.clone(), nonce),
            FrameReader::new(secret, nonce),
        )
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        let messages = [
            Message::Hello {
                role: Role::Master,
                mastered_apart: true,
            },
            Message::Names(WireNames {
                frontends: vec![(1, "web".into())],
                backends: vec![(2, "pool".into())],
                servers: vec![(7, "pool".into(), "198.18.11.2".parse().unwrap(), 8080)],
            }),
            Message::Flows(vec![flow(1), flow(2)]),
            Message::Sticky(vec![WireSticky {
                backend: 2,
                addr: [5; 16],
                server: 7,
                age_ms: 10,
            }]),
            Message::BulkDone {
                flows: 2,
                sticky: 1,
            },
            Message::Heartbeat { role: Role::Backup },
        ];
        let (mut w, mut r) = session();
        let mut wire = Vec::new();
        for m in &messages {
            w.send(&mut wire, m).unwrap();
        }
        let mut input = wire.as_slice();
        for m in &messages {
            assert_eq!(&r.next(&mut input).unwrap().0, m);
        }
        assert!(input.is_empty());
    }

    #[test]
    fn a_frame_under_another_secret_nonce_or_position_is_refused() {
        let (mut w, _) = session();
        let mut wire = Vec::new();
        w.send(&mut wire, &Message::Flows(vec![flow(1)])).unwrap();
        w.send(&mut wire, &Message::Flows(vec![flow(2)])).unwrap();
        let other_secret = FrameReader::new(Secret::new(b"another secret, 16+"), [9; NONCE_LEN]);
        let other_nonce = FrameReader::new(Secret::new(b"0123456789abcdef"), [8; NONCE_LEN]);
        for mut r in [other_secret, other_nonce] {
            assert!(matches!(
                r.next(&mut wire.as_slice()),
                Err(FrameError::BadMac)
            ));
        }
        // The second frame replayed first: its sequence number does not match.
        let first_len = 4 + u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        let (_, mut r) = session();
        assert!(matches!(
            r.next(&mut &wire[first_len..]),
            Err(FrameError::BadMac)
        ));
        // A flipped bit.
        let mut altered = wire.clone();
        altered[10] ^= 1;
        let (_, mut r) = session();
        assert!(matches!(
            r.next(&mut altered.as_slice()),
            Err(FrameError::BadMac)
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_anything_is_buffered() {
        let (_, mut r) = session();
        let wire = u32::MAX.to_be_bytes();
        assert!(matches!(
            r.next(&mut wire.as_slice()),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn a_full_flows_message_fits_a_frame() {
        let mut out = Vec::new();
        Message::Flows(vec![flow(1); FLOWS_PER_MESSAGE]).encode(&mut out);
        assert_eq!(out.len(), 1 + FLOWS_PER_MESSAGE * FLOW_LEN);
        assert!(out.len() <= MAX_BODY);
    }
}
