// Compiled CPU loops for the gate-grid scans (policies/cores/gated_lstm.py, gated_gru.py).
//
// Same maths as LSTMScan / GRUScan in Python: per step one GEMM (ATen, multi-threaded BLAS) and one
// fused pass over the gates, written so that the compiler vectorises it (float: a polynomial exp;
// double: std::exp, used by the float64 equivalence tests). Primary gate: 0 sigmoid, 1 cumax.
// Auxiliary gate: 0 none, 1 master (M), 2 refine (R); for the LSTM also 3: an untied input gate
// (torch.nn.LSTM's cell, c = f * c + i * u, in torch's block order i, f, u, o).
// keep: [T, B] of 1.0 / 0.0 or undefined.
// The forget bias b_f [H] is added to the primary pre-activation (and subtracted from a refine gate's)
// inside the loop; its gradient is reduced from the returned pre-activation gradients by the caller.
//
// Memory: the input projection of the whole sequence is written once into the buffer that then holds
// each step's pre-activations and, in place, its activated gates (saved for the backward pass). The
// backward pass keeps the pre-activation gradients of a chunk of steps only and folds each chunk
// into the weight gradients at once: buffers of the size of the whole sequence are allocated, and
// their pages faulted in, once per call fewer.
//
// Only the headers used are included (not ATen/ATen.h): the first build on a machine is the one
// users wait for.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// out = beta * out + a @ b (out contiguous), through ATen's public BLAS ops.
void gemm(const Tensor& out, const Tensor& a, const Tensor& b, float beta) {
  Tensor o = out;
  if (beta == 0.0f) {
    at::mm_out(o, a, b);
  } else {
    at::addmm_out(o, o, a, b, beta, 1.0f);
  }
}

// The per-step recurrent product out[B, N] (+)= a[B, K] @ w[K, N] (all contiguous, row-major). A step has
// few rows (a PPO minibatch or the envs of an actor), where the BLAS call's fixed cost outweighs the work;
// this register-blocked loop, which the compiler vectorises for the CPU it is built on, takes a third to a
// half of its time there. Each output element is summed over k in order, whatever the row blocking.
#if defined(__AVX512F__)
constexpr int kTileCols = 64;  // 4 x 64 accumulators: 16 of the 32 vector registers
#elif defined(__AVX__)
constexpr int kTileCols = 32;  // 4 x 32: 16 registers
#else
constexpr int kTileCols = 16;
#endif
constexpr int64_t kSmallRows = 64;  // up to here the loop beats the BLAS call (benchmarks/cores.py sizes)

template <int R, int NB>
inline void tile(float* __restrict out, const float* __restrict a, const float* __restrict w, int64_t K,
                 int64_t N, bool accumulate) {
  float acc[R][NB];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = accumulate ? out[i * N + j] : 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const float* wr = w + k * N;
    for (int i = 0; i < R; ++i) {
      const float av = a[i * K + k];
      for (int j = 0; j < NB; ++j) acc[i][j] += av * wr[j];
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NB; ++j) out[i * N + j] = acc[i][j];
}

template <int R>
void tile_row(float* out, const float* a, const float* w, int64_t K, int64_t N, bool accumulate) {
  int64_t n = 0;
  for (; n + kTileCols <= N; n += kTileCols) tile<R, kTileCols>(out + n, a, w + n, K, N, accumulate);
  for (; n + 8 <= N; n += 8) tile<R, 8>(out + n, a, w + n, K, N, accumulate);
  for (; n < N; ++n) tile<R, 1>(out + n, a, w + n, K, N, accumulate);
}

void small_gemm(float* out, const float* a, const float* w, int64_t B, int64_t K, int64_t N, bool accumulate) {
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) tile_row<4>(out + b * N, a + b * K, w, K, N, accumulate);
  for (; b < B; ++b) tile_row<1>(out + b * N, a + b * K, w, K, N, accumulate);
}

// One step's out = beta * out + a @ w, beta 0 or 1; w [K, N] contiguous.
template <typename T> void step_gemm(const Tensor& out, const Tensor& a, const Tensor& w, float beta) {
  if constexpr (std::is_same_v<T, float>) {
    if (a.size(0) <= kSmallRows && out.is_contiguous() && a.is_contiguous() && w.is_contiguous()) {
      small_gemm(out.data_ptr<float>(), a.data_ptr<float>(), w.data_ptr<float>(), a.size(0), a.size(1), w.size(1),
                 beta != 0.0f);
      return;
    }
  }
  gemm(out, a, w, beta);
}

