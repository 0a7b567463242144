//! The R-GCN's two graph operations as candle custom ops with their backward
//! passes: a fixed sparse matrix times a dense one ([`SparseMatrix`]), and
//! row segments each multiplied by their own matrix ([`Segments`]).
//!
//! The R-GCN aggregates neighbour rows over the KG's ~210k directed edges and
//! then applies one weight per relation (25) at every training step. Written
//! with `index_select` + `index_add` and a slice per relation, candle
//! materialises an `(edges, d)` message tensor forward and backward, and the
//! backward of each slice allocates a gradient as large as all pairs: about
//! 2 s of a 2.5 s training step on 2 cores, most of it page faults. A CSR
//! product reads each neighbour row once and writes each output row once (its
//! backward is the product with the stored transpose); the segment product's
//! backward writes one gradient for all segments.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// A sparse `(rows, cols)` matrix in compressed sparse row form.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    rows: usize,
    cols: usize,
    /// Row `r`'s entries are `start[r]..start[r + 1]`.
    start: Vec<usize>,
    col: Vec<u32>,
    val: Vec<f32>,
}

impl Csr {
    /// The matrix with `entries` `(row, col, value)` (duplicates are summed by the product).
    pub fn new(rows: usize, cols: usize, entries: &[(u32, u32, f32)]) -> Self {
        let mut sorted: Vec<(u32, u32, f32)> =
            entries.iter().copied().filter(|&(r, c, _)| (r as usize) < rows && (c as usize) < cols).collect();
        sorted.sort_by_key(|&(r, c, _)| (r, c));
        let mut start = vec![0usize; rows + 1];
        for &(r, _, _) in &sorted {
            start[r as usize + 1] += 1;
        }
        for r in 0..rows {
            start[r + 1] += start[r];
        }
        Csr { rows, cols, start, col: sorted.iter().map(|e| e.1).collect(), val: sorted.iter().map(|e| e.2).collect() }
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut entries = Vec::with_capacity(self.col.len());
        for r in 0..self.rows {
            for k in self.start[r]..self.start[r + 1] {
                entries.push((self.col[k], r as u32, self.val[k]));
            }
        }
        Csr::new(self.cols, self.rows, &entries)
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.col.len()
    }

    /// `self · x` for a row-major `(cols, d)` slice.
    fn product(&self, x: &[f32], d: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * d];
        out.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
            for k in self.start[r]..self.start[r + 1] {
                let src = &x[self.col[k] as usize * d..][..d];
                let v = self.val[k];
                for (o, s) in row.iter_mut().zip(src) {
                    *o += v * s;
                }
            }
        });
        out
    }
}

/// A sparse matrix and its transpose, shared by the forward op and its backward.
#[derive(Debug, Clone)]
pub struct SparseMatrix {
    a: Arc<Csr>,
    at: Arc<Csr>,
}

impl SparseMatrix {
    /// `(rows, cols)` with `entries` `(row, col, value)`.
    pub fn new(rows: usize, cols: usize, entries: &[(u32, u32, f32)]) -> Self {
        let a = Csr::new(rows, cols, entries);
        let at = a.transpose();
        SparseMatrix { a: Arc::new(a), at: Arc::new(at) }
    }

    /// `A · x` for `x` of shape `(cols, d)`, differentiable in `x`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1(SpMM { a: self.a.clone(), at: self.at.clone() })
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.a.nnz()
    }
}

/// The op `x ↦ A · x`; its gradient is `Aᵀ · grad`.
struct SpMM {
    a: Arc<Csr>,
    at: Arc<Csr>,
}

impl CustomOp1 for SpMM {
    fn name(&self) -> &'static str {
        "sparse-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d) = layout.shape().dims2()?;
        if rows != self.a.cols {
            candle_core::bail!("sparse-matmul: the matrix has {} columns, the input {rows} rows", self.a.cols);
        }
        let CpuStorage::F32(data) = storage else { candle_core::bail!("sparse-matmul: f32 input expected") };
        let x = match layout.contiguous_offsets() {
            Some((a, b)) => &data[a..b],
            None => candle_core::bail!("sparse-matmul: contiguous input expected"),
        };
        Ok((CpuStorage::F32(self.a.product(x, d)), Shape::from((self.a.rows, d))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = SpMM { a: self.at.clone(), at: self.a.clone() };
        Ok(Some(grad_res.contiguous()?.apply_op1(back)?))
    }
}

/// Consecutive row segments of a `(rows, d_in)` tensor, each multiplied by one
/// of `R` matrices `(R, d_in, d_out)`: `out[seg] = x[seg] · w[r(seg)]`.
#[derive(Debug, Clone)]
pub struct Segments {
    /// `(matrix, first row, rows)`, covering the rows in order.
    spans: Arc<Vec<(usize, usize, usize)>>,
    rows: usize,
}

impl Segments {
    /// Segments `(matrix, rows)` in row order.
    pub fn new(spans: &[(usize, usize)]) -> Self {
        let mut first = 0;
        let spans: Vec<(usize, usize, usize)> = spans
            .iter()
            .map(|&(r, n)| {
                first += n;
                (r, first - n, n)
            })
            .collect();
        Segments { spans: Arc::new(spans), rows: first }
    }

    /// `x[seg] · w[r(seg)]` for every segment, differentiable in `x` and `w`.
    pub fn matmul(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op2(w, SegmentMatmul { seg: self.clone() })
    }

    /// The product on untracked tensors (`w` transposed per matrix if `transpose`).
    fn product(&self, x: &Tensor, w: &Tensor, transpose: bool) -> candle_core::Result<Tensor> {
        let mut parts = Vec::with_capacity(self.spans.len());
        for &(r, first, n) in self.spans.iter() {
            let wr = w.get(r)?;
            let wr = if transpose { wr.t()? } else { wr };
            parts.push(x.narrow(0, first, n)?.matmul(&wr)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// `grad_w[r] = Σ_{seg of r} x[seg]ᵀ · g[seg]` (zero for matrices without segments).
    fn weight_grad(&self, x: &Tensor, g: &Tensor, w_shape: &Shape) -> candle_core::Result<Tensor> {
        let (r_count, d_in, d_out) = w_shape.dims3()?;
        let mut per: Vec<Option<Tensor>> = vec![None; r_count];
        for &(r, first, n) in self.spans.iter() {
            let part = x.narrow(0, first, n)?.t()?.matmul(&g.narrow(0, first, n)?)?;
            per[r] = Some(match per[r].take() {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        let zero = Tensor::zeros((d_in, d_out), candle_core::DType::F32, x.device())?;
        let mats: Vec<Tensor> = per.into_iter().map(|m| m.unwrap_or_else(|| zero.clone())).collect();
        Tensor::stack(&mats, 0)
    }
}

/// An untracked tensor over a CPU op argument.
fn tensor_of(storage: &CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<Tensor> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{what}: f32 input expected") };
    let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("{what}: contiguous input expected") };
    Tensor::from_slice(&data[a..b], layout.shape(), &Device::Cpu)
}

/// The op `(x, w) ↦ x[seg] · w[r(seg)]`.
struct SegmentMatmul {
    seg: Segments,
}

impl CustomOp2 for SegmentMatmul {
    fn name(&self) -> &'static str {
        "segment-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = tensor_of(s1, l1, self.name())?;
        let w = tensor_of(s2, l2, self.name())?;
        if x.dims2()?.0 != self.seg.rows {
            candle_core::bail!("segment-matmul: {} rows in segments, {} in the input", self.seg.rows, x.dims2()?.0);
        }
        let out = self.seg.product(&x, &w, false)?;
        let shape = out.shape().clone();
        Ok((CpuStorage::F32(out.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach().contiguous()?);
        let gx = self.seg.product(&grad, &w, true)?;
        let gw = self.seg.weight_grad(&x, &grad, w.shape())?;
        Ok((Some(gx), Some(gw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn product_and_gradient_match_the_dense_matrix() {
        let entries = [(0u32, 1u32, 0.5f32), (0, 2, 2.0), (2, 0, 1.0), (2, 0, 3.0), (1, 2, -1.0)];
        let sparse = SparseMatrix::new(3, 3, &entries);
        let mut dense = [[0f32; 3]; 3];
        for &(r, c, v) in &entries {
            dense[r as usize][c as usize] += v;
        }
        let dev = Device::Cpu;
        let dense = Tensor::new(&dense, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap()).unwrap();
        let w = Tensor::new(&[[1f32, -1.], [0.5, 2.], [3., 0.]], &dev).unwrap();
        let ys = sparse.matmul(x.as_tensor()).unwrap();
        let yd = dense.matmul(x.as_tensor()).unwrap();
        assert_eq!(ys.to_vec2::<f32>().unwrap(), yd.to_vec2::<f32>().unwrap());
        let gs = (ys * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gd = (yd * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (gs, gd) = (gs.get(&x).unwrap().to_vec2::<f32>().unwrap(), gd.get(&x).unwrap().to_vec2::<f32>().unwrap());
        assert_eq!(gs, gd);
        assert_eq!(sparse.nnz(), 5);
    }

    #[test]
    fn segment_product_and_gradients_match_slices() {
        let dev = Device::Cpu;
        // Rows 0-1 through matrix 2, row 2 through matrix 0; matrix 1 unused.
        let seg = Segments::new(&[(2, 2), (0, 1)]);
        let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::arange(0f32, 12., &dev).unwrap().reshape((3, 2, 2)).unwrap()).unwrap();
        let weights = Tensor::new(&[[1f32, -1.], [0.5, 2.], [3., 0.]], &dev).unwrap();
        let fast = seg.matmul(x.as_tensor(), w.as_tensor()).unwrap();
        let slow = Tensor::cat(
            &[
                x.narrow(0, 0, 2).unwrap().matmul(&w.get(2).unwrap()).unwrap(),
                x.narrow(0, 2, 1).unwrap().matmul(&w.get(0).unwrap()).unwrap(),
            ],
            0,
        )
        .unwrap();
        assert_eq!(fast.to_vec2::<f32>().unwrap(), slow.to_vec2::<f32>().unwrap());
        let gf = (fast * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let a = gf.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = gs.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b);
        }
    }
}
