// The Python module gated_kernels._C. Importing it runs the static TORCH_LIBRARY_IMPL blocks of
// lstm.cpp and gru.cpp, which register the CPU kernels; the op schemas themselves are declared in
// Python (gated_kernels/ops.py) so that they exist where this extension is not built.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "CPU kernels of gated_kernels (registered with the dispatcher)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}
