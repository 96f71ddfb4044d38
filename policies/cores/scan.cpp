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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using at::Tensor;

// out = beta * out + a @ b (out contiguous), through ATen's public BLAS ops.
void gemm(Tensor& out, const Tensor& a, const Tensor& b, float beta) {
  if (beta == 0.0f) {
    at::mm_out(out, a, b);
  } else {
    at::addmm_out(out, out, a, b, beta, 1.0f);
  }
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

template <typename T, int AUX> inline T effective(T p, T a) {
  if (AUX == 0 || AUX == 3) return p;
  T pp = p * p;
  return pp + (AUX == 2 ? T(2) : T(1)) * a * (p - pp);
}

// dL/dp and dL/d(aux pre-activation) from dL/dg.
template <typename T, int AUX> inline void gate_grad(T dg, T p, T a, T& dp, T& dza) {
  if (AUX == 0) { dp = dg; dza = 0; return; }
  T q = p - p * p, sa = a - a * a;
  if (AUX == 2) { dp = dg * (T(2) * p + T(2) * a * (T(1) - T(2) * p)); dza = dg * T(2) * q * sa; }
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

int64_t grain(int64_t H) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)); }

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

// ---------------------------------------------------------------- LSTM grid
template <typename T, int AUX, bool CUMAX>
std::vector<Tensor> lstm_fwd_impl(const Tensor& xz, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                  const Tensor& b_f, const T* keep, bool save) {
  const int64_t Tn = xz.size(0), B = xz.size(1), NH = xz.size(2), H = h0.size(1);
  const int64_t nb = NH / H, ou = (nb - 2) * H, oo = (nb - 1) * H;
  const int64_t po = AUX == 3 ? H : 0, ao = AUX == 3 ? 0 : H;  // torch.nn.LSTM's blocks: i, f, g, o
  const int64_t Ts = save ? Tn : 1;  // without a backward to come, one step of scratch is reused
  auto opt = xz.options();
  Tensor ys = at::empty({Tn, B, H}, opt), S = at::empty({Ts, B, NH}, opt), G = at::empty({Tn, B, H}, opt);
  Tensor C = at::empty({Ts, B, H}, opt), Hp = at::empty({Ts, B, H}, opt), Cp = at::empty({Ts, B, H}, opt);
  Tensor w_t = w_hh.t();  // [H, NH] view: both GEMM libraries take the transposed layout as is
  const T *hlast = h0.data_ptr<T>(), *clast = c0.data_ptr<T>(), *bf = b_f.data_ptr<T>();
  for (int64_t t = 0; t < Tn; ++t) {
    const int64_t ts = save ? t : 0;
    T *hp = step<T>(Hp, ts), *cp = step<T>(Cp, ts), *s = step<T>(S, ts);
    const T* kt = keep ? keep + t * B : nullptr;
    masked_copy(hlast, kt, hp, B, H);
    masked_copy(clast, kt, cp, B, H);
    std::memcpy(s, step<T>(xz, t), sizeof(T) * B * NH);
    Tensor st = S.select(0, ts);
    gemm(st, Hp.select(0, ts), w_t, 1.0f);  // pre-activations, activated in place below
    T *g = step<T>(G, t), *c = step<T>(C, ts), *y = step<T>(ys, t);
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T *sr = s + b * NH, *gr = g + b * H, *cr = c + b * H, *yr = y + b * H;
        const T* cpr = cp + b * H;
        if (CUMAX) {
          for (int64_t j = 0; j < H; ++j) sr[j] += bf[j];
          cumax_row(sr, sr, H);
        }
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T p = CUMAX ? sr[j] : sigm(sr[po + j] + bf[j]);
          T a = AUX ? sigm(AUX == 2 ? sr[ao + j] - bf[j] : sr[ao + j]) : T(0);
          T u = tanh_(sr[ou + j]);
          T o = sigm(sr[oo + j]);
          T gg = effective<T, AUX>(p, a);
          T cc = AUX == 3 ? gg * cpr[j] + a * u : u + gg * (cpr[j] - u);
          sr[po + j] = p;
          if (AUX) sr[ao + j] = a;
          sr[ou + j] = u;
          sr[oo + j] = o;
          gr[j] = gg;
          cr[j] = cc;
          yr[j] = o * tanh_(cc);
        }
      }
    });
    hlast = y;
    clast = c;
  }
  Tensor hT = ys[Tn - 1].clone(), cT = C[Ts - 1].clone();
  if (!save) return {ys, hT, cT, G};
  return {ys, hT, cT, G, S, C, Hp, Cp};
}

