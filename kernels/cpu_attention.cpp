// Non-causal attention, forward and backward, on x86 CPUs with AVX-512 (bf16 also needs
// AVX512-BF16).
//
// Numerics are those of PyTorch's CPU flash kernels: scores in fp32 (products of the input
// dtype summed in fp32), softmax in fp32, probabilities (and in the backward the score
// gradients) rounded to the input dtype before they enter a product, fp32 sums, every output
// rounded once. The forward also writes the log-sum-exp of the scaled scores, which the
// backward takes (as PyTorch's flash backward does).
//
// Work split. Forward: every (batch, head) packs K and V once into the layouts the inner loops
// read (zero padded to a multiple of 32 keys, padding masked out), then blocks of 8 query rows
// run independently on the OpenMP threads: the 8 rows' scores against all keys stay in a
// per-thread buffer, so the softmax is two passes over cached memory, not an online rescale.
// Backward: one (batch, head) per thread; each 8-row block recomputes its probabilities from
// the log-sum-exp, writes its dq rows, and adds its rank-8 terms to fp32 dk and dv sums that
// stay in the thread's cache.
//
// Built by kernels/cpu_attention.py with the system C++ compiler (the one torch.compile's CPU
// backend needs as well), linked against the OpenMP runtime torch has loaded.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

namespace {

constexpr int R = 8;  // query rows per block

// The micro-kernels return accumulators through arrays: inlined, they stay in registers.
#define INLINE inline __attribute__((always_inline))

// exp on [-87, 0]: Cody-Waite reduction by ln 2, degree-7 Taylor polynomial (about 1 ulp).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Lanes of the 16 keys starting at j that are real keys (the rest are padding).
inline __mmask16 key_mask(int j, int n) {
  if (j + 16 <= n) return 0xFFFF;
  if (j >= n) return 0;
  return (__mmask16)((1u << (n - j)) - 1);
}

// exp(s[j..j+16) - shift) on real keys, 0 on padding.
INLINE __m512 probs(const float* s, __m512 shift, int j, int n) {
  return _mm512_maskz_mov_ps(key_mask(j, n), exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), shift)));
}

// p * (dp[j..j+16) - delta) on real keys, 0 on padding (where dP is -inf: not 0 * -inf).
INLINE __m512 score_grads(__m512 p, const float* dp, __m512 delta, int j, int n) {
  return _mm512_maskz_mul_ps(key_mask(j, n), p, _mm512_sub_ps(_mm512_loadu_ps(dp + j), delta));
}

// Rows a block of "rows x keys @ keys x D" products works on at once: 16 fp32 accumulators.
constexpr int mul_rows(int D) { return D / 16 <= 2 ? 8 : (D / 16 <= 4 ? 4 : 2); }

// Scaled scores of 8 rows x the 32 keys at j into s (padding keys -inf), and the running max.
INLINE void store_scores(const __m512 acc[R][2], int j, int n, int npad, float scale, float* s,
                         __m512 vmax[R]) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY), vscale = _mm512_set1_ps(scale);
  const __mmask16 m0 = key_mask(j, n), m1 = key_mask(j + 16, n);
  for (int r = 0; r < R; ++r) {
    const __m512 s0 = _mm512_mask_mul_ps(ninf, m0, acc[r][0], vscale);
    const __m512 s1 = _mm512_mask_mul_ps(ninf, m1, acc[r][1], vscale);
    _mm512_storeu_ps(s + (int64_t)r * npad + j, s0);
    _mm512_storeu_ps(s + (int64_t)r * npad + j + 16, s1);
    vmax[r] = _mm512_max_ps(vmax[r], _mm512_max_ps(s0, s1));
  }
}

struct Strides {  // in elements, over (batch, position, head); the head dim is contiguous
  int64_t b, s, h;
};

inline int64_t offset(const Strides& st, int b, int s, int h) {
  return b * st.b + s * st.s + h * st.h;
}

