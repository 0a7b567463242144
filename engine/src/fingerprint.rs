//! Fingerprints: short stable hashes that say whether what a stage was
//! trained from (its configuration, its data files, its upstream stages) is
//! still what it would be trained from now.
//!
//! FNV-1a (64 bit): stable across platforms, Rust versions and runs, which
//! `std`'s `DefaultHasher` does not promise. Not cryptographic: it detects
//! change, it does not authenticate.

use std::io::Read;
use std::path::Path;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(OFFSET)
    }
}

impl Fingerprint {
    /// An empty fingerprint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mix in bytes, length-prefixed so that `("ab", "c")` and `("a", "bc")` differ.
    pub fn bytes(mut self, data: &[u8]) -> Self {
        self = self.raw(&(data.len() as u64).to_le_bytes());
        self.raw(data)
    }

    /// Mix in a string.
    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    /// Mix in the contents of a file; the error names it.
    pub fn file(mut self, path: &Path) -> Result<Self, String> {
        let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            self = self.raw(&buf[..n]);
        }
        Ok(self.raw(&len.to_le_bytes()))
    }

    fn raw(mut self, data: &[u8]) -> Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self
    }

    /// The fingerprint as 16 hex digits.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_sensitive() {
        // FNV-1a of "" is the offset basis; a known value pins the algorithm.
        assert_eq!(Fingerprint::new().hex(), "cbf29ce484222325");
        let a = Fingerprint::new().str("ab").str("c").hex();
        let b = Fingerprint::new().str("a").str("bc").hex();
        assert_ne!(a, b);
        assert_eq!(a, Fingerprint::new().str("ab").str("c").hex());
    }

    #[test]
    fn files_hash_their_content() {
        let dir = std::env::temp_dir().join(format!("ecr-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.txt");
        std::fs::write(&p, "one").unwrap();
        let one = Fingerprint::new().file(&p).unwrap();
        std::fs::write(&p, "two").unwrap();
        assert_ne!(one, Fingerprint::new().file(&p).unwrap());
        assert!(Fingerprint::new().file(&dir.join("missing")).unwrap_err().contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
