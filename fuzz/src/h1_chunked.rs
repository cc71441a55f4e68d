//! The HTTP/1 path's chunked-body parser (`proxy::h1`): whatever the bytes, and however
//! reads split them, it ends the body at the same byte or refuses it with the same error,
//! and a body it accepts is well formed (sizes, CRLFs, trailers).

use lb_userspace::proxy::h1::fuzzing::Chunked;

use super::support::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let split = input.u8();
    let body = input.rest();
    if let Ok(Some(end)) = body_end(body, split) {
        check_well_formed(&body[..end]);
    }
}

/// Where a chunked body at the start of `data` ends (`Ok(None)`: not yet), fed whole, byte
/// by byte, and in reads of sizes drawn from `split`; all three must agree.
pub fn body_end(data: &[u8], split: u8) -> Result<Option<usize>, &'static str> {
    let whole = feed(data, |_| data.len());
    let bytewise = feed(data, |_| 1);
    let mut seed = u32::from(split) | 1;
    let pieces = feed(data, move |_| {
        // A small xorshift: read sizes 1..=64, different each time.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed % 64 + 1) as usize
    });
    assert_eq!(
        whole,
        bytewise,
        "fed whole and byte by byte: {:?}",
        text(data)
    );
    assert_eq!(whole, pieces, "fed whole and in pieces: {:?}", text(data));
    whole
}

fn feed(data: &[u8], mut read: impl FnMut(usize) -> usize) -> Result<Option<usize>, &'static str> {
    let mut parser = Chunked::default();
    let mut at = 0;
    while at < data.len() {
        let n = read(at).min(data.len() - at);
        let taken = parser.feed(&data[at..at + n])?;
        assert!(taken <= n, "took {taken} of {n} bytes");
        at += taken;
        if parser.done() {
            return Ok(Some(at));
        }
        assert_eq!(taken, n, "stopped early without ending the body");
    }
    Ok(None)
}

/// An accepted body, checked by an independent reading of RFC 9112 7.1: chunks of
/// `hex-size [; or whitespace ext] CRLF data CRLF`, a last chunk of size 0, trailer lines,
/// and an empty line.
fn check_well_formed(body: &[u8]) {
    let mut rest = body;
    loop {
        let line_end = find_crlf(rest).expect("a chunk-size line ends in CRLF");
        let line = &rest[..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        assert!(
            (1..=15).contains(&digits),
            "chunk size digits in {:?}",
            text(line)
        );
        assert!(
            matches!(line.get(digits), None | Some(b';' | b' ' | b'\t')),
            "after the size: {:?}",
            text(line)
        );
        assert!(!line.contains(&b'\n'), "a bare LF in {:?}", text(line));
        let size = usize::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
            .expect("the size is hex");
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        assert!(rest.len() >= size + 2, "chunk data and its CRLF");
        assert_eq!(&rest[size..size + 2], b"\r\n", "CRLF after the chunk data");
        rest = &rest[size + 2..];
    }
    // Trailer lines, then the empty line that ends the body exactly.
    loop {
        let line_end = find_crlf(rest).expect("a trailer line ends in CRLF");
        assert!(!rest[..line_end].contains(&b'\n'), "a bare LF in a trailer");
        rest = &rest[line_end + 2..];
        if line_end == 0 {
            break;
        }
    }
    assert!(rest.is_empty(), "the body ends after the empty line");
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