inline uint16_t to_bf16(float x) {  // round to nearest even, as _mm512_cvtneps_pbh
  uint32_t u;
  memcpy(&u, &x, 4);
  return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

inline float from_bf16(uint16_t x) {
  const uint32_t u = (uint32_t)x << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// =============================================================================== bf16

// "Key" layout, [keys/16][D/2][16 keys][2]: one load holds a pair of dims for 16 keys.
template <int D>
void pack_keys_bf16(const uint16_t* x, int64_t sx, int n, int npad, uint16_t* out) {
  for (int j = 0; j < npad; ++j)
    for (int i = 0; i < D / 2; ++i) {
      uint16_t* dst = out + (((int64_t)(j / 16) * (D / 2) + i) * 16 + j % 16) * 2;
      dst[0] = j < n ? x[j * sx + 2 * i] : 0;
      dst[1] = j < n ? x[j * sx + 2 * i + 1] : 0;
    }
}

// "Value" layout, [rows/2][D/16][16 dims][2]: one load holds 16 dims of a pair of rows.
template <int D>
void pack_values_bf16(const uint16_t* x, int64_t sx, int n, int npad, uint16_t* out) {
  for (int j = 0; j < npad; ++j)
    for (int d = 0; d < D; ++d)
      out[(((int64_t)(j / 2) * (D / 16) + d / 16) * 16 + d % 16) * 2 + j % 2] =
          j < n ? x[j * sx + d] : 0;
}

// R rows as pairs of bf16 dims (one 32-bit broadcast each); rows past `rows` are zero.
template <int D>
INLINE void load_pairs(const uint16_t* x, int64_t sx, int rows, uint32_t out[R][D / 2]) {
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < D / 2; ++i) {
      uint32_t v = 0;
      if (r < rows) memcpy(&v, x + r * sx + 2 * i, 4);
      out[r][i] = v;
    }
}

// s[r][j] = scale * a[r] . key[j] for all npad keys (padding -inf); returns each row's max.
template <int D>
INLINE void dot_rows_bf16(const uint32_t a[R][D / 2], const uint16_t* kp, int n, int npad,
                          float scale,
                   float* s, float* rowmax) {
  constexpr int DP = D / 2;
  __m512 vmax[R];
  for (int r = 0; r < R; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < npad; j += 32) {  // 8 rows x 32 keys in 16 accumulators
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint16_t* k0 = kp + (int64_t)(j / 16) * DP * 32;
    for (int i = 0; i < DP; ++i) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(k0 + i * 32);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(k0 + DP * 32 + i * 32);
      for (int r = 0; r < R; ++r) {
        const __m512bh x = (__m512bh)_mm512_set1_epi32((int)a[r][i]);
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
      }
    }
    store_scores(acc, j, n, npad, scale, s, vmax);
  }
  for (int r = 0; r < R; ++r) rowmax[r] = _mm512_reduce_max_ps(vmax[r]);
}

// acc[r][.] = p[r0 + r] . values for RP rows of bf16 p ([R][npad]) and "value" layout v.
template <int D>
INLINE void mul_rows_bf16(const uint16_t* p, int npad, const uint16_t* v, int r0,
                   __m512 acc[mul_rows(D)][D / 16]) {
  constexpr int C = D / 16, RP = mul_rows(D);
  for (int r = 0; r < RP; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int m = 0; m < npad / 2; ++m) {
    __m512bh b[C];
    for (int c = 0; c < C; ++c) b[c] = (__m512bh)_mm512_loadu_si512(v + ((int64_t)m * C + c) * 32);
    for (int r = 0; r < RP; ++r) {
      int32_t pair;
      memcpy(&pair, p + (int64_t)(r0 + r) * npad + 2 * m, 4);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x, b[c]);
    }
  }
}

inline void store_bf16(uint16_t* dst, __m512 x) {
  _mm256_storeu_si256((__m256i*)dst, (__m256i)_mm512_cvtneps_pbh(x));
}

