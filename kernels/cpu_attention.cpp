// Non-causal attention forward on x86 CPUs with AVX-512 (bf16 inputs also need AVX512-BF16).
//
// Numerics are those of PyTorch's CPU flash kernel: scores in fp32 (bf16 products summed in
// fp32), softmax in fp32, probabilities rounded to the input dtype before they multiply V with
// fp32 sums, output divided by the fp32 row sum and rounded once. Also writes the log-sum-exp
// of the scaled scores, which PyTorch's flash backward takes.
//
// Work split: every (batch, head) packs K and V once into the layout the inner loops read
// (zero padded to a multiple of 32 keys), then blocks of 8 query rows run independently:
// the 8 rows' scores against all keys stay in a per-thread buffer (8 x keys fp32), so the
// softmax takes two passes over cached memory instead of an online rescale.
//
// Built by kernels/cpu_attention.py with the system C++ compiler (the one torch.compile's CPU
// backend needs as well); threads come from the OpenMP runtime torch has loaded.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

namespace {

constexpr int R = 8;  // query rows per block

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

// Query rows a block of the output reads: 8, or fewer where 16 fp32 accumulators cover D.
constexpr int pv_rows(int D) { return D / 16 <= 2 ? 8 : (D / 16 <= 4 ? 4 : 2); }

struct Strides {  // in elements, over (batch, position, head); the head dim is contiguous
  int64_t b, s, h;
};

// ------------------------------------------------------------------------------- bf16

// K as [keys/16][D/2][16 keys][2]: one 512-bit load holds a pair of dims for 16 keys.
// V as [keys/2][D/16][16 dims][2]: one load holds 16 dims of a pair of keys.
template <int D>
void pack_bf16(const uint16_t* k, const uint16_t* v, int64_t sk, int64_t sv, int n, int npad,
               uint16_t* kp, uint16_t* vp) {
  for (int j = 0; j < npad; ++j) {
    const uint16_t* kr = k + (int64_t)j * sk;
    const uint16_t* vr = v + (int64_t)j * sv;
    const int blk = j / 16, lane = j % 16, m = j / 2, odd = j % 2;
    for (int p = 0; p < D / 2; ++p) {
      uint16_t* dst = kp + (((int64_t)blk * (D / 2) + p) * 16 + lane) * 2;
      dst[0] = j < n ? kr[2 * p] : 0;
      dst[1] = j < n ? kr[2 * p + 1] : 0;
    }
    for (int d = 0; d < D; ++d)
      vp[(((int64_t)m * (D / 16) + d / 16) * 16 + d % 16) * 2 + odd] = j < n ? vr[d] : 0;
  }
}

template <int D>
void block_bf16(const uint16_t* q, int64_t sq, int rows, const uint16_t* kp, const uint16_t* vp,
                int n, int npad, float scale, float* s, uint16_t* p, uint16_t* out, int64_t so,
                float* lse) {
  constexpr int DP = D / 2, C = D / 16, RP = pv_rows(D);
  uint32_t qq[R][DP];  // pairs of bf16 query dims, broadcast as one 32-bit lane
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < DP; ++i) qq[r][i] = r < rows ? ((const uint32_t*)(q + r * sq))[i] : 0u;
  const __m512 ninf = _mm512_set1_ps(-INFINITY), vscale = _mm512_set1_ps(scale);
  __m512 vmax[R];
  for (int r = 0; r < R; ++r) vmax[r] = ninf;
  for (int j = 0; j < npad; j += 32) {  // scores: 8 rows x 32 keys in 16 accumulators
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint16_t* k0 = kp + (int64_t)(j / 16) * DP * 32;
    for (int i = 0; i < DP; ++i) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(k0 + i * 32);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(k0 + DP * 32 + i * 32);
      for (int r = 0; r < R; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32((int)qq[r][i]);
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
    }
    const __mmask16 m0 = key_mask(j, n), m1 = key_mask(j + 16, n);
    for (int r = 0; r < R; ++r) {
      const __m512 s0 = _mm512_mask_mul_ps(ninf, m0, acc[r][0], vscale);
      const __m512 s1 = _mm512_mask_mul_ps(ninf, m1, acc[r][1], vscale);
      _mm512_storeu_ps(s + (int64_t)r * npad + j, s0);
      _mm512_storeu_ps(s + (int64_t)r * npad + j + 16, s1);
      vmax[r] = _mm512_max_ps(vmax[r], _mm512_max_ps(s0, s1));
    }
  }
  float rowmax[R], rowsum[R];
  for (int r = 0; r < R; ++r) {  // exp, fp32 row sum, probabilities rounded to bf16
    rowmax[r] = _mm512_reduce_max_ps(vmax[r]);
    const __m512 mx = _mm512_set1_ps(rowmax[r]);
    __m512 sum = _mm512_setzero_ps();
    const float* sr = s + (int64_t)r * npad;
    uint16_t* pr = p + (int64_t)r * npad;
    for (int j = 0; j < npad; j += 32) {
      const __m512 e0 = _mm512_maskz_mov_ps(key_mask(j, n), exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx)));
      const __m512 e1 = _mm512_maskz_mov_ps(key_mask(j + 16, n), exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + j + 16), mx)));
      sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
      _mm512_storeu_si512(pr + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
    rowsum[r] = _mm512_reduce_add_ps(sum);
  }
  for (int r0 = 0; r0 < R; r0 += RP) {  // probabilities x V: RP rows x D dims
    __m512 acc[RP][C];
    for (int r = 0; r < RP; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int m = 0; m < npad / 2; ++m) {
      __m512bh b[C];
      for (int c = 0; c < C; ++c) b[c] = (__m512bh)_mm512_loadu_si512(vp + ((int64_t)m * C + c) * 32);
      for (int r = 0; r < RP; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(((const int32_t*)(p + (int64_t)(r0 + r) * npad))[m]);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
      }
    }
    for (int r = 0; r < RP && r0 + r < rows; ++r) {
      const int row = r0 + r;
      const __m512 sum = _mm512_set1_ps(rowsum[row]);
      for (int c = 0; c < C; ++c)
        _mm256_storeu_si256((__m256i*)(out + row * so + c * 16),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_div_ps(acc[r][c], sum)));
      lse[row] = rowmax[row] + logf(rowsum[row]);
    }
  }
}

