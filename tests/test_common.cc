#include <gtest/gtest.h>
#include <stdlib.h>

#include "dtrain/collective/types.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"

namespace dtrain {
namespace {

TEST(Error, EnforceNamesConditionAndPlace) {
  try {
    int n = -3;
    DT_ENFORCE(n >= 0, "count must be non-negative, got ", n);
    FAIL();
  } catch (const InvalidArgument& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("got -3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("n >= 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_common.cc"), std::string::npos) << msg;
  }
}

TEST(Rendezvous, ParsesUrls) {
  auto f = comm::RendezvousUrl::parse("file:///tmp/x/");
  EXPECT_EQ(f.kind, comm::RendezvousUrl::Kind::kFile);
  EXPECT_EQ(f.path, "/tmp/x");
  auto r = comm::RendezvousUrl::parse("redis://10.0.0.5:7000");
  EXPECT_EQ(r.kind, comm::RendezvousUrl::Kind::kRedis);
  EXPECT_EQ(r.host, "10.0.0.5");
  EXPECT_EQ(r.port, 7000);
  EXPECT_EQ(comm::RendezvousUrl::parse("redis://h").port, 6379);
  EXPECT_THROW(comm::RendezvousUrl::parse("tcp://h:1"), InvalidArgument);
}

class EnvGuard {
 public:
  EnvGuard() : EnvGuard(std::vector<std::pair<const char*, const char*>>{}) {}
  explicit EnvGuard(std::vector<std::pair<const char*, const char*>> vars) {
    for (auto* name : kAll) ::unsetenv(name);
    for (auto& [k, v] : vars) ::setenv(k, v, 1);
  }
  ~EnvGuard() {
    for (auto* name : kAll) ::unsetenv(name);
  }
  static constexpr const char* kAll[] = {
      "DTRAIN_RANK",          "DTRAIN_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
      "OMPI_COMM_WORLD_SIZE", "PMI_RANK",          "PMI_SIZE",
      "SLURM_PROCID",         "SLURM_NTASKS",      "DTRAIN_RUN_ID",
      "RANK",                 "WORLD_SIZE",        "LOCAL_RANK",
      "TORCHELASTIC_RUN_ID",  "SLURM_JOB_ID",      "OMPI_MCA_ess_base_jobid"};
};

TEST(LaunchEnv, PrecedenceAndErrors) {
  {
    EnvGuard g;
    EXPECT_FALSE(comm::detect_launch_env());
  }
  {
    EnvGuard g(
        {{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
    auto e = comm::detect_launch_env();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->rank, 1);  // PMI before SLURM
    EXPECT_EQ(e->size, 2);
  }
  {
    EnvGuard g({{"DTRAIN_RANK", "2"},
                {"DTRAIN_WORLD_SIZE", "4"},
                {"OMPI_COMM_WORLD_RANK", "0"},
                {"OMPI_COMM_WORLD_SIZE", "9"}});
    auto e = comm::detect_launch_env();
    EXPECT_EQ(e->rank, 2);
    EXPECT_EQ(e->size, 4);
    EXPECT_EQ(e->source, "DTRAIN_RANK/DTRAIN_WORLD_SIZE");
  }
  {
    EnvGuard g({{"DTRAIN_RANK", "x1"}, {"DTRAIN_WORLD_SIZE", "4"}});
    EXPECT_THROW(comm::detect_launch_env(), InvalidArgument);
  }
  {
    EnvGuard g({{"DTRAIN_RANK", "1"}, {"DTRAIN_RUN_ID", "x"}});
    EXPECT_THROW(comm::detect_launch_env(), InvalidArgument);
  }
}

// torchrun's RANK/WORLD_SIZE count only in a torchrun worker; its run id unless "none".
TEST(LaunchEnv, TorchrunWorkers) {
  {
    EnvGuard g({{"RANK", "1"}, {"WORLD_SIZE", "4"}});  // not torchrun: generic names, ignored
    EXPECT_FALSE(comm::detect_launch_env());
  }
  {
    EnvGuard g({{"RANK", "1"}, {"LOCAL_RANK", "1"}, {"TORCHELASTIC_RUN_ID", "none"}});
    EXPECT_FALSE(comm::detect_launch_env());  // half a pair of generic names: not an error
    EXPECT_EQ(comm::detect_run_id(), "dtrain");
  }
  {
    EnvGuard g({{"RANK", "3"},
                {"WORLD_SIZE", "4"},
                {"LOCAL_RANK", "1"},
                {"TORCHELASTIC_RUN_ID", "job7"},
                {"SLURM_PROCID", "0"},
                {"SLURM_NTASKS", "2"}});
    auto e = comm::detect_launch_env();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->rank, 3);  // torchrun's pair before Slurm's
    EXPECT_EQ(e->size, 4);
    EXPECT_EQ(e->source, "RANK/WORLD_SIZE");
    EXPECT_EQ(comm::detect_run_id(), "job7");
  }
  {
    EnvGuard g({{"DTRAIN_RANK", "0"},
                {"DTRAIN_WORLD_SIZE", "2"},
                {"RANK", "3"},
                {"WORLD_SIZE", "4"},
                {"LOCAL_RANK", "1"},
                {"TORCHELASTIC_RUN_ID", "job7"}});
    EXPECT_EQ(comm::detect_launch_env()->source, "DTRAIN_RANK/DTRAIN_WORLD_SIZE");
  }
}

TEST(Types, ParseNamesListChoices) {
  EXPECT_EQ(collective::parse_reduce_op("max"), collective::ReduceOp::kMax);
  try {
    collective::parse_reduce_op("prod");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("sum, avg, min, max"), std::string::npos);
  }
  EXPECT_EQ(collective::parse_data_type("float64"), collective::DataType::kFloat64);
  EXPECT_THROW(collective::parse_data_type("bf16"), InvalidArgument);
}

}  // namespace
}  // namespace dtrain
