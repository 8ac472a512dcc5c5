//! The two-sample Kolmogorov-Smirnov test as scipy computes it: the statistic, the exact
//! p-value for up to 10000 values a side, and the asymptotic distribution (`kstwo`)
//! beyond. Pure numerics; imports nothing.

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Pr(D ≥ h/n) for two samples of equal size n (scipy `_compute_prob_outside_square`).
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let mut p = 0.0;
    let mut k = (n / h) as i64;
    let (n, h) = (n as f64, h as f64);
    while k >= 0 {
        let kf = k as f64;
        let mut p1 = 1.0;
        let mut j = 0.0;
        while j < h {
            p1 = (n - kf * h - j) * p1 / (n + kf * h + j + 1.0);
            j += 1.0;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// Cells of the lattice count below this are counted as 0 (see [`outer_prob_inside`]).
const FLUSH_BELOW: f64 = 1e-300;

/// Results at or above this are exact to rounding with the flush (see
/// [`outer_prob_inside`]).
const FLUSH_EXACT_ABOVE: f64 = 1e-280;

/// The share of lattice paths from (0,0) to (m,n) that leave the band
/// |x/m − y/n| < h/lcm (scipy `_compute_outer_prob_inside_method`, Hodges' inside
/// method with Viehmann's recursion for 1 − p).
///
/// When the samples differ a lot (large h) the band is wide and many of its cells hold
/// values below 1e-308, whose subnormal arithmetic costs a hundred cycles a cell: that
/// was most of the cost of scoring a drifted window. Each cell is a convex combination
/// of two earlier ones (weights i/(i+j) and j/(i+j)), so flushing cells below
/// [`FLUSH_BELOW`] to 0 moves the result by at most (m + n + 1)·1e-300 (each step of
/// a path adds at most one flush): nothing, relatively, for a p-value at or above
/// [`FLUSH_EXACT_ABOVE`]. Below that the count is redone without the flush, as scipy
/// computes it; where Kolmogorov's limit, 2·exp(−2·en·d²), already puts p far below
/// it, the flushed pass is skipped. Either way the result is the unflushed one's.
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let lcm = (m / g) as f64 * n as f64;
    let d = h as f64 / lcm;
    let en = (m as f64 * n as f64) / (m + n) as f64;
    // ln(1e-300): 20 orders of magnitude of margin below FLUSH_EXACT_ABOVE.
    if -2.0 * en * d * d > -690.8 {
        let p = outer_prob_inside_with::<true>(m, n, g, h);
        if p >= FLUSH_EXACT_ABOVE {
            return p;
        }
    }
    outer_prob_inside_with::<false>(m, n, g, h)
}

fn outer_prob_inside_with<const FLUSH: bool>(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (mg, ng) = ((m / g) as i64, (n / g) as i64);
    let (m, n, h) = (m as i64, n as i64, h as i64);
    let div_floor = |a: i64, b: i64| a.div_euclid(b);
    let div_ceil = |a: i64, b: i64| -((-a).div_euclid(b));
    let mut minj: i64 = 0;
    let mut maxj: i64 = div_ceil(h, mg).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a];
    let recip: Vec<f64> = (0..=(m + n) as usize)
        .map(|k| if k == 0 { 0.0 } else { 1.0 / k as f64 })
        .collect();
    for v in a.iter_mut().take(maxj as usize).skip(minj as usize) {
        *v = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = (div_floor(ng * i - h, mg) + 1).max(0).min(n);
        maxj = div_ceil(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        let fi = i as f64;
        let len = (maxj - minj) as usize;
        let shift = (minj - lastminj) as usize;
        let r = &recip[(i + minj) as usize..][..len];
        // In place: row i's cell k reads row i − 1's cell k + shift (shift ≥ 0) before
        // anything writes there. The check lets the compiler drop the per-cell ones.
        assert!(
            shift + len <= a.len(),
            "the band stays inside the row buffer"
        );
        let mut fj = minj as f64;
        if FLUSH {
            // val = A·i/(i+j) + val·j/(i+j): both factors are independent of val, so the
            // loop's dependency chain is one multiply and one add (scipy's form below
            // chains a multiply, an add and a multiply). All values stay normal here, so
            // the reassociation costs nothing measurable against scipy (oracle tests).
            for (k, &rk) in r.iter().enumerate() {
                val = a[k + shift] * fi * rk + val * (fj * rk);
                if val < FLUSH_BELOW {
                    val = 0.0;
                }
                a[k] = val;
                fj += 1.0;
            }
        } else {
            // scipy's (A[j − lastminj]·i + val·j) / (i + j), with 1/(i + j) precomputed
            // (over the oracle cases the p-values agree to a relative 1e-14); in this
            // order subnormal values keep the precision scipy's keep.
            for (k, &rk) in r.iter().enumerate() {
                val = (a[k + shift] * fi + val * fj) * rk;
                a[k] = val;
                fj += 1.0;
            }
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let start = (maxj - minj) as usize;
            let end = (start + (lastlen - curlen) as usize).min(a.len());
            for v in &mut a[start..end] {
                *v = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

// --- The one-sample two-sided Kolmogorov-Smirnov distribution ------------------------
//
// `scipy.stats.ks_2samp` with more than 10000 values on a side (or when its exact
// computation fails) takes its p-value from `kstwo.sf(d, round(n1·n2 / (n1 + n2)))`: the
// exact distribution of the one-sample statistic D_n, which scipy evaluates by Simard
// and L'Ecuyer's choice among the methods below (scipy/stats/_ksstats.py). The same
// choices here, so that the p-value is scipy's on every path rather than Kolmogorov's
// limit (a few percent off at the sizes drift windows have).

const TWO_128: f64 = 3.402_823_669_209_385e38; // 2^128
const TWO_M128: f64 = 2.938_735_877_055_719e-39; // 2^-128

fn clip01(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// x · 2^e without overflow or underflow in the steps.
fn ldexp(x: f64, e: i64) -> f64 {
    let (mut x, mut e) = (x, e);
    while e != 0 {
        let step = e.clamp(-512, 512);
        x *= 2f64.powi(step as i32);
        e -= step;
    }
    x
}

/// ln(n! / n^n) by Stirling's series with n·ln(n) removed up front.
fn ln_nfactorial_div_n_pow_n(n: f64) -> f64 {
    // B_2j / (2j (2j − 1)), j = 8 down to 1.
    const STIRLING: [f64; 8] = [
        -0.029_550_653_594_771_242,
        0.006_410_256_410_256_41,
        -0.001_917_526_917_526_917_6,
        0.000_841_750_841_750_841_7,
        -0.000_595_238_095_238_095_3,
        0.000_793_650_793_650_793_7,
        -0.002_777_777_777_777_778,
        0.083_333_333_333_333_33,
    ];
    let rn = 1.0 / n;
    let y = rn / n;
    let poly = STIRLING.iter().fold(0.0, |acc, &c| acc * y + c);
    n.ln() / 2.0 - n + (2.0 * std::f64::consts::PI).ln() / 2.0 + rn * poly
}

/// Pr(D_n ≤ d) by Durbin's matrix method as Marsaglia, Tsang and Wang compute it: the
/// k-th diagonal entry of H^n · n!/n^n, rescaled by 2^±128 along the way.
fn kolmogn_dmtw_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let nd = nf * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powi(j as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    // H: column i (i ≥ 1) holds 1/0!, 1/1!, ... from row i − 1 down; column 0 is v, the
    // last row v reversed.
    let mut hm = vec![0.0; m * m];
    for i in 1..m {
        for r in (i - 1)..m {
            hm[r * m + i] = w[r + 1 - i];
        }
    }
    for (r, &x) in v.iter().enumerate() {
        hm[r * m] = x;
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }
    let matmul = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; m * m];
        for i in 0..m {
            for l in 0..m {
                let x = a[i * m + l];
                if x != 0.0 {
                    for j in 0..m {
                        out[i * m + j] += x * b[l * m + j];
                    }
                }
            }
        }
        out
    };
    let mut pwr = vec![0.0; m * m];
    for i in 0..m {
        pwr[i * m + i] = 1.0;
    }
    let (mut nn, mut expnt, mut hexpnt) = (n, 0i64, 0i64);
    while nn > 0 {
        if nn % 2 == 1 {
            pwr = matmul(&pwr, &hm);
            expnt += hexpnt;
        }
        hm = matmul(&hm, &hm);
        hexpnt *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > TWO_128 {
            for x in &mut hm {
                *x /= TWO_128;
            }
            hexpnt += 128;
        }
        nn /= 2;
    }
    let mut p = pwr[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < TWO_M128 {
            p *= TWO_128;
            expnt -= 128;
        }
    }
    clip01(ldexp(p, expnt))
}

/// Pr(D_n ≤ x) by Pomeranz's recursion (n ≤ 140, moderate x).
fn kolmogn_pomeranz_cdf(n: u64, x: f64) -> f64 {
    let n = n as i64;
    let nf = n as f64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    // (g/n)^k/k!, (2g/n)^k/k!, ((1−2g)/n)^k/k!: Poisson weights without their factor.
    let (mut gp, mut twogp, mut onem2gp) = (vec![1.0; npwrs], vec![1.0; npwrs], vec![1.0; npwrs]);
    let (g_n, two_g_n, onem2g_n) = (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for k in 1..npwrs {
        gp[k] = gp[k - 1] * g_n / k as f64;
        twogp[k] = twogp[k - 1] * two_g_n / k as f64;
        onem2gp[k] = onem2gp[k - 1] * onem2g_n / k as f64;
    }
    // The non-zero stretch of row i.
    let j1j2 = |i: i64| -> (i64, i64) {
        let (j1, j2) = if i == 0 {
            (-ll - ceilf - 1, ll + ceilf - 1)
        } else {
            let (half, odd_i) = ((i + 1) / 2, (i + 1) % 2 == 0);
            if odd_i {
                if half == n + 1 {
                    (n - ll - ceilf - 1, n + ll + ceilf - 1)
                } else {
                    (half - 1 - ll - roundf - 1, half + ll - 1 + ceilf - 1)
                }
            } else {
                (half - 1 - ll - 1, half + ll + roundf - 1)
            }
        };
        ((j1 + 2).max(0), j2.min(n))
    };
    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s) = (0i64, 0i64);
    let mut expnt = 0i64;
    let (mut j1, _) = j1j2(0);
    for i in 1..(2 * n + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.fill(0.0);
        let (next_j1, j2) = j1j2(i);
        j1 = next_j1;
        let pwrs = if i == 1 || i == 2 * n + 1 {
            &gp
        } else if i % 2 == 1 {
            &twogp
        } else {
            &onem2gp
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            let start = ((k1 - v0s).max(0) as usize).min(npwrs);
            let a = &v0[start..(start + ln2 as usize).min(npwrs)];
            let b = &pwrs[..(ln2 as usize).min(npwrs)];
            let conv_start = (j1 - k1).max(0) as usize;
            let conv_len = (j2 - j1 + 1).max(0) as usize;
            // Entries conv_start.. of the full convolution of a and b.
            for (o, slot) in v1.iter_mut().take(conv_len).enumerate() {
                let c = conv_start + o;
                let mut acc = 0.0;
                for (ai, &av) in a.iter().enumerate().take(c + 1) {
                    if let Some(&bv) = b.get(c - ai) {
                        acc += av * bv;
                    }
                }
                *slot = acc;
            }
            let top = v1.iter().copied().fold(0.0, f64::max);
            if top > 0.0 && top < TWO_M128 {
                for x in &mut v1 {
                    *x *= TWO_128;
                }
                expnt -= 128;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = v1.get((n - v1s).max(0) as usize).copied().unwrap_or(0.0);
    for k in 1..=n {
        if ans.abs() > TWO_128 {
            ans *= TWO_M128;
            expnt += 128;
        }
        ans *= k as f64;
    }
    clip01(ldexp(ans, expnt))
}

/// The Pelz-Good approximation to Pr(D_n ≤ x) (large n, moderate x).
fn kolmogn_pelz_good_cdf(n: u64, x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let z = nf.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -PI * PI / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let (k1a, k1b) = (-z2, pi2 / 4.0);
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    // Horner over odd m = 2k − 1 of c_m q^(m²).
    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (kv, c) in k.iter_mut().zip(coeffs) {
            *kv = *kv * qpower + c;
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let div = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (kv, d) in k.iter_mut().zip(div) {
        *kv = *kv * q * sqrt2pi / d;
    }
    // The terms over all integers k of K2 and K3.
    let q2 = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for kk in (1..=maxk).rev() {
        let ks = kk as f64;
        let qp = q2.powf(ks * ks);
        k2extra += ks * ks * qp;
        let kspi = PI * ks;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ks * ks * qp;
    }
    k[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    k[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    k.iter()
        .enumerate()
        .map(|(i, kv)| kv / nf.powf(i as f64 / 2.0))
        .sum()
}

/// `scipy.special.smirnov(n, x)`: Pr(D_n+ ≥ x) for the one-sided statistic, by the
/// Birnbaum-Tingey sum x · Σ_{v < n(1−x)} C(n,v) (1−x−v/n)^(n−v) (x+v/n)^(v−1), its
/// positive terms summed from their logarithms. (scipy uses the alternating upper sum
/// only for x ≤ 0.5/√n, where `kstwo_sf` never calls this.)
fn smirnov_sf(n: u64, x: f64) -> f64 {
    if n == 0 || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    let nf = n as f64;
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nx = nf * x;
    if nx <= 1.0 {
        return clip01(1.0 - x * (1.0 + x).powf(nf - 1.0));
    }
    // exp() of less than this is 0 in doubles.
    if -2.0 * nf * x * x < -708.396_418_532_264_1 {
        return 0.0;
    }
    if nx.floor() >= nf - 1.0 {
        return (1.0 - x).powf(nf);
    }
    let mut ln_binom = 0.0; // ln C(n, v)
    let mut terms: Vec<f64> = Vec::new();
    let mut peak = f64::NEG_INFINITY;
    let mut v = 0u64;
    while (v as f64) < nf - nx {
        let vf = v as f64;
        let low = (nf - vf - nx) / nf; // 1 − x − v/n
        let high = (vf + nx) / nf; // x + v/n
        let t = ln_binom + (nf - vf) * low.ln() + (vf - 1.0) * high.ln();
        // Past their peak the terms fall steadily: stop once the rest cannot count.
        if t < peak - 50.0 && terms.last().is_some_and(|&l| t < l) {
            break;
        }
        peak = peak.max(t);
        terms.push(t);
        ln_binom += ((nf - vf) / (vf + 1.0)).ln();
        v += 1;
    }
    let sum: f64 = terms.iter().map(|t| (t - peak).exp()).sum();
    clip01(x * sum * peak.exp())
}

/// `scipy.stats.kstwo.sf(x, n)`: Pr(D_n ≥ x) for the one-sample two-sided statistic,
/// by the method scipy picks for (n, x).
pub fn kstwo_sf(n: u64, x: f64) -> f64 {
    if x.is_nan() || n == 0 {
        return f64::NAN;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben-Gambino: for 1/(2n) ≤ x ≤ 1/n the CDF is n!/n^n (2t − 1)^n.
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            (1..=n).fold(1.0, |p, i| p * (i as f64 * (1.0 / nf) * (2.0 * t - 1.0)))
        } else {
            (ln_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip01(1.0 - cdf);
    }
    if t >= nf - 1.0 {
        return clip01(2.0 * (1.0 - x).powf(nf));
    }
    if x >= 0.5 {
        return clip01(2.0 * smirnov_sf(n, x));
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754_693 {
            return clip01(1.0 - kolmogn_dmtw_cdf(n, x));
        }
        if nxsquared <= 4.0 {
            return clip01(1.0 - kolmogn_pomeranz_cdf(n, x));
        }
        return clip01(2.0 * smirnov_sf(n, x));
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return clip01(2.0 * smirnov_sf(n, x));
    }
    let cdf = if nxsquared >= 18.0 {
        1.0
    } else if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        kolmogn_dmtw_cdf(n, x)
    } else {
        clip01(kolmogn_pelz_good_cdf(n, x))
    };
    clip01(1.0 - cdf)
}

/// `scipy.stats.ks_2samp(a, b)` (two-sided, `method="auto"`): the statistic and p-value.
/// Sorts both slices. As scipy: exact when neither side has more than 10000 values
/// (`MAX_AUTO_N`); otherwise, or if the exact computation fails, `kstwo.sf(d, round(en))`
/// with en = n1·n2/(n1 + n2).
pub fn ks_2samp(a: &mut [f64], b: &mut [f64]) -> (f64, f64) {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return (f64::NAN, f64::NAN);
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    // max |F1 − F2| over all data points (CDFs right-continuous: searchsorted "right").
    let (mut i, mut j) = (0usize, 0usize);
    let mut d_max: f64 = 0.0;
    let mut d_min: f64 = 0.0;
    while i < n1 || j < n2 {
        let x = match (a.get(i), b.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => unreachable!(),
        };
        while i < n1 && a[i] <= x {
            i += 1;
        }
        while j < n2 && b[j] <= x {
            j += 1;
        }
        let diff = i as f64 / n1 as f64 - j as f64 / n2 as f64;
        d_max = d_max.max(diff);
        d_min = d_min.min(diff);
    }
    let mut d = d_max.max((-d_min).clamp(0.0, 1.0));
    let (n1u, n2u) = (n1 as u64, n2 as u64);
    let g = gcd(n1u, n2u);
    if n1.max(n2) <= 10_000 {
        let lcm = (n1u / g) * n2u;
        let h = (d * lcm as f64).round() as u64;
        d = h as f64 / lcm as f64;
        if h == 0 {
            return (d, 1.0);
        }
        let p = if n1 == n2 {
            prob_outside_square(n1u, h)
        } else {
            outer_prob_inside(n1u, n2u, g, h)
        };
        if p.is_finite() && (0.0..=1.0).contains(&p) {
            return (d, p);
        }
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round_ties_even();
    (d, kstwo_sf(en as u64, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flushed lattice count agrees with the unflushed one (scipy's arithmetic) to
    /// rounding wherever it is used, from p near 1 down to FLUSH_EXACT_ABOVE.
    #[test]
    fn the_flushed_count_is_the_exact_one_where_it_is_used() {
        let mut checked = 0;
        for (m, n) in [(5000u64, 1000u64), (3000, 700), (1000, 999), (4000, 150)] {
            let g = gcd(m, n);
            let lcm = (m / g) * n;
            for k in 1..=40 {
                let h = lcm * k / 50;
                let fast = outer_prob_inside_with::<true>(m, n, g, h);
                let exact = outer_prob_inside_with::<false>(m, n, g, h);
                if fast < FLUSH_EXACT_ABOVE {
                    continue;
                }
                checked += 1;
                let diff = (fast.ln() - exact.ln()).abs();
                assert!(
                    diff <= 1e-12,
                    "{m}x{n}, h {h}: flushed {fast:e}, exact {exact:e}"
                );
            }
        }
        assert!(checked >= 60, "{checked} cases in range");
    }
}