template <int D>
void forward_block_bf16(const uint16_t* q, int64_t sq, int rows, const uint16_t* kp,
                        const uint16_t* vp, int n, int npad, float scale, float* s, uint16_t* p,
                        uint16_t* out, int64_t so, float* lse) {
  constexpr int C = D / 16, RP = mul_rows(D);
  uint32_t a[R][D / 2];
  load_pairs<D>(q, sq, rows, a);
  float rowmax[R], rowsum[R];
  dot_rows_bf16<D>(a, kp, n, npad, scale, s, rowmax);
  for (int r = 0; r < R; ++r) {  // exp, fp32 row sum, probabilities rounded to bf16
    const __m512 mx = _mm512_set1_ps(rowmax[r]);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < npad; j += 32) {
      const float* sr = s + (int64_t)r * npad;
      const __m512 e0 = probs(sr, mx, j, n), e1 = probs(sr, mx, j + 16, n);
      sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
      _mm512_storeu_si512(p + (int64_t)r * npad + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
    rowsum[r] = _mm512_reduce_add_ps(sum);
  }
  for (int r0 = 0; r0 < R; r0 += RP) {
    __m512 acc[RP][C];
    mul_rows_bf16<D>(p, npad, vp, r0, acc);
    for (int r = 0; r < RP && r0 + r < rows; ++r) {
      const int row = r0 + r;
      const __m512 sum = _mm512_set1_ps(rowsum[row]);
      for (int c = 0; c < C; ++c)
        store_bf16(out + row * so + c * 16, _mm512_div_ps(acc[r][c], sum));
      lse[row] = rowmax[row] + logf(rowsum[row]);
    }
  }
}

// R rows of x as [R/2][D/16][16 dims][2] row pairs, for the rank-8 updates of dk and dv.
template <int D>
void pair_rows_bf16(const uint16_t* x, int64_t sx, int rows, uint16_t* out) {
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < D; ++d)
      out[(((r / 2) * (D / 16) + d / 16) * 16 + d % 16) * 2 + r % 2] = r < rows ? x[r * sx + d] : 0;
}

template <int D>
void backward_block_bf16(const uint16_t* q, const uint16_t* o, const uint16_t* dout,
                         int64_t sq, int64_t so, int64_t sdo, int rows, const float* lse,
                         const uint16_t* kp, const uint16_t* vk, const uint16_t* kv, int n,
                         int npad, float scale, float* s, float* dp, uint16_t* pb, uint16_t* dsb,
                         float* dk, float* dv, uint16_t* dq, int64_t sdq) {
  constexpr int C = D / 16, RP = mul_rows(D);
  uint32_t qa[R][D / 2], da[R][D / 2];
  load_pairs<D>(q, sq, rows, qa);
  load_pairs<D>(dout, sdo, rows, da);
  float unused[R], delta[R];
  for (int r = 0; r < R; ++r) {  // delta = rowsum(dout * out), fp32
    float acc = 0.0f;
    if (r < rows)
      for (int d = 0; d < D; ++d) acc += from_bf16(dout[r * sdo + d]) * from_bf16(o[r * so + d]);
    delta[r] = acc;
  }
  dot_rows_bf16<D>(qa, kp, n, npad, scale, s, unused);  // scaled scores
  dot_rows_bf16<D>(da, vk, n, npad, 1.0f, dp, unused);  // dP = dout . v
  for (int r = 0; r < R; ++r) {  // P = exp(s - lse); dS = P * (dP - delta); both to bf16
    const __m512 l = _mm512_set1_ps(r < rows ? lse[r] : INFINITY);
    const __m512 dl = _mm512_set1_ps(delta[r]);
    for (int j = 0; j < npad; j += 32) {
      const int64_t at = (int64_t)r * npad + j;
      const float *sr = s + (int64_t)r * npad, *dpr = dp + (int64_t)r * npad;
      const __m512 p0 = probs(sr, l, j, n), p1 = probs(sr, l, j + 16, n);
      const __m512 d0 = score_grads(p0, dpr, dl, j, n), d1 = score_grads(p1, dpr, dl, j + 16, n);
      _mm512_storeu_si512(pb + at, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
      _mm512_storeu_si512(dsb + at, (__m512i)_mm512_cvtne2ps_pbh(d1, d0));
    }
  }
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int r0 = 0; r0 < R; r0 += RP) {  // dq = scale * dS . k
    __m512 acc[RP][C];
    mul_rows_bf16<D>(dsb, npad, kv, r0, acc);
    for (int r = 0; r < RP && r0 + r < rows; ++r)
      for (int c = 0; c < C; ++c)
        store_bf16(dq + (r0 + r) * sdq + c * 16, _mm512_mul_ps(acc[r][c], vscale));
  }
  uint16_t qp[R * D], dop[R * D];  // rank-8 updates: dv += P^T dout, dk += dS^T q
  pair_rows_bf16<D>(q, sq, rows, qp);
  pair_rows_bf16<D>(dout, sdo, rows, dop);
  for (int j = 0; j < n; ++j) {
    __m512bh pa[R / 2], sa[R / 2];
    for (int i = 0; i < R / 2; ++i) {
      const uint32_t p2 = pb[(2 * i) * npad + j] | (uint32_t)pb[(2 * i + 1) * npad + j] << 16;
      const uint32_t s2 = dsb[(2 * i) * npad + j] | (uint32_t)dsb[(2 * i + 1) * npad + j] << 16;
      pa[i] = (__m512bh)_mm512_set1_epi32((int)p2);
      sa[i] = (__m512bh)_mm512_set1_epi32((int)s2);
    }
    for (int c = 0; c < C; ++c) {
      __m512 av = _mm512_loadu_ps(dv + (int64_t)j * D + c * 16);
      __m512 ak = _mm512_loadu_ps(dk + (int64_t)j * D + c * 16);
      for (int i = 0; i < R / 2; ++i) {
        av = _mm512_dpbf16_ps(av, pa[i], (__m512bh)_mm512_loadu_si512(dop + (i * C + c) * 32));
        ak = _mm512_dpbf16_ps(ak, sa[i], (__m512bh)_mm512_loadu_si512(qp + (i * C + c) * 32));
      }
      _mm512_storeu_ps(dv + (int64_t)j * D + c * 16, av);
      _mm512_storeu_ps(dk + (int64_t)j * D + c * 16, ak);
    }
  }
}