inline float exp_approx(float x) {  // |relative error| < 3e-7 on [-87, 88]; vectorises (no calls)
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  float t = x * 1.44269504088896341f + magic;
  float n = t - magic;
  int32_t bits;
  std::memcpy(&bits, &t, 4);
  float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666666f + r * (0.041666668f + r * (0.008333334f + r * 0.0013888889f)))));
  int32_t scale_bits = (bits - 0x4B400000 + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, 4);
  return p * scale;
}

template <typename T> inline T sigm(T x) { return T(1) / (T(1) + std::exp(-x)); }
template <> inline float sigm<float>(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
template <typename T> inline T tanh_(T x) { return std::tanh(x); }
template <> inline float tanh_<float>(float x) {
  float e = exp_approx(-2.0f * std::fabs(x));
  return std::copysign((1.0f - e) / (1.0f + e), x);
}

// The gate codes of a cell. The loops take them as template arguments AUX and CUMAX, so that each
// float cell's inner loop is compiled without branches and vectorises; -1 reads them from the Cell
// at run time instead, which the scalar float64 loops do (one instantiation for every cell keeps the
// first build short).
struct Cell {
  int aux;
  bool cumax;
};

// The codes as the loops read them: constants when given as template arguments.
template <int AUX> inline int aux_code(Cell cell) { return AUX >= 0 ? AUX : cell.aux; }
template <int CUMAX> inline bool cumax_code(Cell cell) { return CUMAX >= 0 ? CUMAX != 0 : cell.cumax; }

template <typename T> inline T effective(T p, T a, int aux) {
  if (aux == 0 || aux == 3) return p;
  T pp = p * p;
  return pp + (aux == 2 ? T(2) : T(1)) * a * (p - pp);
}

// dL/dp and dL/d(aux pre-activation) from dL/dg.
template <typename T> inline void gate_grad(T dg, T p, T a, int aux, T& dp, T& dza) {
  if (aux == 0) { dp = dg; dza = 0; return; }
  T q = p - p * p, sa = a - a * a;
  if (aux == 2) { dp = dg * (T(2) * p + T(2) * a * (T(1) - T(2) * p)); dza = dg * T(2) * q * sa; }
  else { dp = dg * (T(2) * p * (T(1) - a) + a); dza = dg * q * sa; }
}

template <typename T> void cumax_row(const T* z, T* p, int64_t H) {
  T m = z[0];
  for (int64_t j = 1; j < H; ++j) m = std::max(m, z[j]);
  T sum = 0;
  for (int64_t j = 0; j < H; ++j) { p[j] = std::exp(z[j] - m); sum += p[j]; }
  T acc = 0;
  for (int64_t j = 0; j < H; ++j) { acc += p[j] / sum; p[j] = acc; }
}

// In place: dp (the gradient w.r.t. the cumax output p) becomes the gradient w.r.t. its input.
template <typename T> void cumax_row_backward(const T* p, T* dp, int64_t H) {
  T acc = 0, dot = 0;
  for (int64_t j = H - 1; j >= 0; --j) { acc += dp[j]; dp[j] = acc; }  // reverse cumsum
  for (int64_t j = 0; j < H; ++j) dot += (p[j] - (j ? p[j - 1] : T(0))) * dp[j];
  for (int64_t j = 0; j < H; ++j) dp[j] = (p[j] - (j ? p[j - 1] : T(0))) * (dp[j] - dot);
}

// Step t of a contiguous [T, ...] tensor, as a pointer: no per-step tensor op in the loops.
template <typename T> inline T* step(const Tensor& X, int64_t t) { return X.data_ptr<T>() + t * X.stride(0); }

template <typename T> inline const T* keep_ptr(const Tensor& keep) {
  return keep.defined() ? keep.data_ptr<T>() : nullptr;
}

int64_t grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)); }

// Steps per chunk of the backward pass: about 2048 rows, enough for the weight-gradient GEMMs to run
// at full speed, few enough that the chunk's gradients stay small.
int64_t chunk_steps(int64_t Tn, int64_t B) { return std::clamp<int64_t>(2048 / std::max<int64_t>(B, 1), 1, Tn); }

// h <- h * keep (row-wise), written to out.
template <typename T> void masked_copy(const T* h, const T* keep, T* out, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    T k = keep ? keep[b] : T(1);
    for (int64_t j = 0; j < H; ++j) out[b * H + j] = h[b * H + j] * k;
  }
}

