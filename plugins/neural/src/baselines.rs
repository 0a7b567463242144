//! Two untrained baselines, scored by the same metrics as the tagger:
//! the majority label distribution, and the nearest label prototype over
//! MiniLM embeddings.

use crate::tagger::N_LABELS;
use ecr_engine::Emotion;

/// The label frequencies of the training annotations, as one distribution
/// given to every utterance (its top 2 are the two most frequent labels).
pub fn majority(gold: &[Vec<Emotion>]) -> [f32; N_LABELS] {
    let mut c = [0f32; N_LABELS];
    for g in gold {
        for e in g {
            c[e.index()] += 1.0;
        }
    }
    let total: f32 = c.iter().sum();
    if total > 0.0 {
        c.iter_mut().for_each(|x| *x /= total);
    }
    c
}

/// One prototype per label: the normalised mean embedding of the training
/// utterances that carry it. No parameter is trained.
pub struct Prototypes {
    protos: Vec<Option<Vec<f32>>>,
    temperature: f32,
}

impl Prototypes {
    /// Softmax temperature over cosine similarities.
    pub const TEMPERATURE: f32 = 0.05;

    /// Prototypes from utterance embeddings and their gold labels.
    pub fn fit(embeddings: &[Vec<f32>], gold: &[Vec<Emotion>]) -> Self {
        let dim = embeddings.first().map_or(0, Vec::len);
        let mut sums = vec![vec![0f32; dim]; N_LABELS];
        let mut counts = [0usize; N_LABELS];
        for (v, g) in embeddings.iter().zip(gold) {
            for e in g {
                counts[e.index()] += 1;
                sums[e.index()].iter_mut().zip(v).for_each(|(s, x)| *s += x);
            }
        }
        let protos = sums
            .into_iter()
            .zip(counts)
            .map(|(s, c)| {
                let norm = s.iter().map(|x| x * x).sum::<f32>().sqrt();
                (c > 0 && norm > 0.0).then(|| s.iter().map(|x| x / norm).collect())
            })
            .collect();
        Prototypes { protos, temperature: Self::TEMPERATURE }
    }

    /// A distribution over the labels: softmax of cosine similarity / temperature
    /// (labels without a prototype get 0).
    pub fn predict(&self, v: &[f32]) -> [f32; N_LABELS] {
        let sims: Vec<Option<f32>> =
            self.protos.iter().map(|p| p.as_ref().map(|p| p.iter().zip(v).map(|(a, b)| a * b).sum::<f32>())).collect();
        let max = sims.iter().flatten().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut out = [0f32; N_LABELS];
        for (o, s) in out.iter_mut().zip(&sims) {
            if let Some(s) = s {
                *o = ((s - max) / self.temperature).exp();
            }
        }
        let z: f32 = out.iter().sum();
        if z > 0.0 {
            out.iter_mut().for_each(|x| *x /= z);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Emotion::*;

    #[test]
    fn majority_is_label_frequency_and_prototypes_pick_the_nearest() {
        let m = majority(&[vec![Like], vec![Like, Happy], vec![Neutral]]);
        assert!((m[Like.index()] - 0.5).abs() < 1e-6 && (m[Happy.index()] - 0.25).abs() < 1e-6);
        let p = Prototypes::fit(&[vec![1.0, 0.0], vec![0.0, 1.0]], &[vec![Like], vec![Negative]]);
        let d = p.predict(&[0.9, 0.1]);
        assert!(d[Like.index()] > d[Negative.index()]);
        assert_eq!(d[Happy.index()], 0.0);
        assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
