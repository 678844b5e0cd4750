//! Newlines counted at memory speed: the rows of a `COPY` block.

/// The newlines in `b`, counted 64 bytes at a time in byte-wide counters
/// (which the compiler turns into vector compares: the scan follows the
/// whole stream on the chunker's thread, so it must cost next to nothing).
pub(super) fn count_lines(b: &[u8]) -> u64 {
    let mut total = 0u64;
    // a byte counter holds 255 blocks before it could wrap
    for run in b.chunks(64 * 255) {
        let mut counters = [0u8; 64];
        let blocks = run.chunks_exact(64);
        let rest = blocks.remainder();
        for block in blocks {
            for (c, x) in counters.iter_mut().zip(block) {
                *c += u8::from(*x == b'\n');
            }
        }
        total += counters.iter().map(|c| u64::from(*c)).sum::<u64>();
        total += rest.iter().filter(|x| **x == b'\n').count() as u64;
    }
    total
}
