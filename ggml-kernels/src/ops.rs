//! Element-wise and row-wise operations of the forward pass: RMSNorm, RoPE, activations, softmax.
//!
//! These are the scalar reference versions, written for clarity; each states its shapes. Rows are
//! contiguous (`x[row * n .. (row + 1) * n]`), as in ggml.

/// RMSNorm of each row of `x` (rows of `w.len()` elements), times `w`, into `out`:
/// `out = x / sqrt(mean(x^2) + eps) * w`. The sum of squares is accumulated in f64, as ggml does.
///
/// Precondition (debug-asserted): `x.len() == out.len()`, a whole number of rows.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    debug_assert!(n > 0 && x.len() == out.len() && x.len() % n == 0);
    for (xr, yr) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let scale = rms_scale(xr, eps);
        for ((y, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *y = v * scale * g;
        }
    }
}

/// RMSNorm in place, each row of `x` (rows of `w.len()` elements).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    debug_assert!(n > 0 && x.len() % n == 0);
    for xr in x.chunks_exact_mut(n) {
        let scale = rms_scale(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v *= scale * g;
        }
    }
}

#[inline]
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Adjacent pairs `(2i, 2i+1)` (ggml's "normal" mode: Llama, Mistral as converted to GGUF).
    Norm,
    /// Pairs `(i, i + d/2)` (GPT-NeoX: Gemma, Qwen2).
    Neox,
}

/// How [`RopeTable`] computes its rotation angles and their cosines and sines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeAngles {
    /// `theta = pos * freq_scale * base^(-2i/d)` and its cosine and sine in f64, rounded to f32:
    /// the angles themselves, for the exact path.
    Exact,
    /// As ggml's CPU backend computes them (`ggml_rope_cache_init`, no YaRN): theta starts at
    /// `pos * freq_scale` in f32 and is multiplied by `theta_scale = base^(-2/d)` (f32 `powf`)
    /// once per pair, cosine and sine in f32. The repeated rounding moves the angles by up to
    /// about 1e-4 radians at position 600, so the fast path takes them as llama.cpp does.
    Ggml,
    /// [`RopeAngles::Ggml`]'s angles, each pair rotated with the fused multiply-adds of ggml's
    /// x86 build (`ggml_kernels::llamacpp`'s numerics). Not the fast path's: its batched and
    /// single-sequence products differ in the last bits, and a change of rotation moves which
    /// of those differences cross an 8-bit rounding boundary (`tests/batched_decode.rs`).
    GgmlFused,
}

/// The rotation angles' frequencies: `base^(-2i/d)` for `i < d/2`, each divided by `freq_scale`'s
/// inverse (linear position scaling: `theta = pos * freq_scale * base^(-2i/d)`).
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub kind: RopeKind,
    /// Rotated dimensions per head (≤ head_dim; the rest pass through).
    pub n_rot: usize,
    inv_freq: Vec<f64>,
    /// ggml's `theta_scale`, `base^(-2/n_rot)` in f32.
    theta_scale: f32,
    freq_scale: f32,
}

impl RopeTable {
    pub fn new(kind: RopeKind, n_rot: usize, base: f32, freq_scale: f32) -> RopeTable {
        let inv_freq = (0..n_rot / 2)
            .map(|i| freq_scale as f64 * (base as f64).powf(-2.0 * i as f64 / n_rot as f64))
            .collect();
        let theta_scale = base.powf(-2.0 / n_rot as f32);
        RopeTable { kind, n_rot, inv_freq, theta_scale, freq_scale }
    }