// =============================================================================== fp32

// "Key" layout [keys/16][D][16 keys]; values stay rows [keys][D] (both zero padded).
template <int D>
void pack_keys_f32(const float* x, int64_t sx, int n, int npad, float* out) {
  for (int j = 0; j < npad; ++j)
    for (int d = 0; d < D; ++d)
      out[((int64_t)(j / 16) * D + d) * 16 + j % 16] = j < n ? x[j * sx + d] : 0.0f;
}

template <int D>
void pack_values_f32(const float* x, int64_t sx, int n, int npad, float* out) {
  for (int j = 0; j < npad; ++j)
    for (int d = 0; d < D; ++d) out[(int64_t)j * D + d] = j < n ? x[j * sx + d] : 0.0f;
}

template <int D>
INLINE void load_rows(const float* x, int64_t sx, int rows, float out[R][D]) {
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < D; ++d) out[r][d] = r < rows ? x[r * sx + d] : 0.0f;
}

template <int D>
INLINE void dot_rows_f32(const float a[R][D], const float* kp, int n, int npad, float scale,
                         float* s,
                  float* rowmax) {
  __m512 vmax[R];
  for (int r = 0; r < R; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < npad; j += 32) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float* k0 = kp + (int64_t)(j / 16) * D * 16;
    for (int d = 0; d < D; ++d) {
      const __m512 b0 = _mm512_loadu_ps(k0 + d * 16), b1 = _mm512_loadu_ps(k0 + (D + d) * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 x = _mm512_set1_ps(a[r][d]);
        acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
      }
    }
    store_scores(acc, j, n, npad, scale, s, vmax);
  }
  for (int r = 0; r < R; ++r) rowmax[r] = _mm512_reduce_max_ps(vmax[r]);
}

template <int D>
INLINE void mul_rows_f32(const float* p, int npad, int n, const float* v, int r0,
                  __m512 acc[mul_rows(D)][D / 16]) {
  constexpr int C = D / 16, RP = mul_rows(D);
  for (int r = 0; r < RP; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int j = 0; j < n; ++j) {
    __m512 b[C];
    for (int c = 0; c < C; ++c) b[c] = _mm512_loadu_ps(v + (int64_t)j * D + c * 16);
    for (int r = 0; r < RP; ++r) {
      const __m512 x = _mm512_set1_ps(p[(int64_t)(r0 + r) * npad + j]);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(x, b[c], acc[r][c]);
    }
  }
}

