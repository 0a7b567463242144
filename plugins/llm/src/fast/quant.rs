//! Quantized weights repacked for the kernels, quantized activations, and the matrix kernels.
//!
//! Weights are stored in tiles of 16 rows. For each block of 32 columns a tile holds the 16 rows'
//! scales side by side and their quants interleaved by groups of 4 columns: one 64-byte load gives
//! a register whose 32-bit lane `r` holds 4 consecutive quants of row `r`, which AVX-512 VNNI's
//! `vpdpbusd` multiplies by 4 activation bytes broadcast to every lane. So 16 rows' dot products
//! accumulate in the 16 lanes with no horizontal sums, and one tile's unpacked weights serve
//! several tokens (prompt processing) while they sit in registers.
//!
//! - [`Q4Tiles`] from GGUF Q4_1 (`w = d·q + m`, q in 0..16): per block and tile 16 f16 `d`,
//!   16 f16 `m`, 256 bytes of nibbles (byte `64g + 4r + j`: low nibble column `4g + j`, high nibble
//!   column `16 + 4g + j` of row `r`). The same 0.625 bytes per weight as the file.
//! - [`Q8Tiles`] from GGUF Q8_0 (`w = d·q`, q in -128..128): 16 f16 `d`, 512 bytes `q + 128` (u8,
//!   since `vpdpbusd` takes one unsigned operand), byte `64g + 4r + j` = column `4g + j` of row `r`.
//! - [`QActs`]: activations quantized per row and block of 32 to i8 with an f32 scale, the way
//!   candle/ggml quantize them for Q4_1/Q8_0 dot products (scale rounded to f16), so both decoders
//!   compute the same integer dot products.
//!
//! Every kernel has a portable scalar version; the fastest the CPU supports is chosen at run
//! time: AVX-512 VNNI, else AVX2 (most laptops and servers since 2013), where one 64-byte group
//! is two 32-byte halves (rows 0-7 and 8-15) and `vpmaddubsw` + `vpmaddwd` stand in for
//! `vpdpbusd`.

use half::f16;

/// Columns per quantization block.
pub const QK: usize = 32;
/// Rows per tile.
pub const TILE: usize = 16;
/// Tokens a kernel call processes against one tile while its weights are in registers.
pub const TOKENS: usize = 4;

const Q4_BLOCK: usize = 2 * TILE * 2 + TILE * QK / 2; // 320 bytes
const Q8_BLOCK: usize = TILE * 2 + TILE * QK; // 544 bytes

/// Which implementation of the kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust (the fallback, and the reference in tests).
    Scalar,
    /// AVX-512 F/BW with VNNI `vpdpbusd`.
    Avx512Vnni,
    /// AVX2 with FMA and F16C: `vpmaddubsw` byte pairs, summed in 16 bits, then `vpmaddwd`.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU supports (the last of [`Kernel::available`]).
    pub fn detect() -> Self {
        Kernel::available().pop().unwrap_or(Kernel::Scalar)
    }

    /// Every kernel this CPU can run, slowest first: the scalar reference, then AVX2, then
    /// AVX-512 VNNI (tests compare each with the first; `detect` takes the last).
    pub fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &[bool]| f.iter().all(|&b| b);
            use std::arch::is_x86_feature_detected as x86;
            if has(&[x86!("avx2"), x86!("fma"), x86!("f16c")]) {
                all.push(Kernel::Avx2);
            }
            if has(&[x86!("avx512f"), x86!("avx512bw"), x86!("avx512vnni")]) {
                all.push(Kernel::Avx512Vnni);
            }
        }
        all
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32()
}

/// Check that `raw` holds `rows` rows of `k` columns of a ggml block format.
fn check_raw(raw: &[u8], rows: usize, k: usize, block_bytes: usize, what: &str) -> Result<(), String> {
    if k == 0 || !k.is_multiple_of(QK) {
        return Err(format!("{what}: row length {k} is not a positive multiple of {QK}"));
    }
    let want = rows * k / QK * block_bytes;
    if raw.len() != want {
        return Err(format!("{what}: {} bytes of data, expected {want} for {rows}x{k}", raw.len()));
    }
    Ok(())
}

/// Q4_1 weights in tiles of 16 rows (see the module docs).
#[derive(Debug, Clone)]
pub struct Q4Tiles {
    rows: usize,
    k: usize,
    data: Vec<u8>,
}