template <typename T> void scale_rows(T* x, const T* keep, int64_t B, int64_t H) {
  if (!keep) return;
  for (int64_t b = 0; b < B; ++b)
    if (keep[b] != T(1))
      for (int64_t j = 0; j < H; ++j) x[b * H + j] *= keep[b];
}

// ---------------------------------------------------------------- input projection and weight gradients
// x @ w_ih^T + bias for the whole sequence: x [T, B, D] -> [T, B, NH], a fresh buffer.
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const Tensor& bias) {
  const int64_t Tn = x.size(0), B = x.size(1), D = x.size(2), NH = w_ih.size(0);
  Tensor xz = at::empty({Tn * B, NH}, x.options());
  xz.copy_(bias.expand({Tn * B, NH}));
  gemm(xz, x.reshape({Tn * B, D}), w_ih.t(), 1.0f);
  return xz.view({Tn, B, NH});
}

// The gradients that are sums over all steps, accumulated chunk by chunk from the top chunk down:
// dx, dw_ih, db_ih from the input pre-activation gradients, dw_hh (and, given db_hh, its bias) from
// the hidden ones. dx is empty when not needed.
struct WeightGrads {
  Tensor x2, w_ih, hp2;  // x [T*B, D], w_ih [NH, D], the previous hidden states [T*B, H]
  Tensor dx, dw_ih, db_ih, dw_hh, db_hh;
  int64_t B;
  bool first = true;

  WeightGrads(const Tensor& x, const Tensor& w, const Tensor& Hp, bool need_dx, bool hidden_bias) {
    const int64_t Tn = x.size(0), D = x.size(2), NH = w.size(0), H = Hp.size(2);
    B = x.size(1);
    x2 = x.reshape({Tn * B, D}).contiguous();
    w_ih = w.contiguous();
    hp2 = Hp.view({Tn * B, H});
    dx = need_dx ? at::empty({Tn * B, D}, x.options()) : at::empty({0}, x.options());
    dw_ih = at::empty({NH, D}, x.options());
    db_ih = at::empty({NH}, x.options());
    dw_hh = at::empty({NH, H}, x.options());
    if (hidden_bias) db_hh = at::empty({NH}, x.options());
  }

  // Steps [t0, t0 + n): dX, dHZ [>= n, B, NH] (the same tensor when the pre-activations are shared).
  void add(const Tensor& dX, const Tensor& dHZ, int64_t t0, int64_t n) {
    const int64_t rows = n * B, NH = dX.size(2), r0 = t0 * B;
    const float beta = first ? 0.0f : 1.0f;
    Tensor dx2 = dX.narrow(0, 0, n).view({rows, NH}), dh2 = dHZ.narrow(0, 0, n).view({rows, NH});
    gemm(dw_ih, dx2.t(), x2.narrow(0, r0, rows), beta);
    gemm(dw_hh, dh2.t(), hp2.narrow(0, r0, rows), beta);
    if (dx.numel()) gemm(dx.narrow(0, r0, rows), dx2, w_ih, 0.0f);
    accumulate_sum(db_ih, dx2);
    if (db_hh.defined()) accumulate_sum(db_hh, dh2);
    first = false;
  }

  void accumulate_sum(Tensor& out, const Tensor& rows) {
    if (first) at::sum_out(out, rows, {0});
    else out.add_(rows.sum({0}));
  }

  std::vector<Tensor> take(const Tensor& x) {
    if (dx.numel()) dx = dx.view(x.sizes());
    return {dx, dw_ih, db_ih};
  }
};

// ---------------------------------------------------------------- the cells' row loops
// One step's rows [b0, b1) of a cell, on raw pointers: the only code compiled once per float cell (so
// that each inner loop is branch-free and vectorises) and once for all cells in float64. The loops
// over time, with the GEMMs and tensors, are compiled once per dtype.
template <typename T> struct LstmFwdRows {
  Cell cell;
  int64_t H, NH;
  const T* bf;            // forget bias [H]
  T *cp, *s, *g, *c, *y;  // c_prev [B, H]; pre-activations in, activated gates out [B, NH]; g, c, h [B, H]
};

