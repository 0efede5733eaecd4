// Host dispatch of the flash kernels: (dtype, head-dim bucket) -> the
// instance compiled in fwd_*.cu / bwd_*.cu, and the shared-memory sizes the
// entry point checks against the device before choosing these kernels.
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/dispatch.h"
#include "dense/flash/config.h"

namespace itnet {
namespace dense {
namespace flash {
namespace {

template <int kD, bool kMlp>
int64_t fwd_bytes_of(const FwdParams& p) {
  using C = FwdTiles<kD, kMlp>;
  return make_smem(C::kTileBytes, C::kBr, C::kBc, p).bytes;
}

template <int kD>
int64_t fwd_bytes(const FwdParams& p) {
  return ITNET_DISPATCH_BOOL(p.mlp, kMlp, return fwd_bytes_of<kD, kMlp>(p));
}

template <int kD>
int64_t bwd_bytes(const FwdParams& p, bool want_dE) {
  using C = BwdTiles<kD>;
  const int64_t kv = make_bwd_smem(C::kKvBytes, 2 * C::kBq, C::kBk, C::kBk, true, p, want_dE).bytes;
  const int64_t q = make_bwd_smem(C::kQBytes, C::kBr, 2 * C::kBc, C::kBr, false, p, false).bytes;
  return kv > q ? kv : q;
}

template <class T>
void fwd_typed(const FwdParams& p, cudaStream_t stream) {
  switch (head_dim_bucket(p.Dk, p.Dv)) {
    case 64: return launch_fwd<T, 64>(p, stream);
    case 128: return launch_fwd<T, 128>(p, stream);
    default: return launch_fwd<T, 256>(p, stream);
  }
}

template <class T>
void bwd_typed(const BwdParams& bp, const FlashGrads& g, cudaStream_t stream) {
  const int d = head_dim_bucket(bp.f.Dk, bp.f.Dv);
  TORCH_CHECK(d <= kMaxHeadDimBwd, "flash backward: head dim ", d, " above ", kMaxHeadDimBwd);
  if (d == 64) return launch_bwd<T, 64>(bp, g, stream);
  return launch_bwd<T, 128>(bp, g, stream);
}

}  // namespace

int64_t fwd_smem_bytes(const FwdParams& p) {
  switch (head_dim_bucket(p.Dk, p.Dv)) {
    case 64: return fwd_bytes<64>(p);
    case 128: return fwd_bytes<128>(p);
    default: return fwd_bytes<256>(p);
  }
}

int64_t bwd_smem_bytes(const FwdParams& p, bool want_dE) {
  return head_dim_bucket(p.Dk, p.Dv) <= 64 ? bwd_bytes<64>(p, want_dE)
                                           : bwd_bytes<128>(p, want_dE);
}

// FlashGrads' per-key-tile buffers are sized with one key-tile width for all buckets
static_assert(BwdTiles<64>::kBk == BwdTiles<128>::kBk, "bwd_key_tiles assumes one kBk");

int64_t bwd_key_tiles(const FwdParams& p) {
  return (p.M + BwdTiles<64>::kBk - 1) / BwdTiles<64>::kBk;
}

void fwd(const FwdParams& p, Dtype dt, cudaStream_t stream) {
  if (p.B * p.H * p.N == 0) return;
  if (dt == Dtype::Half) return fwd_typed<__half>(p, stream);
  return fwd_typed<__nv_bfloat16>(p, stream);
}

void bwd(const BwdParams& bp, const FlashGrads& g, Dtype dt, cudaStream_t stream) {
  const FwdParams& p = bp.f;
  if (p.B * p.H * (p.N + p.M) == 0) return;
  if (dt == Dtype::Half) return bwd_typed<__half>(bp, g, stream);
  return bwd_typed<__nv_bfloat16>(bp, g, stream);
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet
