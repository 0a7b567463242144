//! The one training loop every model of the project uses.
//!
//! [`fit`] trains the variables of a candle [`VarMap`] on a caller's
//! [`Objective`]: AdamW (weight decay on weights only, never on biases and
//! norms), a learning rate that warms up linearly and then decays linearly to
//! zero, seeded shuffling of the training examples, model selection on a
//! held-out split by a metric the objective computes (the best epoch's
//! variables are restored at the end), an indicatif progress bar showing the
//! running loss, and a one-line summary.
//!
//! Models initialise their variables with [`Params`], a seeded initialiser
//! that writes into the same `VarMap` (candle's CPU random functions cannot
//! be seeded), so that a run is reproducible from its seed.

use crate::error::{NeuralError, Result};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Hyper-parameters of [`fit`]. Deserialisable so that recipes can carry them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per optimisation step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay of the weights (biases and norms get none).
    pub weight_decay: f64,
    /// Share of all steps spent warming the learning rate up from 0 (then it
    /// decays linearly to 0 at the last step).
    pub warmup: f64,
    /// Seed of the shuffling (and of whatever the objective draws from the rng it is given).
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig { epochs: 5, batch_size: 64, lr: 1e-3, weight_decay: 0.01, warmup: 0.1, seed: 42 }
    }
}

impl FitConfig {
    /// Check value ranges; the error names the key (prefixed by `prefix`, e.g. `train.`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad = |k: &str, m: &str| Err(NeuralError::Invalid(format!("{prefix}{k}: {m}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", "must be a number >= 0");
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad("warmup", "must be in [0, 1)");
        }
        Ok(())
    }
}

/// The learning rate at `step` (0-based) of `total`: linear warm-up over the
/// first `warmup_steps`, then linear decay to 0.
pub fn scheduled_lr(peak: f64, step: usize, warmup_steps: usize, total: usize) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    let rest = total.saturating_sub(warmup_steps).max(1);
    peak * (1.0 - (step - warmup_steps) as f64 / rest as f64).max(0.0)
}

/// Whether a variable is exempt from weight decay: biases and norm parameters
/// (by name: ending in `bias`, or containing `norm` or `ln`).
pub fn no_decay(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    last.ends_with("bias") || name.contains("norm") || name.split('.').any(|p| p == "ln" || p.starts_with("ln_"))
}

/// The model-selection score of one evaluation on the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The selection metric; higher is better.
    pub metric: f64,
    /// Other figures to record in the report (e.g. the held-out loss).
    pub extra: serde_json::Value,
}

/// What [`fit`] trains: the caller's model and data, seen as example indices.
pub trait Objective {
    /// Number of training examples (indices `0..n` are passed to [`Objective::loss`]).
    fn n_train(&self) -> usize;
    /// The mean training loss of the examples `batch` (a scalar tensor to
    /// differentiate). `rng` is seeded by [`FitConfig::seed`] (dropout, sampling).
    fn loss(&mut self, batch: &[usize], rng: &mut Rng) -> Result<Tensor>;
    /// Score the current variables on the held-out split.
    fn select(&mut self) -> Result<Selection>;
    /// The selection metric's name, for the progress bar and the summary.
    fn metric_name(&self) -> &str;

    /// The batches of one epoch. `order` is a permutation of `0..n_train` that
    /// [`fit`] keeps across epochs. The default shuffles it with `rng` and
    /// cuts it into chunks of `batch_size`; an objective may order batches
    /// otherwise (e.g. by length, so that a batch pads little). Every epoch
    /// should give the same number of batches (the schedule's length is the
    /// first epoch's count times the epochs).
    fn batches(&mut self, order: &mut [usize], batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
        rng.shuffle(order);
        order.chunks(batch_size).map(<[usize]>::to_vec).collect()
    }

    /// The factor applied to the scheduled learning rate of the variable
    /// `name` (e.g. a pretrained encoder trained slower than a fresh head). Default 1.
    fn lr_scale(&self, _name: &str) -> f64 {
        1.0
    }

    /// Whether the held-out selection `new` beats the best so far (the
    /// default: a strictly higher metric; an objective may break ties).
    fn better(&self, new: &Selection, best: &Selection) -> bool {
        new.metric > best.metric
    }
}

/// One epoch of a [`FitReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// The held-out selection of the epoch's end.
    pub selection: Selection,
}

/// The outcome of [`fit`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitReport {
    /// Training examples.
    pub n_train: usize,
    /// Optimisation steps taken.
    pub steps: usize,
    /// The epoch whose variables were kept (1-based).
    pub best_epoch: usize,
    /// Its selection metric.
    pub best_metric: f64,
    /// The selection metric's name.
    pub metric_name: String,
    /// Every epoch.
    pub epochs: Vec<EpochRecord>,
    /// Wall time of the loop.
    pub seconds: f64,
}

impl FitReport {
    /// The summary line printed at the end of training.
    pub fn summary(&self, what: &str) -> String {
        let last = self.epochs.last().map_or(f64::NAN, |e| e.train_loss);
        format!(
            "{what}: {} examples, {} epochs, {} steps in {:.1} s; final train loss {last:.4}; kept epoch {} ({} {:.4})",
            self.n_train,
            self.epochs.len(),
            self.steps,
            self.seconds,
            self.best_epoch,
            self.metric_name,
            self.best_metric
        )
    }
}

/// The variables of `varmap` sorted by name (a stable order for optimisers and snapshots).
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn snapshot(vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    Ok(vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
}

fn restore(vars: &[(String, Var)], snap: &[Tensor]) -> Result<()> {
    for ((_, v), t) in vars.iter().zip(snap) {
        v.set(t)?;
    }
    Ok(())
}

/// A progress bar over `len` steps labelled `what` (hidden when `progress` is false).
pub fn progress_bar(progress: bool, len: usize, what: &str) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}] {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Train the variables of `varmap` on `objective` with `config`; the
/// variables of the epoch with the best held-out metric are restored before
/// returning. `what` names the model in the progress bar and the summary,
/// which is logged (`tracing`) and returned in the report.
pub fn fit(
    varmap: &VarMap,
    objective: &mut dyn Objective,
    config: &FitConfig,
    what: &str,
    progress: bool,
) -> Result<FitReport> {
    config.validate("train.")?;
    let n = objective.n_train();
    if n == 0 {
        return Err(NeuralError::Invalid(format!("{what}: no training examples")));
    }
    let _span = tracing::info_span!("fit", what, n_train = n, epochs = config.epochs).entered();
    let t0 = Instant::now();
    let vars = named_vars(varmap);
    // One AdamW per (learning-rate factor, decay or not): biases and norms get no weight decay.
    let mut groups: Vec<(f64, bool, Vec<Var>)> = Vec::new();
    for (name, var) in &vars {
        let key = (objective.lr_scale(name), !no_decay(name));
        match groups.iter_mut().find(|(s, d, _)| (*s, *d) == key) {
            Some((_, _, v)) => v.push(var.clone()),
            None => groups.push((key.0, key.1, vec![var.clone()])),
        }
    }
    let mut opts = Vec::with_capacity(groups.len());
    for (scale, decay, vs) in groups {
        let wd = if decay { config.weight_decay } else { 0.0 };
        opts.push((
            scale,
            AdamW::new(vs, ParamsAdamW { lr: config.lr * scale, weight_decay: wd, ..Default::default() })?,
        ));
    }
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut next = Some(objective.batches(&mut order, config.batch_size, &mut rng));
    let steps_per_epoch = next.as_ref().map_or(0, Vec::len).max(1);
    let total = steps_per_epoch * config.epochs;
    let warmup_steps = (config.warmup * total as f64).round() as usize;
    let bar = progress_bar(progress, total, what);
    let mut best: Option<(Selection, usize, Vec<Tensor>)> = None;
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut step = 0usize;
    for epoch in 1..=config.epochs {
        let batches = match next.take() {
            Some(b) => b,
            None => objective.batches(&mut order, config.batch_size, &mut rng),
        };
        let mut sum = 0f64;
        for (k, batch) in batches.iter().enumerate() {
            let lr = scheduled_lr(config.lr, step, warmup_steps, total);
            for (scale, opt) in &mut opts {
                opt.set_learning_rate(lr * *scale);
            }
            let loss = objective.loss(batch, &mut rng)?;
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(NeuralError::Invalid(format!(
                    "{what}: the training loss became {value} at epoch {epoch}, step {step}: lower train.lr"
                )));
            }
            let grads = loss.backward()?;
            for (_, opt) in &mut opts {
                opt.step(&grads)?;
            }
            sum += value;
            step += 1;
            bar.set_message(format!("epoch {epoch} loss {:.4}", sum / (k + 1) as f64));
            bar.inc(1);
        }
        let train_loss = sum / batches.len().max(1) as f64;
        let selection = objective.select()?;
        tracing::info!(epoch, train_loss, metric = selection.metric, "epoch done");
        bar.println(format!(
            "{what}: epoch {epoch}/{} train loss {train_loss:.4}, held-out {} {:.4}",
            config.epochs,
            objective.metric_name(),
            selection.metric
        ));
        if best.as_ref().is_none_or(|(b, ..)| objective.better(&selection, b)) {
            best = Some((selection.clone(), epoch, snapshot(&vars)?));
        }
        epochs.push(EpochRecord { epoch, train_loss, selection });
    }
    bar.finish_and_clear();
    let Some((best_selection, best_epoch, snap)) = best else {
        return Err(NeuralError::Invalid(format!("{what}: training ran no epoch")));
    };
    restore(&vars, &snap)?;
    let report = FitReport {
        n_train: n,
        steps: step,
        best_epoch,
        best_metric: best_selection.metric,
        metric_name: objective.metric_name().to_string(),
        epochs,
        seconds: t0.elapsed().as_secs_f64(),
    };
    tracing::info!("{}", report.summary(what));
    Ok(report)
}