template <int D>
void forward_block_f32(const float* q, int64_t sq, int rows, const float* kp, const float* vp,
                       int n, int npad, float scale, float* s, float* p, float* out, int64_t so,
                       float* lse) {
  constexpr int C = D / 16, RP = mul_rows(D);
  float a[R][D];
  load_rows<D>(q, sq, rows, a);
  float rowmax[R], rowsum[R];
  dot_rows_f32<D>(a, kp, n, npad, scale, s, rowmax);
  for (int r = 0; r < R; ++r) {
    const __m512 mx = _mm512_set1_ps(rowmax[r]);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < npad; j += 16) {
      const int64_t at = (int64_t)r * npad + j;
      const __m512 e = probs(s + (int64_t)r * npad, mx, j, n);
      sum = _mm512_add_ps(sum, e);
      _mm512_storeu_ps(p + at, e);
    }
    rowsum[r] = _mm512_reduce_add_ps(sum);
  }
  for (int r0 = 0; r0 < R; r0 += RP) {
    __m512 acc[RP][C];
    mul_rows_f32<D>(p, npad, n, vp, r0, acc);
    for (int r = 0; r < RP && r0 + r < rows; ++r) {
      const int row = r0 + r;
      const __m512 sum = _mm512_set1_ps(rowsum[row]);
      for (int c = 0; c < C; ++c)
        _mm512_storeu_ps(out + row * so + c * 16, _mm512_div_ps(acc[r][c], sum));
      lse[row] = rowmax[row] + logf(rowsum[row]);
    }
  }
}

template <int D>
void backward_block_f32(const float* q, const float* o, const float* dout, int64_t sq,
                        int64_t so, int64_t sdo, int rows, const float* lse, const float* kp,
                        const float* vk, const float* kv, int n, int npad, float scale, float* s,
                        float* dp, float* pf, float* dsf, float* dk, float* dv, float* dq,
                        int64_t sdq) {
  constexpr int C = D / 16, RP = mul_rows(D);
  float qa[R][D], da[R][D];
  load_rows<D>(q, sq, rows, qa);
  load_rows<D>(dout, sdo, rows, da);
  float unused[R], delta[R];
  for (int r = 0; r < R; ++r) {
    float acc = 0.0f;
    if (r < rows)
      for (int d = 0; d < D; ++d) acc += dout[r * sdo + d] * o[r * so + d];
    delta[r] = acc;
  }
  dot_rows_f32<D>(qa, kp, n, npad, scale, s, unused);
  dot_rows_f32<D>(da, vk, n, npad, 1.0f, dp, unused);
  for (int r = 0; r < R; ++r) {
    const __m512 l = _mm512_set1_ps(r < rows ? lse[r] : INFINITY);
    const __m512 dl = _mm512_set1_ps(delta[r]);
    for (int j = 0; j < npad; j += 16) {
      const int64_t at = (int64_t)r * npad + j;
      const __m512 p = probs(s + (int64_t)r * npad, l, j, n);
      _mm512_storeu_ps(pf + at, p);
      _mm512_storeu_ps(dsf + at, score_grads(p, dp + (int64_t)r * npad, dl, j, n));
    }
  }
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int r0 = 0; r0 < R; r0 += RP) {
    __m512 acc[RP][C];
    mul_rows_f32<D>(dsf, npad, n, kv, r0, acc);
    for (int r = 0; r < RP && r0 + r < rows; ++r)
      for (int c = 0; c < C; ++c)
        _mm512_storeu_ps(dq + (r0 + r) * sdq + c * 16, _mm512_mul_ps(acc[r][c], vscale));
  }
  for (int j = 0; j < n; ++j) {
    for (int c = 0; c < C; ++c) {
      __m512 av = _mm512_loadu_ps(dv + (int64_t)j * D + c * 16);
      __m512 ak = _mm512_loadu_ps(dk + (int64_t)j * D + c * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 p = _mm512_set1_ps(pf[r * npad + j]), ds = _mm512_set1_ps(dsf[r * npad + j]);
        av = _mm512_fmadd_ps(p, _mm512_loadu_ps(&da[r][c * 16]), av);
        ak = _mm512_fmadd_ps(ds, _mm512_loadu_ps(&qa[r][c * 16]), ak);
      }
      _mm512_storeu_ps(dv + (int64_t)j * D + c * 16, av);
      _mm512_storeu_ps(dk + (int64_t)j * D + c * 16, ak);
    }
  }
}

// =============================================================================== drivers

struct Bf16 {
  using T = uint16_t;
  template <int D>
  static void pack_keys(const T* x, int64_t sx, int n, int npad, T* out) {
    pack_keys_bf16<D>(x, sx, n, npad, out);
  }
  template <int D>
  static void pack_values(const T* x, int64_t sx, int n, int npad, T* out) {
    pack_values_bf16<D>(x, sx, n, npad, out);
  }
  static T round(float x) { return to_bf16(x); }
};

