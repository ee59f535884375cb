// Fuzzes the parsers of `dtrain report` (apps/dtrain/report.cc): metrics.jsonl and config.json.
// Input: u8 which (bit 0: config.json, else metrics.jsonl), then the file's text.
#include <sstream>
#include <string>

#include "dtrain/common/error.h"
#include "fuzz_input.h"
#include "report.h"

using namespace dtrain;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const bool config = in.take<uint8_t>() & 1;
  const auto bytes = in.rest();
  std::istringstream text(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  try {
    if (config) {
      app::RunSummary s;
      app::parse_config(text, "run/config.json", s);
    } else {
      app::RunData run;
      app::parse_metrics(text, "run/metrics.jsonl", run);
      // What load_run and the plots do with the records next.
      for (const auto& e : run.epochs) {
        for (const auto& [phase, seconds] : e.phase_s) (void)(phase.size() + seconds);
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