    /// Rotates every head of one token's vector `x` (`n_head * head_dim` elements) to position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: i64) {
        self.apply_all(&mut [x], head_dim, pos, RopeAngles::Exact);
    }

    /// [`RopeTable::apply`] to each of `xs` (one token's queries and keys), with the cosines and
    /// sines of `pos` (computed as `angles` says) computed once for all of them.
    pub fn apply_all(&self, xs: &mut [&mut [f32]], head_dim: usize, pos: i64, angles: RopeAngles) {
        debug_assert!(head_dim >= self.n_rot && xs.iter().all(|x| x.len() % head_dim == 0));
        let half = self.n_rot / 2;
        // cos/sin per frequency, once per call (shared by all heads).
        let mut cs = [(0f32, 0f32); 256];
        let mut cs_vec;
        let cs: &mut [(f32, f32)] = if half <= cs.len() {
            &mut cs[..half]
        } else {
            cs_vec = vec![(0f32, 0f32); half];
            &mut cs_vec
        };
        match angles {
            RopeAngles::Exact => {
                for (c, &f) in cs.iter_mut().zip(&self.inv_freq) {
                    let theta = pos as f64 * f;
                    *c = (theta.cos() as f32, theta.sin() as f32);
                }
            }
            RopeAngles::Ggml | RopeAngles::GgmlFused => {
                let mut theta = pos as f32;
                for c in cs.iter_mut() {
                    let t = self.freq_scale * theta;
                    *c = (t.cos(), t.sin());
                    theta *= self.theta_scale;
                }
            }
        }
        // ggml's `rotate_pairs` writes `x0*cos - x1*sin` and `x0*sin + x1*cos`; GCC compiles each
        // (`-ffp-contract=fast`, with FMA) as one fused multiply-add of the first product, which
        // `GgmlFused` reproduces (bit for bit, checked against llama.cpp's tensors).
        let fused = angles == RopeAngles::GgmlFused;
        for head in xs.iter_mut().flat_map(|x| x.chunks_exact_mut(head_dim)) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (a, b) = match self.kind {
                    RopeKind::Norm => (2 * i, 2 * i + 1),
                    RopeKind::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                if fused {
                    head[a] = x0.mul_add(cos, -(x1 * sin));
                    head[b] = x0.mul_add(sin, x1 * cos);
                } else {
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`):
/// `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed through the identity
/// `0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u))`, which needs one `exp` instead of a `tanh`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// GELU-tanh as ggml's CPU backend computes it (`GGML_GELU_FP16`, llama.cpp's `GELU` and `GEGLU`
/// ops on f32): the input rounded to f16 indexes a table of f16 results (each the tanh form in
/// f32 at that f16 input); inputs at or below -10 give 0, at or above 10 the input itself. The
/// fast path uses it so that its FFN computes what llama.cpp's does (the f16 rounding moves each
/// activation by up to 2^-11 of itself, far more than f32 summation order does).
#[inline]
pub fn gelu_tanh_f16(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_f16_table()[half::f16::from_f32(x).to_bits() as usize]
    }
}

/// ggml's `ggml_table_gelu_f16`, each f16 result stored as the f32 it equals.
fn gelu_f16_table() -> &'static [f32; 1 << 16] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<Box<[f32; 1 << 16]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const GELU_COEF_A: f32 = 0.044_715;
        let mut t = Box::new([0f32; 1 << 16]);
        for (bits, y) in t.iter_mut().enumerate() {
            let x = half::f16::from_bits(bits as u16).to_f32();
            // ggml's `0.5f*x*(1.0f + tanhf(SQRT_2_OVER_PI*x*(1.0f + GELU_COEF_A*x*x)))` as GCC
            // compiles it for x86 with FMA (`-ffp-contract=fast`, its default outside ISO C
            // mode): `1.0f + (GELU_COEF_A*x)*x` is one fused multiply-add. Unfused, a few
            // hundred of the table's entries differ by one f16 step.
            let g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh());
            *y = half::f16::from_f32(g).to_f32();
        }
        t
    })
}

/// SiLU: `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The gated FFN's middle: `gate = act(gate) * up`, element-wise, in place in `gate`; split
/// over threads for batches (a 512-token prompt has a million elements per layer).
pub fn gated_act(gate: &mut [f32], up: &[f32], act: fn(f32) -> f32) {
    use rayon::prelude::*;
    debug_assert_eq!(gate.len(), up.len());
    const CHUNK: usize = 16 * 1024;
    gate.par_chunks_mut(CHUNK).zip(up.par_chunks(CHUNK)).for_each(|(g, u)| {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = act(*g) * u;
        }
    });
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// `y *= s`.
pub fn scale(y: &mut [f32], s: f32) {
    for a in y.iter_mut() {
        *a *= s;
    }
}