struct F32 {
  using T = float;
  template <int D>
  static void pack_keys(const T* x, int64_t sx, int n, int npad, T* out) {
    pack_keys_f32<D>(x, sx, n, npad, out);
  }
  template <int D>
  static void pack_values(const T* x, int64_t sx, int n, int npad, T* out) {
    pack_values_f32<D>(x, sx, n, npad, out);
  }
  static T round(float x) { return x; }
};

template <typename K, int D>
void forward(const void* q_, const void* k_, const void* v_, void* out_, float* lse, int B, int H,
             int n, const Strides* st) {
  using T = typename K::T;
  const T *q = (const T*)q_, *k = (const T*)k_, *v = (const T*)v_;
  T* out = (T*)out_;
  const int npad = (n + 31) / 32 * 32;
  const int64_t kvsize = (int64_t)npad * D;
  const float scale = (float)(1.0 / sqrt((double)D));  // as SDPA: the double, rounded once
  T* kp = (T*)aligned_alloc(64, sizeof(T) * B * H * kvsize);
  T* vp = (T*)aligned_alloc(64, sizeof(T) * B * H * kvsize);
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    K::template pack_keys<D>(k + offset(st[1], b, 0, h), st[1].s, n, npad, kp + bh * kvsize);
    K::template pack_values<D>(v + offset(st[2], b, 0, h), st[2].s, n, npad, vp + bh * kvsize);
  }
  const int blocks = (n + R - 1) / R;
#pragma omp parallel
  {
    float* s = (float*)aligned_alloc(64, sizeof(float) * R * npad);
    T* p = (T*)aligned_alloc(64, sizeof(T) * R * npad + 64);
#pragma omp for schedule(static)
    for (int t = 0; t < B * H * blocks; ++t) {
      const int bh = t / blocks, i0 = (t % blocks) * R, b = bh / H, h = bh % H;
      const int rows = n - i0 < R ? n - i0 : R;
      const T* qr = q + offset(st[0], b, i0, h);
      T* orow = out + offset(st[3], b, i0, h);
      float* l = lse + (int64_t)bh * n + i0;
      if constexpr (sizeof(T) == 2)
        forward_block_bf16<D>(qr, st[0].s, rows, kp + bh * kvsize, vp + bh * kvsize, n, npad,
                              scale, s, p, orow, st[3].s, l);
      else
        forward_block_f32<D>(qr, st[0].s, rows, kp + bh * kvsize, vp + bh * kvsize, n, npad,
                             scale, s, p, orow, st[3].s, l);
    }
    free(s);
    free(p);
  }
  free(kp);
  free(vp);
}