template <typename T, int AUX, int CUMAX> void lstm_fwd_rows(const LstmFwdRows<T>& a, int64_t b0, int64_t b1) {
  const int aux = aux_code<AUX>(a.cell);
  const bool cumax = cumax_code<CUMAX>(a.cell);
  const int64_t H = a.H, NH = a.NH, nb = NH / H, ou = (nb - 2) * H, oo = (nb - 1) * H;
  const int64_t po = aux == 3 ? H : 0, ao = aux == 3 ? 0 : H;  // torch.nn.LSTM's blocks: i, f, g, o
  const T* bf = a.bf;
  for (int64_t b = b0; b < b1; ++b) {
    T *sr = a.s + b * NH, *gr = a.g + b * H, *cr = a.c + b * H, *yr = a.y + b * H;
    const T* cpr = a.cp + b * H;
    if (cumax) {
      for (int64_t j = 0; j < H; ++j) sr[j] += bf[j];
      cumax_row(sr, sr, H);
    }
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      T p = cumax ? sr[j] : sigm(sr[po + j] + bf[j]);
      T ag = aux ? sigm(aux == 2 ? sr[ao + j] - bf[j] : sr[ao + j]) : T(0);
      T u = tanh_(sr[ou + j]);
      T o = sigm(sr[oo + j]);
      T gg = effective(p, ag, aux);
      T cc = aux == 3 ? gg * cpr[j] + ag * u : u + gg * (cpr[j] - u);
      sr[po + j] = p;
      if (aux) sr[ao + j] = ag;
      sr[ou + j] = u;
      sr[oo + j] = o;
      gr[j] = gg;
      cr[j] = cc;
      yr[j] = o * tanh_(cc);
    }
  }
}

template <typename T> struct LstmBwdRows {
  Cell cell;
  int64_t H, NH;
  const T *s, *g, *c, *cp, *dy;  // saved gates [B, NH]; g, c, c_prev, dL/dh_t from above [B, H]
  T *dz, *dh, *dc;               // pre-activation gradients out [B, NH]; dh, dc in and out [B, H]
};

template <typename T, int AUX, int CUMAX> void lstm_bwd_rows(const LstmBwdRows<T>& a, int64_t b0, int64_t b1) {
  const int aux = aux_code<AUX>(a.cell);
  const bool cumax = cumax_code<CUMAX>(a.cell);
  const int64_t H = a.H, NH = a.NH, nb = NH / H, ou = (nb - 2) * H, oo = (nb - 1) * H;
  const int64_t po = aux == 3 ? H : 0, ao = aux == 3 ? 0 : H;
  for (int64_t b = b0; b < b1; ++b) {
    const T *sr = a.s + b * NH, *gr = a.g + b * H, *cr = a.c + b * H, *cpr = a.cp + b * H, *dyr = a.dy + b * H;
    T *dzr = a.dz + b * NH, *dhr = a.dh + b * H, *dcr = a.dc + b * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      T p = sr[po + j], ag = aux ? sr[ao + j] : T(0), u = sr[ou + j], o = sr[oo + j], gg = gr[j];
      T dhv = dhr[j] + dyr[j];
      T tc = tanh_(cr[j]);
      T dcv = dcr[j] + dhv * o * (T(1) - tc * tc);
      dzr[oo + j] = dhv * tc * (o - o * o);
      dzr[ou + j] = dcv * (aux == 3 ? ag : T(1) - gg) * (T(1) - u * u);
      T dp, dza;
      if (aux == 3) { dp = dcv * cpr[j]; dza = dcv * u * (ag - ag * ag); }
      else gate_grad(dcv * (cpr[j] - u), p, ag, aux, dp, dza);
      dzr[po + j] = cumax ? dp : dp * (p - p * p);
      if (aux) dzr[ao + j] = dza;
      dcr[j] = dcv * gg;
    }
    if (cumax) cumax_row_backward(sr, dzr, H);
  }
}

template <typename T> struct GruFwdRows {
  Cell cell;
  int64_t H, NH;
  const T *bf, *hz, *hp;  // forget bias [H]; W_hh h + b_hh [B, NH]; previous hidden state [B, H]
  T *s, *g, *hn, *y;      // input pre-activations in, activated gates out [B, NH]; g, (W_hh h)_n, h [B, H]
};

