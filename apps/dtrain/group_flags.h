// Command-line flags that say how a process joins its group, shared by every subcommand.
#pragma once

#include <CLI/CLI.hpp>

#include "dtrain/comm/group.h"

namespace dtrain::app {

struct GroupFlags {
  std::string rendezvous;  // default: $DTRAIN_RENDEZVOUS
  int rank = -1;           // default: launcher environment
  int size = -1;
  std::string host;               // default: $DTRAIN_HOST
  std::string iface;              // default: $DTRAIN_IFACE
  std::string transport = "tcp";  // hidden flag: only tcp is accepted
  std::string run_id;
  double timeout_s = 60;

  void add_to(CLI::App& app);
  comm::GroupOptions resolve() const;
};

}  // namespace dtrain::app
