// The pointwise passes for AVX2 + FMA: 8 floats per vector, Sleef's exp / tanh (expf8_u10,
// tanhf8_u10). setup.py compiles this file, by its name, with ATen's AVX2 flags
// (-mavx2 -mfma -mf16c); it runs only where at::get_cpu_capability() says AVX2.
#ifndef __AVX2__
#error "pointwise_avx2.cpp must be compiled with -mavx2 -mfma -mf16c (setup.py adds them)"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "pointwise_table.h"

GATED_KERNELS_INSTANTIATE_POINTWISE()
