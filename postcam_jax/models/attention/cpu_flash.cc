// Fused attention forward for CPUs: softmax(scale q k^T) v and its log-sum-exp in one pass over
// the keys, never holding more than one [keys x queries] tile of scores (an XLA FFI custom call;
// built and loaded by cpu_flash.py, which explains when it is used).
//
// Why a kernel of our own: XLA's CPU backend runs each step of an online softmax (row max,
// exponentials, row sum, rescale) as its own pass over a tile in memory, between two library
// dots; here a task computes a tile of scores into a cache-resident buffer, does the softmax on
// it there and multiplies it by V at once, as PyTorch's fused CPU kernel does.
//
// Layout: q and out [B, Lq, H, D] (the models'), k and v [B, H, Lk, D] (cpu_flash.py transposes
// them: each head's keys then lie in consecutive cache lines; at the models' layout, rows H * D
// floats apart fall into a few L1 sets and evict each other), lse [B, H, Lq]; row-major float32.
// One task = one (batch, head, kGroup blocks of kBlockQ queries). The
// block's queries are packed transposed (qt [D][kBlockQ]) so every inner product runs along the
// queries in SIMD lanes while k and v are read in place, one broadcast element at a time:
//   scores st[j][i] = sum_d k[j][d] * qt[d][i]        (keys x queries, kBlockK x kBlockQ)
//   out^T  ot[d][i] += sum_j v[j][d] * p[j][i]         (head_dim x queries)
// The softmax runs down each query's column of st with vector max/sum, so no horizontal
// reduction is ever needed. Vectors are GCC's vector extension (16 floats: one AVX-512
// register, or two AVX2 ones, whatever -march gives).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
constexpr int kBlockQ = 64;     // queries per block (4 vectors)
constexpr int kGroup = 4;       // blocks per task, sharing each key tile
constexpr int kBlockK = 256;    // keys per tile: 256 x 64 float32 scores = 64 KiB, in L2
constexpr int kQVecs = kBlockQ / 16;  // the block's queries as vectors of 16
constexpr int kScoreRows = 6;   // register blocks: 6 key rows x 4 query vectors (24 registers)
constexpr int kValueRows = 6;   // and 6 head_dim rows x 4 query vectors
// A tile's exponentials may use the running max of the earlier tiles while no score exceeds it by
// more than this (exp(16) = 8.9e6: far from float32's range, the sums lose nothing).
constexpr float kSlack = 16.0f;

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t vi __attribute__((vector_size(64)));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf x) { *reinterpret_cast<vfu*>(p) = x; }
inline vf splat(float x) { return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// exp(x) for x <= 88 (scores minus a running max, plus at most kSlack), Cephes' expf polynomial
// (about 1 ulp); below -87.34 (where float32 leaves the normal range) it returns 0, as XLA's CPU
// code, which flushes denormals, does.
inline vf exp_bounded(vf x) {
  const vf lowest = splat(-87.33654f);
  const vi underflow = x < lowest;
  x = x < lowest ? lowest : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf two_n = __builtin_bit_cast(vf, bits);
  const vf zero = splat(0.0f);
  return underflow ? zero : p * two_n;
}

// st[r][:] = scale sum_d k_rows[r][d] qt[d][:] for R key rows and all kBlockQ queries. With
// Exp: st[r][:] = exp(that - m) instead, summed into lsum, the largest exponent kept in excess
// (the softmax fused into the tile while the running max m still holds; see attend_block).
template <int R, bool Exp>
inline void score_tile(const float* k0, int64_t k_stride, const float* qt, int d, float* st,
                       float scale, const vf* m, vf* lsum, vf* excess) {
  constexpr int V = kQVecs;
  vf acc[R][V] = {};
  for (int dd = 0; dd < d; ++dd) {
    vf qv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) qv[v] = load(qt + dd * kBlockQ + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf kb = splat(k0[r * k_stride + dd]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] += kb * qv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      if constexpr (Exp) {
        const vf x = acc[r][v] * scale - m[v];
        excess[v] = vmax(excess[v], x);
        const vf p = exp_bounded(x);
        lsum[v] += p;
        store(st + r * kBlockQ + v * kLanes, p);
      } else {
        store(st + r * kBlockQ + v * kLanes, acc[r][v] * scale);
      }
    }
}

// The scaled scores (Exp false) or their exponentials (Exp true) of keys [0, nk) of the tile,
// kScoreRows at a time (single rows at the end).
template <bool Exp>
void scores(const float* k0, int64_t k_stride, int nk, const float* qt, int d, float* st,
            float scale, const vf* m, vf* lsum, vf* excess) {
  int j = 0;
  for (; j + kScoreRows <= nk; j += kScoreRows)
    score_tile<kScoreRows, Exp>(k0 + j * k_stride, k_stride, qt, d, st + j * kBlockQ, scale, m,
                                lsum, excess);
  for (; j < nk; ++j)
    score_tile<1, Exp>(k0 + j * k_stride, k_stride, qt, d, st + j * kBlockQ, scale, m, lsum,
                       excess);
}

// ot[d0 + r][:] += sum_j v[j][d0 + r] p[j][:] for R output rows (all kBlockQ queries).
template <int R>
inline void value_tile(const float* v0, int64_t v_stride, int nk, const float* pt, float* ot,
                       int d0) {
  constexpr int V = kQVecs;
  vf acc[R][V] = {};  // the tile's sum, then added to ot: two-level sums stay accurate over
  for (int j = 0; j < nk; ++j) {  // tens of thousands of keys
    vf pv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) pv[v] = load(pt + j * kBlockQ + v * kLanes);
    const float* vr = v0 + j * v_stride + d0;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf vb = splat(vr[r]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] += vb * pv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      float* o = ot + (d0 + r) * kBlockQ + v * kLanes;
      store(o, load(o) + acc[r][v]);
    }
}