// st: q, k, v, out, dout, dq, dk, dv.
template <typename K, int D>
void backward(const void* q_, const void* k_, const void* v_, const void* o_, const void* do_,
              const float* lse, void* dq_, void* dk_, void* dv_, int B, int H, int n,
              const Strides* st) {
  using T = typename K::T;
  const T *q = (const T*)q_, *k = (const T*)k_, *v = (const T*)v_, *o = (const T*)o_,
          *dout = (const T*)do_;
  T *dq = (T*)dq_, *dk = (T*)dk_, *dv = (T*)dv_;
  const int npad = (n + 31) / 32 * 32;
  const int64_t kvsize = (int64_t)npad * D;
  const float scale = (float)(1.0 / sqrt((double)D));  // as SDPA: the double, rounded once
#pragma omp parallel
  {
    T* kp = (T*)aligned_alloc(64, sizeof(T) * kvsize);  // k, "key" layout: the scores
    T* vk = (T*)aligned_alloc(64, sizeof(T) * kvsize);  // v, "key" layout: dP
    T* kv = (T*)aligned_alloc(64, sizeof(T) * kvsize);  // k, "value" layout: dq
    float* dks = (float*)aligned_alloc(64, sizeof(float) * kvsize);
    float* dvs = (float*)aligned_alloc(64, sizeof(float) * kvsize);
    float* s = (float*)aligned_alloc(64, sizeof(float) * R * npad);
    float* dp = (float*)aligned_alloc(64, sizeof(float) * R * npad);
    T* pb = (T*)aligned_alloc(64, sizeof(T) * R * npad + 64);
    T* dsb = (T*)aligned_alloc(64, sizeof(T) * R * npad + 64);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * H; ++bh) {
      const int b = bh / H, h = bh % H;
      K::template pack_keys<D>(k + offset(st[1], b, 0, h), st[1].s, n, npad, kp);
      K::template pack_keys<D>(v + offset(st[2], b, 0, h), st[2].s, n, npad, vk);
      K::template pack_values<D>(k + offset(st[1], b, 0, h), st[1].s, n, npad, kv);
      memset(dks, 0, sizeof(float) * kvsize);
      memset(dvs, 0, sizeof(float) * kvsize);
      for (int i0 = 0; i0 < n; i0 += R) {
        const int rows = n - i0 < R ? n - i0 : R;
        const float* l = lse + (int64_t)bh * n + i0;
        if constexpr (sizeof(T) == 2)
          backward_block_bf16<D>(q + offset(st[0], b, i0, h), o + offset(st[3], b, i0, h),
                                 dout + offset(st[4], b, i0, h), st[0].s, st[3].s, st[4].s,
                                 rows, l, kp, vk, kv, n, npad, scale, s, dp, pb, dsb, dks, dvs,
                                 dq + offset(st[5], b, i0, h), st[5].s);
        else
          backward_block_f32<D>(q + offset(st[0], b, i0, h), o + offset(st[3], b, i0, h),
                                dout + offset(st[4], b, i0, h), st[0].s, st[3].s, st[4].s, rows,
                                l, kp, vk, kv, n, npad, scale, s, dp, pb, dsb, dks, dvs,
                                dq + offset(st[5], b, i0, h), st[5].s);
      }
      for (int j = 0; j < n; ++j)
        for (int d = 0; d < D; ++d) {
          dk[offset(st[6], b, j, h) + d] = K::round(scale * dks[(int64_t)j * D + d]);
          dv[offset(st[7], b, j, h) + d] = K::round(dvs[(int64_t)j * D + d]);
        }
    }
    free(kp); free(vk); free(kv); free(dks); free(dvs); free(s); free(dp); free(pb); free(dsb);
  }
}

}  // namespace

#define HRM_FAST_HEAD_DIMS(X) X(16) X(32) X(48) X(64) X(96) X(128)

namespace {

// Calls f(std::integral_constant<int, D>) for a compiled head dim; 1 for any other.
template <class F>
int with_head_dim(int D, F&& f) {
  switch (D) {
#define CASE(d)                          \
  case d:                                \
    f(std::integral_constant<int, d>{}); \
    return 0;
    HRM_FAST_HEAD_DIMS(CASE)
#undef CASE
    default:
      return 1;
  }
}

}  // namespace

// q, k, v, out: [B, n, H, D] with strides[4][3] (elements; q, k, v, out) over (b, s, h) and a
// contiguous head dim; lse: [B, H, n] fp32, contiguous. bf16: 1, fp32: 0.
// Returns 0, or 1 for a head dim that is not compiled in.
extern "C" int hrm_fast_cpu_attention(int bf16, const void* q, const void* k, const void* v,
                                      void* out, float* lse, int B, int H, int n, int D,
                                      const int64_t* strides) {
  const Strides* st = (const Strides*)strides;
  return with_head_dim(D, [&](auto d) {
    constexpr int DD = decltype(d)::value;
    (bf16 ? forward<Bf16, DD> : forward<F32, DD>)(q, k, v, out, lse, B, H, n, st);
  });
}

// dq, dk, dv from q, k, v, out, dout and the forward's lse; strides[8][3] over q, k, v, out,
// dout, dq, dk, dv.
extern "C" int hrm_fast_cpu_attention_backward(int bf16, const void* q, const void* k,
                                               const void* v, const void* out, const void* dout,
                                               void* dq, void* dk, void* dv, const float* lse,
                                               int B, int H, int n, int D,
                                               const int64_t* strides) {
  const Strides* st = (const Strides*)strides;
  return with_head_dim(D, [&](auto d) {
    constexpr int DD = decltype(d)::value;
    (bf16 ? backward<Bf16, DD> : backward<F32, DD>)(q, k, v, out, dout, lse, dq, dk, dv, B, H,
                                                    n, st);
  });
}

extern "C" int hrm_fast_cpu_attention_supports(int D) {
  return with_head_dim(D, [](auto) {}) == 0;
}
