# Drop absolute INTERFACE_INCLUDE_DIRECTORIES of imported targets that do not exist on this machine.
#
# Why: the ros-kilted-* message wheels on PyPI ship `export_<pkg>__rosidl_generator_pyExport.cmake` files
# whose include dirs point at the wheel builder's interpreter (/opt/python/cp311-cp311/include/python3.11
# and its numpy headers). rosidl_generator_py links our Python type support against those imported
# targets, and CMake's generate step rejects imported targets with non-existent include dirs.
# Our own targets get the right Python / NumPy include dirs from find_package(Python3 ...), so the stale
# entries can simply be removed. On a regular ROS 2 install every path exists and this changes nothing.
#
# The function runs deferred, at the end of this directory, when all imported targets exist
# (cmake_language(DEFER) needs CMake >= 3.19, DIRECTORY IMPORTED_TARGETS needs >= 3.21).
function(sparseoccvla_strip_stale_imported_includes)
  get_property(_targets DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    set(_dropped "")
    foreach(_dir IN LISTS _dirs)
      if(IS_ABSOLUTE "${_dir}" AND NOT EXISTS "${_dir}")
        list(APPEND _dropped "${_dir}")
      else()
        list(APPEND _kept "${_dir}")
      endif()
    endforeach()
    if(_dropped)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
      message(STATUS "sparseoccvla_msgs: dropped stale include dirs of ${_target}: ${_dropped}")
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" CALL sparseoccvla_strip_stale_imported_includes)
