# Cluster suites: head, nodes, remote actors and the flexsp commands, in one process and across
# real processes on loopback (label integration).
flexsp_add_test(cluster_services_tests
  SOURCES integration/cluster_services_test.cpp
  DEPS flexsp::actors
  LABELS integration
  TIMEOUT 120)
