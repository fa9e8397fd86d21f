# Build support for ROS 2 from PyPI wheels (ros-* packages installed into a Python venv).
#
# Include right after project(). Fixes two problems of building against the wheels:
#  1. (any route) The wheels' exported targets (<pkg>::<pkg>__rosidl_generator_py) carry the
#     wheel builder's include paths (/opt/python/cpXY-cpXY/include/pythonX.Y and its
#     .../site-packages/numpy/_core/include), which do not exist here, so CMake refuses to
#     generate ("Imported target ... includes non-existent path"). At the end of configure
#     those two paths are replaced with this interpreter's Python and NumPy include dirs.
#     Installed files are not touched. Acts only where such a path is found: on a real ROS 2
#     install (colcon build against /opt/ros/<distro>) nothing happens; with the wheels standing
#     in for /opt/ros (test/colcon) `colcon build` needs no extra flag.
#  2. (pip route: the Python interpreter CMake finds runs in a prefix that itself holds the
#     ament index of ament_cmake, i.e. `pip install --no-build-isolation .` in the venv of the
#     wheels) The ament index is read from the ENVIRONMENT variable AMENT_PREFIX_PATH (and
#     packages are found through CMAKE_PREFIX_PATH): the venv prefix is prepended to both.
#     The same as 1. applies the other way round to this package's own generated
#     <pkg>__rosidl_generator_py target: its exported interface would carry this machine's
#     Python/NumPy include dirs, which CMake rejects outright when the venv lies inside the
#     source tree ("... which is prefixed in the source directory", .venv/ at the repository
#     root). They are wrapped in $<BUILD_INTERFACE:...>: used for the build, not exported.

# --- pitfall 1, any route: the wheels' exported targets, fixed at the end of configure ------------
# Acts only on a target that has one of the wheel builder's paths (absent on this machine); on a
# real ROS 2 install there is none and nothing happens. Also reached by colcon builds against the
# wheels standing in for /opt/ros (test/colcon: the interpreter there is not the venv's).
function(_csr_fix_wheel_include_dirs_in dir)
  get_property(_targets DIRECTORY "${dir}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_incs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _incs)
      continue()
    endif()
    set(_new "")
    set(_changed FALSE)
    foreach(_inc IN LISTS _incs)
      if(NOT EXISTS "${_inc}"
          AND _inc MATCHES "^/opt/python/cp[0-9]+-cp[0-9]+[^/]*/include/python[0-9.]+$")
        _csr_find_python_dev()
        list(APPEND _new ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(NOT EXISTS "${_inc}"
          AND _inc MATCHES "^/opt/python/.*/site-packages/numpy/(_core|core)/include$")
        _csr_find_python_dev()
        list(APPEND _new ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _new "${_inc}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new)
      set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
    endif()
  endforeach()
  if(CSR_ROS_PIP_ROUTE)
    _csr_build_interface_only_python_includes("${dir}")
  endif()
  get_property(_subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(_sub IN LISTS _subdirs)
    _csr_fix_wheel_include_dirs_in("${_sub}")
  endforeach()
endfunction()

# Python's and NumPy's include dirs (same settings as rosidl_generator_py, so both find the same
# interpreter); a macro: the variables land in the caller's scope.
macro(_csr_find_python_dev)
  if(NOT Python3_INCLUDE_DIRS OR NOT Python3_NumPy_INCLUDE_DIRS)
    cmake_policy(SET CMP0094 NEW)
    set(Python3_FIND_UNVERSIONED_NAMES FIRST)
    find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  endif()
endmacro()

# Pip route: this package's own generated targets must not export this machine's Python/NumPy
# include dirs (see above).
function(_csr_build_interface_only_python_includes dir)
  get_property(_own_targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  set(_py_incs ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
  foreach(_t IN LISTS _own_targets)
    get_target_property(_incs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _incs)
      continue()
    endif()
    set(_new "")
    foreach(_inc IN LISTS _incs)
      if(_inc IN_LIST _py_incs)
        list(APPEND _new "$<BUILD_INTERFACE:${_inc}>")
      else()
        list(APPEND _new "${_inc}")
      endif()
    endforeach()
    set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new}")
  endforeach()
endfunction()

function(_csr_fix_wheel_include_dirs)
  _csr_fix_wheel_include_dirs_in("${CMAKE_SOURCE_DIR}")
endfunction()

# Runs once all find_package() calls of the project are done (end of the top directory).
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _csr_fix_wheel_include_dirs)

# --- the pip route only: is the interpreter CMake finds a venv holding the ROS 2 wheels? ------
set(CSR_ROS_PIP_ROUTE FALSE)
find_package(Python3 REQUIRED COMPONENTS Interpreter)
execute_process(
  COMMAND "${Python3_EXECUTABLE}" -c "import sys; print(sys.prefix, end='')"
  OUTPUT_VARIABLE _csr_py_prefix
  RESULT_VARIABLE _csr_py_rc)
if(NOT _csr_py_rc EQUAL 0
    OR NOT EXISTS "${_csr_py_prefix}/share/ament_index/resource_index/packages/ament_cmake")
  return()  # not the wheel route: leave the ROS environment as it is
endif()
message(STATUS "csr_ros: building against ROS 2 wheels in ${_csr_py_prefix}")
set(CSR_ROS_PIP_ROUTE TRUE)

# --- pitfall 2: make the venv prefix visible to find_package() and to the ament index ------
list(PREPEND CMAKE_PREFIX_PATH "${_csr_py_prefix}")
if(DEFINED ENV{AMENT_PREFIX_PATH} AND NOT "$ENV{AMENT_PREFIX_PATH}" STREQUAL "")
  set(ENV{AMENT_PREFIX_PATH} "${_csr_py_prefix}:$ENV{AMENT_PREFIX_PATH}")
else()
  set(ENV{AMENT_PREFIX_PATH} "${_csr_py_prefix}")
endif()
_csr_find_python_dev()
