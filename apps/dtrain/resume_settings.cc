#include "resume_settings.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dtrain/common/error.h"

namespace dtrain::app {
namespace {

// How a taken value reads on a command line.
template <typename T>
std::string flag_text(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
    return out;
  } else {
    return nlohmann::json(v).dump();
  }
}

}  // namespace

std::vector<std::string> take_settings_from_run(const CLI::App& cmd, train::TrainOptions& o,
                                                int& workers) {
  std::vector<std::string> taken;
  if (o.resume.empty()) return taken;
  const std::string path = o.resume + "/config.json";
  if (!std::filesystem::exists(path)) return taken;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  DT_ENFORCE(!j.is_discarded() && j.is_object(), "--resume ", o.resume, ": ", path,
             " is not a JSON object (the run's settings); give them on the command line, or "
             "repair or remove the file");

  auto take = [&](const char* flag, const char* key, auto& field) {
    if (cmd.count(flag) > 0 || !j.contains(key) || j.at(key).is_null()) return;
    using T = std::decay_t<decltype(field)>;
    try {
      field = j.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      DT_THROW(InvalidArgument, "--resume ", o.resume, ": ", path, " has ", key, " = ",
               j.at(key).dump(), ", not a value of ", flag);
    }
    taken.push_back(std::string(flag) + " " + flag_text(field));
  };
  take("--workers", "workers", workers);
  take("--model", "model", o.model);
  take("--hidden", "hidden", o.hidden);
  take("--train-subset", "train_subset", o.train_subset);
  take("--test-subset", "test_subset", o.test_subset);
  take("--fields", "fields", o.fields);
  take("--vocab", "vocab", o.vocab);
  take("--embed-dim", "embed_dim", o.embed_dim);
  take("--epochs", "epochs", o.epochs);
  take("--batch-size", "batch_size", o.batch_size);
  take("--accumulate", "accumulate", o.accumulate);
  take("--lr", "lr", o.lr);
  take("--momentum", "momentum", o.momentum);
  take("--optimizer", "optimizer", o.optimizer);
  take("--seed", "seed", o.seed);
  take("--max-steps", "max_steps", o.max_steps);
  take("--algorithm", "algorithm", o.algorithm);
  take("--reduce", "reduce", o.reduce);
  // The averaging reducer belongs to Local SGD only (config.json records it as --reduce's spec
  // for every run).
  if (o.algorithm.rfind("local", 0) == 0) take("--average", "average", o.average);
  take("--schedule", "schedule", o.schedule);
  take("--on-nonfinite", "on_nonfinite", o.on_nonfinite);
  take("--checkpoint-every", "checkpoint_every", o.checkpoint_every);
  take("--eval-every", "eval_every", o.eval_every);
  take("--target-accuracy", "target_accuracy", o.target_accuracy);
  take("--threads", "threads", o.threads);
  take("--servers", "servers", o.servers);
  take("--n-fetch", "n_fetch", o.n_fetch);
  take("--n-push", "n_push", o.n_push);
  take("--consistency", "consistency", o.consistency);
  take("--server-update", "server_update", o.server_update);
  take("--warm-start", "warm_start", o.warm_start);
  return taken;
}

}  // namespace dtrain::app
