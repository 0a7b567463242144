//! Our decoder for the Llama architecture: weights repacked at load into the tile layouts of
//! [`quant`], integer (VNNI) matrix kernels over quantized activations, attention over an f32 KV
//! cache, and a persistent [`pool::ThreadPool`].
//!
//! One forward pass over `T` tokens runs, per layer: RMSNorm + quantization per token; one fused
//! Q/K/V matrix product; RoPE (GGUF's interleaved pairs) and the KV-cache append; causal attention
//! per (token, head); the output projection added into the residual in the kernel's epilogue;
//! RMSNorm + quantization; one fused gate/up product whose epilogue applies SwiGLU (gate and up
//! tiles sit side by side); the down projection added into the residual. Every output element is
//! computed by one task with the same arithmetic whatever the thread count, so results do not
//! depend on it.

pub mod pool;
pub mod quant;

use crate::gguf::{GgufFile, LlamaConfig};
use crate::lora::{Adapter, Target};
use crate::{LlmError, Result};
use candle_core::quantized::GgmlDType;
use pool::ThreadPool;
use quant::{Kernel, Q4Tiles, Q8Tiles, QActs, QK, TILE, TOKENS, TileOut};
use std::cell::RefCell;

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V rows stacked: `d_model + 2 · kv_dim` rows.
    wqkv: Q4Tiles,
    wo: Q4Tiles,
    ffn_norm: Vec<f32>,
    /// Gate and up rows interleaved by tile: tile `2i` = gate rows `16i..`, `2i + 1` = up rows.
    w_gate_up: Q4Tiles,
    w_down: Q4Tiles,
    /// An adapter's pairs, in [`Target::ALL`] order.
    lora: [Option<LoraPair>; 7],
}

impl Layer {
    fn lora(&self, t: Target) -> Option<&LoraPair> {
        self.lora[t as usize].as_ref()
    }
}

/// One adapted projection as the decoder applies it beside the quantized weights: `A`
/// (`rank × in`) and `Bᵀ` scaled by `alpha / rank` (`rank × out`), so that both products are
/// contiguous dot products and axpys (f32, exact; re-quantizing merged weights to Q4_1 would
/// round most of a small update away).
struct LoraPair {
    rank: usize,
    d_in: usize,
    d_out: usize,
    a: Vec<f32>,
    bt: Vec<f32>,
}

impl LoraPair {
    fn of(adapter: &Adapter, l: usize, t: Target) -> Result<Option<LoraPair>> {
        let Some(p) = adapter.pair(l, t) else { return Ok(None) };
        let (rank, d_in) = p.a.dims2()?;
        let d_out = p.b.dims2()?.0;
        let a = p.a.flatten_all()?.to_vec1()?;
        let bt = (p.b.t()? * adapter.config().scale())?.contiguous()?.flatten_all()?.to_vec1()?;
        Ok(Some(LoraPair { rank, d_in, d_out, a, bt }))
    }

    /// `y[t][off..off + out] += B·A·x[t]` for every token row `t` of `x` (width `in`); rows of
    /// `y` are `ys` wide.
    fn add(&self, kernel: Kernel, pool: &ThreadPool, x: &[f32], y: &mut [f32], ys: usize, off: usize) {
        par_chunks(pool, y, ys, |t, row| {
            let x = &x[t * self.d_in..(t + 1) * self.d_in];
            let out = &mut row[off..off + self.d_out];
            match kernel {
                // SAFETY: both kernels are only selected on CPUs with AVX2 and FMA (`Kernel::detect`).
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 | Kernel::Avx512Vnni => unsafe { self.row_avx2(x, out) },
                _ => self.row(x, out),
            }
        });
    }

    #[inline(always)]
    fn row(&self, x: &[f32], out: &mut [f32]) {
        for j in 0..self.rank {
            let u = dot(&self.a[j * self.d_in..(j + 1) * self.d_in], x);
            for (o, &b) in out.iter_mut().zip(&self.bt[j * self.d_out..(j + 1) * self.d_out]) {
                *o += u * b;
            }
        }
    }

    /// [`Self::row`] compiled for AVX2 (the same operations in the same order: equal results).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_avx2(&self, x: &[f32], out: &mut [f32]) {
        self.row(x, out)
    }
}

