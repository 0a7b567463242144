//! The recommender: an R-GCN over the KG (basis decomposition, per-relation
//! mean aggregation, root weight; ECR_REFERENCE.md §3.2), local emotion-aware
//! entity representations (entity + attention over the context utterances +
//! the user's emotions through a learned emotion table, §3.3-3.4), global
//! representations from the co-occurrence rows (§3.4), fusion, an
//! attention-pooled user representation, and scores over the item set.
//! Branches the recipe does not provide are not created (see [`Branches`]).

use super::features::{Features, PAD_EMOTION};
use super::sparse::{Segments, SparseMatrix};
use super::{Branches, FusionInit, ModelConfig};
use crate::error::Result;
use crate::fit::{Linear, Params};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::ops::softmax_last_dim;
use ecr_data::Kg;
use std::collections::{BTreeMap, HashMap};

/// The KG as the R-GCN's operands: every triple in both directions
/// (deduplicated), grouped by (relation, target) pairs sorted by relation.
/// `gather` `(pairs, N)` averages each pair's source rows, `segments` gives
/// each relation's pairs their weight, and `scatter` `(N, pairs)` sums the
/// pairs of each target.
pub struct KgGraph {
    n: usize,
    relations: usize,
    gather: SparseMatrix,
    segments: Segments,
    scatter: SparseMatrix,
}

impl KgGraph {
    /// The graph of `kg`.
    pub fn new(kg: &Kg) -> Self {
        let n = kg.len();
        let relations = kg.relations.len().max(1);
        let mut edges: Vec<(u16, u32, u32)> = Vec::new(); // (relation, target, source)
        for (&h, tails) in &kg.edges {
            for &(r, t) in tails {
                if (h as usize) < n && (t as usize) < n && (r as usize) < relations {
                    edges.push((r, t, h));
                    edges.push((r, h, t));
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let mut pair_index: BTreeMap<(u16, u32), usize> = BTreeMap::new();
        for &(r, t, _) in &edges {
            let k = pair_index.len();
            pair_index.entry((r, t)).or_insert(k);
        }
        // Edges are sorted by (relation, target), so pair ids follow that order.
        let mut degree = vec![0u32; pair_index.len()];
        let pair_of: Vec<u32> = edges.iter().map(|&(r, t, _)| pair_index[&(r, t)] as u32).collect();
        for &p in &pair_of {
            degree[p as usize] += 1;
        }
        let mut spans: Vec<(usize, usize)> = Vec::new(); // (relation, pairs)
        let mut scatter = Vec::with_capacity(pair_index.len());
        for (&(r, t), &p) in &pair_index {
            scatter.push((t, p as u32, 1.0));
            match spans.last_mut() {
                Some(last) if last.0 == r as usize => last.1 += 1,
                _ => spans.push((r as usize, 1)),
            }
        }
        let gather: Vec<(u32, u32, f32)> =
            edges.iter().zip(&pair_of).map(|(e, &p)| (p, e.2, 1.0 / degree[p as usize] as f32)).collect();
        let pairs = pair_index.len();
        KgGraph {
            n,
            relations,
            gather: SparseMatrix::new(pairs, n, &gather),
            segments: Segments::new(&spans),
            scatter: SparseMatrix::new(n, pairs, &scatter),
        }
    }

    /// Number of directed edges.
    pub fn edges(&self) -> usize {
        self.gather.nnz()
    }
}

/// One batch of model inputs as tensors.
pub struct Batch {
    b: usize,
    l: usize,
    /// Entity-table rows read by the batch, in one list so that one gather
    /// (and one gradient scatter over the whole table) serves them all: the
    /// items, the `b·l` slot entities (padding reads row 0, masked), the global entities.
    rows: Tensor,
    mask: Tensor,
    emo_ids: Tensor,
    emo_p: Tensor,
    glob_slot: Tensor,
    glob_count: usize,
    glob_w: Tensor,
    glob_mask: Tensor,
    text_ids: Tensor,
    text_mask: Tensor,
    roles: Tensor,
}

/// Per-turn explanation data: attention of the user representation over the
/// context slots (local then global), and the local/global shares.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Attention {
    /// Weight of each local slot (same order as the features' slots).
    pub local: Vec<f32>,
    /// Weight of each global slot.
    pub global: Vec<f32>,
}

/// One turn's scores, attention, and the attribution of its top items ([`Recommender::explain`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// Score of every item, in the item set's order.
    pub scores: Vec<f32>,
    /// Attention over the slots (local then global).
    pub alpha: Vec<f32>,
    /// The top items, best first.
    pub top: Vec<ItemAttribution>,
}

/// How one item's score is made: a part per context slot plus the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemAttribution {
    /// The item's index in the item set.
    pub item: usize,
    /// Its score: the slots' parts plus `text` (if any) plus `bias`.
    pub score: f32,
    /// Per local slot (as the features' slots, padded to the batch's slot count).
    pub local: Vec<SlotPart>,
    /// Per global slot, in the same order (empty without the global branch).
    pub global: Vec<SlotPart>,
    /// The dialogue text summary's part; `None` where the summary does not join the user
    /// representation (no text, or `text_summary = false`).
    pub text: Option<f32>,
    /// What does not depend on the dialogue: the item's own bias and the output layer's bias
    /// against the item (a popularity prior).
    pub bias: f32,
}