template <typename T, int AUX, int CUMAX> void gru_fwd_rows(const GruFwdRows<T>& a, int64_t b0, int64_t b1) {
  const int aux = aux_code<AUX>(a.cell);
  const bool cumax = cumax_code<CUMAX>(a.cell);
  const int64_t H = a.H, NH = a.NH;
  const T* bf = a.bf;
  for (int64_t b = b0; b < b1; ++b) {
    const T *hr = a.hz + b * NH, *hpr = a.hp + b * H;
    T *sr = a.s + b * NH, *gr = a.g + b * H, *hnr = a.hn + b * H, *yr = a.y + b * H;
    if (cumax) {
      for (int64_t j = 0; j < H; ++j) sr[H + j] += hr[H + j] + bf[j];
      cumax_row(sr + H, sr + H, H);
    }
    // Each element's pre-activations are read before its activated gates overwrite them.
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      T r = sigm(sr[j] + hr[j]);
      T p = cumax ? sr[H + j] : sigm(sr[H + j] + hr[H + j] + bf[j]);
      T n = tanh_(sr[2 * H + j] + r * hr[2 * H + j]);
      T ag = aux ? sigm(sr[3 * H + j] + hr[3 * H + j] - (aux == 2 ? bf[j] : T(0))) : T(0);
      T gg = effective(p, ag, aux);
      sr[j] = r;
      sr[H + j] = p;
      sr[2 * H + j] = n;
      if (aux) sr[3 * H + j] = ag;
      hnr[j] = hr[2 * H + j];
      gr[j] = gg;
      yr[j] = n + gg * (hpr[j] - n);
    }
  }
}

template <typename T> struct GruBwdRows {
  Cell cell;
  int64_t H, NH;
  const T *s, *g, *hn, *hp, *dy;  // saved gates [B, NH]; g, (W_hh h)_n, h_prev, dL/dh_t from above [B, H]
  T *dx, *dhz, *dh, *dn;          // input and hidden pre-activation gradients [B, NH]; dh in, dn out [B, H]
};

template <typename T, int AUX, int CUMAX> void gru_bwd_rows(const GruBwdRows<T>& a, int64_t b0, int64_t b1) {
  const int aux = aux_code<AUX>(a.cell);
  const bool cumax = cumax_code<CUMAX>(a.cell);
  const int64_t H = a.H, NH = a.NH;
  for (int64_t b = b0; b < b1; ++b) {
    const T *sr = a.s + b * NH, *gr = a.g + b * H, *hnr = a.hn + b * H, *hpr = a.hp + b * H, *dyr = a.dy + b * H;
    T *dxr = a.dx + b * NH, *dhzr = a.dhz + b * NH, *dhr = a.dh + b * H, *dnr = a.dn + b * H;
#pragma GCC ivdep
    for (int64_t j = 0; j < H; ++j) {
      T r = sr[j], p = sr[H + j], n = sr[2 * H + j], ag = aux ? sr[3 * H + j] : T(0), gg = gr[j];
      T dhv = dhr[j] + dyr[j];
      T dnpre = dhv * (T(1) - gg) * (T(1) - n * n);
      T drpre = dnpre * hnr[j] * (r - r * r);
      T dp, dza;
      gate_grad(dhv * (hpr[j] - n), p, ag, aux, dp, dza);
      dxr[j] = drpre;
      dxr[H + j] = cumax ? dp : dp * (p - p * p);
      dxr[2 * H + j] = dnpre;
      if (aux) dxr[3 * H + j] = dza;
      dnr[j] = dhv * gg;
    }
    if (cumax) cumax_row_backward(sr + H, dxr + H, H);
    std::memcpy(dhzr, dxr, sizeof(T) * NH);
    for (int64_t j = 0; j < H; ++j) dhzr[2 * H + j] = dxr[2 * H + j] * sr[j];
  }
}

// The row function of a cell: float, one per cell (codes as template arguments); double, one for all.
#define ROWS_FN(T, FN, cell, MAX_AUX)                                    \
  [&]() {                                                                \
    if constexpr (std::is_same_v<T, double>) {                           \
      return &FN<double, -1, -1>;                                        \
    } else {                                                             \
      switch (cell.aux * 2 + (cell.cumax ? 1 : 0)) {                     \
        case 0: return &FN<T, 0, 0>;                                     \
        case 1: return &FN<T, 0, 1>;                                     \
        case 2: return &FN<T, 1, 0>;                                     \
        case 3: return &FN<T, 1, 1>;                                     \
        case 4: return &FN<T, 2, 0>;                                     \
        case 5: return &FN<T, 2, 1>;                                     \
        default: return &FN<T, MAX_AUX, 0>;                              \
      }                                                                  \
    }                                                                    \
  }()