template <typename T, int AUX, bool CUMAX>
std::vector<Tensor> lstm_bwd_impl(const Tensor& dy, const Tensor& dhT, const Tensor& dcT, const Tensor& S,
                                  const Tensor& G, const Tensor& C, const Tensor& Hp, const Tensor& Cp,
                                  const Tensor& w_hh, const T* keep) {
  const int64_t Tn = S.size(0), B = S.size(1), NH = S.size(2), H = G.size(2);
  const int64_t nb = NH / H, ou = (nb - 2) * H, oo = (nb - 1) * H;
  const int64_t po = AUX == 3 ? H : 0, ao = AUX == 3 ? 0 : H;
  Tensor dZ = at::empty_like(S), dh = dhT.clone(), dc = dcT.clone();
  T *dhp = dh.data_ptr<T>(), *dcp = dc.data_ptr<T>();
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const T *s = step<T>(S, t), *g = step<T>(G, t), *c = step<T>(C, t), *cp = step<T>(Cp, t);
    const T* dyt = step<T>(dy, t);
    T* dz = step<T>(dZ, t);
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T *sr = s + b * NH, *gr = g + b * H, *cr = c + b * H, *cpr = cp + b * H, *dyr = dyt + b * H;
        T *dzr = dz + b * NH, *dhr = dhp + b * H, *dcr = dcp + b * H;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T p = sr[po + j], a = AUX ? sr[ao + j] : T(0), u = sr[ou + j], o = sr[oo + j], gg = gr[j];
          T dhv = dhr[j] + dyr[j];
          T tc = tanh_(cr[j]);
          T dcv = dcr[j] + dhv * o * (T(1) - tc * tc);
          dzr[oo + j] = dhv * tc * (o - o * o);
          dzr[ou + j] = dcv * (AUX == 3 ? a : T(1) - gg) * (T(1) - u * u);
          T dp, dza;
          if (AUX == 3) { dp = dcv * cpr[j]; dza = dcv * u * (a - a * a); }
          else gate_grad<T, AUX>(dcv * (cpr[j] - u), p, a, dp, dza);
          dzr[po + j] = CUMAX ? dp : dp * (p - p * p);
          if (AUX) dzr[ao + j] = dza;
          dcr[j] = dcv * gg;
        }
        if (CUMAX) cumax_row_backward(sr, dzr, H);
      }
    });
    gemm(dh, dZ.select(0, t), w_hh, 0.0f);
    const T* kt = keep ? keep + t * B : nullptr;
    scale_rows(dhp, kt, B, H);
    scale_rows(dcp, kt, B, H);
  }
  Tensor dW = at::empty({NH, H}, S.options());
  gemm(dW, dZ.view({Tn * B, NH}).t(), Hp.view({Tn * B, H}), 0.0f);
  return {dZ, dh, dc, dW};
}

