# flexsp_add_component(): one library target per component, plus that component's tests.
#
#   flexsp_add_component(<name>
#     SOURCES <src/...cpp ...>                  # relative to the component folder
#     [PUBLIC_DEPS <targets>] [PRIVATE_DEPS <targets>]
#     [UNIT_TESTS <files>]                      # relative to tests/unit/<name>/
#     [TEST_DEPS <targets>])                    # extra libraries for the test binary
#
# Makes target flexsp_<name> with alias flexsp::<name>; public headers under
# <name>/include/flexsp/<name>/. Unit tests build into flexsp_<name>_unit_tests and are
# registered with ctest (label `unit`), one ctest entry per GoogleTest case.
function(flexsp_add_component name)
  cmake_parse_arguments(arg "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS;UNIT_TESTS;TEST_DEPS" ${ARGN})
  set(target flexsp_${name})
  add_library(${target} STATIC ${arg_SOURCES})
  add_library(flexsp::${name} ALIAS ${target})
  target_include_directories(${target}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${FLEXSP_CXX_WARNINGS}>)
  target_link_libraries(${target} PUBLIC ${arg_PUBLIC_DEPS} PRIVATE ${arg_PRIVATE_DEPS})
  if(arg_UNIT_TESTS AND FLEXSP_BUILD_TESTS)
    list(TRANSFORM arg_UNIT_TESTS PREPEND ${PROJECT_SOURCE_DIR}/tests/unit/${name}/)
    flexsp_add_test(${name}_unit_tests
      SOURCES ${arg_UNIT_TESTS}
      DEPS ${target} ${arg_TEST_DEPS}
      LABELS unit)
  endif()
endfunction()

# flexsp_add_test(<name> SOURCES <files> DEPS <targets> LABELS <labels> [TIMEOUT s] [PER_BINARY])
# A GoogleTest binary flexsp_<name>. Each test case becomes one ctest entry unless PER_BINARY
# is given (then the whole binary is one entry: for suites that share expensive setup).
function(flexsp_add_test name)
  cmake_parse_arguments(arg "PER_BINARY" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 300)
  endif()
  set(target flexsp_${name})
  add_executable(${target} ${arg_SOURCES})
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${FLEXSP_CXX_WARNINGS}>)
  target_link_libraries(${target} PRIVATE ${arg_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_definitions(${target} PRIVATE
    FLEXSP_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    FLEXSP_SHARED_DATA_DIR="${PROJECT_SOURCE_DIR}/../shared/data"
    FLEXSP_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(arg_PER_BINARY)
    add_test(NAME ${name} COMMAND ${target})
    set_tests_properties(${name} PROPERTIES LABELS "${arg_LABELS}" TIMEOUT ${arg_TIMEOUT})
  else()
    gtest_discover_tests(${target}
      DISCOVERY_TIMEOUT 60
      PROPERTIES LABELS "${arg_LABELS}" TIMEOUT ${arg_TIMEOUT})
  endif()
endfunction()

# flexsp_add_benchmark(<name> SOURCES <files> DEPS <targets> [ARGS <args>])
# A benchmark binary flexsp_bench_<name>, registered with ctest under the `perf` label so it
# runs only with `ctest -L perf`.
function(flexsp_add_benchmark name)
  cmake_parse_arguments(arg "" "TIMEOUT" "SOURCES;DEPS;ARGS" ${ARGN})
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 1800)
  endif()
  set(target flexsp_bench_${name})
  add_executable(${target} ${arg_SOURCES})
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${FLEXSP_CXX_WARNINGS}>)
  target_link_libraries(${target} PRIVATE ${arg_DEPS})
  target_compile_definitions(${target} PRIVATE
    FLEXSP_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    FLEXSP_SHARED_DATA_DIR="${PROJECT_SOURCE_DIR}/../shared/data")
  add_test(NAME bench_${name} COMMAND ${target} ${arg_ARGS})
  set_tests_properties(bench_${name} PROPERTIES LABELS perf TIMEOUT ${arg_TIMEOUT})
endfunction()