/// The fast decoder's weights (shared by sessions) and its thread pool.
pub struct FastModel {
    cfg: LlamaConfig,
    kernel: Kernel,
    pool: ThreadPool,
    /// `token_embd` as in the file (Q8_0 rows) for the lookup.
    embed: Vec<u8>,
    /// The same matrix repacked: the tied output projection.
    head: Q8Tiles,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos/sin of RoPE angles, `[position][head_dim / 2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// A session's state: the KV cache and scratch buffers.
pub struct FastState {
    pos: usize,
    /// Per layer, keys transposed by blocks of 16 positions: `[pos / 16][kv head][dim][pos % 16]`,
    /// so that scores of 16 positions are 16 lanes of one vector (no horizontal sums).
    k: Vec<Vec<f32>>,
    /// Per layer values, `[position][kv_dim]`.
    v: Vec<Vec<f32>>,
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    ff: Vec<f32>,
    /// An adapter's gate and up updates (`T × d_ff`), added in the SwiGLU epilogue.
    lora_gate: Vec<f32>,
    lora_up: Vec<f32>,
    acts: QActs,
}

impl FastState {
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn reset(&mut self) {
        self.pos = 0;
        self.k.iter_mut().for_each(Vec::clear);
        self.v.iter_mut().for_each(Vec::clear);
    }
}

fn f32_tensor(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g.tensor(name)?;
    let v = t.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    if v.len() != len {
        return Err(g.error(format!("tensor `{name}` has {} values, expected {len}", v.len())));
    }
    Ok(v)
}

/// Raw blocks of a tensor that must have `dtype` and shape `rows × k`.
fn raw_tensor(g: &GgufFile, name: &str, dtype: GgmlDType, rows: usize, k: usize) -> Result<Vec<u8>> {
    let t = g.tensor(name)?;
    if t.dtype() != dtype {
        return Err(g.error(format!(
            "tensor `{name}` is {:?}; the fast decoder reads {dtype:?} here (use the candle decoder for other formats)",
            t.dtype()
        )));
    }
    if t.shape().dims() != [rows, k] {
        return Err(g.error(format!("tensor `{name}` has shape {:?}, expected [{rows}, {k}]", t.shape().dims())));
    }
    Ok(t.data()?.into_owned())
}

impl FastModel {
    /// Repack the file's weights; `threads` defaults to the available parallelism.
    /// An adapter is applied beside the quantized weights, in f32 ([`LoraPair`]).
    pub(crate) fn load(
        g: &GgufFile,
        cfg: &LlamaConfig,
        threads: Option<usize>,
        force_scalar: bool,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let (d, f, kv) = (cfg.d_model, cfg.d_ff, cfg.n_kv_head * cfg.head_dim());
        if !d.is_multiple_of(QK)
            || !f.is_multiple_of(QK)
            || !f.is_multiple_of(TILE)
            || !cfg.head_dim().is_multiple_of(2)
        {
            return Err(g.error(format!(
                "the fast decoder needs d_model and d_ff multiples of {QK} and d_ff of {TILE} (got {d}, {f})"
            )));
        }
        let rb = |k: usize| k / QK * 20;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            let q4 = |t: Target| -> Result<Vec<u8>> {
                let (rows, k) = t.shape(cfg);
                raw_tensor(g, &t.gguf_name(l), GgmlDType::Q4_1, rows, k)
            };
            let lora = match adapter {
                Some(a) => Target::ALL.map(|t| LoraPair::of(a, l, t)),
                None => Target::ALL.map(|_| Ok(None)),
            };
            let [q, k, v, o, gate, up, down] = lora;
            let lora = [q?, k?, v?, o?, gate?, up?, down?];
            let (wq, wk, wv) = (q4(Target::Q)?, q4(Target::K)?, q4(Target::V)?);
            let wqkv = Q4Tiles::from_q4_1(d + 2 * kv, d, |r| {
                let (m, r) = if r < d {
                    (&wq, r)
                } else if r < d + kv {
                    (&wk, r - d)
                } else {
                    (&wv, r - d - kv)
                };
                &m[r * rb(d)..(r + 1) * rb(d)]
            });
            let (wg, wu) = (q4(Target::Gate)?, q4(Target::Up)?);
            let w_gate_up = Q4Tiles::from_q4_1(2 * f, d, |r| {
                let (tile, lane) = (r / TILE, r % TILE);
                let src = if tile % 2 == 0 { &wg } else { &wu };
                let row = tile / 2 * TILE + lane;
                &src[row * rb(d)..(row + 1) * rb(d)]
            });
            let wo = Q4Tiles::from_q4_1_matrix(&q4(Target::O)?, d, d).map_err(|e| g.error(e))?;
            let w_down = Q4Tiles::from_q4_1_matrix(&q4(Target::Down)?, d, f).map_err(|e| g.error(e))?;
            layers.push(Layer {
                attn_norm: f32_tensor(g, &p("attn_norm.weight"), d)?,
                ffn_norm: f32_tensor(g, &p("ffn_norm.weight"), d)?,
                wqkv,
                wo,
                w_gate_up,
                w_down,
                lora,
            });
        }
        let embed = raw_tensor(g, "token_embd.weight", GgmlDType::Q8_0, cfg.vocab, d)?;
        let head = if g.content().tensor_infos.contains_key("output.weight") {
            let raw = raw_tensor(g, "output.weight", GgmlDType::Q8_0, cfg.vocab, d)?;
            Q8Tiles::from_q8_0_matrix(&raw, cfg.vocab, d)
        } else {
            Q8Tiles::from_q8_0_matrix(&embed, cfg.vocab, d)
        }
        .map_err(|e| g.error(e))?;
        let (rope_cos, rope_sin) = rope_tables(cfg.head_dim(), cfg.rope_theta, cfg.context);
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
        let kernel = if force_scalar { Kernel::Scalar } else { Kernel::detect() };
        Ok(Self {
            cfg: cfg.clone(),
            kernel,
            pool: ThreadPool::new(threads),
            embed,
            head,
            out_norm: f32_tensor(g, "output_norm.weight", d)?,
            layers,
            rope_cos,
            rope_sin,
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("ecr-llm fast decoder, Q4_1/Q8_0 tiles, {:?} kernels, {} threads", self.kernel, self.pool.threads())
    }

    /// The kernels in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub(crate) fn new_state(&self) -> FastState {
        FastState {
            pos: 0,
            k: vec![Vec::new(); self.cfg.n_layer],
            v: vec![Vec::new(); self.cfg.n_layer],
            x: Vec::new(),
            h: Vec::new(),
            qkv: Vec::new(),
            att: Vec::new(),
            ff: Vec::new(),
            lora_gate: Vec::new(),
            lora_up: Vec::new(),
            acts: QActs::default(),
        }
    }

    /// Run `tokens` from the state's position; the logits after the last one.
    pub(crate) fn forward(&self, s: &mut FastState, tokens: &[u32]) -> Result<Vec<f32>> {
        self.run(s, tokens, self.cfg.n_layer)?;
        Ok(self.head_logits(s, tokens.len()))
    }

    /// The residual stream (`T × d_model`, row-major) of `tokens` from the state's position as
    /// it enters layer `layer` (the input of the layers an adapter trains, computed as
    /// generation computes it). The state's cache is left filled for the first `layer` layers
    /// only: use a fresh state afterwards.
    pub(crate) fn residual_before(&self, s: &mut FastState, tokens: &[u32], layer: usize) -> Result<Vec<f32>> {
        self.run(s, tokens, layer.min(self.cfg.n_layer))?;
        Ok(s.x[..tokens.len() * self.cfg.d_model].to_vec())
    }

    /// Run `tokens` through the first `layers` layers, leaving the residual stream in `s.x`.
    fn run(&self, s: &mut FastState, tokens: &[u32], layers: usize) -> Result<()> {
        let _span = tracing::trace_span!("fast_forward", tokens = tokens.len()).entered();
        let c = &self.cfg;
        let (t_n, d, f) = (tokens.len(), c.d_model, c.d_ff);
        let (hd, kv) = (c.head_dim(), c.n_kv_head * c.head_dim());
        let qkv_w = d + 2 * kv;
        if s.pos + t_n > c.context {
            return Err(LlmError::Invalid(format!("position {} is past the context of {}", s.pos + t_n, c.context)));
        }
        let p0 = s.pos;
        s.x.resize(t_n * d, 0.0);
        s.h.resize(t_n * d, 0.0);
        s.qkv.resize(t_n * qkv_w, 0.0);
        s.att.resize(t_n * d, 0.0);
        s.ff.resize(t_n * f, 0.0);
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed_row(tok as usize, &mut s.x[t * d..(t + 1) * d]);
        }
        for (l, layer) in self.layers.iter().enumerate().take(layers) {
            // Attention block.
            self.norm_quantize(&s.x, &layer.attn_norm, &mut s.acts, d);
            let qkv = Out::new(&mut s.qkv);
            self.matmul_q4(&layer.wqkv, &s.acts, |tile, t0, n, o| {
                // SAFETY: a tile's (token, row) elements are written by its task only.
                unsafe { qkv.store(o, t0, n, qkv_w, tile * TILE, false) }
            });
            if [Target::Q, Target::K, Target::V].iter().any(|&t| layer.lora(t).is_some()) {
                self.norm_rows(&s.x, &layer.attn_norm, &mut s.h, d);
                for (t, off) in [(Target::Q, 0), (Target::K, d), (Target::V, d + kv)] {
                    if let Some(p) = layer.lora(t) {
                        p.add(self.kernel, &self.pool, &s.h, &mut s.qkv, qkv_w, off);
                    }
                }
            }
            par_chunks(&self.pool, &mut s.qkv, qkv_w, |t, row| {
                let pos = p0 + t;
                for head in row[..d + kv].chunks_exact_mut(hd) {
                    self.rope(head, pos);
                }
            });
            let (kc, vc) = (&mut s.k[l], &mut s.v[l]);
            kc.resize((p0 + t_n).div_ceil(KEY_BLOCK) * KEY_BLOCK * kv, 0.0);
            vc.truncate(p0 * kv);
            for (t, row) in s.qkv.chunks_exact(qkv_w).enumerate() {
                let pos = p0 + t;
                for (i, &val) in row[d..d + kv].iter().enumerate() {
                    kc[key_index(pos, i / hd, i % hd, c.n_kv_head, hd)] = val;
                }
                vc.extend_from_slice(&row[d + kv..]);
            }
            let (kc, vc, qkv) = (&*kc, &*vc, &s.qkv);
            let group = c.n_head / c.n_kv_head;
            par_chunks(&self.pool, &mut s.att, hd, |i, out| {
                let (t, head) = (i / c.n_head, i % c.n_head);
                let q = &qkv[t * qkv_w + head * hd..][..hd];
                let cache = KvView { k: kc, v: vc, n_kv: c.n_kv_head, head: head / group };
                attend(self.kernel, q, &cache, p0 + t + 1, out);
            });
            quantize_rows(&self.pool, &s.att, &mut s.acts, d);
            let x = Out::new(&mut s.x);
            self.matmul_q4(&layer.wo, &s.acts, |tile, t0, n, o| {
                // SAFETY: as above; the residual add is the element's only access.
                unsafe { x.store(o, t0, n, d, tile * TILE, true) }
            });
            if let Some(p) = layer.lora(Target::O) {
                p.add(self.kernel, &self.pool, &s.att, &mut s.x, d, 0);
            }
            // Feed-forward block.
            self.norm_quantize(&s.x, &layer.ffn_norm, &mut s.acts, d);
            let (lg, lu) = (layer.lora(Target::Gate), layer.lora(Target::Up));
            if lg.is_some() || lu.is_some() {
                self.norm_rows(&s.x, &layer.ffn_norm, &mut s.h, d);
                for (p, buf) in [(lg, &mut s.lora_gate), (lu, &mut s.lora_up)] {
                    buf.clear();
                    if let Some(p) = p {
                        buf.resize(t_n * f, 0.0);
                        p.add(self.kernel, &self.pool, &s.h, buf, f, 0);
                    }
                }
            }
            let ff = Out::new(&mut s.ff);
            let (dg, du) = (&s.lora_gate, &s.lora_up);
            let (has_g, has_u) = (lg.is_some(), lu.is_some());
            self.matmul_q4_pairs(&layer.w_gate_up, &s.acts, |pair, t0, n, gate, up| {
                let mut o: TileOut = [[0.0; TILE]; TOKENS];
                for (i, ((o, g), u)) in o.iter_mut().zip(gate).zip(up).take(n).enumerate() {
                    let at = (t0 + i) * f + pair * TILE;
                    for (j, ((o, &g), &u)) in o.iter_mut().zip(g).zip(u).enumerate() {
                        let g = if has_g { g + dg[at + j] } else { g };
                        let u = if has_u { u + du[at + j] } else { u };
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                }
                // SAFETY: features `16·pair ..` belong to this pair's task.
                unsafe { ff.store(&o, t0, n, f, pair * TILE, false) }
            });
            quantize_rows(&self.pool, &s.ff, &mut s.acts, f);
            let x = Out::new(&mut s.x);
            self.matmul_q4(&layer.w_down, &s.acts, |tile, t0, n, o| {
                // SAFETY: as above; the residual add is the element's only access.
                unsafe { x.store(o, t0, n, d, tile * TILE, true) }
            });
            if let Some(p) = layer.lora(Target::Down) {
                p.add(self.kernel, &self.pool, &s.ff, &mut s.x, d, 0);
            }
        }
        s.pos += t_n;
        Ok(())
    }

    /// The logits after the last of the `t_n` tokens just run.
    fn head_logits(&self, s: &mut FastState, t_n: usize) -> Vec<f32> {
        let (c, d) = (&self.cfg, self.cfg.d_model);
        // Output: the last token only.
        let last = &s.x[(t_n - 1) * d..];
        rms_norm(last, &self.out_norm, c.rms_eps, &mut s.h[..d]);
        s.acts.resize(1, d);
        s.acts.quantize_row(0, &s.h[..d]);
        let mut logits = vec![0f32; self.head.tiles() * TILE];
        let out = Out::new(&mut logits);
        let acts = &s.acts;
        self.pool.for_each(self.head.tiles().div_ceil(HEAD_TILES_PER_TASK), |task| {
            let mut o: TileOut = [[0.0; TILE]; TOKENS];
            let end = ((task + 1) * HEAD_TILES_PER_TASK).min(self.head.tiles());
            for tile in task * HEAD_TILES_PER_TASK..end {
                self.kernel.q8_tile(&self.head, tile, acts, 0, 1, &mut o);
                // SAFETY: tile `tile` is this task's only.
                unsafe { out.store(&o, 0, 1, 0, tile * TILE, false) }
            }
        });
        logits.truncate(c.vocab);
        logits
    }

    fn embed_row(&self, tok: usize, out: &mut [f32]) {
        let nb = self.cfg.d_model / QK;
        let row = &self.embed[tok * nb * 34..(tok + 1) * nb * 34];
        for (blk, o) in row.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
            let dd = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            for (o, &q) in o.iter_mut().zip(&blk[2..]) {
                *o = q as i8 as f32 * dd;
            }
        }
    }

    /// RMSNorm every token row of `x` (width `d`) into `out`, in f32 (an adapter's input).
    fn norm_rows(&self, x: &[f32], w: &[f32], out: &mut Vec<f32>, d: usize) {
        out.resize(x.len(), 0.0);
        let eps = self.cfg.rms_eps;
        par_chunks(&self.pool, out, d, |t, row| rms_norm(&x[t * d..(t + 1) * d], w, eps, row));
    }

    /// RMSNorm every token row of `x` (width `d`) and quantize it into `acts`.
    fn norm_quantize(&self, x: &[f32], w: &[f32], acts: &mut QActs, d: usize) {
        let t_n = x.len() / d;
        acts.resize(t_n, d);
        let mut rows = acts.rows_mut();
        let eps = self.cfg.rms_eps;
        par_chunks(&self.pool, &mut rows, 1, |t, row| {
            SCRATCH.with_borrow_mut(|h| {
                h.resize(d, 0.0);
                rms_norm(&x[t * d..(t + 1) * d], w, eps, h);
                row[0].quantize(h);
            });
        });
    }

    fn rope(&self, head: &mut [f32], pos: usize) {
        let half = head.len() / 2;
        let (cos, sin) = (&self.rope_cos[pos * half..][..half], &self.rope_sin[pos * half..][..half]);
        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos[i] - b * sin[i];
            pair[1] = a * sin[i] + b * cos[i];
        }
    }

    /// `w · acts` tile by tile on the pool; `epilogue(tile, t0, n, out)` stores each tile's
    /// results for tokens `t0 .. t0 + n`.
    fn matmul_q4(&self, w: &Q4Tiles, acts: &QActs, epilogue: impl Fn(usize, usize, usize, &TileOut) + Sync) {
        self.pool.for_each(w.tiles(), |tile| {
            let mut o: TileOut = [[0.0; TILE]; TOKENS];
            for t0 in (0..acts.t()).step_by(TOKENS) {
                let n = TOKENS.min(acts.t() - t0);
                self.kernel.q4_tile(w, tile, acts, t0, n, &mut o);
                epilogue(tile, t0, n, &o);
            }
        });
    }

    /// Like [`Self::matmul_q4`] over pairs of tiles (`2i`, `2i + 1`), for gate/up.
    fn matmul_q4_pairs(
        &self,
        w: &Q4Tiles,
        acts: &QActs,
        epilogue: impl Fn(usize, usize, usize, &TileOut, &TileOut) + Sync,
    ) {
        self.pool.for_each(w.tiles() / 2, |pair| {
            let (mut a, mut b): (TileOut, TileOut) = ([[0.0; TILE]; TOKENS], [[0.0; TILE]; TOKENS]);
            for t0 in (0..acts.t()).step_by(TOKENS) {
                let n = TOKENS.min(acts.t() - t0);
                self.kernel.q4_tile(w, 2 * pair, acts, t0, n, &mut a);
                self.kernel.q4_tile(w, 2 * pair + 1, acts, t0, n, &mut b);
                epilogue(pair, t0, n, &a, &b);
            }
        });
    }
}

/// Output tiles of the vocabulary projection per task (3,072 tiles for SmolLM2).
const HEAD_TILES_PER_TASK: usize = 16;

thread_local! {
    /// Per-thread scratch (a normalized row, attention scores).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn rope_tables(head_dim: usize, theta: f32, positions: usize) -> (Vec<f32>, Vec<f32>) {
    // As candle computes them (f32 throughout), so both decoders rotate by the same angles.
    let freqs: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(positions * freqs.len());
    let mut sin = Vec::with_capacity(positions * freqs.len());
    for p in 0..positions {
        for &fr in &freqs {
            let a = p as f32 * fr;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// `out = x / rms(x) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * w;
    }
}