// ---------------------------------------------------------------- LSTM grid
// S [T, B, NH]: the input projection on entry, the activated gates on return.
template <typename T>
std::vector<Tensor> lstm_fwd_loop(const Tensor& S, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                  const Tensor& b_f, const Tensor& keep_t, Cell cell, bool save) {
  const auto rows = ROWS_FN(T, lstm_fwd_rows, cell, 3);
  const int64_t Tn = S.size(0), B = S.size(1), NH = S.size(2), H = h0.size(1);
  const int64_t Ts = save ? Tn : 1;  // without a backward to come, one step of scratch is reused
  auto opt = S.options();
  Tensor ys = at::empty({Tn, B, H}, opt), G = at::empty({Tn, B, H}, opt);
  Tensor C = at::empty({Ts, B, H}, opt), Hp = at::empty({Ts, B, H}, opt), Cp = at::empty({Ts, B, H}, opt);
  Tensor w_t = w_hh.t().contiguous();  // [H, NH]
  const T *hlast = h0.data_ptr<T>(), *clast = c0.data_ptr<T>();
  const T* keep = keep_ptr<T>(keep_t);
  for (int64_t t = 0; t < Tn; ++t) {
    const int64_t ts = save ? t : 0;
    LstmFwdRows<T> a{cell, H, NH, b_f.data_ptr<T>(), step<T>(Cp, ts), step<T>(S, t), step<T>(G, t), step<T>(C, ts),
                     step<T>(ys, t)};
    const T* kt = keep ? keep + t * B : nullptr;
    T* hp = step<T>(Hp, ts);
    masked_copy(hlast, kt, hp, B, H);
    masked_copy(clast, kt, a.cp, B, H);
    step_gemm<T>(S.select(0, t), Hp.select(0, ts), w_t, 1.0f);  // pre-activations, activated in place below
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) { rows(a, b0, b1); });
    hlast = a.y;
    clast = a.c;
  }
  Tensor hT = ys.select(0, Tn - 1).clone(), cT = C.select(0, Ts - 1).clone();
  if (!save) return {ys, hT, cT, G};
  return {ys, hT, cT, G, S, C, Hp, Cp};
}

// Returns {dx, dw_ih, dbias, dh0, dc0, dw_hh}.
template <typename T>
std::vector<Tensor> lstm_bwd_loop(const Tensor& dy, const Tensor& dhT, const Tensor& dcT, const Tensor& S,
                                  const Tensor& G, const Tensor& C, const Tensor& Hp, const Tensor& Cp,
                                  const Tensor& w_hh, const Tensor& x, const Tensor& w_ih, const Tensor& keep_t,
                                  Cell cell, bool need_dx) {
  const auto rows = ROWS_FN(T, lstm_bwd_rows, cell, 3);
  const int64_t Tn = S.size(0), B = S.size(1), NH = S.size(2), H = G.size(2), K = chunk_steps(Tn, B);
  WeightGrads grads(x, w_ih, Hp, need_dx, false);
  Tensor dZ = at::empty({K, B, NH}, S.options()), dh = dhT.clone(), dc = dcT.clone();
  const T* keep = keep_ptr<T>(keep_t);
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const int64_t slot = t % K;
    LstmBwdRows<T> a{cell, H, NH, step<T>(S, t), step<T>(G, t), step<T>(C, t), step<T>(Cp, t), step<T>(dy, t),
                     step<T>(dZ, slot), dh.data_ptr<T>(), dc.data_ptr<T>()};
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) { rows(a, b0, b1); });
    step_gemm<T>(dh, dZ.select(0, slot), w_hh, 0.0f);
    const T* kt = keep ? keep + t * B : nullptr;
    scale_rows(a.dh, kt, B, H);
    scale_rows(a.dc, kt, B, H);
    if (slot == 0) grads.add(dZ, dZ, t, std::min(K, Tn - t));
  }
  auto r = grads.take(x);
  return {r[0], r[1], r[2], dh, dc, grads.dw_hh};
}

