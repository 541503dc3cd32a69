// The pointwise passes for AVX-512: 16 floats per vector; float sigmoid and tanh inline (see
// vsigmoid in pointwise_kernels.h), double through Sleef's exp. setup.py compiles this file, by
// its name, with ATen's AVX512 flags (-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma); it
// runs only where
// at::get_cpu_capability() says AVX512.
#ifndef __AVX512F__
#error "pointwise_avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "pointwise_table.h"

GATED_KERNELS_INSTANTIATE_POINTWISE()
