// Makes `import itnet_ext._C` load this shared library, whose static
// initializers register the ops with the dispatcher. No Python bindings: every
// entry point is a torch.ops.itnet.* operator.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