/// Positions per block of the transposed key cache.
pub const KEY_BLOCK: usize = 16;

/// Index of key `(pos, kv head, dim)` in the transposed key cache.
pub fn key_index(pos: usize, head: usize, dim: usize, n_kv: usize, hd: usize) -> usize {
    ((pos / KEY_BLOCK * n_kv + head) * hd + dim) * KEY_BLOCK + pos % KEY_BLOCK
}

/// One key/value head of a layer's cache.
pub struct KvView<'a> {
    /// Transposed keys (see `key_index`).
    pub k: &'a [f32],
    /// Values, `[position][n_kv · head_dim]`.
    pub v: &'a [f32],
    /// Key/value heads.
    pub n_kv: usize,
    /// Which one.
    pub head: usize,
}

/// Causal attention of one query head over positions `0..n` of the cache, with the kernels'
/// instruction set.
pub fn attend(kernel: Kernel, q: &[f32], cache: &KvView<'_>, n: usize, out: &mut [f32]) {
    let hd = q.len();
    let kv_dim = cache.n_kv * hd;
    assert!(
        n >= 1
            && cache.head < cache.n_kv
            && n.div_ceil(KEY_BLOCK) * KEY_BLOCK * kv_dim <= cache.k.len()
            && n * kv_dim <= cache.v.len()
            && out.len() == hd,
        "attend bounds"
    );
    let mut scores = SCORES.with_borrow_mut(std::mem::take);
    scores.clear();
    scores.resize(n.div_ceil(KEY_BLOCK) * KEY_BLOCK, 0.0);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx512Vnni` is only selected on CPUs with AVX-512 (see `Kernel::detect`);
        // bounds are checked above and the head size here.
        Kernel::Avx512Vnni if hd.is_multiple_of(16) && hd <= 128 => unsafe {
            attend_avx512(q, cache, n, &mut scores, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is only selected on CPUs with AVX2 and FMA; bounds as above.
        Kernel::Avx2 if hd.is_multiple_of(8) && hd <= 128 => unsafe { attend_avx2(q, cache, n, &mut scores, out) },
        _ => attend_portable(q, cache, n, &mut scores, out),
    }
    SCORES.with_borrow_mut(|s| *s = scores);
}

fn attend_portable(q: &[f32], c: &KvView<'_>, n: usize, sc: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    let kv_dim = c.n_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let sc = &mut sc[..n];
    let mut max = f32::NEG_INFINITY;
    for (j, s) in sc.iter_mut().enumerate() {
        *s = q.iter().enumerate().map(|(d, &qd)| qd * c.k[key_index(j, c.head, d, c.n_kv, hd)]).sum::<f32>() * scale;
        max = max.max(*s);
    }
    let mut sum = 0.0;
    for s in sc.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / sum;
    for (j, &p) in sc.iter().enumerate() {
        let w = p * inv;
        for (o, &vv) in out.iter_mut().zip(&c.v[j * kv_dim + c.head * hd..][..hd]) {
            *o += w * vv;
        }
    }
}

/// `2^f` for |f| ≤ 0.5: the degree-7 Taylor coefficients of `e^(f·ln 2)`, shared by the SIMD `exp`s.
#[cfg(target_arch = "x86_64")]
const EXP2_POLY: [f32; 8] =
    [1.0, std::f32::consts::LN_2, 0.240_226_5, 0.055_504_11, 0.009_618_129, 0.001_333_355, 1.540_353e-4, 1.525_273e-5];

/// `e^x` on 16 lanes (x ≤ 0 here; below -87 it flushes towards 0): `2^(x·log2 e)` split into an
/// integer power (`vscalefps`) and `2^f`, |f| ≤ 0.5, by its degree-7 Taylor polynomial (relative
/// error under 1e-7, below f32 rounding of the scores).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut p = _mm512_set1_ps(EXP2_POLY[7]);
    for &c in EXP2_POLY[..7].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// SAFETY (callers): AVX-512 F present; `q.len()` a multiple of 16 and at most 128; the bounds
/// checked in `attend`; `sc.len()` = `n` rounded up to 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512(q: &[f32], c: &KvView<'_>, n: usize, sc: &mut [f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = q.len();
    let kv_dim = c.n_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    // SAFETY (whole body): key blocks `0..ceil(n / 16)` and value rows `0..n` are inside the
    // cache (checked by `attend`); `q`, `out` have `hd` elements and `sc` 16 per key block.
    unsafe {
        // Scores of 16 positions at a time: lane i = position 16b + i; 4 chains for the FMA latency.
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for b in 0..n.div_ceil(KEY_BLOCK) {
            let base = c.k.as_ptr().add((b * c.n_kv + c.head) * hd * KEY_BLOCK);
            let mut acc = [_mm512_setzero_ps(); 4];
            for d in (0..hd).step_by(4) {
                for (i, acc) in acc.iter_mut().enumerate() {
                    let kd = _mm512_loadu_ps(base.add((d + i) * KEY_BLOCK));
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*q.get_unchecked(d + i)), kd, *acc);
                }
            }
            let mut s = _mm512_mul_ps(
                _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])),
                _mm512_set1_ps(scale),
            );
            let valid = n - b * KEY_BLOCK;
            if valid < KEY_BLOCK {
                let keep: __mmask16 = ((1u32 << valid) - 1) as __mmask16;
                s = _mm512_mask_blend_ps(keep, _mm512_set1_ps(f32::NEG_INFINITY), s);
            }
            vmax = _mm512_max_ps(vmax, s);
            _mm512_storeu_ps(sc.as_mut_ptr().add(b * KEY_BLOCK), s);
        }
        let vmax = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut vsum = _mm512_setzero_ps();
        for b in 0..n.div_ceil(KEY_BLOCK) {
            let p = sc.as_mut_ptr().add(b * KEY_BLOCK);
            let mut e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p), vmax));
            let valid = n - b * KEY_BLOCK;
            if valid < KEY_BLOCK {
                e = _mm512_maskz_mov_ps(((1u32 << valid) - 1) as __mmask16, e);
            }
            vsum = _mm512_add_ps(vsum, e);
            _mm512_storeu_ps(p, e);
        }
        let inv = 1.0 / _mm512_reduce_add_ps(vsum);
        let regs = hd / 16;
        let mut o = [_mm512_setzero_ps(); 8];
        for (j, &p) in sc[..n].iter().enumerate() {
            let w = _mm512_set1_ps(p * inv);
            let vp = c.v.as_ptr().add(j * kv_dim + c.head * hd);
            for (r, o) in o.iter_mut().enumerate().take(regs) {
                *o = _mm512_fmadd_ps(w, _mm512_loadu_ps(vp.add(16 * r)), *o);
            }
        }
        for (r, o) in o.iter().enumerate().take(regs) {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * r), *o);
        }
    }
}

/// `e^x` on 8 lanes (x ≤ 0; below -87 it flushes towards 0): as [`exp512`], with the power of two
/// built in the exponent bits (`n + 127 << 23`, n ≥ -126 after the clamp) since AVX2 has no
/// `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let t = _mm256_mul_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm256_sub_ps(t, n);
    let mut p = _mm256_set1_ps(EXP2_POLY[7]);
    for &c in EXP2_POLY[..7].iter().rev() {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    let pow = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow))
}

