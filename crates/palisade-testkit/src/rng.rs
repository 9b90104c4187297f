//! splitmix64: a tiny, seeded, deterministic generator for latency samples.

/// The `index`-th output of splitmix64 seeded with `seed` (Steele, Lea and Flood, 2014).
///
/// A pure function of `(seed, index)`, so a request's sample does not depend on which requests
/// arrived before it or on how they interleaved across connections.
pub(crate) fn splitmix64(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in `0..=span`, from a uniformly distributed `r` (Lemire's multiply-shift; the bias
/// is below 2^-64 per value, far under anything a test can see).
pub(crate) fn below_or_eq(r: u64, span: u64) -> u64 {
    let range = u128::from(span) + 1;
    // (r * range) >> 64 < range <= 2^64, so it fits in u64.
    u64::try_from((u128::from(r) * range) >> 64).unwrap_or(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // splitmix64 seeded with 0: the first outputs of the reference implementation.
        assert_eq!(splitmix64(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0, 1), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(0, 2), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn bounded() {
        for span in [0, 1, 2, 7, 1000, u64::MAX] {
            for i in 0..1000 {
                assert!(below_or_eq(splitmix64(9, i), span) <= span);
            }
        }
        assert_eq!(below_or_eq(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(below_or_eq(0, 5), 0);
    }
}