impl Q4Tiles {
    /// Repack `rows` rows whose raw GGUF Q4_1 bytes `row(r)` returns (20 bytes per 32 columns).
    /// Rows past the last tile boundary are zero (they compute 0).
    pub fn from_q4_1<'a>(rows: usize, k: usize, row: impl Fn(usize) -> &'a [u8]) -> Self {
        let nb = k / QK;
        let tiles = rows.div_ceil(TILE);
        let mut data = vec![0u8; tiles * nb * Q4_BLOCK];
        for r in 0..rows {
            let src = row(r);
            debug_assert_eq!(src.len(), nb * 20);
            let (tile, lane) = (r / TILE, r % TILE);
            for b in 0..nb {
                let blk = &src[b * 20..(b + 1) * 20];
                let dst = &mut data[(tile * nb + b) * Q4_BLOCK..][..Q4_BLOCK];
                dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]);
                dst[32 + 2 * lane..32 + 2 * lane + 2].copy_from_slice(&blk[2..4]);
                let q = |c: usize| if c < 16 { blk[4 + c] & 0x0F } else { blk[4 + c - 16] >> 4 };
                for g in 0..4 {
                    for j in 0..4 {
                        dst[64 + 64 * g + 4 * lane + j] = q(4 * g + j) | (q(16 + 4 * g + j) << 4);
                    }
                }
            }
        }
        Self { rows, k, data }
    }

    /// Repack a whole row-major Q4_1 matrix.
    pub fn from_q4_1_matrix(raw: &[u8], rows: usize, k: usize) -> Result<Self, String> {
        check_raw(raw, rows, k, 20, "Q4_1 matrix")?;
        let rb = k / QK * 20;
        Ok(Self::from_q4_1(rows, k, |r| &raw[r * rb..(r + 1) * rb]))
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Tiles of 16 rows.
    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE)
    }

    fn tile_data(&self, tile: usize) -> &[u8] {
        let n = self.k / QK * Q4_BLOCK;
        &self.data[tile * n..(tile + 1) * n]
    }

    /// Dequantized weight (row, column), for tests.
    pub fn weight(&self, r: usize, c: usize) -> f32 {
        let blk = &self.tile_data(r / TILE)[(c / QK) * Q4_BLOCK..][..Q4_BLOCK];
        let lane = r % TILE;
        let cc = c % QK;
        let (g, j, hi) = if cc < 16 { (cc / 4, cc % 4, false) } else { ((cc - 16) / 4, cc % 4, true) };
        let byte = blk[64 + 64 * g + 4 * lane + j];
        let q = if hi { byte >> 4 } else { byte & 0x0F };
        f16_at(blk, lane) * q as f32 + f16_at(&blk[32..], lane)
    }
}

/// Q8_0 weights in tiles of 16 rows (see the module docs).
#[derive(Debug, Clone)]
pub struct Q8Tiles {
    rows: usize,
    k: usize,
    data: Vec<u8>,
}

impl Q8Tiles {
    /// Repack a row-major GGUF Q8_0 matrix (34 bytes per 32 columns).
    pub fn from_q8_0_matrix(raw: &[u8], rows: usize, k: usize) -> Result<Self, String> {
        check_raw(raw, rows, k, 34, "Q8_0 matrix")?;
        let nb = k / QK;
        let tiles = rows.div_ceil(TILE);
        let mut data = vec![0u8; tiles * nb * Q8_BLOCK];
        for r in 0..rows {
            let (tile, lane) = (r / TILE, r % TILE);
            for b in 0..nb {
                let blk = &raw[(r * nb + b) * 34..][..34];
                let dst = &mut data[(tile * nb + b) * Q8_BLOCK..][..Q8_BLOCK];
                dst[2 * lane..2 * lane + 2].copy_from_slice(&blk[0..2]);
                for g in 0..8 {
                    for j in 0..4 {
                        // i8 → u8 offset by 128 is flipping the sign bit.
                        dst[32 + 64 * g + 4 * lane + j] = blk[2 + 4 * g + j] ^ 0x80;
                    }
                }
            }
        }
        // Padding rows must compute 0: their scale is 0 already; quants of 128 mean q = 0.
        for r in rows..tiles * TILE {
            let (tile, lane) = (r / TILE, r % TILE);
            for b in 0..nb {
                let dst = &mut data[(tile * nb + b) * Q8_BLOCK..][..Q8_BLOCK];
                for g in 0..8 {
                    dst[32 + 64 * g + 4 * lane..][..4].fill(0x80);
                }
            }
        }
        Ok(Self { rows, k, data })
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Tiles of 16 rows.
    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE)
    }

    fn tile_data(&self, tile: usize) -> &[u8] {
        let n = self.k / QK * Q8_BLOCK;
        &self.data[tile * n..(tile + 1) * n]
    }

    /// Dequantized weight (row, column), for tests.
    pub fn weight(&self, r: usize, c: usize) -> f32 {
        let blk = &self.tile_data(r / TILE)[(c / QK) * Q8_BLOCK..][..Q8_BLOCK];
        let lane = r % TILE;
        let cc = c % QK;
        let q = (blk[32 + 64 * (cc / 4) + 4 * lane + cc % 4] ^ 0x80) as i8;
        f16_at(blk, lane) * q as f32
    }
}

