//! The deterministic validation split carved from `train.jsonl`.

/// SplitMix64: a tiny, well-mixed hash/PRNG step.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a of a string (stable across platforms and runs).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// Which conversation ids go to validation: the `round(fraction * n)` ids with
/// the smallest seeded hash. Depends only on the ids, the fraction and the
/// seed (not on file order).
pub fn validation_ids<'a>(ids: impl IntoIterator<Item = &'a str>, fraction: f64, seed: u64) -> Vec<&'a str> {
    let mut keyed: Vec<(u64, &str)> =
        ids.into_iter().map(|id| (splitmix64(fnv1a(id) ^ splitmix64(seed)), id)).collect();
    keyed.sort_unstable();
    keyed.dedup_by(|a, b| a.1 == b.1);
    let k = ((keyed.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    keyed.into_iter().take(k).map(|(_, id)| id).collect()
}

/// Whether conversation `id` belongs to a sample of `fraction` of the
/// conversations (`recipe.data_sample`): by a hash of the id alone, so a
/// conversation stays in (or out of) the sample as the data grows, and the
/// sample is independent of the validation split. `fraction >= 1` keeps all.
pub fn in_sample(id: &str, fraction: f64) -> bool {
    const SEED: u64 = 0x5341_4D50_4C45;
    fraction >= 1.0 || (splitmix64(fnv1a(id) ^ splitmix64(SEED)) as f64) < fraction * u64::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_keeps_about_its_fraction_and_grows_with_it() {
        let ids: Vec<String> = (0..4000).map(|i| format!("{}", 20000 + i)).collect();
        let fifth: Vec<&String> = ids.iter().filter(|id| in_sample(id, 0.2)).collect();
        assert!((700..900).contains(&fifth.len()), "{}", fifth.len());
        // A larger sample contains the smaller one; 1 keeps everything.
        assert!(fifth.iter().all(|id| in_sample(id, 0.5)));
        assert!(ids.iter().all(|id| in_sample(id, 1.0)));
    }

    #[test]
    fn split_is_deterministic_order_free_and_seeded() {
        let ids: Vec<String> = (0..1000).map(|i| format!("{}", 20000 + i)).collect();
        let a = validation_ids(ids.iter().map(String::as_str), 0.1, 42);
        let b = validation_ids(ids.iter().rev().map(String::as_str), 0.1, 42);
        let c = validation_ids(ids.iter().map(String::as_str), 0.1, 7);
        assert_eq!(a.len(), 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