// ot += v^T p over the tile's nk keys, kValueRows output rows at a time, then 4 or 2.
void values(const float* v0, int64_t v_stride, int nk, const float* pt, float* ot, int d) {
  int d0 = 0;
  for (; d0 + kValueRows <= d; d0 += kValueRows)
    value_tile<kValueRows>(v0, v_stride, nk, pt, ot, d0);
  for (; d0 + 4 <= d; d0 += 4) value_tile<4>(v0, v_stride, nk, pt, ot, d0);
  for (; d0 < d; d0 += 2) value_tile<2>(v0, v_stride, nk, pt, ot, d0);
}

struct Shape {
  int64_t batch, len_q, len_k, heads, dim;
};

// The online-softmax state of one block of kBlockQ queries of one head.
struct QueryBlock {
  std::vector<float> qt, ot;  // queries [D][kBlockQ] (0 past the last), output^T [D][kBlockQ]
  vf m[kQVecs], l[kQVecs];    // running max and sum of exponentials per query
  bool have_max = false;
  int nq = 0;                 // queries in the block
  int64_t i_start = 0;
};

// Load queries [i_start, i_start + kBlockQ) of head h of batch b and reset the state.
void start_block(QueryBlock& blk, const float* q, const Shape& s, int64_t b, int64_t h,
                 int64_t i_start) {
  const int d = static_cast<int>(s.dim);
  blk.i_start = i_start;
  blk.nq = static_cast<int>(std::min<int64_t>(kBlockQ, s.len_q - i_start));
  blk.qt.assign(s.dim * kBlockQ, 0.0f);
  blk.ot.assign(s.dim * kBlockQ, 0.0f);
  for (int i = 0; i < blk.nq; ++i) {
    const float* qi = q + ((b * s.len_q + i_start + i) * s.heads + h) * s.dim;
    for (int dd = 0; dd < d; ++dd) blk.qt[dd * kBlockQ + i] = qi[dd];
  }
  for (int iv = 0; iv < kQVecs; ++iv) {
    blk.m[iv] = splat(-std::numeric_limits<float>::infinity());
    blk.l[iv] = splat(0.0f);
  }
  blk.have_max = false;
}

// Add keys/values [0, nk) at k0/v0 (a tile) to the block's online softmax; st: scratch tile.
void add_tile(QueryBlock& blk, const float* k0, const float* v0, int64_t row, int nk, int d,
              float scale, float* st) {
  vf* m = blk.m;
  vf* l = blk.l;
  bool fused = false;
  if (blk.have_max) {  // one pass: exponentials against the running max, kept if none exceeds
    vf lsum[kQVecs], excess[kQVecs];  // it by more than kSlack (then: the two-pass update below)
    for (int iv = 0; iv < kQVecs; ++iv) {
      lsum[iv] = splat(0.0f);
      excess[iv] = splat(-std::numeric_limits<float>::infinity());
    }
    scores<true>(k0, row, nk, blk.qt.data(), d, st, scale, m, lsum, excess);
    vf worst = excess[0];
    for (int iv = 1; iv < kQVecs; ++iv) worst = vmax(worst, excess[iv]);
    fused = true;
    for (int i = 0; i < kLanes; ++i) fused = fused && worst[i] <= kSlack;
    if (fused)
      for (int iv = 0; iv < kQVecs; ++iv) l[iv] += lsum[iv];
  }
  if (!fused) {  // scores, their max, then the exponentials; earlier tiles' sums rescaled
    scores<false>(k0, row, nk, blk.qt.data(), d, st, scale, m, nullptr, nullptr);
    vf alpha[kQVecs];
    for (int iv = 0; iv < kQVecs; ++iv) {
      float* col = st + iv * kLanes;
      vf mx = m[iv];
      for (int j = 0; j < nk; ++j) mx = vmax(mx, load(col + j * kBlockQ));
      alpha[iv] = exp_bounded(m[iv] - mx);
      vf sum = splat(0.0f);
      for (int j = 0; j < nk; ++j) {
        const vf p = exp_bounded(load(col + j * kBlockQ) - mx);
        store(col + j * kBlockQ, p);
        sum += p;
      }
      l[iv] = l[iv] * alpha[iv] + sum;
      m[iv] = mx;
    }
    if (blk.have_max)  // on the first tile ot is still 0
      for (int dd = 0; dd < d; ++dd)
        for (int iv = 0; iv < kQVecs; ++iv) {
          float* o = blk.ot.data() + dd * kBlockQ + iv * kLanes;
          store(o, load(o) * alpha[iv]);
        }
    blk.have_max = true;
  }
  values(v0, row, nk, st, blk.ot.data(), d);
}

