# Cluster suites: head, nodes, remote actors and the flexsp commands, in one process and across
# real processes on loopback (label integration).
flexsp_add_test(cluster_services_tests
  SOURCES integration/cluster_services_test.cpp
  DEPS flexsp::actors flexsp_test_probe
  LABELS integration
  TIMEOUT 120)

flexsp_add_test(cluster_process_tests
  SOURCES integration/cluster_process_test.cpp
  DEPS flexsp::actors nlohmann_json::nlohmann_json
  LABELS integration
  TIMEOUT 300)
add_dependencies(flexsp_cluster_process_tests flexsp)
target_compile_definitions(flexsp_cluster_process_tests PRIVATE FLEXSP_CLI_PATH="$<TARGET_FILE:flexsp>")