impl ItemAttribution {
    /// The local slots' parts, summed.
    pub fn local_total(&self) -> f32 {
        self.local.iter().map(|p| p.total).sum()
    }

    /// The global slots' parts, summed.
    pub fn global_total(&self) -> f32 {
        self.global.iter().map(|p| p.total).sum()
    }

    /// What the emotion fusion added, over all slots.
    pub fn emotions_total(&self) -> f32 {
        self.local.iter().chain(&self.global).map(|p| p.emotions).sum()
    }
}

/// The part of an item's score that came through one slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotPart {
    /// All of it.
    pub total: f32,
    /// What the emotion fusion added to the slot (0 without emotions or with a fusion that
    /// learned to ignore them).
    pub emotions: f32,
}

/// The user representation `h (B, d)`, the attention over the slots, the rows of the entity table
/// the batch selected (the items first), the slots after (`seq`) and before (`plain`) the emotion
/// fusion `(B, S, d)`, and the text summary.
struct User {
    h: Tensor,
    alpha: Tensor,
    sel: Tensor,
    seq: Tensor,
    plain: Tensor,
    summary: Option<Tensor>,
}

/// The recommender model.
pub struct Recommender {
    cfg: ModelConfig,
    branches: Branches,
    device: Device,
    graph: KgGraph,
    item_ids: Vec<u32>,
    x: Tensor,
    coef: Tensor,
    basis: Tensor,
    root: Linear,
    text_proj: Option<Linear>,
    roles: Option<Tensor>,
    attn: Option<Linear>,
    text_query: Option<Tensor>,
    emo_table: Option<Tensor>,
    fuse: Option<(Linear, Linear)>,
    gfuse: Option<(Linear, Linear)>,
    query0: Tensor,
    query_text: Option<Linear>,
    out: Linear,
    item_bias: Tensor,
}

/// The fusion MLP `d_in → d → d`; its output layer starts as `init` says.
fn mlp(p: &mut Params, name: &str, d_in: usize, d: usize, init: FusionInit) -> Result<(Linear, Linear)> {
    let hidden = p.linear(&format!("{name}.0"), d_in, d, true)?;
    let out = match init {
        FusionInit::Random => p.linear(&format!("{name}.1"), d, d, true)?,
        FusionInit::Zero => p.zero_linear(&format!("{name}.1"), d, d)?,
    };
    Ok((hidden, out))
}

fn run_mlp(m: &(Linear, Linear), x: &Tensor) -> Result<Tensor> {
    m.1.forward(&m.0.forward(x)?.relu()?)
}

/// `x` with masked positions (mask 0) set to a large negative number, softmaxed on the last axis.
fn masked_softmax(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let neg = ((mask - 1.0)? * 1e9)?;
    Ok(softmax_last_dim(&x.broadcast_add(&neg)?)?)
}