// ---------------------------------------------------------------- GRU grid
template <typename T, int AUX, bool CUMAX>
std::vector<Tensor> gru_fwd_impl(const Tensor& xz, const Tensor& h0, const Tensor& w_hh, const Tensor& b_hh,
                                 const Tensor& b_f, const T* keep, bool save) {
  const int64_t Tn = xz.size(0), B = xz.size(1), NH = xz.size(2), H = h0.size(1);
  const int64_t Ts = save ? Tn : 1;  // without a backward to come, one step of scratch is reused
  auto opt = xz.options();
  Tensor ys = at::empty({Tn, B, H}, opt), S = at::empty({Ts, B, NH}, opt), G = at::empty({Tn, B, H}, opt);
  Tensor HN = at::empty({Ts, B, H}, opt), Hp = at::empty({Ts, B, H}, opt), hz = at::empty({B, NH}, opt);
  Tensor w_t = w_hh.t();  // [H, NH] view
  const T *hlast = h0.data_ptr<T>(), *bf = b_f.data_ptr<T>(), *bh = b_hh.data_ptr<T>();
  for (int64_t t = 0; t < Tn; ++t) {
    const int64_t ts = save ? t : 0;
    T* hp = step<T>(Hp, ts);
    masked_copy(hlast, keep ? keep + t * B : nullptr, hp, B, H);
    T* hzp = hz.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) std::memcpy(hzp + b * NH, bh, sizeof(T) * NH);
    gemm(hz, Hp.select(0, ts), w_t, 1.0f);
    const T* x = step<T>(xz, t);
    T *s = step<T>(S, ts), *g = step<T>(G, t), *hn = step<T>(HN, ts), *y = step<T>(ys, t);
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T *xr = x + b * NH, *hr = hzp + b * NH, *hpr = hp + b * H;
        T *sr = s + b * NH, *gr = g + b * H, *hnr = hn + b * H, *yr = y + b * H;
        if (CUMAX) {
          for (int64_t j = 0; j < H; ++j) sr[H + j] = xr[H + j] + hr[H + j] + bf[j];
          cumax_row(sr + H, sr + H, H);
        }
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T r = sigm(xr[j] + hr[j]);
          T p = CUMAX ? sr[H + j] : sigm(xr[H + j] + hr[H + j] + bf[j]);
          T n = tanh_(xr[2 * H + j] + r * hr[2 * H + j]);
          T a = AUX ? sigm(xr[3 * H + j] + hr[3 * H + j] - (AUX == 2 ? bf[j] : T(0))) : T(0);
          T gg = effective<T, AUX>(p, a);
          sr[j] = r;
          sr[H + j] = p;
          sr[2 * H + j] = n;
          if (AUX) sr[3 * H + j] = a;
          hnr[j] = hr[2 * H + j];
          gr[j] = gg;
          yr[j] = n + gg * (hpr[j] - n);
        }
      }
    });
    hlast = y;
  }
  if (!save) return {ys, ys[Tn - 1].clone(), G};
  return {ys, ys[Tn - 1].clone(), G, S, HN, Hp};
}

template <typename T, int AUX, bool CUMAX>
std::vector<Tensor> gru_bwd_impl(const Tensor& dy, const Tensor& dhT, const Tensor& S, const Tensor& HN,
                                 const Tensor& G, const Tensor& Hp, const Tensor& w_hh, const T* keep) {
  const int64_t Tn = S.size(0), B = S.size(1), NH = S.size(2), H = G.size(2);
  Tensor dX = at::empty_like(S), dHZ = at::empty_like(S), dh = dhT.clone(), dnext = at::empty_like(dhT);
  T *dhp = dh.data_ptr<T>(), *dnp = dnext.data_ptr<T>();
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const T *s = step<T>(S, t), *g = step<T>(G, t), *hn = step<T>(HN, t), *hp = step<T>(Hp, t);
    const T* dyt = step<T>(dy, t);
    T *dx = step<T>(dX, t), *dhz = step<T>(dHZ, t);
    at::parallel_for(0, B, grain(NH), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T *sr = s + b * NH, *gr = g + b * H, *hnr = hn + b * H, *hpr = hp + b * H, *dyr = dyt + b * H;
        T *dxr = dx + b * NH, *dhzr = dhz + b * NH, *dhr = dhp + b * H, *dnr = dnp + b * H;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
          T r = sr[j], p = sr[H + j], n = sr[2 * H + j], a = AUX ? sr[3 * H + j] : T(0), gg = gr[j];
          T dhv = dhr[j] + dyr[j];
          T dnpre = dhv * (T(1) - gg) * (T(1) - n * n);
          T drpre = dnpre * hnr[j] * (r - r * r);
          T dp, dza;
          gate_grad<T, AUX>(dhv * (hpr[j] - n), p, a, dp, dza);
          dxr[j] = drpre;
          dxr[H + j] = CUMAX ? dp : dp * (p - p * p);
          dxr[2 * H + j] = dnpre;
          if (AUX) dxr[3 * H + j] = dza;
          dnr[j] = dhv * gg;
        }
        if (CUMAX) cumax_row_backward(sr + H, dxr + H, H);
        std::memcpy(dhzr, dxr, sizeof(T) * NH);
        for (int64_t j = 0; j < H; ++j) dhzr[2 * H + j] = dxr[2 * H + j] * sr[j];
      }
    });
    std::memcpy(dhp, dnp, sizeof(T) * B * H);
    gemm(dh, dHZ.select(0, t), w_hh, 1.0f);
    scale_rows(dhp, keep ? keep + t * B : nullptr, B, H);
  }
  Tensor dW = at::empty({NH, H}, S.options());
  gemm(dW, dHZ.view({Tn * B, NH}).t(), Hp.view({Tn * B, H}), 0.0f);
  return {dX, dh, dW, dHZ.sum({0, 1})};
}

