//! The one small, seeded random number generator: reservoir sampling in the monitor,
//! reference samples, retry jitter in the retrain hook, and the tests' traffic.
//! Reproducible from a seed and free of dependencies; it imports nothing of vigil.

/// A small, seeded PRNG (xorshift64*): reproducible samples without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}
