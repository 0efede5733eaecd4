// The emulated-CUDA library as the Python module itnet_ext._C_emu (built with
// ITNET_EMULATE=1, see setup.py); importing it registers torch.ops.itnet_emu.
#include <Python.h>

PyMODINIT_FUNC PyInit__C_emu(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_emu", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