/// Softmax of `x` in place; returns the log-sum-exp of the input.
pub fn softmax_inplace(x: &mut [f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return f32::NEG_INFINITY;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
    max + (sum as f32).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_row_is_weight() {
        let x = [3.0f32; 8];
        let w = [0.5f32; 8];
        let mut y = [0f32; 8];
        rms_norm(&x, &w, 0.0, &mut y);
        assert!(y.iter().all(|&v| (v - 0.5).abs() < 1e-6), "{y:?}");
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        for kind in [RopeKind::Norm, RopeKind::Neox] {
            let t = RopeTable::new(kind, 8, 10000.0, 1.0);
            let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.7).collect();
            let mut y = x.clone();
            t.apply(&mut y, 8, 0);
            assert_eq!(x, y);
            t.apply(&mut y, 8, 17);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn rope_neox_rotates_first_pair_by_pos() {
        let t = RopeTable::new(RopeKind::Neox, 4, 10000.0, 1.0);
        // Dimension 0 pairs with 2; its frequency is 1, so position p rotates by p radians.
        let mut x = [1.0f32, 0.0, 0.0, 0.0];
        t.apply(&mut x, 4, 1);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn softmax_returns_lse() {
        let mut x = [1.0f32, 2.0, 3.0];
        let lse = softmax_inplace(&mut x);
        let expect = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((lse - expect).abs() < 1e-5);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn gelu_through_exp_equals_the_tanh_form() {
        for i in -2000..2000 {
            let x = i as f32 / 100.0;
            let reference = 0.5 * x as f64 * (1.0 + (0.797_884_560_802_865_4 * (x as f64 + 0.044715 * (x as f64).powi(3))).tanh());
            assert!((gelu_tanh(x) as f64 - reference).abs() <= 1e-6 * (1.0 + reference.abs()), "x = {x}");
        }
        assert!(gelu_tanh(-100.0) == 0.0 && gelu_tanh(100.0) == 100.0);
    }

    #[test]
    fn gelu_f16_is_the_tanh_form_at_the_f16_input_rounded_to_f16() {
        use half::f16;
        for i in -2900..2900 {
            let x = i as f32 / 293.0;
            let x16 = f16::from_f32(x).to_f32();
            // ggml's `ggml_gelu_f32`, in f32.
            let tanh_form = 0.5 * x16 * (1.0 + (0.797_884_6 * x16 * (1.0 + 0.044_715 * x16 * x16)).tanh());
            let got = gelu_tanh_f16(x);
            assert_eq!(got, f16::from_f32(tanh_form).to_f32(), "x = {x}");
            // Within f16 precision of the exact GELU (the tanh form cancels for negative x).
            assert!((got - gelu_tanh(x)).abs() <= 2e-3 * gelu_tanh(x).abs() + 2e-5, "x = {x}: {got} vs {}", gelu_tanh(x));
        }
        assert_eq!(gelu_tanh_f16(-10.0), 0.0);
        assert_eq!(gelu_tanh_f16(10.0), 10.0);
        assert_eq!(gelu_tanh_f16(123.5), 123.5);
        assert_eq!(gelu_tanh_f16(0.0), 0.0);
    }

    #[test]
    fn ggml_rope_angles_are_repeated_f32_products() {
        let t = RopeTable::new(RopeKind::Neox, 8, 10000.0, 1.0);
        let pos = 600i64;
        // Pair 2 (dimensions 2 and 6) of a unit vector rotates by pos * theta_scale^2, the
        // product taken twice in f32.
        let theta_scale = 10000f32.powf(-2.0 / 8.0);
        let theta = (pos as f32 * theta_scale) * theta_scale;
        let mut x = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        t.apply_all(&mut [&mut x], 8, pos, RopeAngles::Ggml);
        assert_eq!((x[2], x[6]), (theta.cos(), theta.sin()));
        // The exact angles differ by rounding only.
        let mut y = [0.3f32, -1.2, 0.7, 2.0, -0.4, 0.9, 1.1, -0.6];
        let mut z = y;
        t.apply_all(&mut [&mut y], 8, pos, RopeAngles::Ggml);
        t.apply_all(&mut [&mut z], 8, pos, RopeAngles::Exact);
        assert!(y.iter().zip(&z).all(|(a, b)| (a - b).abs() < 1e-3), "{y:?} {z:?}");
        let mut w = [0.3f32, -1.2, 0.7, 2.0, -0.4, 0.9, 1.1, -0.6];
        let w0 = w;
        t.apply_all(&mut [&mut w], 8, 0, RopeAngles::Ggml);
        assert_eq!(w, w0);
    }

    #[test]
    fn activations_match_closed_forms() {
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert_eq!(gelu_tanh(0.0), 0.0);
    }
}
