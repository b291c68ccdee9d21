//! The scale searches shared by the K-quant reference quantizers, after ggml's `make_qx_quants`,
//! `make_q3_quants` and `make_qkx2_quants`, and the 6-bit scale/min packing of Q4_K and Q5_K.
//!
//! Each search is written with the same floating-point operations in the same order as ggml, so
//! that it picks the same quants. Comments name the ggml function each one follows.

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is treated as zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, as ggml's `nearest_int` (which adds 1.5 * 2^23
/// and reads the mantissa) does for every input it is defined on (|x| < 2^22). Outside that
/// range ggml asserts; here the result saturates (NaN gives 0), so callers' clamps still hold.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Symmetric quantization of a group to signed levels `-nmax..nmax`, stored offset by `nmax` in
/// `levels` (so `0..2*nmax`), with a search over 18 nearby scales that maximises the weighted
/// fit. Returns the scale. Follows ggml's `make_qx_quants` for `rmse_type == 1` with no
/// importance weights (weight = x²), the only form the reference quantizers use.
///
/// Precondition: `levels.len() == x.len()` (debug-asserted).
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    debug_assert_eq!(levels.len(), x.len());
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);

    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (l_out, &v) in levels.iter_mut().zip(x) {
        let l = quant(iscale, v);
        *l_out = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = quant(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l_out, &v) in levels.iter_mut().zip(x) {
                *l_out = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization for Q3_K: levels `-nmax..nmax` (stored offset by `nmax`), then up to
/// five passes that move single elements to the level that most improves the x²-weighted fit.
/// Returns the scale. Follows ggml's `make_q3_quants` with `do_rmse == true`.
///
/// Precondition: `levels.len() == x.len()` (debug-asserted).
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    debug_assert_eq!(levels.len(), x.len());
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (l_out, &v) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l_out = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (l_cur, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let cur = f32::from(*l_cur);
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*l_cur) {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l_cur = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Parameters of the scale/min search of [`make_qkx2_quants`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Qkx2Search {
    /// Largest level (levels are `0..=nmax`).
    pub nmax: i32,
    /// First trial offset added to `nmax` when choosing a trial inverse scale.
    pub rmin: f32,
    /// Step between trial offsets.
    pub rdelta: f32,
    /// Number of steps (`nstep + 1` trials).
    pub nstep: i32,
    /// Minimise weighted absolute error instead of weighted squared error.
    pub use_mad: bool,
}

/// Asymmetric quantization of a group, `x ≈ scale * l - min` with `l` in `0..=nmax`, searching
/// trial scales and solving the weighted least-squares fit of scale and min for each. Returns
/// `(scale, min)` with `min >= 0` meaning the offset to subtract. Follows ggml's
/// `make_qkx2_quants`; `aux` is scratch of the group's length.
///
/// Precondition: `x`, `weights`, `levels` and `aux` have the same non-zero length
/// (debug-asserted).
pub(crate) fn make_qkx2_quants(
    p: Qkx2Search,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    aux: &mut [u8],
) -> (f32, f32) {
    debug_assert!(!x.is_empty());
    debug_assert!(weights.len() == x.len() && levels.len() == x.len() && aux.len() == x.len());
    let (Some(&x0), Some(&w0)) = (x.first(), weights.first()) else { return (0.0, 0.0) };
    let nmax = p.nmax;
    let nmaxf = nmax as f32;
    let mut min = x0;
    let mut max = x0;
    let mut sum_w = w0;
    let mut sum_x = sum_w * x0;
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let error_of = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };

    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((l_out, &v), &w) in levels.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
        *l_out = l as u8;
        let diff = scale * l as f32 + min - v;
        best_error += w * error_of(diff);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for ((a, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *a = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&a, &v), &w) in aux.iter().zip(x).zip(weights) {
                let diff = this_scale * f32::from(a) + this_min - v;
                cur_error += w * error_of(diff);
            }
            if cur_error < best_error {
                levels.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Reads the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K
/// (ggml's `get_scale_min_k4`). Sub-blocks 0..4 keep their six bits in the low bits of bytes
/// `j` (scale) and `j + 4` (min); sub-blocks 4..8 keep their low four bits in byte `j + 4` and
/// their top two bits in the spare high bits of bytes `j - 4` (scale) and `j` (min).
#[inline]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    debug_assert!(j < 8);
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The inverse of [`get_scale_min_k4`]: packs eight 6-bit scales and mins into 12 bytes.
pub(crate) fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            q[j] = ls;
            q[j + 4] = lm;
        } else {
            q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

/// The K-quant reference quantizers for Q4_K and Q5_K differ only in the level count and search
/// range; this is their shared body. Returns `(d, dmin, packed scales, levels)`.
pub(crate) fn quantize_k4_superblock(
    x: &[f32],
    search: Qkx2Search,
    levels: &mut [u8; 256],
) -> (half::f16, half::f16, [u8; 12]) {
    debug_assert_eq!(x.len(), 256);
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut weights = [0.0f32; 32];
    let mut aux = [0u8; 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (j, (xs, ls)) in x.chunks_exact(32).zip(levels.chunks_exact_mut(32)).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(search, xs, &weights, ls, &mut aux);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // ggml stores the rounded value in a uint8_t before clamping; `as u8` wraps the same way.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);

    // Requantize each sub-block against the scales as they will be decoded.
    let nmax = search.nmax;
    for (j, (xs, ls)) in x.chunks_exact(32).zip(levels.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dl = d.to_f32() * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for (l, &v) in ls.iter_mut().zip(xs) {
            *l = nearest_int((v + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        for (x, n) in [(0.5f32, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-3.51, -4)] {
            assert_eq!(nearest_int(x), n, "{x}");
        }
        assert_eq!(nearest_int(f32::NAN), 0);
    }

    #[test]
    fn scale_min_packing_round_trips() {
        let scales = [0u8, 1, 31, 32, 33, 62, 63, 17];
        let mins = [63u8, 5, 0, 40, 48, 1, 2, 60];
        let q = pack_scale_min_k4(&scales, &mins);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (scales[j], mins[j]), "sub-block {j}");
        }
    }
}