// ---------------------------------------------------------------- input projection
// xz = x @ w_ih^T + bias for the whole sequence: x [T, B, D] -> [T, B, NH].
Tensor input_projection(const Tensor& x, const Tensor& w_ih, const Tensor& bias) {
  const int64_t Tn = x.size(0), B = x.size(1), D = x.size(2), NH = w_ih.size(0);
  Tensor xz = at::empty({Tn * B, NH}, x.options());
  xz.copy_(bias.expand({Tn * B, NH}));  // a fresh buffer: expand(...).contiguous() may alias bias
  gemm(xz, x.reshape({Tn * B, D}), w_ih.t(), 1.0f);
  return xz.view({Tn, B, NH});
}

// Gradients of the projection from dxz [T, B, NH]: {dx (empty when not needed), dw_ih, dbias}.
std::vector<Tensor> projection_backward(const Tensor& dxz, const Tensor& x, const Tensor& w_ih, bool need_dx) {
  const int64_t Tn = x.size(0), B = x.size(1), D = x.size(2), NH = w_ih.size(0);
  Tensor d2 = dxz.reshape({Tn * B, NH});
  Tensor dx = at::empty({0}, x.options());
  if (need_dx) {
    dx = at::empty({Tn * B, D}, x.options());
    gemm(dx, d2, w_ih.contiguous(), 0.0f);
    dx = dx.view({Tn, B, D});
  }
  Tensor dw = at::empty({NH, D}, x.options());
  gemm(dw, d2.t(), x.reshape({Tn * B, D}).contiguous(), 0.0f);
  return {dx, dw, dxz.sum({0, 1})};
}

// ---------------------------------------------------------------- dispatch
template <typename T> const T* keep_ptr(const c10::optional<Tensor>& keep) {
  return keep.has_value() && keep->defined() ? keep->data_ptr<T>() : nullptr;
}

// The gate codes are template arguments, so that each cell's inner loop has no branch and vectorises.
#define DISPATCH_CELL(primary, aux, FN, ...)                                  \
  switch (aux * 2 + (primary == 1)) {                                         \
    case 0: return FN<scalar_t, 0, false>(__VA_ARGS__);                       \
    case 1: return FN<scalar_t, 0, true>(__VA_ARGS__);                        \
    case 2: return FN<scalar_t, 1, false>(__VA_ARGS__);                       \
    case 3: return FN<scalar_t, 1, true>(__VA_ARGS__);                        \
    case 4: return FN<scalar_t, 2, false>(__VA_ARGS__);                       \
    case 5: return FN<scalar_t, 2, true>(__VA_ARGS__);                        \
    default: return FN<scalar_t, 3, false>(__VA_ARGS__);                      \
  }