// ---------------------------------------------------------------- GRU grid
// S [T, B, NH]: the input projection on entry, the activated gates on return.
template <typename T>
std::vector<Tensor> gru_fwd_loop(const Tensor& S, const Tensor& h0, const Tensor& w_hh, const Tensor& b_hh,
                                 const Tensor& b_f, const Tensor& keep_t, Cell cell, bool save) {
  const auto rows = ROWS_FN(T, gru_fwd_rows, cell, 2);
  const int64_t Tn = S.size(0), B = S.size(1), NH = S.size(2), H = h0.size(1);
  const int64_t Ts = save ? Tn : 1;  // without a backward to come, one step of scratch is reused
  auto opt = S.options();
  Tensor ys = at::empty({Tn, B, H}, opt), G = at::empty({Tn, B, H}, opt);
  Tensor HN = at::empty({Ts, B, H}, opt), Hp = at::empty({Ts, B, H}, opt), hz = at::empty({B, NH}, opt);
  Tensor w_t = w_hh.t().contiguous();  // [H, NH]
  const T *hlast = h0.data_ptr<T>(), *bh = b_hh.data_ptr<T>();
  const T* keep = keep_ptr<T>(keep_t);
  for (int64_t t = 0; t < Tn; ++t) {
    const int64_t ts = save ? t : 0;
    T *hp = step<T>(Hp, ts), *hzp = hz.data_ptr<T>();
    masked_copy(hlast, keep ? keep + t * B : nullptr, hp, B, H);
    for (int64_t b = 0; b < B; ++b) std::memcpy(hzp + b * NH, bh, sizeof(T) * NH);
    step_gemm<T>(hz, Hp.select(0, ts), w_t, 1.0f);
    GruFwdRows<T> a{cell, H, NH, b_f.data_ptr<T>(), hzp, hp, step<T>(S, t), step<T>(G, t), step<T>(HN, ts),
                    step<T>(ys, t)};
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) { rows(a, b0, b1); });
    hlast = a.y;
  }
  Tensor hT = ys.select(0, Tn - 1).clone();
  if (!save) return {ys, hT, G};
  return {ys, hT, G, S, HN, Hp};
}

// Returns {dx, dw_ih, db_ih, dh0, dw_hh, db_hh}.
template <typename T>
std::vector<Tensor> gru_bwd_loop(const Tensor& dy, const Tensor& dhT, const Tensor& S, const Tensor& HN,
                                 const Tensor& G, const Tensor& Hp, const Tensor& w_hh, const Tensor& x,
                                 const Tensor& w_ih, const Tensor& keep_t, Cell cell, bool need_dx) {
  const auto rows = ROWS_FN(T, gru_bwd_rows, cell, 2);
  const int64_t Tn = S.size(0), B = S.size(1), NH = S.size(2), H = G.size(2), K = chunk_steps(Tn, B);
  WeightGrads grads(x, w_ih, Hp, need_dx, true);
  Tensor dX = at::empty({K, B, NH}, S.options()), dHZ = at::empty({K, B, NH}, S.options());
  Tensor dh = dhT.clone(), dnext = at::empty({B, H}, S.options());
  const T* keep = keep_ptr<T>(keep_t);
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const int64_t slot = t % K;
    GruBwdRows<T> a{cell, H, NH, step<T>(S, t), step<T>(G, t), step<T>(HN, t), step<T>(Hp, t), step<T>(dy, t),
                    step<T>(dX, slot), step<T>(dHZ, slot), dh.data_ptr<T>(), dnext.data_ptr<T>()};
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) { rows(a, b0, b1); });
    std::memcpy(a.dh, a.dn, sizeof(T) * B * H);
    step_gemm<T>(dh, dHZ.select(0, slot), w_hh, 1.0f);
    scale_rows(a.dh, keep ? keep + t * B : nullptr, B, H);
    if (slot == 0) grads.add(dX, dHZ, t, std::min(K, Tn - t));
  }
  auto r = grads.take(x);
  return {r[0], r[1], r[2], dh, grads.dw_hh, grads.db_hh};
}

// ---------------------------------------------------------------- dispatch
Cell cell_of(int64_t primary, int64_t aux, int64_t max_aux) {
  TORCH_CHECK(primary == 0 || primary == 1, "primary gate code must be 0 or 1");
  TORCH_CHECK(aux >= 0 && aux <= max_aux, "auxiliary gate code must be in [0, ", max_aux, "]");
  TORCH_CHECK(!(primary == 1 && aux == 3), "cumax has no untied-input-gate cell");
  return {static_cast<int>(aux), primary == 1};
}

Tensor keep_of(const c10::optional<Tensor>& keep) {
  return keep.has_value() && keep->defined() ? keep->contiguous() : Tensor();
}

