//! The fuzz targets' checks on stable Rust: every file of tests/hostile (and each of its prefixes
//! at a few cut points), then a bounded deterministic pseudo-random loop.
//! `cargo test --no-default-features` in fuzz/.

use std::path::Path;

type Target = fn(&[u8]);
const TARGETS: [(&str, Target); 4] = [
    ("reply", dma_fuzz::reply),
    ("spool_entry", dma_fuzz::spool_entry),
    ("intake", dma_fuzz::intake),
    ("data_encoder", dma_fuzz::data_encoder),
];

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hostile");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("tests/hostile")
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    files.extend([
        b"250-mx.test\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n".to_vec(),
        b"ID: 1.1\nSender: a@b\nRecipient: c@d\nCreated: 99999999999999999999\nAttempts: -1\n".to_vec(),
        b"550-5.1.1 a\r\n551 b\r\n999 x\r\n2".to_vec(),
        [b".".repeat(2000), b"\r\r\n.\n..\r".to_vec(), b"x".repeat(5000)].concat(),
    ]);
    files
}

#[test]
fn corpus_files() {
    for data in corpus() {
        for (_, target) in TARGETS {
            target(&data);
            for cut in [1, 2, 7, data.len() / 2] {
                if cut < data.len() {
                    target(&data[..cut]);
                    target(&data[cut..]);
                }
            }
        }
    }
}

#[test]
fn bounded_random_loop() {
    // xorshift: no dependency, same inputs every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b".\r\n \t:-0123456789250354AaZz\x00\xff@<>";
    for _ in 0..20_000 {
        let len = (next() % 3000) as usize;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 4 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        for (_, target) in TARGETS {
            target(&data);
        }
    }
}
