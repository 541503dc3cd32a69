// gated_kernels::_autocast_weight: a float32 weight cast through autocast's own cache of weight
// casts (at::autocast::cached_cast), the cache torch.nn's products read under torch.autocast.
// Inside one autocast region a leaf float32 weight that requires grad is then cast once, however
// many steps call it, and the gradients of all steps reach it through that one cast; a cast per
// call costs a decoder loop a read of the float32 weights and a write of the bfloat16 ones each
// step (LSTMCell, B=8, H=1024 under CPU bfloat16 autocast, 16 steps in one region: ours
// 0.59x-0.71x torch.nn before, AMD EPYC Zen 4, 2 threads). Registered for
// CompositeImplicitAutograd: the cast inside records autograd as any other cast does.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace gated_kernels {
namespace {

at::Tensor autocast_weight(const at::Tensor& weight, at::ScalarType dtype) {
  return at::autocast::cached_cast(dtype, weight, weight.device().type());
}

}  // namespace

TORCH_LIBRARY_IMPL(gated_kernels, CompositeImplicitAutograd, m) {
  m.impl("_autocast_weight", &autocast_weight);
}

}  // namespace gated_kernels