/// SAFETY (callers): AVX2 and FMA present; `q.len()` a multiple of 8 and at most 128; the
/// bounds checked in `attend`; `sc.len()` = `n` rounded up to 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(q: &[f32], c: &KvView<'_>, n: usize, sc: &mut [f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = q.len();
    let kv_dim = c.n_kv * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Lanes of half `h` of key block `b` that hold positions below `n`.
    let valid = |b: usize, h: usize| {
        let left = (n - b * KEY_BLOCK) as i32 - 8 * h as i32;
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane))
    };
    // SAFETY (whole body): as in `attend_avx512`.
    unsafe {
        // Scores of 16 positions at a time, as two halves of 8; 2 chains each for the latency.
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for b in 0..n.div_ceil(KEY_BLOCK) {
            let base = c.k.as_ptr().add((b * c.n_kv + c.head) * hd * KEY_BLOCK);
            let mut acc = [_mm256_setzero_ps(); 4];
            for d in (0..hd).step_by(2) {
                for i in 0..2 {
                    let qd = _mm256_set1_ps(*q.get_unchecked(d + i));
                    let row = base.add((d + i) * KEY_BLOCK);
                    acc[2 * i] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row), acc[2 * i]);
                    acc[2 * i + 1] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row.add(8)), acc[2 * i + 1]);
                }
            }
            for h in 0..2 {
                let s = _mm256_mul_ps(_mm256_add_ps(acc[h], acc[2 + h]), _mm256_set1_ps(scale));
                let s = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), s, valid(b, h));
                vmax = _mm256_max_ps(vmax, s);
                _mm256_storeu_ps(sc.as_mut_ptr().add(b * KEY_BLOCK + 8 * h), s);
            }
        }
        let mut m = [0f32; 8];
        _mm256_storeu_ps(m.as_mut_ptr(), vmax);
        let vmax = _mm256_set1_ps(m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)));
        let mut vsum = _mm256_setzero_ps();
        for b in 0..n.div_ceil(KEY_BLOCK) {
            for h in 0..2 {
                let p = sc.as_mut_ptr().add(b * KEY_BLOCK + 8 * h);
                let e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_loadu_ps(p), vmax)), valid(b, h));
                vsum = _mm256_add_ps(vsum, e);
                _mm256_storeu_ps(p, e);
            }
        }
        _mm256_storeu_ps(m.as_mut_ptr(), vsum);
        let inv = 1.0 / m.iter().sum::<f32>();
        let regs = hd / 8;
        let mut o = [_mm256_setzero_ps(); 16];
        for (j, &p) in sc[..n].iter().enumerate() {
            let w = _mm256_set1_ps(p * inv);
            let vp = c.v.as_ptr().add(j * kv_dim + c.head * hd);
            for (r, o) in o.iter_mut().enumerate().take(regs) {
                *o = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp.add(8 * r)), *o);
            }
        }
        for (r, o) in o.iter().enumerate().take(regs) {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * r), *o);
        }
    }
}

