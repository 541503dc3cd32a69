// The panel product for AVX-512: 16 floats per vector, 64-column panels, 4 rows at a time.
// setup.py compiles this file, by its name, with ATen's AVX512 flags; it runs only where
// at::get_cpu_capability() says AVX512.
#ifndef __AVX512F__
#error "panel_avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "panel_kernels.h"
