# SpaInstall.cmake - spa as an installed library (issue 12), included at the
# end of the top-level CMakeLists.txt once the targets exist.
#
#   cmake --install build --prefix P
#
# installs bin/spa, lib/libspa.so (spa::spa) and lib/libspa.a
# (spa::spa_static), include/spa.h, lib/cmake/spa/ (spaConfig.cmake, its
# version file and the exported targets) and lib/pkgconfig/spa.pc.
#
# The in-tree `spa` target stays the static library the tests and the
# command line link; it is now compiled position-independent so that the
# shared library is linked from the very same objects, without a second
# compilation.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set_target_properties(spa PROPERTIES POSITION_INDEPENDENT_CODE ON)

# The include folder: the source tree while building, include/ once installed.
set_property(TARGET spa PROPERTY INTERFACE_INCLUDE_DIRECTORIES
             $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>
             $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
set_target_properties(spa PROPERTIES EXPORT_NAME spa_static)

# libspa.so: the same objects. MPI is public (spa.h includes mpi.h); OpenMP,
# OpenBLAS and HDF5 are needed by the library alone.
add_library(spa_shared SHARED $<TARGET_OBJECTS:spa>)
set_target_properties(spa_shared PROPERTIES
  OUTPUT_NAME spa EXPORT_NAME spa
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR})
target_include_directories(spa_shared INTERFACE
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(spa_shared PUBLIC MPI::MPI_C
                      PRIVATE OpenMP::OpenMP_C ${SPA_BLAS_LINK} m)
if(SPA_WITH_HDF5)
  target_compile_definitions(spa_shared INTERFACE SPA_HAVE_HDF5)
  target_link_libraries(spa_shared PRIVATE ${SPA_HDF5_LINK})
endif()
# libpng (spa_write_png): spaConfig.cmake finds it again for libspa.a
if(PNG_FOUND)
  target_link_libraries(spa_shared PRIVATE PNG::PNG)
  set(SPA_WITH_PNG ON)
else()
  set(SPA_WITH_PNG OFF)
endif()
# the Python binding and examples find it beside libspa.a in the build tree
add_library(spa::spa ALIAS spa_shared)

install(TARGETS spa_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS spa_shared spa EXPORT spaTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_SOURCE_DIR}/include/spa.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(SPA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/spa)
install(EXPORT spaTargets NAMESPACE spa:: DESTINATION ${SPA_CMAKE_DIR})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/spaConfig.cmake.in
  ${CMAKE_BINARY_DIR}/spaConfig.cmake INSTALL_DESTINATION ${SPA_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/spaConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/spaConfig.cmake ${CMAKE_BINARY_DIR}/spaConfigVersion.cmake
        DESTINATION ${SPA_CMAKE_DIR})

# pkg-config: relocatable (prefix from the .pc file's own folder). The MPI
# and HDF5 modules are those of the MPI spa was built with.
if(SPA_MPI STREQUAL "mpich")
  set(SPA_PC_MPI mpich)
  set(SPA_PC_HDF5 hdf5-mpich)
else()
  set(SPA_PC_MPI ompi-c)
  set(SPA_PC_HDF5 hdf5-openmpi)
endif()
set(SPA_PC_REQUIRES_PRIVATE openblas)
if(SPA_WITH_HDF5)
  string(APPEND SPA_PC_REQUIRES_PRIVATE " ${SPA_PC_HDF5}")
endif()
if(PNG_FOUND)
  string(APPEND SPA_PC_REQUIRES_PRIVATE " libpng")
endif()
file(RELATIVE_PATH SPA_PC_UP /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" SPA_PC_UP "${SPA_PC_UP}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/spa.pc.in ${CMAKE_BINARY_DIR}/spa.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/spa.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