/// A seeded initialiser that creates the variables of a model in a [`VarMap`].
pub struct Params<'a> {
    varmap: &'a VarMap,
    rng: Rng,
    device: Device,
    prefix: String,
}

impl<'a> Params<'a> {
    /// An initialiser writing into `varmap` on `device`, seeded by `seed`.
    pub fn new(varmap: &'a VarMap, device: &Device, seed: u64) -> Self {
        Params { varmap, rng: Rng::new(seed), device: device.clone(), prefix: String::new() }
    }

    /// The device variables are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Names created next are prefixed by `prefix.` (nested by repeated calls); returns the old prefix.
    pub fn push(&mut self, prefix: &str) -> String {
        let old = self.prefix.clone();
        self.prefix = if old.is_empty() { prefix.to_string() } else { format!("{old}.{prefix}") };
        old
    }

    /// Restore the prefix returned by [`Params::push`].
    pub fn pop(&mut self, old: String) {
        self.prefix = old;
    }

    fn insert(&mut self, name: &str, t: Tensor) -> Result<Tensor> {
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        let var = Var::from_tensor(&t)?;
        let mut data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        if data.contains_key(&full) {
            return Err(NeuralError::Invalid(format!("model variable {full} is created twice")));
        }
        let out = var.as_tensor().clone();
        data.insert(full, var);
        Ok(out)
    }

    /// A variable uniform in `[-a, a]`.
    pub fn uniform(&mut self, name: &str, shape: &[usize], a: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (self.rng.uniform() * 2.0 - 1.0) * a).collect();
        let t = Tensor::from_vec(v, shape, &self.device)?;
        self.insert(name, t)
    }

    /// A `(rows, cols)` weight with Glorot-uniform initialisation.
    pub fn glorot(&mut self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let a = (6.0 / (rows + cols) as f32).sqrt();
        self.uniform(name, &[rows, cols], a)
    }

    /// A variable filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = (Tensor::ones(shape, DType::F32, &self.device)? * value as f64)?;
        self.insert(name, t)
    }

    /// A linear layer `in → out` whose weight and bias start at zero: a residual branch ending in
    /// it adds nothing until training gives it a use.
    pub fn zero_linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let w = self.constant(&format!("{name}.weight"), &[d_in, d_out], 0.0)?;
        let b = Some(self.constant(&format!("{name}.bias"), &[d_out], 0.0)?);
        Ok(Linear { w, b })
    }

    /// A linear layer `in → out` (weight `(in, out)` Glorot, bias zero), created as `<name>.weight`/`<name>.bias`.
    pub fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let w = self.glorot(&format!("{name}.weight"), d_in, d_out)?;
        let b = if bias { Some(self.constant(&format!("{name}.bias"), &[d_out], 0.0)?) } else { None };
        Ok(Linear { w, b })
    }
}

/// A linear layer `x W + b` with `W` of shape `(in, out)`.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    /// Apply to `x` of shape `(..., in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.w)?;
        Ok(match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.w.elem_count() + self.b.as_ref().map_or(0, Tensor::elem_count)
    }

    /// The weight `(in, out)`: `forward(x) = x · w + b`.
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// The bias `(out)`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }
}

