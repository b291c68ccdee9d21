//! Choosing the next token from logits: greedy, or llama.cpp's default chain — repetition
//! penalty, top-k, top-p, min-p, temperature, then a draw — with a seeded generator so that the
//! same seed gives the same tokens.

use std::collections::VecDeque;

/// Sampling settings. The defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 (or below 1e-6): greedy.
    pub temp: f32,
    /// Keep the `top_k` most likely tokens; 0: all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1: all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely; 0: none.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1: off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams { temp: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("{name} = {value} is out of range ({range})")]
    OutOfRange { name: &'static str, value: String, range: &'static str },
    #[error("the logits contain NaN or infinity (token {index}); refusing to sample")]
    NonFinite { index: usize },
    #[error("no logits to sample from")]
    Empty,
}

impl SamplerParams {
    /// Checks every setting; the CLI rejects bad values with this message.
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name, value: f32, range| Err(SamplingError::OutOfRange { name, value: value.to_string(), range });
        if !(self.temp.is_finite() && self.temp >= 0.0) {
            return bad("temp", self.temp, "0 or more; 0 is greedy");
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p", self.top_p, "above 0, at most 1");
        }
        if !(self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)) {
            return bad("min-p", self.min_p, "0 to 1");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat-penalty", self.repeat_penalty, "above 0; 1 is off");
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temp < 1e-6
    }
}

/// A small, fast, well-distributed generator (xoshiro256**), seeded through splitmix64, so that
/// a seed gives the same stream on every platform.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens; remembers recent ones for the repetition penalty.
pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Result<Sampler, SamplingError> {
        params.validate()?;
        let rng = Rng::new(params.seed);
        Ok(Sampler { params, rng, recent: VecDeque::new() })
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Records a token the model was given or produced (for the repetition penalty).
    pub fn accept(&mut self, token: u32) {
        if self.params.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Forgets the recent tokens.
    pub fn reset(&mut self) {
        self.recent.clear();
    }

    /// Chooses the next token. `logits` is modified (penalties applied).
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32, SamplingError> {
        if logits.is_empty() {
            return Err(SamplingError::Empty);
        }
        if let Some(index) = logits.iter().position(|v| !v.is_finite()) {
            return Err(SamplingError::NonFinite { index });
        }
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let mut seen: Vec<u32> = self.recent.iter().copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                }
            }
        }
        if p.is_greedy() {
            return Ok(argmax(logits));
        }
        // Candidates sorted by logit, cut to top-k (a partial sort keeps this cheap for 262k).
        let k = if p.top_k == 0 { logits.len() } else { p.top_k.min(logits.len()) };
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Probabilities (before temperature, as llama.cpp's top-p and min-p see them).
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        // Top-p: the smallest prefix whose mass reaches top_p.
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
        }
        // Min-p: tokens at least min_p times as likely as the best.
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            cand.truncate(keep);
        }
        // Temperature, then draw.
        let weights: Vec<f64> = cand.iter().map(|c| (((c.1 - max) / p.temp) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (c, w) in cand.iter().zip(&weights) {
            if r < *w {
                return Ok(c.0);
            }
            r -= w;
        }
        Ok(cand[cand.len() - 1].0)
    }
}

/// Index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect()
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplerParams { temp: 0.0, ..Default::default() }).unwrap();
        let mut l = logits();
        let best = argmax(&l);
        assert_eq!(s.sample(&mut l).unwrap(), best);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let draw = |seed| {
            let mut s = Sampler::new(SamplerParams { temp: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..Default::default() }).unwrap();
            (0..50).map(|_| s.sample(&mut logits()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerParams { temp: 2.0, top_k: 1, ..Default::default() }).unwrap();
        let l = logits();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut l.clone()).unwrap(), argmax(&l));
        }
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens() {
        let mut s = Sampler::new(SamplerParams { temp: 0.0, repeat_penalty: 100.0, ..Default::default() }).unwrap();
        let l = logits();
        let best = argmax(&l);
        s.accept(best);
        assert_ne!(s.sample(&mut l.clone()).unwrap(), best);
    }

    #[test]
    fn bad_settings_and_nan_are_errors() {
        assert!(Sampler::new(SamplerParams { temp: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplerParams { top_p: 1.5, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplerParams { min_p: f32::NAN, ..Default::default() }).is_err());
        let mut s = Sampler::new(SamplerParams::default()).unwrap();
        let mut l = logits();
        l[3] = f32::NAN;
        assert_eq!(s.sample(&mut l), Err(SamplingError::NonFinite { index: 3 }));
    }
}
