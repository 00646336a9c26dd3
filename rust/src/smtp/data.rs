//! The message on the wire: the DATA encoding, and the facts MAIL FROM needs (size, 8-bit).

use std::io::{self, Read};

use super::CHUNK;
use crate::errors::retry;

/// Longest line on the wire, CRLF excluded (RFC 5321 4.5.3.1.6).
const LINE_LIMIT: usize = 998;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageFacts {
    /// Octets on the wire without the final dot or stuffed dots, as RFC 1870 counts them.
    pub wire_size: u64,
    /// BODY=8BITMIME.
    pub eight_bit: bool,
}

/// The DATA encoding of `input`: `emit` gets each chunk of about `CHUNK` octets, and the rest with
/// the final dot (`last`). The spool's LF-terminated text becomes CRLF line ends (a lone CR also
/// ends a line: no bare CR reaches the wire), dot-stuffing, and lines over 998 octets broken by
/// CRLF SP, as Postfix's `smtp_line_length_limit` does (least harmful to MIME).
pub fn encode<E>(
    input: &mut impl Read,
    read_error: impl FnOnce(io::Error) -> E,
    mut emit: impl FnMut(&[u8], bool) -> Result<(), E>,
) -> Result<MessageFacts, E> {
    let (mut chunk, mut out) = (vec![0u8; CHUNK], Vec::with_capacity(3 * CHUNK));
    let mut facts = MessageFacts::default();
    // Octets already on the current wire line; the last byte was a CR, which ended its line (a LF
    // right after it ends none); dots added by stuffing.
    let (mut col, mut after_cr, mut stuffed) = (0, false, 0);
    loop {
        let n = match retry(|| input.read(&mut chunk)) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(read_error(e)),
        };
        facts.eight_bit |= !chunk[..n].is_ascii();
        let mut rest = &chunk[..n];
        while let Some(&byte) = rest.first() {
            if byte == b'\r' || byte == b'\n' {
                if byte == b'\r' || !after_cr {
                    out.extend_from_slice(b"\r\n");
                    col = 0;
                }
                after_cr = byte == b'\r';
                rest = &rest[1..];
                continue;
            }
            after_cr = false;
            if col == 0 && byte == b'.' {
                out.push(b'.');
                col = 1;
                stuffed += 1;
            }
            if col >= LINE_LIMIT {
                out.extend_from_slice(b"\r\n ");
                col = 1;
            }
            // The rest of the line, up to the limit, copied as one run.
            let room = &rest[..rest.len().min(LINE_LIMIT - col)];
            let run = room
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(room.len());
            out.extend_from_slice(&rest[..run]);
            col += run;
            rest = &rest[run..];
        }
        if out.len() >= CHUNK {
            facts.wire_size += out.len() as u64;
            emit(&out, false)?;
            out.clear();
        }
    }
    if col > 0 {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    facts.wire_size += out.len() as u64;
    facts.wire_size -= 3 + stuffed;
    emit(&out, true)?;
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole DATA stream of `chunks`, read one at a time.
    fn encode_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let mut input = chunks
            .iter()
            .fold(Box::new(io::empty()) as Box<dyn Read>, |r, c| {
                Box::new(r.chain(*c))
            });
        let mut out = Vec::new();
        super::encode(
            &mut input,
            |e| e,
            |chunk, _| -> io::Result<()> {
                out.extend_from_slice(chunk);
                Ok(())
            },
        )
        .unwrap();
        out
    }

    fn encode(input: &[u8]) -> Vec<u8> {
        encode_chunks(&[input])
    }

    #[test]
    fn crlf_and_terminator() {
        assert_eq!(encode(b"a\nb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(encode(b""), b".\r\n");
        assert_eq!(encode(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(encode(b"\n\n"), b"\r\n\r\n.\r\n");
    }

    #[test]
    fn existing_crlf_and_bare_cr() {
        assert_eq!(encode(b"a\r\nb\n"), b"a\r\nb\r\n.\r\n");
        // A lone CR becomes a line end, so "<CR>.<CR><LF>" cannot end DATA early anywhere.
        assert_eq!(encode(b"a\r.\r\nb\n"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode(b"x\r"), b"x\r\n.\r\n");
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(encode(b".\n..x\nx.\n"), b"..\r\n...x\r\nx.\r\n.\r\n");
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let input = b"hello\r\n.dot\nline\r\r\n.\n";
        let whole = encode(input);
        for split in 0..input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(encode_chunks(&[a, b]), whole, "split at {split}");
        }
    }

    #[test]
    fn long_lines_are_broken() {
        let exact = vec![b'x'; LINE_LIMIT];
        assert_eq!(encode(&exact), [&exact[..], b"\r\n.\r\n"].concat());
        let long = vec![b'y'; LINE_LIMIT + 1];
        let expected = [&long[..LINE_LIMIT], b"\r\n y\r\n.\r\n"].concat();
        assert_eq!(encode(&long), expected);
        // Continuation lines are also at most 998 octets, the SP included.
        let very = vec![b'z'; 2500];
        let out = encode(&very);
        let lengths: Vec<usize> = out.split(|&b| b == b'\n').map(<[u8]>::len).collect();
        // 998 + CR, SP + 997 + CR, SP + 505 + CR, ".\r", "".
        assert_eq!(lengths, [LINE_LIMIT + 1, LINE_LIMIT + 1, 507, 2, 0]);
        assert!(out[LINE_LIMIT + 2..].starts_with(b" z"));
        // A stuffed dot counts towards the wire line.
        let dotted = [&b"."[..], &vec![b'd'; LINE_LIMIT - 1]].concat();
        let out = encode(&dotted);
        assert!(out.starts_with(b".."));
        assert_eq!(out.split(|&b| b == b'\n').count(), 4);
    }

    #[test]
    fn stuffed_dots_in_earlier_chunks_are_not_taken_from_the_last() {
        // More dot lines than fit in one chunk, then a short tail: the tail is smaller than the
        // number of dots stuffed before it.
        let input = [".\n".repeat(CHUNK).as_bytes(), b"end\n"].concat();
        let mut wire = 0;
        let facts = super::encode(
            &mut &input[..],
            |e| e,
            |chunk, _| -> io::Result<()> {
                wire += chunk.len() as u64;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(facts.wire_size, wire - 3 - CHUNK as u64);
        assert_eq!(facts.wire_size, (3 * CHUNK + 5) as u64);
    }

    #[test]
    fn encode_counts_wire_octets() {
        let facts = |input: &[u8]| {
            let mut chunks = Vec::new();
            let facts = super::encode(
                &mut &input[..],
                |e| e,
                |chunk, last| {
                    chunks.push((chunk.to_vec(), last));
                    Ok(())
                },
            );
            assert_eq!(chunks, [(encode_chunks(&[input]), true)]);
            facts.unwrap()
        };
        let input = b"Subject: x\n\n.hi\n\xc3\xa9\n";
        // CRLF for each LF; the stuffed dot is not counted.
        assert_eq!(facts(input).wire_size, input.len() as u64 + 4);
        assert!(facts(input).eight_bit);
        assert!(!facts(b"plain\n").eight_bit);
    }
}
