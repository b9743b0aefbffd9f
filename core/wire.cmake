# Cluster wire format (Cap'n Proto schemas compiled at build time) and the Asio transport.
# Included from core/CMakeLists.txt after the core component is defined.
set(CAPNPC_SRC_PREFIX ${CMAKE_CURRENT_SOURCE_DIR}/schema)
set(CAPNPC_OUTPUT_DIR ${CMAKE_CURRENT_BINARY_DIR}/generated/flexsp/core/wire)
file(MAKE_DIRECTORY ${CAPNPC_OUTPUT_DIR})
capnp_generate_cpp(flexsp_wire_sources flexsp_wire_headers schema/wire.capnp)
unset(CAPNPC_SRC_PREFIX)
unset(CAPNPC_OUTPUT_DIR)

target_sources(flexsp_core PRIVATE
  ${flexsp_wire_sources}
  src/wire/frame.cpp
  src/wire/envelope.cpp
  src/wire/hmac.cpp
  src/net/transport.cpp)
target_include_directories(flexsp_core PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_BINARY_DIR}/generated>)
target_link_libraries(flexsp_core PUBLIC CapnProto::capnp PRIVATE flexsp_dep::asio)

if(FLEXSP_BUILD_TESTS)
  flexsp_add_test(core_wire_unit_tests
    SOURCES
      ${PROJECT_SOURCE_DIR}/tests/unit/core/wire_frame_test.cpp
      ${PROJECT_SOURCE_DIR}/tests/unit/core/wire_hmac_test.cpp
      ${PROJECT_SOURCE_DIR}/tests/unit/core/wire_transport_test.cpp
    DEPS flexsp::core
    LABELS unit)
endif()

# The fuzz corpus replayed through the same entry point with any compiler (CI runs gcc).
if(FLEXSP_BUILD_TESTS)
  add_executable(flexsp_fuzz_frame_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/frame_fuzz.cpp
    ${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.cpp)
  target_compile_options(flexsp_fuzz_frame_replay PRIVATE ${FLEXSP_CXX_WARNINGS})
  target_link_libraries(flexsp_fuzz_frame_replay PRIVATE flexsp::core)
  add_test(NAME fuzz_frame_corpus_replay
           COMMAND flexsp_fuzz_frame_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/frame)
  set_tests_properties(fuzz_frame_corpus_replay PROPERTIES LABELS unit TIMEOUT 60)
endif()

# libFuzzer target for the frame decoder and envelope checks (clang only: -fsanitize=fuzzer).
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang" AND FLEXSP_BUILD_TESTS)
  # The decoder's sources are compiled into the fuzzer itself so that they carry coverage.
  add_executable(flexsp_fuzz_frame ${PROJECT_SOURCE_DIR}/tests/fuzz/frame_fuzz.cpp
    src/wire/frame.cpp src/wire/envelope.cpp ${flexsp_wire_sources})
  target_include_directories(flexsp_fuzz_frame PRIVATE include ${CMAKE_CURRENT_BINARY_DIR}/generated)
  target_compile_options(flexsp_fuzz_frame PRIVATE -fsanitize=fuzzer,address,undefined ${FLEXSP_CXX_WARNINGS})
  target_link_options(flexsp_fuzz_frame PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(flexsp_fuzz_frame PRIVATE CapnProto::capnp spdlog::spdlog)
  # Runs 20 s on a scratch copy of the corpus so that the source tree is never written.
  set(_fuzz_dir ${CMAKE_CURRENT_BINARY_DIR}/fuzz_frame_corpus)
  add_test(NAME fuzz_frame_decoder
           COMMAND sh -c "rm -rf '${_fuzz_dir}' && mkdir -p '${_fuzz_dir}' && cp '${PROJECT_SOURCE_DIR}'/tests/fuzz/corpus/frame/* '${_fuzz_dir}' && '$<TARGET_FILE:flexsp_fuzz_frame>' -max_total_time=20 -max_len=4096 '${_fuzz_dir}'")
  set_tests_properties(fuzz_frame_decoder PROPERTIES LABELS unit TIMEOUT 120)
endif()