/// Total number of scalar parameters in `varmap`.
pub fn param_count(varmap: &VarMap) -> usize {
    named_vars(varmap).iter().map(|(_, v)| v.elem_count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Least squares `y = 3x - 1` with a held-out split scored by negative MSE.
    struct Line {
        w: Tensor,
        b: Tensor,
        x: Vec<f32>,
        losses: Vec<f64>,
    }

    impl Line {
        fn mse(&self, xs: &[f32]) -> Result<Tensor> {
            let x = Tensor::new(xs, &Device::Cpu)?;
            let y = ((&x * 3.0)? - 1.0)?;
            let pred = x.broadcast_mul(&self.w)?.broadcast_add(&self.b)?;
            Ok((pred - y)?.sqr()?.mean_all()?)
        }
    }

    impl Objective for Line {
        fn n_train(&self) -> usize {
            self.x.len()
        }
        fn loss(&mut self, batch: &[usize], _rng: &mut Rng) -> Result<Tensor> {
            let xs: Vec<f32> = batch.iter().map(|&i| self.x[i]).collect();
            self.mse(&xs)
        }
        fn select(&mut self) -> Result<Selection> {
            let l = self.mse(&[0.5, -0.25, 2.0])?.to_scalar::<f32>()? as f64;
            self.losses.push(l);
            Ok(Selection { metric: -l, extra: serde_json::json!({ "mse": l }) })
        }
        fn metric_name(&self) -> &str {
            "-mse"
        }
    }

    fn run(seed: u64, epochs: usize) -> (FitReport, f32, f32, Vec<f64>) {
        let vm = VarMap::new();
        let mut p = Params::new(&vm, &Device::Cpu, seed);
        let w = p.uniform("w", &[1], 0.1).unwrap();
        let b = p.constant("lin.bias", &[1], 0.0).unwrap();
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
        let mut obj = Line { w: w.clone(), b: b.clone(), x, losses: vec![] };
        let cfg = FitConfig { epochs, batch_size: 8, lr: 0.05, weight_decay: 0.0, warmup: 0.1, seed };
        let r = fit(&vm, &mut obj, &cfg, "line", false).unwrap();
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        (r, w, b, obj.losses)
    }

    #[test]
    fn fit_learns_and_is_deterministic_per_seed() {
        let (r, w, b, losses) = run(3, 30);
        assert!((w - 3.0).abs() < 0.1 && (b + 1.0).abs() < 0.1, "w {w} b {b}");
        assert_eq!(r.steps, 30 * 8);
        // The kept epoch is the one with the best held-out metric, and its variables are the ones restored.
        let best = losses.iter().cloned().fold(f64::INFINITY, f64::min);
        assert_eq!(r.best_metric, -best);
        assert_eq!(losses[r.best_epoch - 1], best);
        let (r2, w2, b2, _) = run(3, 30);
        assert_eq!((w, b, r.best_epoch), (w2, b2, r2.best_epoch));
        assert!(r.summary("line").contains("kept epoch"));
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(scheduled_lr(1.0, 0, 4, 20), 0.25);
        assert_eq!(scheduled_lr(1.0, 3, 4, 20), 1.0);
        assert_eq!(scheduled_lr(1.0, 4, 4, 20), 1.0);
        assert!((scheduled_lr(1.0, 12, 4, 20) - 0.5).abs() < 1e-12);
        assert!(scheduled_lr(1.0, 19, 4, 20) > 0.0 && scheduled_lr(1.0, 19, 4, 20) < 0.1);
        assert_eq!(scheduled_lr(2.0, 0, 0, 10), 2.0);
    }

    #[test]
    fn biases_and_norms_get_no_weight_decay() {
        for n in ["lin.bias", "enc.layer_norm.weight", "ln.gamma", "a.ln_1.weight"] {
            assert!(no_decay(n), "{n}");
        }
        for n in ["lin.weight", "entity.table", "lnx.weight", "kernel"] {
            assert!(!no_decay(n), "{n}");
        }
    }

    #[test]
    fn bad_config_names_the_key_and_params_refuse_duplicates() {
        let e = FitConfig { warmup: 1.5, ..Default::default() }.validate("train.").unwrap_err().to_string();
        assert!(e.contains("train.warmup"), "{e}");
        let vm = VarMap::new();
        let mut p = Params::new(&vm, &Device::Cpu, 1);
        p.constant("x", &[2], 1.0).unwrap();
        assert!(p.constant("x", &[2], 1.0).unwrap_err().to_string().contains("twice"));
        let old = p.push("enc");
        let l = p.linear("proj", 3, 2, true).unwrap();
        p.pop(old);
        assert_eq!(l.params(), 8);
        assert_eq!(param_count(&vm), 10);
        assert!(named_vars(&vm).iter().any(|(n, _)| n == "enc.proj.bias"));
    }
}