/// Dot product with 16 independent partial sums (vectorizes).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn quantize_rows(pool: &ThreadPool, src: &[f32], acts: &mut QActs, k: usize) {
    acts.resize(src.len() / k, k);
    let mut rows = acts.rows_mut();
    par_chunks(pool, &mut rows, 1, |t, row| row[0].quantize(&src[t * k..(t + 1) * k]));
}

/// Run `f(i, chunk_i)` over the `chunk`-sized pieces of `buf` in parallel.
fn par_chunks<T: Send>(pool: &ThreadPool, buf: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let n = buf.len() / chunk;
    let base = SendPtr(buf.as_mut_ptr());
    pool.for_each(n, |i| {
        // SAFETY: `for_each` runs each index once, so the chunks handed out are disjoint, and all
        // lie inside `buf`, which is mutably borrowed for the whole call.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(i * chunk), chunk) };
        f(i, part)
    });
}

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only used to hand disjoint parts of a buffer to tasks (see `par_chunks`).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// A buffer that parallel tasks write element by element, each element by a single task.
struct Out<'a> {
    ptr: SendPtr<f32>,
    len: usize,
    _buf: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Out<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Self { ptr: SendPtr(buf.as_mut_ptr()), len: buf.len(), _buf: std::marker::PhantomData }
    }

    /// Write (or add, for a residual) a tile's results for tokens `t0 .. t0 + n` at columns
    /// `col ..` of rows of `ld` elements (`ld` 0: one row, the whole buffer); columns past the row
    /// (a tile's padding rows) are dropped.
    ///
    /// SAFETY (callers): no other task accesses these elements during the region.
    unsafe fn store(&self, o: &TileOut, t0: usize, n: usize, ld: usize, col: usize, add: bool) {
        for (t, o) in o.iter().enumerate().take(n) {
            let start = (t0 + t) * ld + col;
            let row_width = if ld == 0 { self.len } else { ld };
            let width = TILE.min(row_width.saturating_sub(col));
            assert!(start + width <= self.len, "tile store past the buffer");
            for (lane, &v) in o.iter().enumerate().take(width) {
                // SAFETY: `start + lane < len` by `width`; exclusive per the caller's contract.
                unsafe {
                    let p = self.ptr.get().add(start + lane);
                    if add { *p += v } else { *p = v }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    /// Attention written the plain way: softmax(q·k / √d) · v over row-major keys.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>]) -> Vec<f32> {
        let s: Vec<f64> = keys
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>() / (q.len() as f64).sqrt())
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..q.len()).map(|d| e.iter().zip(values).map(|(p, v)| p / z * v[d] as f64).sum::<f64>() as f32).collect()
    }

    #[test]
    fn attention_kernels_match_the_reference_on_odd_lengths() {
        let mut rng = Rng::new(5);
        let mut r = || rng.next_f64() as f32 * 2.0 - 1.0;
        let (n_kv, hd) = (3, 64);
        for n in [1usize, 2, 15, 16, 17, 45] {
            let keys: Vec<Vec<Vec<f32>>> =
                (0..n).map(|_| (0..n_kv).map(|_| (0..hd).map(|_| r() * 3.0).collect()).collect()).collect();
            let vals: Vec<Vec<Vec<f32>>> =
                (0..n).map(|_| (0..n_kv).map(|_| (0..hd).map(|_| r()).collect()).collect()).collect();
            let mut kc = vec![0f32; n.div_ceil(KEY_BLOCK) * KEY_BLOCK * n_kv * hd];
            let mut vc = Vec::new();
            for pos in 0..n {
                for h in 0..n_kv {
                    for d in 0..hd {
                        kc[key_index(pos, h, d, n_kv, hd)] = keys[pos][h][d];
                    }
                    vc.extend_from_slice(&vals[pos][h]);
                }
            }
            let q: Vec<f32> = (0..hd).map(|_| r()).collect();
            for head in 0..n_kv {
                let want = reference(
                    &q,
                    &keys.iter().map(|k| k[head].clone()).collect::<Vec<_>>(),
                    &vals.iter().map(|v| v[head].clone()).collect::<Vec<_>>(),
                );
                let cache = KvView { k: &kc, v: &vc, n_kv, head };
                for kernel in Kernel::available() {
                    let mut out = vec![0f32; hd];
                    attend(kernel, &q, &cache, n, &mut out);
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{kernel:?}, n {n}, head {head}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn rms_norm_normalises() {
        let x = [3.0f32, -4.0];
        let mut out = [0f32; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - -8.0 / rms).abs() < 1e-6);
    }
}
