//! Measures how much of a second dump is new to a first one, for several
//! chunk sizes: `cargo run --release -p bascule-core --example dedup -- OLD NEW`.
use std::collections::HashSet;

use bascule_core::chunker::ChunkerParams;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [old, new] = &args[..] else {
        eprintln!("usage: dedup OLD_DUMP NEW_DUMP");
        std::process::exit(2);
    };
    let (old, new) = (std::fs::read(old).expect("read OLD"), std::fs::read(new).expect("read NEW"));
    println!("{:>8} {:>8} {:>8} {:>10} {:>12} {:>8}", "min", "avg", "max", "chunks", "new bytes", "new %");
    for avg in [4u32, 8, 16, 32, 64, 256, 1024] {
        let p = ChunkerParams { min_size: avg * 1024 / 4, avg_size: avg * 1024, max_size: avg * 1024 * 4 };
        let chunks = |data: &[u8]| -> Vec<Vec<u8>> {
            p.batches(data, 1 << 20).flat_map(|b| b.unwrap().chunks().map(<[u8]>::to_vec).collect::<Vec<_>>()).collect()
        };
        let seen: HashSet<blake3::Hash> = chunks(&old).iter().map(|c| blake3::hash(c)).collect();
        let (mut n, mut fresh) = (0, 0u64);
        for c in chunks(&new) {
            n += 1;
            if !seen.contains(&blake3::hash(&c)) {
                fresh += c.len() as u64;
            }
        }
        println!(
            "{:>7}K {:>7}K {:>7}K {n:>10} {fresh:>12} {:>7.1}%",
            p.min_size / 1024,
            avg,
            p.max_size / 1024,
            fresh as f64 * 100.0 / new.len() as f64
        );
    }
}
