// The panel product for AVX2 + FMA: 8 floats per vector, 32-column panels, 2 rows at a time.
// setup.py compiles this file, by its name, with ATen's AVX2 flags; it runs only where
// at::get_cpu_capability() says AVX2.
#ifndef __AVX2__
#error "panel_avx2.cpp must be compiled with -mavx2 -mfma -mf16c (setup.py adds them)"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "panel_kernels.h"