impl Recommender {
    /// A new model (variables created in `params`'s `VarMap`) over `kg`
    /// ranking `items`, with text embeddings of `text_dim` floats.
    pub fn new(
        p: &mut Params,
        kg: &Kg,
        items: &[u32],
        cfg: ModelConfig,
        branches: Branches,
        text_dim: usize,
    ) -> Result<Self> {
        let device = p.device().clone();
        let graph = KgGraph::new(kg);
        let (d, dm, n) = (cfg.dim, cfg.emotion_dim, graph.n);
        let a = (6.0 / (n + d) as f32).sqrt();
        let x = p.uniform("kg.x", &[n, d], a)?;
        let coef = p.uniform("kg.coef", &[graph.relations, cfg.bases], (1.0 / cfg.bases as f32).sqrt())?;
        let basis = p.uniform("kg.basis", &[cfg.bases, d * d], (6.0 / (2 * d) as f32).sqrt() * 0.5)?;
        let root = p.linear("kg.root", d, d, true)?;
        let (text_proj, roles, attn, text_query, query_text) = if branches.text {
            (
                Some(p.linear("text.proj", text_dim, d, true)?),
                Some(p.uniform("text.roles", &[2, d], 0.1)?),
                Some(p.linear("text.attn", d, d, false)?),
                Some(p.uniform("text.query", &[d], 0.1)?),
                Some(p.linear("user.query_text", d, d, false)?),
            )
        } else {
            (None, None, None, None, None)
        };
        let (emo_table, fuse) = if branches.emotions {
            (
                Some(p.uniform("emotion.table", &[PAD_EMOTION + 1, dm], 0.5)?),
                Some(mlp(p, "fuse.local", d + dm, d, cfg.fusion_init)?),
            )
        } else {
            (None, None)
        };
        let gfuse = if branches.global { Some(mlp(p, "fuse.global", d + dm, d, cfg.fusion_init)?) } else { None };
        let query0 = p.uniform("user.query", &[d], 0.1)?;
        let joins = branches.text && cfg.text_summary;
        let out = p.linear("user.out", if joins { 2 * d } else { d }, d, true)?;
        let item_bias = p.constant("items.bias", &[items.len()], 0.0)?;
        Ok(Recommender {
            cfg,
            branches,
            item_ids: items.to_vec(),
            device,
            graph,
            x,
            coef,
            basis,
            root,
            text_proj,
            roles,
            attn,
            text_query,
            emo_table,
            fuse,
            gfuse,
            query0,
            query_text,
            out,
            item_bias,
        })
    }

    /// The item set, in score order.
    pub fn items(&self) -> &[u32] {
        &self.item_ids
    }

    /// The branches the model has.
    pub fn branches(&self) -> Branches {
        self.branches
    }

    /// The entity table: `X + RGCN(X)` `(N, d)`.
    pub fn entity_table(&self) -> Result<Tensor> {
        let g = &self.graph;
        let d = self.cfg.dim;
        let w = self.coef.matmul(&self.basis)?.reshape((g.relations, d, d))?;
        // Each pair's mean source row, through its relation's weight, summed per target.
        let agg = g.gather.matmul(&self.x)?;
        let conv = g.scatter.matmul(&g.segments.matmul(&agg, &w)?)?;
        Ok((&self.x + (conv + self.root.forward(&self.x)?)?)?)
    }

