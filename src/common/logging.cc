#include "dtrain/common/logging.h"

#include <cstdlib>

#include "dtrain/common/error.h"

namespace dtrain::log {

void init(int rank, int size) {
  std::string who = rank < 0 ? "launcher" : detail::concat("rank ", rank, "/", size);
  spdlog::set_pattern("[%H:%M:%S.%e] [" + who + "] [%^%l%$] %v");
  if (const char* lvl = std::getenv("DTRAIN_LOG_LEVEL")) {
    auto level = spdlog::level::from_str(lvl);
    if (level == spdlog::level::off && std::string(lvl) != "off") {
      throw InvalidArgument(detail::concat("DTRAIN_LOG_LEVEL=", lvl,
                                           " is not one of trace, debug, info, warn, error, off"));
    }
    spdlog::set_level(level);
  }
}

}  // namespace dtrain::log