// ------------------------------------------------------------------------------- fp32

// K as [keys/16][D][16 keys]; V as [keys][D] (both zero padded).
template <int D>
void pack_fp32(const float* k, const float* v, int64_t sk, int64_t sv, int n, int npad, float* kp,
               float* vp) {
  for (int j = 0; j < npad; ++j) {
    const float* kr = k + (int64_t)j * sk;
    const float* vr = v + (int64_t)j * sv;
    for (int d = 0; d < D; ++d) {
      kp[((int64_t)(j / 16) * D + d) * 16 + j % 16] = j < n ? kr[d] : 0.0f;
      vp[(int64_t)j * D + d] = j < n ? vr[d] : 0.0f;
    }
  }
}

template <int D>
void block_fp32(const float* q, int64_t sq, int rows, const float* kp, const float* vp, int n,
                int npad, float scale, float* s, float* p, float* out, int64_t so, float* lse) {
  constexpr int C = D / 16, RP = pv_rows(D);
  float qq[R][D];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < D; ++d) qq[r][d] = r < rows ? q[r * sq + d] : 0.0f;
  const __m512 ninf = _mm512_set1_ps(-INFINITY), vscale = _mm512_set1_ps(scale);
  __m512 vmax[R];
  for (int r = 0; r < R; ++r) vmax[r] = ninf;
  for (int j = 0; j < npad; j += 32) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float* k0 = kp + (int64_t)(j / 16) * D * 16;
    for (int d = 0; d < D; ++d) {
      const __m512 b0 = _mm512_loadu_ps(k0 + d * 16), b1 = _mm512_loadu_ps(k0 + (D + d) * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 a = _mm512_set1_ps(qq[r][d]);
        acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      }
    }
    const __mmask16 m0 = key_mask(j, n), m1 = key_mask(j + 16, n);
    for (int r = 0; r < R; ++r) {
      const __m512 s0 = _mm512_mask_mul_ps(ninf, m0, acc[r][0], vscale);
      const __m512 s1 = _mm512_mask_mul_ps(ninf, m1, acc[r][1], vscale);
      _mm512_storeu_ps(s + (int64_t)r * npad + j, s0);
      _mm512_storeu_ps(s + (int64_t)r * npad + j + 16, s1);
      vmax[r] = _mm512_max_ps(vmax[r], _mm512_max_ps(s0, s1));
    }
  }
  float rowmax[R], rowsum[R];
  for (int r = 0; r < R; ++r) {
    rowmax[r] = _mm512_reduce_max_ps(vmax[r]);
    const __m512 mx = _mm512_set1_ps(rowmax[r]);
    __m512 sum = _mm512_setzero_ps();
    const float* sr = s + (int64_t)r * npad;
    float* pr = p + (int64_t)r * npad;
    for (int j = 0; j < npad; j += 16) {
      const __m512 e = _mm512_maskz_mov_ps(key_mask(j, n), exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx)));
      sum = _mm512_add_ps(sum, e);
      _mm512_storeu_ps(pr + j, e);
    }
    rowsum[r] = _mm512_reduce_add_ps(sum);
  }
  for (int r0 = 0; r0 < R; r0 += RP) {
    __m512 acc[RP][C];
    for (int r = 0; r < RP; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int j = 0; j < n; ++j) {
      __m512 b[C];
      for (int c = 0; c < C; ++c) b[c] = _mm512_loadu_ps(vp + (int64_t)j * D + c * 16);
      for (int r = 0; r < RP; ++r) {
        const __m512 a = _mm512_set1_ps(p[(int64_t)(r0 + r) * npad + j]);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
      }
    }
    for (int r = 0; r < RP && r0 + r < rows; ++r) {
      const int row = r0 + r;
      const __m512 sum = _mm512_set1_ps(rowsum[row]);
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + row * so + c * 16, _mm512_div_ps(acc[r][c], sum));
      lse[row] = rowmax[row] + logf(rowsum[row]);
    }
  }
}