    /// Tensors of a batch; `text_row` maps an utterance text to its row in the text table (0 = padding).
    pub fn batch(&self, feats: &[&Features], text_row: &dyn Fn(&str) -> u32) -> Result<Batch> {
        let b = feats.len();
        let l = feats.iter().map(|f| f.slots.len()).max().unwrap_or(0).max(1);
        let k = feats.iter().map(|f| f.utterances.len()).max().unwrap_or(0).max(1);
        let pad = self.graph.n as u32;
        let mut ids = vec![0u32; b * l];
        let mut mask = vec![0f32; b * l];
        let mut emo_ids = vec![PAD_EMOTION as u32; b * l * 3];
        let mut emo_p = vec![0f32; b * l * 3];
        let (mut gs, mut ge, mut gw) = (Vec::new(), Vec::new(), Vec::new());
        let mut glob_mask = vec![0f32; b * l];
        let mut text_ids = vec![0u32; b * k];
        let mut text_mask = vec![0f32; b * k];
        let mut roles = vec![0u32; b * k];
        for (i, f) in feats.iter().enumerate() {
            for (j, s) in f.slots.iter().enumerate() {
                let at = i * l + j;
                if s.entity < pad {
                    ids[at] = s.entity;
                    mask[at] = 1.0;
                }
                for (q, &(e, pr)) in s.emotions.iter().take(3).enumerate() {
                    emo_ids[at * 3 + q] = e as u32;
                    emo_p[at * 3 + q] = pr;
                }
                for &(e, w) in &s.related {
                    if e < pad {
                        gs.push(at as u32);
                        ge.push(e);
                        gw.push(w);
                        glob_mask[at] = 1.0;
                    }
                }
            }
            for (j, (t, r)) in f.utterances.iter().enumerate() {
                text_ids[i * k + j] = text_row(t);
                text_mask[i * k + j] = 1.0;
                roles[i * k + j] = u32::from(*r == ecr_engine::Role::Recommender);
            }
        }
        let dv = &self.device;
        let m = gs.len();
        let rows: Vec<u32> = self.item_ids.iter().chain(&ids).chain(&ge).copied().collect();
        Ok(Batch {
            b,
            l,
            rows: Tensor::from_vec(rows, self.item_ids.len() + b * l + m, dv)?,
            mask: Tensor::from_vec(mask, (b, l), dv)?,
            emo_ids: Tensor::from_vec(emo_ids, (b, l, 3), dv)?,
            emo_p: Tensor::from_vec(emo_p, (b, l, 3, 1), dv)?,
            glob_slot: Tensor::from_vec(gs, m, dv)?,
            glob_count: m,
            glob_w: Tensor::from_vec(gw, (m, 1), dv)?,
            glob_mask: Tensor::from_vec(glob_mask, (b, l), dv)?,
            text_ids: Tensor::from_vec(text_ids, (b, k), dv)?,
            text_mask: Tensor::from_vec(text_mask, (b, k), dv)?,
            roles: Tensor::from_vec(roles, (b, k), dv)?,
        })
    }

    /// Scores `(B, items)` of a batch given the entity table `e` and the text
    /// table `(rows, text_dim)` (row 0 = padding), with the attention weights over slots `(B, 2L or L)`.
    pub fn forward(&self, e: &Tensor, text: &Tensor, x: &Batch) -> Result<(Tensor, Tensor)> {
        let u = self.user(e, text, x)?;
        Ok((self.scores(&u)?, u.alpha))
    }

    /// The scores `(B, items)` of a user representation.
    fn scores(&self, u: &User) -> Result<Tensor> {
        let items = u.sel.narrow(0, 0, self.item_ids.len())?;
        Ok(u.h.matmul(&items.t()?)?.broadcast_add(&self.item_bias)?)
    }

    /// Scores `(B, N)` of a batch over every KG entity (no item bias): ECR's pre-training
    /// (§3.8) ranks all entities and movies a turn mentions.
    pub fn forward_entities(&self, e: &Tensor, text: &Tensor, x: &Batch) -> Result<Tensor> {
        let u = self.user(e, text, x)?;
        Ok(u.h.matmul(&e.t()?)?)
    }

    /// One turn's scores (a batch of one) and, for its `top` best items, how much of each item's
    /// score came through each context slot and, of that, through the user's emotions.
    ///
    /// The score is linear in the attention-pooled slots: `h = pooled · P + r` with `P` the
    /// output layer's block for the pooled part (plus the identity without text), so item `j`'s
    /// score is `Σ_i α_i (s_i · P) · e_j + (r · e_j + b_j)`: slot `i`'s part is exact, not
    /// estimated. Its emotion part is the same with `s_i` minus the slot's representation before
    /// the emotion fusion (the fusion MLP's output). The rest is the text summary's part and the
    /// biases.
    pub fn explain(&self, e: &Tensor, text: &Tensor, x: &Batch, top: usize) -> Result<Explained> {
        self.explain_items(e, text, x, &|scores| super::metrics::top_items(scores, top))
    }

