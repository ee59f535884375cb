# data/ layer: IDX reader, Fashion-MNIST, epoch sharding, synthetic datasets.
target_sources(dtrain_core PRIVATE
  src/data/idx.cc
  src/data/fashion_mnist.cc
  src/data/shard.cc
  src/data/synthetic.cc
)
if(BUILD_TESTING)
  dtrain_test(test_data tests/test_data.cc)
  target_link_libraries(test_data PRIVATE ZLIB::ZLIB)  # the test writes gzip files itself
endif()
