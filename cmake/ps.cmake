# The parameter server (ps/): sharded key ranges over ZeroMQ, the workers' client, the shard
# directory in the rendezvous store.
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
target_sources(dtrain_core PRIVATE
  src/ps/keys.cc
  src/ps/update_rule.cc
  src/ps/consistency.cc
  src/ps/wire.cc
  src/ps/checkpoint.cc
  src/ps/server.cc
  src/ps/client.cc
  src/ps/directory.cc
)
# PRIVATE: zmq.hpp appears in no public header.
target_link_libraries(dtrain_core PRIVATE PkgConfig::ZMQ)
if(BUILD_TESTING)
  dtrain_test(test_ps tests/test_ps.cc)
  # Internal headers (ps/wire.h) and raw sockets for the malformed-frame test.
  target_include_directories(test_ps PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(test_ps PRIVATE PkgConfig::ZMQ)
endif()