    /// [`Recommender::explain`] for the items `pick` chooses from the scores (indices into the
    /// item set), in its order.
    pub fn explain_items(
        &self,
        e: &Tensor,
        text: &Tensor,
        x: &Batch,
        pick: &dyn Fn(&[f32]) -> Vec<usize>,
    ) -> Result<Explained> {
        if x.b != 1 {
            return Err(crate::error::NeuralError::Invalid(format!("explain takes one turn, not {}", x.b)));
        }
        let d = self.cfg.dim;
        let u = self.user(e, text, x)?;
        let scores = self.scores(&u)?.squeeze(0)?.to_vec1::<f32>()?;
        let alpha = u.alpha.squeeze(0)?;
        let order = pick(&scores);
        if let Some(bad) = order.iter().find(|&&i| i >= scores.len()) {
            return Err(crate::error::NeuralError::Invalid(format!("explain: no item {bad} of {}", scores.len())));
        }
        if order.is_empty() {
            return Ok(Explained { scores, alpha: alpha.to_vec1::<f32>()?, top: vec![] });
        }
        let w = self.out.weight();
        // The pooled slots' block of the output layer; without text the layer is residual.
        let p = if u.summary.is_some() { w.narrow(0, 0, d)? } else { (w + Tensor::eye(d, DType::F32, &self.device)?)? };
        let r = match self.out.bias() {
            Some(b) => b.unsqueeze(0)?,
            None => Tensor::zeros((1, d), DType::F32, &self.device)?,
        };
        let idx = Tensor::from_vec(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), order.len(), &self.device)?;
        let items = u.sel.narrow(0, 0, self.item_ids.len())?.index_select(&idx, 0)?;
        let part = |v: &Tensor| -> Result<Vec<Vec<f32>>> {
            let v = v.squeeze(0)?.matmul(&p)?.broadcast_mul(&alpha.unsqueeze(1)?)?;
            Ok(items.matmul(&v.t()?)?.to_vec2::<f32>()?)
        };
        let total = part(&u.seq)?;
        let emotions = part(&(&u.seq - &u.plain)?)?;
        let bias = (items.matmul(&r.t()?)?.squeeze(1)? + self.item_bias.index_select(&idx, 0)?)?.to_vec1::<f32>()?;
        let text = match &u.summary {
            Some(s) => Some(items.matmul(&s.matmul(&w.narrow(0, d, d)?)?.t()?)?.squeeze(1)?.to_vec1::<f32>()?),
            None => None,
        };
        let top = order
            .iter()
            .enumerate()
            .map(|(k, &item)| {
                let mut slots: Vec<SlotPart> =
                    total[k].iter().zip(&emotions[k]).map(|(&total, &emotions)| SlotPart { total, emotions }).collect();
                // The sequence is the local slots then, with the global branch, as many global ones.
                let global = slots.split_off(x.l.min(slots.len()));
                ItemAttribution {
                    item,
                    score: scores[item],
                    local: slots,
                    global,
                    text: text.as_ref().map(|t| t[k]),
                    bias: bias[k],
                }
            })
            .collect();
        Ok(Explained { scores, alpha: alpha.to_vec1::<f32>()?, top })
    }

    /// The user representation and what it was made of.
    fn user(&self, e: &Tensor, text: &Tensor, x: &Batch) -> Result<User> {
        let d = self.cfg.dim;
        let (b, l) = (x.b, x.l);
        let n_items = self.item_ids.len();
        let sel = e.index_select(&x.rows, 0)?;
        let ec = sel.narrow(0, n_items, b * l)?.reshape((b, l, d))?.broadcast_mul(&x.mask.unsqueeze(2)?)?;
        // Text: projected utterance embeddings plus a role vector; a pooled summary.
        let txt = match (&self.text_proj, &self.roles) {
            (Some(proj), Some(roles)) => {
                let k = x.text_ids.dims()[1];
                let raw = text.index_select(&x.text_ids.flatten_all()?, 0)?.reshape((b, k, ()))?;
                let r = roles.index_select(&x.roles.flatten_all()?, 0)?.reshape((b, k, d))?;
                Some((proj.forward(&raw)? + r)?)
            }
            _ => None,
        };
        // Local entity representations: entity + attention over the utterances (ECR §3.3).
        let z = match (&txt, &self.attn) {
            (Some(t), Some(attn)) => {
                let scores = (attn.forward(&ec)?.matmul(&t.transpose(1, 2)?)? / (d as f64).sqrt())?;
                let a = masked_softmax(&scores, &x.text_mask.unsqueeze(1)?)?;
                (&ec + a.matmul(t)?)?
            }
            _ => ec.clone(),
        };
        let u = match &self.emo_table {
            Some(table) => {
                let dm = self.cfg.emotion_dim;
                let m = table.index_select(&x.emo_ids.flatten_all()?, 0)?.reshape((b, l, 3, dm))?;
                Some(m.broadcast_mul(&x.emo_p)?.sum(2)?)
            }
            None => None,
        };
        let fuse = |m: &Option<(Linear, Linear)>, v: &Tensor| -> Result<Tensor> {
            match (m, &u) {
                (Some(m), Some(u)) => Ok((v + run_mlp(m, &Tensor::cat(&[v, u], D::Minus1)?)?)?),
                (Some(m), None) => {
                    let zeros = Tensor::zeros((b, l, self.cfg.emotion_dim), DType::F32, &self.device)?;
                    Ok((v + run_mlp(m, &Tensor::cat(&[v, &zeros], D::Minus1)?)?)?)
                }
                _ => Ok(v.clone()),
            }
        };
        let q_loc = fuse(&self.fuse, &z)?;
        // The slots before the emotion fusion, for explanations.
        let mut plain = z;
        let (seq, seq_mask) = if self.gfuse.is_some() {
            let g = if x.glob_count > 0 {
                let rows = sel.narrow(0, n_items + b * l, x.glob_count)?.broadcast_mul(&x.glob_w)?;
                Tensor::zeros((b * l, d), DType::F32, &self.device)?.index_add(&x.glob_slot, &rows, 0)?
            } else {
                Tensor::zeros((b * l, d), DType::F32, &self.device)?
            };
            let g = g.reshape((b, l, d))?;
            let q_glob = fuse(&self.gfuse, &g)?;
            plain = Tensor::cat(&[&plain, &g], 1)?;
            (Tensor::cat(&[&q_loc, &q_glob], 1)?, Tensor::cat(&[&x.mask, &x.glob_mask], 1)?)
        } else {
            (q_loc, x.mask.clone())
        };
        // Text summary: attention pooling of the utterances with a learned query.
        let summary = match (&txt, &self.text_query) {
            (Some(t), Some(q)) => {
                let s = t.broadcast_matmul(&q.unsqueeze(1)?)?.squeeze(2)?;
                let a = masked_softmax(&s, &x.text_mask)?;
                Some(a.unsqueeze(1)?.matmul(t)?.squeeze(1)?)
            }
            _ => None,
        };
        // The user representation attends over the fused entity sequence.
        let query = match (&summary, &self.query_text) {
            (Some(s), Some(w)) => w.forward(s)?.broadcast_add(&self.query0)?,
            _ => self.query0.unsqueeze(0)?.repeat((b, 1))?,
        };
        let s = (seq.matmul(&query.unsqueeze(2)?)?.squeeze(2)? / (d as f64).sqrt())?;
        let alpha = masked_softmax(&s, &seq_mask)?;
        let any = seq_mask.max_keepdim(1)?;
        let alpha = alpha.broadcast_mul(&any)?;
        let pooled = alpha.unsqueeze(1)?.matmul(&seq)?.squeeze(1)?;
        // The summary joins the user representation unless the recipe keeps it to the query.
        let summary = summary.filter(|_| self.cfg.text_summary);
        let h = match &summary {
            Some(s) => self.out.forward(&Tensor::cat(&[&pooled, s], 1)?)?,
            None => (self.out.forward(&pooled)? + &pooled)?,
        };
        Ok(User { h, alpha, sel, seq, plain, summary })
    }

    /// Split a row of the attention weights into local and global slot weights.
    pub fn attention(&self, alpha: &[f32], slots: usize, l: usize) -> Attention {
        let local = alpha[..slots.min(alpha.len())].to_vec();
        let global =
            if self.branches.global && alpha.len() >= l + slots { alpha[l..l + slots].to_vec() } else { vec![] };
        Attention { local, global }
    }

    /// Rows of the items in the score vector, by KG id.
    pub fn item_index(&self) -> HashMap<u32, usize> {
        self.item_ids.iter().enumerate().map(|(i, &e)| (e, i)).collect()
    }
}