// Normalise and write the block's outputs and log-sum-exps.
void finish_block(const QueryBlock& blk, float* out, float* lse, const Shape& s, int64_t b,
                  int64_t h) {
  float lv[kBlockQ], mv[kBlockQ];
  for (int iv = 0; iv < kQVecs; ++iv) {
    store(lv + iv * kLanes, blk.l[iv]);
    store(mv + iv * kLanes, blk.m[iv]);
  }
  for (int i = 0; i < blk.nq; ++i) {
    float* oi = out + ((b * s.len_q + blk.i_start + i) * s.heads + h) * s.dim;
    const float inv = 1.0f / lv[i];
    for (int dd = 0; dd < s.dim; ++dd) oi[dd] = blk.ot[dd * kBlockQ + i] * inv;
    lse[(b * s.heads + h) * s.len_q + blk.i_start + i] = mv[i] + std::log(lv[i]);
  }
}

// One task: up to kGroup blocks of queries of head h of batch b, from query i_start. Every key
// tile is used by each block in turn while it is still in cache, so the keys and values stream
// from memory once per kGroup x kBlockQ queries (at 35k tokens they are 35 MB per head).
void attend_group(const float* q, const float* k, const float* v, float* out, float* lse,
                  const Shape& s, float scale, int64_t b, int64_t h, int64_t i_start,
                  std::vector<QueryBlock>& blocks, std::vector<float>& st) {
  const int d = static_cast<int>(s.dim);
  const int64_t row = s.dim;  // stride between keys (heads-first)
  int count = 0;
  for (; count < kGroup && i_start + count * kBlockQ < s.len_q; ++count)
    start_block(blocks[count], q, s, b, h, i_start + count * kBlockQ);
  const float* kb = k + (b * s.heads + h) * s.len_k * s.dim;
  const float* vb = v + (b * s.heads + h) * s.len_k * s.dim;
  for (int64_t j0 = 0; j0 < s.len_k; j0 += kBlockK) {
    const int nk = static_cast<int>(std::min<int64_t>(kBlockK, s.len_k - j0));
    for (int g = 0; g < count; ++g)
      add_tile(blocks[g], kb + j0 * row, vb + j0 * row, row, nk, d, scale, st.data());
  }
  for (int g = 0; g < count; ++g) finish_block(blocks[g], out, lse, s, b, h);
}

ffi::Error FlashForward(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        float scale, ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> lse) {
  const auto qd = q.dimensions();
  const auto kd = k.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || v.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("cpu_flash: q [B, L, H, D], k and v [B, H, L, D]");
  const Shape s{qd[0], qd[1], kd[2], qd[2], qd[3]};
  if (kd[0] != s.batch || kd[1] != s.heads || kd[3] != s.dim || s.dim % 2 != 0)
    return ffi::Error::InvalidArgument("cpu_flash: k/v must match q's batch, heads and head_dim "
                                       "(even)");
  if (s.len_k == 0) return ffi::Error::InvalidArgument("cpu_flash: no keys");
  constexpr int64_t kGroupQ = kGroup * kBlockQ;
  const int64_t q_groups = (s.len_q + kGroupQ - 1) / kGroupQ;
  const int64_t tasks = s.batch * s.heads * q_groups;
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  float* op = out->typed_data();
  float* lp = lse->typed_data();
#pragma omp parallel
  {
    std::vector<QueryBlock> blocks(kGroup);
    std::vector<float> st(kBlockK * kBlockQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t qg = t % q_groups, bh = t / q_groups;
      attend_group(qp, kp, vp, op, lp, s, scale, bh / s.heads, bh % s.heads, qg * kGroupQ,
                   blocks, st);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PostcamCpuFlashForward, FlashForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