// The loops over time: one instantiation per dtype.
#define DISPATCH_DTYPE(dtype, FN, ...)                                                      \
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, #FN ": float32 or float64 expected"); \
  if (dtype == at::kDouble) return FN<double>(__VA_ARGS__);                                \
  return FN<float>(__VA_ARGS__);

std::vector<Tensor> lstm_fwd(const Tensor& input, const Tensor& w_ih, const Tensor& bias, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_hh, const Tensor& b_f,
                             const c10::optional<Tensor>& keep, int64_t primary, int64_t aux, bool save) {
  const Cell cell = cell_of(primary, aux, 3);
  Tensor S = input_projection(input, w_ih, bias);
  DISPATCH_DTYPE(S.scalar_type(), lstm_fwd_loop, S, h0.contiguous(), c0.contiguous(), w_hh.contiguous(),
                b_f.contiguous(), keep_of(keep), cell, save)
}

std::vector<Tensor> lstm_bwd(const Tensor& dy, const Tensor& dhT, const Tensor& dcT, const Tensor& S,
                             const Tensor& G, const Tensor& C, const Tensor& Hp, const Tensor& Cp,
                             const Tensor& input, const Tensor& w_ih, const Tensor& w_hh,
                             const c10::optional<Tensor>& keep, int64_t primary, int64_t aux, bool need_dx) {
  const Cell cell = cell_of(primary, aux, 3);
  DISPATCH_DTYPE(S.scalar_type(), lstm_bwd_loop, dy.contiguous(), dhT.contiguous(), dcT.contiguous(), S, G,
                C, Hp, Cp, w_hh.contiguous(), input, w_ih, keep_of(keep), cell, need_dx)
}

std::vector<Tensor> gru_fwd(const Tensor& input, const Tensor& w_ih, const Tensor& b_ih, const Tensor& h0,
                            const Tensor& w_hh, const Tensor& b_hh, const Tensor& b_f,
                            const c10::optional<Tensor>& keep, int64_t primary, int64_t aux, bool save) {
  const Cell cell = cell_of(primary, aux, 2);
  Tensor S = input_projection(input, w_ih, b_ih);
  DISPATCH_DTYPE(S.scalar_type(), gru_fwd_loop, S, h0.contiguous(), w_hh.contiguous(), b_hh.contiguous(),
                b_f.contiguous(), keep_of(keep), cell, save)
}

std::vector<Tensor> gru_bwd(const Tensor& dy, const Tensor& dhT, const Tensor& S, const Tensor& HN,
                            const Tensor& G, const Tensor& Hp, const Tensor& input, const Tensor& w_ih,
                            const Tensor& w_hh, const c10::optional<Tensor>& keep, int64_t primary, int64_t aux,
                            bool need_dx) {
  const Cell cell = cell_of(primary, aux, 2);
  DISPATCH_DTYPE(S.scalar_type(), gru_bwd_loop, dy.contiguous(), dhT.contiguous(), S, HN, G, Hp,
                w_hh.contiguous(), input, w_ih, keep_of(keep), cell, need_dx)
}

}  // namespace

TORCH_LIBRARY(urlstm_scan, m) {
  m.def("lstm_fwd(Tensor x, Tensor w_ih, Tensor bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor b_f, Tensor? keep, "
        "int primary, int aux, bool save) -> Tensor[]");
  m.def("lstm_bwd(Tensor dy, Tensor dhT, Tensor dcT, Tensor S, Tensor G, Tensor C, Tensor Hp, Tensor Cp, "
        "Tensor x, Tensor w_ih, Tensor w_hh, Tensor? keep, int primary, int aux, bool need_dx) -> Tensor[]");
  m.def("gru_fwd(Tensor x, Tensor w_ih, Tensor b_ih, Tensor h0, Tensor w_hh, Tensor b_hh, Tensor b_f, Tensor? keep, "
        "int primary, int aux, bool save) -> Tensor[]");
  m.def("gru_bwd(Tensor dy, Tensor dhT, Tensor S, Tensor HN, Tensor G, Tensor Hp, Tensor x, Tensor w_ih, "
        "Tensor w_hh, Tensor? keep, int primary, int aux, bool need_dx) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(urlstm_scan, CPU, m) {
  m.impl("lstm_fwd", &lstm_fwd);
  m.impl("lstm_bwd", &lstm_bwd);
  m.impl("gru_fwd", &gru_fwd);
  m.impl("gru_bwd", &gru_bwd);
}
