# The Python package (python/dtrain): dtrain's reducers as PyTorch DDP comm hooks.
# DTRAIN_WITH_PYTHON: ON (required), OFF, or AUTO (built when pybind11 and Python are found).
# Built against dtrain_core only (position-independent static libraries): no LibTorch link.
set(DTRAIN_WITH_PYTHON "AUTO" CACHE STRING "Build the Python package: ON, OFF or AUTO")
# Debian's interpreter, the one python3-torch is installed for (not a pyenv or venv first on PATH).
set(DTRAIN_PYTHON "/usr/bin/python3" CACHE FILEPATH "The Python the package is built for")

if(DTRAIN_WITH_PYTHON STREQUAL "ON" AND (DTRAIN_SANITIZE OR DTRAIN_FUZZ))
  message(FATAL_ERROR "DTRAIN_WITH_PYTHON=ON: the Python package is not built with sanitizers "
                      "or fuzzing (a Python interpreter does not load their runtimes)")
endif()
if(NOT DTRAIN_WITH_PYTHON STREQUAL "OFF" AND NOT DTRAIN_SANITIZE AND NOT DTRAIN_FUZZ)
  set(Python3_EXECUTABLE ${DTRAIN_PYTHON})
  if(DTRAIN_WITH_PYTHON STREQUAL "ON")
    find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module)
    find_package(pybind11 CONFIG REQUIRED)
  else()
    find_package(Python3 QUIET COMPONENTS Interpreter Development.Module)
    find_package(pybind11 CONFIG QUIET)
  endif()
endif()

if(TARGET pybind11::module AND Python3_FOUND)
  message(STATUS "dtrain: building the Python package for ${Python3_EXECUTABLE}")
  set(DTRAIN_PYTHON_DIR ${CMAKE_BINARY_DIR}/python)
  # The package in the build tree (PYTHONPATH=build/python), its .py files refreshed every build.
  pybind11_add_module(_dtrain MODULE python/_dtrain.cc)
  target_link_libraries(_dtrain PRIVATE dtrain_core)
  set_target_properties(_dtrain PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${DTRAIN_PYTHON_DIR}/dtrain)
  file(GLOB dtrain_py_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/python/dtrain/*.py)
  set(dtrain_py_copies)
  foreach(py ${dtrain_py_sources})
    get_filename_component(name ${py} NAME)
    add_custom_command(OUTPUT ${DTRAIN_PYTHON_DIR}/dtrain/${name}
                       COMMAND ${CMAKE_COMMAND} -E copy ${py} ${DTRAIN_PYTHON_DIR}/dtrain/${name}
                       DEPENDS ${py})
    list(APPEND dtrain_py_copies ${DTRAIN_PYTHON_DIR}/dtrain/${name})
  endforeach()
  add_custom_target(dtrain_python ALL DEPENDS ${dtrain_py_copies} _dtrain)
  # Installed where Debian's python3 looks under the default prefix /usr/local
  # (/usr/local/lib/python3.11/dist-packages); under another prefix, PYTHONPATH names it.
  set(DTRAIN_PYTHON_INSTALL_DIR
      "lib/python${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR}/dist-packages"
      CACHE STRING "Where `cmake --install` puts the dtrain Python package (under the prefix)")
  install(TARGETS _dtrain LIBRARY DESTINATION ${DTRAIN_PYTHON_INSTALL_DIR}/dtrain)
  install(FILES ${dtrain_py_sources} DESTINATION ${DTRAIN_PYTHON_INSTALL_DIR}/dtrain)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import torch" RESULT_VARIABLE no_torch
                  OUTPUT_QUIET ERROR_QUIET)
  if(no_torch)
    message(STATUS "dtrain: ${Python3_EXECUTABLE} has no torch (python3-torch): the Python "
                   "package's DDP test is not registered")
  endif()
  if(BUILD_TESTING AND NOT no_torch)
    # DDP under torchrun with dtrain's hooks, against DDP's own allreduce (tests/python/).
    add_test(NAME Python.DdpHooks
             COMMAND ${PROJECT_SOURCE_DIR}/tests/python/run_ddp_tests.sh ${Python3_EXECUTABLE}
                     ${DTRAIN_PYTHON_DIR})
    set_tests_properties(Python.DdpHooks PROPERTIES LABELS python TIMEOUT 900)
  endif()
else()
  message(STATUS "dtrain: pybind11 or Python not found; the Python package is not built")
endif()
