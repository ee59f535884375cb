#include "group_flags.h"

#include <utility>

#include "dtrain/common/error.h"
#include "flag_checks.h"

namespace dtrain::app {
namespace {
// A year: longer is a mistake, and would overflow a deadline in nanoseconds far sooner.
constexpr double kMaxTimeoutSeconds = 365 * 24 * 3600;
}  // namespace

void GroupFlags::add_to(CLI::App& app) {
  app.add_option("--rendezvous", rendezvous,
                 "Where ranks meet: file:///shared/dir or redis://host:port "
                 "(default $DTRAIN_RENDEZVOUS)");
  app.add_option("--rank", rank, "This process's rank (default: from the launcher's environment)");
  app.add_option("--world-size", size,
                 "Number of ranks (default: from the launcher's environment)");
  app.add_option("--host", host,
                 "Address to bind and advertise (default $DTRAIN_HOST, else hostname)");
  app.add_option("--iface", iface, "Network interface to bind when --host is not given");
  // Not offered (hidden): ranks connect over TCP. Kept so that a script passing --transport tcp
  // still works and one asking for anything else is told why not.
  app.add_option("--transport", transport)->group("")->each([](const std::string& value) {
    if (value == "tcp") return;
    throw CLI::ValidationError(
        "--transport", "'" + value +
                           "' is not supported: dtrain connects its ranks over TCP only (Gloo's "
                           "ibverbs transport refuses the unbound buffers every group operation "
                           "uses); drop --transport, and pick the network with --host or --iface");
  });
  app.add_option("--run-id", run_id,
                 "Job id shared by all ranks (default $DTRAIN_RUN_ID, else the "
                 "launcher's job id)");
  app.add_option("--timeout", timeout_s,
                 "Seconds any wait may block before it fails naming the "
                 "silent ranks")
      ->check(positive_number(kMaxTimeoutSeconds));
}

comm::GroupOptions GroupFlags::resolve() const {
  comm::GroupOptions o;
  o.rendezvous = rendezvous;
  if (rank >= 0) o.rank = rank;
  if (size >= 0 || rank >= 0) {
    DT_ENFORCE(rank >= 0 && size >= 1, "--rank and --world-size go together (got --rank ", rank,
               ", --world-size ", size, ")");
    o.size = size;
  }
  o.host = host;
  o.iface = iface;
  o.run_id = run_id;
  o.timeout = comm::Millis(static_cast<int64_t>(timeout_s * 1000));
  return comm::with_environment(std::move(o));
}

}  // namespace dtrain::app