/// Activations of `t` tokens × `k` features quantized per block of 32.
#[derive(Debug, Clone, Default)]
pub struct QActs {
    t: usize,
    k: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    /// `d · Σq` per block (the Q4_1 offset term), rounded as candle rounds it.
    s: Vec<f32>,
    /// `128 · Σq` per block (the Q8 kernel's unsigned-offset correction).
    bias: Vec<i32>,
}

impl QActs {
    /// Make room for `t` rows of `k` features (`k` a multiple of 32).
    pub fn resize(&mut self, t: usize, k: usize) {
        assert!(k.is_multiple_of(QK), "activation width {k} is not a multiple of {QK}");
        self.t = t;
        self.k = k;
        self.qs.resize(t * k, 0);
        self.d.resize(t * k / QK, 0.0);
        self.s.resize(t * k / QK, 0.0);
        self.bias.resize(t * k / QK, 0);
    }

    /// Rows.
    pub fn t(&self) -> usize {
        self.t
    }

    /// Features per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Split into per-row writers, for quantizing rows in parallel.
    pub fn rows_mut(&mut self) -> Vec<QActsRow<'_>> {
        let k = self.k;
        let nb = k / QK;
        if k == 0 {
            return Vec::new();
        }
        self.qs
            .chunks_mut(k)
            .zip(self.d.chunks_mut(nb))
            .zip(self.s.chunks_mut(nb))
            .zip(self.bias.chunks_mut(nb))
            .map(|(((qs, d), s), bias)| QActsRow { qs, d, s, bias })
            .collect()
    }

    /// Quantize one row (for single-threaded callers and tests).
    pub fn quantize_row(&mut self, row: usize, x: &[f32]) {
        let nb = self.k / QK;
        QActsRow {
            qs: &mut self.qs[row * self.k..(row + 1) * self.k],
            d: &mut self.d[row * nb..(row + 1) * nb],
            s: &mut self.s[row * nb..(row + 1) * nb],
            bias: &mut self.bias[row * nb..(row + 1) * nb],
        }
        .quantize(x);
    }

    /// Dequantized value, for tests.
    pub fn value(&self, row: usize, c: usize) -> f32 {
        self.qs[row * self.k + c] as f32 * self.d[row * self.k / QK + c / QK]
    }
}

/// One row of [`QActs`], writable on its own.
pub struct QActsRow<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    s: &'a mut [f32],
    bias: &'a mut [i32],
}

impl QActsRow<'_> {
    /// Quantize `x` (its length is the row's width) as ggml's `quantize_row_q8_1` does.
    pub fn quantize(&mut self, x: &[f32]) {
        assert_eq!(x.len(), self.qs.len(), "row width");
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let d16 = f16::from_f32(d);
            let mut sum = 0i32;
            for (q, &v) in self.qs[b * QK..(b + 1) * QK].iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            self.d[b] = d16.to_f32();
            self.s[b] = (f16::from_f32(sum as f32) * d16).to_f32();
            self.bias[b] = 128 * sum;
        }
    }
}

/// Output of one tile for up to [`TOKENS`] tokens: `out[token][lane]`.
pub type TileOut = [[f32; TILE]; TOKENS];

