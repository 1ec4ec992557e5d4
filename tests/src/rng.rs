//! A small seeded pseudo-random generator for tests that pick random moments and bytes.
//!
//! Every test prints its seed on stderr (shown when it fails); `KUGETSU_TEST_SEED=N` replays
//! a run with the same choices.

use std::ops::Range;

/// SplitMix64: tiny, fast, and good enough to scatter kills and byte positions.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    seed: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn seeded(seed: u64) -> Rng {
        Rng { state: seed, seed }
    }

    /// A generator seeded from `KUGETSU_TEST_SEED`, else from the clock; prints the seed
    /// with `name` so a failure can be replayed.
    pub fn for_test(name: &str) -> Rng {
        let seed = std::env::var("KUGETSU_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ (u64::from(std::process::id()) << 32)
            });
        eprintln!("{name}: seed {seed} (replay with KUGETSU_TEST_SEED={seed})");
        Rng::seeded(seed)
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range` (which must not be empty).
    pub fn in_range(&mut self, range: Range<u64>) -> u64 {
        assert!(range.start < range.end, "empty range {range:?}");
        range.start + self.next_u64() % (range.end - range.start)
    }

    /// An index in `range` (which must not be empty).
    pub fn index(&mut self, range: Range<usize>) -> usize {
        self.in_range(range.start as u64..range.end as u64) as usize
    }
}