// ------------------------------------------------------------------------------- driver

template <typename T, typename P, int D, typename Pack, typename Block>
void attention(const T* q, const T* k, const T* v, T* out, float* lse, int B, int H, int n,
               const Strides* st, float scale, T* kpack, T* vpack, Pack pack, Block block) {
  const int npad = (n + 31) / 32 * 32;
  const int64_t kv = (int64_t)npad * D;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    pack(k + b * st[1].b + h * st[1].h, v + b * st[2].b + h * st[2].h, st[1].s, st[2].s, n, npad,
         kpack + bh * kv, vpack + bh * kv);
  }
  const int blocks = (n + R - 1) / R;
#pragma omp parallel
  {
    float* s = (float*)aligned_alloc(64, sizeof(float) * R * npad);
    P* p = (P*)aligned_alloc(64, sizeof(P) * R * npad);
#pragma omp for schedule(static)
    for (int t = 0; t < B * H * blocks; ++t) {
      const int bh = t / blocks, i0 = (t % blocks) * R, b = bh / H, h = bh % H;
      block(q + b * st[0].b + i0 * st[0].s + h * st[0].h, st[0].s, n - i0 < R ? n - i0 : R,
            kpack + bh * kv, vpack + bh * kv, n, npad, scale, s, p,
            out + b * st[3].b + i0 * st[3].s + h * st[3].h, st[3].s, lse + (int64_t)bh * n + i0);
    }
    free(s);
    free(p);
  }
}

template <int D>
void run_bf16(const void* q, const void* k, const void* v, void* out, float* lse, int B, int H,
              int n, const Strides* st, float scale, void* kp, void* vp) {
  attention<uint16_t, uint16_t, D>((const uint16_t*)q, (const uint16_t*)k, (const uint16_t*)v,
                                   (uint16_t*)out, lse, B, H, n, st, scale, (uint16_t*)kp,
                                   (uint16_t*)vp, pack_bf16<D>, block_bf16<D>);
}

template <int D>
void run_fp32(const void* q, const void* k, const void* v, void* out, float* lse, int B, int H,
              int n, const Strides* st, float scale, void* kp, void* vp) {
  attention<float, float, D>((const float*)q, (const float*)k, (const float*)v, (float*)out, lse,
                             B, H, n, st, scale, (float*)kp, (float*)vp, pack_fp32<D>,
                             block_fp32<D>);
}

}  // namespace

// q, k, v, out: [B, n, H, D] with strides[4][3] (elements; q, k, v, out) over (b, s, h) and a
// contiguous head dim; lse: [B, H, n] fp32, contiguous; kpack, vpack: B*H*npad*D elements each
// (npad = n rounded up to 32). bf16: 1, fp32: 0. Returns 0, or 1 for an unsupported head dim.
extern "C" int hrm_fast_cpu_attention(int bf16, const void* q, const void* k, const void* v,
                                      void* out, float* lse, int B, int H, int n, int D,
                                      const int64_t* strides, float scale, void* kpack,
                                      void* vpack) {
  const Strides* st = (const Strides*)strides;
#define HRM_FAST_HEAD_DIM(d)                                                    \
  case d:                                                                       \
    (bf16 ? run_bf16<d> : run_fp32<d>)(q, k, v, out, lse, B, H, n, st, scale, kpack, vpack); \
    return 0;
  switch (D) {
    HRM_FAST_HEAD_DIM(16)
    HRM_FAST_HEAD_DIM(32)
    HRM_FAST_HEAD_DIM(48)
    HRM_FAST_HEAD_DIM(64)
    HRM_FAST_HEAD_DIM(96)
    HRM_FAST_HEAD_DIM(128)
    default:
      return 1;
  }
#undef HRM_FAST_HEAD_DIM
}

// The head dims compiled above, for the loader to check before it calls.
extern "C" int hrm_fast_cpu_attention_supports(int D) {
  return D == 16 || D == 32 || D == 48 || D == 64 || D == 96 || D == 128;
}