std::vector<Tensor> lstm_fwd(const Tensor& input, const Tensor& w_ih, const Tensor& bias, const Tensor& h0,
                             const Tensor& c0, const Tensor& w_hh, const Tensor& b_f,
                             const c10::optional<Tensor>& keep, int64_t primary, int64_t aux, bool save) {
  Tensor x = input_projection(input, w_ih, bias), h = h0.contiguous(), c = c0.contiguous(), w = w_hh.contiguous();
  c10::optional<Tensor> k = keep.has_value() ? c10::optional<Tensor>(keep->contiguous()) : keep;
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_fwd", [&]() -> std::vector<Tensor> {
    DISPATCH_CELL(primary, aux, lstm_fwd_impl, x, h, c, w, b_f.contiguous(), keep_ptr<scalar_t>(k), save)
  });
}

// Returns {dx, dw_ih, dbias, dh0, dc0, dw_hh}.
std::vector<Tensor> lstm_bwd(const Tensor& dy, const Tensor& dhT, const Tensor& dcT, const Tensor& S,
                             const Tensor& G, const Tensor& C, const Tensor& Hp, const Tensor& Cp,
                             const Tensor& input, const Tensor& w_ih, const Tensor& w_hh,
                             const c10::optional<Tensor>& keep, int64_t primary, int64_t aux, bool need_dx) {
  Tensor dyc = dy.contiguous(), w = w_hh.contiguous();
  c10::optional<Tensor> k = keep.has_value() ? c10::optional<Tensor>(keep->contiguous()) : keep;
  auto r = AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "lstm_bwd", [&]() -> std::vector<Tensor> {
    DISPATCH_CELL(primary, aux, lstm_bwd_impl, dyc, dhT.contiguous(), dcT.contiguous(), S, G, C, Hp, Cp, w,
                 keep_ptr<scalar_t>(k))
  });
  auto p = projection_backward(r[0], input, w_ih, need_dx);
  return {p[0], p[1], p[2], r[1], r[2], r[3]};
}

std::vector<Tensor> gru_fwd(const Tensor& input, const Tensor& w_ih, const Tensor& b_ih, const Tensor& h0,
                            const Tensor& w_hh, const Tensor& b_hh, const Tensor& b_f,
                            const c10::optional<Tensor>& keep, int64_t primary, int64_t aux, bool save) {
  TORCH_CHECK(aux >= 0 && aux <= 2, "gru_fwd: aux must be 0, 1 or 2");
  Tensor x = input_projection(input, w_ih, b_ih), h = h0.contiguous(), w = w_hh.contiguous(), bh = b_hh.contiguous();
  c10::optional<Tensor> k = keep.has_value() ? c10::optional<Tensor>(keep->contiguous()) : keep;
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gru_fwd", [&]() -> std::vector<Tensor> {
    DISPATCH_CELL(primary, aux, gru_fwd_impl, x, h, w, bh, b_f.contiguous(), keep_ptr<scalar_t>(k), save)
  });
}

// Returns {dx, dw_ih, db_ih, dh0, dw_hh, db_hh}.
std::vector<Tensor> gru_bwd(const Tensor& dy, const Tensor& dhT, const Tensor& S, const Tensor& HN,
                            const Tensor& G, const Tensor& Hp, const Tensor& input, const Tensor& w_ih,
                            const Tensor& w_hh, const c10::optional<Tensor>& keep, int64_t primary, int64_t aux,
                            bool need_dx) {
  TORCH_CHECK(aux >= 0 && aux <= 2, "gru_bwd: aux must be 0, 1 or 2");
  Tensor dyc = dy.contiguous(), w = w_hh.contiguous();
  c10::optional<Tensor> k = keep.has_value() ? c10::optional<Tensor>(keep->contiguous()) : keep;
  auto r = AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "gru_bwd", [&]() -> std::vector<Tensor> {
    DISPATCH_CELL(primary, aux, gru_bwd_impl, dyc, dhT.contiguous(), S, HN, G, Hp, w, keep_ptr<scalar_t>(k))
  });
  auto p = projection_backward(r[0], input, w_ih, need_dx);
  return {p[0], p[1], p[2], r[1], r[2], r[3]};
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