impl Kernel {
    /// Dot products of tile `tile` of `w` with activation rows `t0 .. t0 + n` (n ≤ 4).
    pub fn q4_tile(self, w: &Q4Tiles, tile: usize, a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
        assert!(n <= TOKENS && t0 + n <= a.t && a.k == w.k && tile < w.tiles(), "q4_tile arguments");
        let wt = w.tile_data(tile);
        match self {
            Kernel::Scalar => q4_tile_scalar(wt, a, t0, n, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512Vnni` is only constructed (detect) or used (tests take it from
            // `available`) on CPUs with AVX-512 F/BW/VNNI; bounds are checked above.
            Kernel::Avx512Vnni => unsafe { avx512::q4_tile(wt, a, t0, n, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only constructed on CPUs with AVX2/FMA/F16C (as above).
            Kernel::Avx2 => unsafe { avx2::q4_tile(wt, a, t0, n, out) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Vnni | Kernel::Avx2 => q4_tile_scalar(wt, a, t0, n, out),
        }
    }

    /// Dot products of tile `tile` of the Q8 matrix `w` with activation rows `t0 .. t0 + n`.
    pub fn q8_tile(self, w: &Q8Tiles, tile: usize, a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
        assert!(n <= TOKENS && t0 + n <= a.t && a.k == w.k && tile < w.tiles(), "q8_tile arguments");
        let wt = w.tile_data(tile);
        match self {
            Kernel::Scalar => q8_tile_scalar(wt, a, t0, n, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `q4_tile`.
            Kernel::Avx512Vnni => unsafe { avx512::q8_tile(wt, a, t0, n, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `q4_tile`.
            Kernel::Avx2 => unsafe { avx2::q8_tile(wt, a, t0, n, out) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Vnni | Kernel::Avx2 => q8_tile_scalar(wt, a, t0, n, out),
        }
    }
}

fn q4_tile_scalar(wt: &[u8], a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
    let nb = a.k / QK;
    *out = [[0.0; TILE]; TOKENS];
    for b in 0..nb {
        let blk = &wt[b * Q4_BLOCK..(b + 1) * Q4_BLOCK];
        let q = &blk[64..];
        for (t, o) in out.iter_mut().enumerate().take(n) {
            let row = t0 + t;
            let x = &a.qs[row * a.k + b * QK..][..QK];
            let dx = a.d[row * nb + b];
            let sx = a.s[row * nb + b];
            for (lane, acc) in o.iter_mut().enumerate() {
                let mut sum = 0i32;
                for g in 0..4 {
                    for j in 0..4 {
                        let byte = q[64 * g + 4 * lane + j];
                        sum += (byte & 0x0F) as i32 * x[4 * g + j] as i32;
                        sum += (byte >> 4) as i32 * x[16 + 4 * g + j] as i32;
                    }
                }
                *acc += sum as f32 * (f16_at(blk, lane) * dx);
                *acc += f16_at(&blk[32..], lane) * sx;
            }
        }
    }
}

fn q8_tile_scalar(wt: &[u8], a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
    let nb = a.k / QK;
    *out = [[0.0; TILE]; TOKENS];
    for b in 0..nb {
        let blk = &wt[b * Q8_BLOCK..(b + 1) * Q8_BLOCK];
        let q = &blk[32..];
        for (t, o) in out.iter_mut().enumerate().take(n) {
            let row = t0 + t;
            let x = &a.qs[row * a.k + b * QK..][..QK];
            let dx = a.d[row * nb + b];
            let bias = a.bias[row * nb + b];
            for (lane, acc) in o.iter_mut().enumerate() {
                let mut sum = 0i32;
                for g in 0..8 {
                    for j in 0..4 {
                        sum += q[64 * g + 4 * lane + j] as i32 * x[4 * g + j] as i32;
                    }
                }
                *acc += (sum - bias) as f32 * (f16_at(blk, lane) * dx);
            }
        }
    }
}

/// Call the `N`-token instance of a kernel for `n` ≤ 4 tokens (a const `N` keeps the per-token
/// accumulators in registers).
#[cfg(target_arch = "x86_64")]
macro_rules! by_tokens {
    ($kernel:ident, $wt:expr, $a:expr, $t0:expr, $n:expr, $out:expr) => {
        match $n {
            1 => $kernel::<1>($wt, $a, $t0, $out),
            2 => $kernel::<2>($wt, $a, $t0, $out),
            3 => $kernel::<3>($wt, $a, $t0, $out),
            _ => $kernel::<4>($wt, $a, $t0, $out),
        }
    };
}

/// Zero the outputs of the tokens past the first `n` (a kernel's contract: unused rows are 0).
#[cfg(target_arch = "x86_64")]
fn clear_unused(out: &mut TileOut, n: usize) {
    for o in out.iter_mut().skip(n) {
        *o = [0.0; TILE];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The AVX-512 VNNI kernels. Callers guarantee the CPU features and the bounds (checked in
    //! `Kernel::q4_tile`/`q8_tile`); every load below stays inside `wt` and `a`'s vectors.

    use super::{Q4_BLOCK, Q8_BLOCK, QActs, QK, TileOut, clear_unused};
    use std::arch::x86_64::*;

    /// SAFETY (callers): AVX-512 F/BW/VNNI present; `wt` holds `a.k / 32` blocks of 320 bytes;
    /// rows `t0 .. t0 + n` exist in `a`; n ≤ 4.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q4_tile(wt: &[u8], a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
        unsafe { by_tokens!(q4, wt, a, t0, n, out) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q4<const N: usize>(wt: &[u8], a: &QActs, t0: usize, out: &mut TileOut) {
        let nb = a.k / QK;
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            // SAFETY: block b spans wt[b*320 .. b*320+320], inside `wt` (nb blocks).
            unsafe {
                let base = wt.as_ptr().add(b * Q4_BLOCK);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
                let m = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(32) as *const __m256i));
                let mut w = [_mm512_setzero_si512(); 8];
                for g in 0..4 {
                    let v = _mm512_loadu_si512(base.add(64 + 64 * g) as *const __m512i);
                    w[g] = _mm512_and_si512(v, mask);
                    w[g + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                }
                for (t, acc) in acc.iter_mut().enumerate() {
                    let row = t0 + t;
                    // 32 activation bytes of this block: row*k + b*32 .. +32, inside `a.qs`.
                    let x = a.qs.as_ptr().add(row * a.k + b * QK) as *const i32;
                    let mut s = _mm512_setzero_si512();
                    // Register g holds columns 4g..4g+4 (low nibbles for g < 4, high nibbles
                    // of the same bytes, columns 16 + 4(g - 4).., for g ≥ 4): 4 bytes of x each.
                    for (g, w) in w.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, *w, _mm512_set1_epi32(x.add(g).read_unaligned()));
                    }
                    let dx = _mm512_set1_ps(*a.d.get_unchecked(row * nb + b));
                    let sx = _mm512_set1_ps(*a.s.get_unchecked(row * nb + b));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, dx), *acc);
                    *acc = _mm512_fmadd_ps(m, sx, *acc);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 f32s.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
        }
        clear_unused(out, N);
    }

    /// SAFETY (callers): as `q4_tile`, with blocks of 544 bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q8_tile(wt: &[u8], a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
        unsafe { by_tokens!(q8, wt, a, t0, n, out) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q8<const N: usize>(wt: &[u8], a: &QActs, t0: usize, out: &mut TileOut) {
        let nb = a.k / QK;
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            // SAFETY: block b spans wt[b*544 .. b*544+544], inside `wt`.
            unsafe {
                let base = wt.as_ptr().add(b * Q8_BLOCK);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(base as *const __m256i));
                let mut w = [_mm512_setzero_si512(); 8];
                for (g, w) in w.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(base.add(32 + 64 * g) as *const __m512i);
                }
                for (t, acc) in acc.iter_mut().enumerate() {
                    let row = t0 + t;
                    let x = a.qs.as_ptr().add(row * a.k + b * QK) as *const i32;
                    let mut s = _mm512_set1_epi32(-*a.bias.get_unchecked(row * nb + b));
                    for (g, w) in w.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(s, *w, _mm512_set1_epi32(x.add(g).read_unaligned()));
                    }
                    let dx = _mm512_set1_ps(*a.d.get_unchecked(row * nb + b));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, dx), *acc);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 f32s.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
        }
        clear_unused(out, N);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2 kernels: the AVX-512 ones on 8 lanes, each 64-byte group of a tile loaded as two
    //! halves (rows 0-7, rows 8-15). Callers guarantee the CPU features and the bounds.

    use super::{Q4_BLOCK, Q8_BLOCK, QActs, QK, TileOut, clear_unused};
    use std::arch::x86_64::*;

    /// SAFETY (callers): AVX2, FMA and F16C present; `wt` holds `a.k / 32` blocks of 320 bytes;
    /// rows `t0 .. t0 + n` exist in `a`; n ≤ 4.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_tile(wt: &[u8], a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
        unsafe { by_tokens!(q4, wt, a, t0, n, out) }
    }

    /// 8 f16 at `p` as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16x8(p: *const u8) -> __m256 {
        // SAFETY: callers pass 16 readable bytes.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4<const N: usize>(wt: &[u8], a: &QActs, t0: usize, out: &mut TileOut) {
        let nb = a.k / QK;
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for b in 0..nb {
            // SAFETY: block b spans wt[b*320 .. b*320+320], inside `wt` (nb blocks).
            unsafe {
                let base = wt.as_ptr().add(b * Q4_BLOCK);
                let d = [f16x8(base), f16x8(base.add(16))];
                let m = [f16x8(base.add(32)), f16x8(base.add(48))];
                // w[g][h]: columns 4g..4g+4 (low nibbles, g < 4) or 16 + 4(g - 4).. (high
                // nibbles of the same bytes) of rows 8h..8h+8, 4 per 32-bit lane.
                let mut w = [[_mm256_setzero_si256(); 2]; 8];
                let (low, high) = w.split_at_mut(4);
                for (g, (lo, hi)) in low.iter_mut().zip(high).enumerate() {
                    for h in 0..2 {
                        let v = _mm256_loadu_si256(base.add(64 + 64 * g + 32 * h) as *const __m256i);
                        lo[h] = _mm256_and_si256(v, mask);
                        hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                    }
                }
                for (t, acc) in acc.iter_mut().enumerate() {
                    let row = t0 + t;
                    let x = a.qs.as_ptr().add(row * a.k + b * QK) as *const i32;
                    // A 16-bit lane sums 2 products per group, |q · x| ≤ 15 · 127, over 8
                    // groups: at most 30,480, inside i16, so the widening waits for the end.
                    let mut s = [_mm256_setzero_si256(); 2];
                    for (g, w) in w.iter().enumerate() {
                        let xb = _mm256_set1_epi32(x.add(g).read_unaligned());
                        for h in 0..2 {
                            s[h] = _mm256_add_epi16(s[h], _mm256_maddubs_epi16(w[h], xb));
                        }
                    }
                    let dx = _mm256_set1_ps(*a.d.get_unchecked(row * nb + b));
                    let sx = _mm256_set1_ps(*a.s.get_unchecked(row * nb + b));
                    for h in 0..2 {
                        let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s[h], ones));
                        acc[h] = _mm256_fmadd_ps(s, _mm256_mul_ps(d[h], dx), acc[h]);
                        acc[h] = _mm256_fmadd_ps(m[h], sx, acc[h]);
                    }
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 f32s.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
            }
        }
        clear_unused(out, N);
    }

    /// SAFETY (callers): as `q4_tile`, with blocks of 544 bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_tile(wt: &[u8], a: &QActs, t0: usize, n: usize, out: &mut TileOut) {
        unsafe { by_tokens!(q8, wt, a, t0, n, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8<const N: usize>(wt: &[u8], a: &QActs, t0: usize, out: &mut TileOut) {
        let nb = a.k / QK;
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for b in 0..nb {
            // SAFETY: block b spans wt[b*544 .. b*544+544], inside `wt`.
            unsafe {
                let base = wt.as_ptr().add(b * Q8_BLOCK);
                let d = [f16x8(base), f16x8(base.add(16))];
                // The stored bytes are q + 128; `vpmaddubsw` on them would saturate (255 · 127 · 2),
                // so flip back to signed q and multiply |q| by x with q's sign (≤ 2 · 128 · 127).
                let mut w = [[_mm256_setzero_si256(); 2]; 8];
                let mut wabs = [[_mm256_setzero_si256(); 2]; 8];
                for g in 0..8 {
                    for h in 0..2 {
                        let v = _mm256_loadu_si256(base.add(32 + 64 * g + 32 * h) as *const __m256i);
                        w[g][h] = _mm256_xor_si256(v, flip);
                        wabs[g][h] = _mm256_sign_epi8(w[g][h], w[g][h]);
                    }
                }
                for (t, acc) in acc.iter_mut().enumerate() {
                    let row = t0 + t;
                    let x = a.qs.as_ptr().add(row * a.k + b * QK) as *const i32;
                    let mut s = [_mm256_setzero_si256(); 2];
                    for g in 0..8 {
                        let xb = _mm256_set1_epi32(x.add(g).read_unaligned());
                        for h in 0..2 {
                            let p = _mm256_maddubs_epi16(wabs[g][h], _mm256_sign_epi8(xb, w[g][h]));
                            s[h] = _mm256_add_epi32(s[h], _mm256_madd_epi16(p, ones));
                        }
                    }
                    let dx = _mm256_set1_ps(*a.d.get_unchecked(row * nb + b));
                    for h in 0..2 {
                        acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), _mm256_mul_ps(d[h], dx), acc[h]);
                    }
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: `o` is 16 f32s.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
            }
        }
        clear_unused(out, N);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    fn rand_f32(rng: &mut Rng, scale: f32) -> f32 {
        (rng.next_f64() as f32 * 2.0 - 1.0) * scale
    }

    /// Random raw GGUF Q4_1 rows: f16 d and m, random nibbles.
    fn random_q4_1(rng: &mut Rng, rows: usize, k: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for _ in 0..rows * k / QK {
            raw.extend_from_slice(&f16::from_f32(rand_f32(rng, 0.05).abs() + 1e-3).to_le_bytes());
            raw.extend_from_slice(&f16::from_f32(rand_f32(rng, 0.3)).to_le_bytes());
            raw.extend((0..16).map(|_| rng.next_u64() as u8));
        }
        raw
    }

    fn random_q8_0(rng: &mut Rng, rows: usize, k: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        for _ in 0..rows * k / QK {
            raw.extend_from_slice(&f16::from_f32(rand_f32(rng, 0.02).abs() + 1e-3).to_le_bytes());
            raw.extend((0..32).map(|_| rng.next_u64() as u8));
        }
        raw
    }

    fn random_acts(rng: &mut Rng, t: usize, k: usize) -> QActs {
        let mut a = QActs::default();
        a.resize(t, k);
        for row in 0..t {
            let x: Vec<f32> = (0..k).map(|_| rand_f32(rng, 3.0)).collect();
            a.quantize_row(row, &x);
        }
        a
    }

    /// Run a tile kernel over every tile and token group: `[token][row]`.
    fn run(
        kernel: Kernel,
        tiles: usize,
        rows: usize,
        a: &QActs,
        tile_fn: impl Fn(Kernel, usize, usize, usize, &mut TileOut),
    ) -> Vec<f32> {
        let mut out = vec![0f32; a.t() * rows];
        for tile in 0..tiles {
            for t0 in (0..a.t()).step_by(TOKENS) {
                let n = TOKENS.min(a.t() - t0);
                let mut o = [[f32::NAN; TILE]; TOKENS];
                tile_fn(kernel, tile, t0, n, &mut o);
                for (t, o) in o.iter().enumerate().take(n) {
                    for (lane, &v) in o.iter().enumerate() {
                        let r = tile * TILE + lane;
                        if r < rows {
                            out[(t0 + t) * rows + r] = v;
                        } else {
                            assert_eq!(v, 0.0, "padding row {r} must compute 0");
                        }
                    }
                }
            }
        }
        out
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: element {i}: {x} vs {y}");
        }
    }

    /// `w · x` in f64 over dequantized values, and `Σ |w·x|` (the scale of rounding errors).
    fn plain_f32(rows: usize, k: usize, t: usize, w: impl Fn(usize, usize) -> f32, a: &QActs) -> (Vec<f32>, Vec<f32>) {
        let mut out = Vec::new();
        let mut mag = Vec::new();
        for tt in 0..t {
            for r in 0..rows {
                let terms = (0..k).map(|c| w(r, c) as f64 * a.value(tt, c) as f64);
                out.push(terms.clone().sum::<f64>() as f32);
                mag.push(terms.map(f64::abs).sum::<f64>() as f32);
            }
        }
        (out, mag)
    }

    fn assert_close_scaled(a: &[f32], b: &[f32], mag: &[f32], tol: f32, what: &str) {
        for (i, ((x, y), m)) in a.iter().zip(b).zip(mag).enumerate() {
            assert!((x - y).abs() <= tol * (m + 1e-3), "{what}: element {i}: {x} vs {y} (scale {m})");
        }
    }

    #[test]
    fn q4_kernels_match_the_scalar_reference_and_plain_f32_on_odd_shapes() {
        let mut rng = Rng::new(1);
        for (rows, k, t) in [(37, 96, 5), (16, 32, 1), (3, 64, 4), (50, 576, 7), (33, 1536, 2)] {
            let raw = random_q4_1(&mut rng, rows, k);
            let w = Q4Tiles::from_q4_1_matrix(&raw, rows, k).unwrap();
            let a = random_acts(&mut rng, t, k);
            let f = |kern: Kernel, tile, t0, n, o: &mut TileOut| kern.q4_tile(&w, tile, &a, t0, n, o);
            let scalar = run(Kernel::Scalar, w.tiles(), rows, &a, f);
            // Plain f32 over the dequantized values: the scalar kernel is exact in integers, so it
            // differs only by float rounding (and the f16-rounded activation sums, as in ggml).
            let (plain, mag) = plain_f32(rows, k, t, |r, c| w.weight(r, c), &a);
            assert_close_scaled(&scalar, &plain, &mag, 1e-3, &format!("scalar vs f32, {rows}x{k}x{t}"));
            for kernel in Kernel::available() {
                let fast = run(kernel, w.tiles(), rows, &a, f);
                assert_close(&fast, &scalar, 1e-5, &format!("{kernel:?} vs scalar, {rows}x{k}x{t}"));
            }
        }
    }

    #[test]
    fn q8_kernels_match_the_scalar_reference_and_plain_f32_on_odd_shapes() {
        let mut rng = Rng::new(2);
        for (rows, k, t) in [(37, 96, 5), (16, 32, 1), (5, 64, 3), (70, 576, 6)] {
            let raw = random_q8_0(&mut rng, rows, k);
            let w = Q8Tiles::from_q8_0_matrix(&raw, rows, k).unwrap();
            let a = random_acts(&mut rng, t, k);
            let f = |kern: Kernel, tile, t0, n, o: &mut TileOut| kern.q8_tile(&w, tile, &a, t0, n, o);
            let scalar = run(Kernel::Scalar, w.tiles(), rows, &a, f);
            let (plain, mag) = plain_f32(rows, k, t, |r, c| w.weight(r, c), &a);
            assert_close_scaled(&scalar, &plain, &mag, 1e-5, &format!("scalar vs f32, {rows}x{k}x{t}"));
            for kernel in Kernel::available() {
                let fast = run(kernel, w.tiles(), rows, &a, f);
                assert_close(&fast, &scalar, 1e-5, &format!("{kernel:?} vs scalar, {rows}x{k}x{t}"));
            }
        }
    }

    #[test]
    fn repacking_keeps_every_weight() {
        let mut rng = Rng::new(3);
        let (rows, k) = (19, 64);
        let raw = random_q4_1(&mut rng, rows, k);
        let w = Q4Tiles::from_q4_1_matrix(&raw, rows, k).unwrap();
        for r in 0..rows {
            for c in 0..k {
                let blk = &raw[(r * k / QK + c / QK) * 20..][..20];
                let cc = c % QK;
                let q = if cc < 16 { blk[4 + cc] & 15 } else { blk[4 + cc - 16] >> 4 };
                let want = f16_at(blk, 0) * q as f32 + f16_at(&blk[2..], 0);
                assert_eq!(w.weight(r, c), want, "({r}, {c})");
            }
        }
        let raw = random_q8_0(&mut rng, rows, k);
        let w = Q8Tiles::from_q8_0_matrix(&raw, rows, k).unwrap();
        for r in 0..rows {
            for c in 0..k {
                let blk = &raw[(r * k / QK + c / QK) * 34..][..34];
                assert_eq!(w.weight(r, c), f16_at(blk, 0) * blk[2 + c % QK] as i8 as f32, "({r}, {c})");
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Q4Tiles::from_q4_1_matrix(&[0; 20], 1, 33).is_err());
        assert!(Q8Tiles::from_q8_0_matrix(&[0; 30], 1, 32).is_err());
    }

    #[test]
    fn activations_quantize_as_ggml_q8_1() {
        let mut a = QActs::default();
        a.resize(1, 32);
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
        a.quantize_row(0, &x);
        // amax 21 → q = round(x · 127 / 21); the largest maps to 127.
        assert_eq!(a.qs[31], 127);
        assert_eq!(a.qs[10], 0);
        assert!((a.value(0, 0) - -10.0).abs() < 0.1);
    }
}
