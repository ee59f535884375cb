// plan/: the MG-WFBP merge rule against hand-computed examples, its limiting cases, predict() on
// fixed groupings, the cost model's fit/lookup/JSON, and measure() on ranks over real Gloo TCP.
//
// The hand examples use binary-exact numbers (alpha = 1, beta = 0.5 per byte, halves and whole
// seconds), so every tau below is exact in double and compared with EXPECT_DOUBLE_EQ.
// Suites are named plan_* so that `ctest -R plan` selects them.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <random>

#include <fmt/format.h>

#include "dtrain/collective/collective.h"
#include "dtrain/plan/cost_model.h"
#include "dtrain/plan/mgwfbp.h"
#include "harness.h"

namespace dtrain::test {
namespace {

using plan::CostModel;
using plan::Layer;
using Groups = std::vector<std::vector<size_t>>;

CostModel line(double alpha, double beta) {
  CostModel c;
  c.alpha_s = alpha;
  c.beta_s_per_byte = beta;
  return c;
}

// Layers in forward order from parallel lists.
std::vector<Layer> make_layers(const std::vector<double>& tb, const std::vector<uint64_t>& bytes) {
  std::vector<Layer> layers;
  for (size_t l = 0; l < tb.size(); ++l) {
    layers.push_back({"layer" + std::to_string(l), bytes[l], tb[l]});
  }
  return layers;
}

Groups per_layer(size_t n) {
  Groups g;
  for (size_t l = n; l-- > 0;) g.push_back({l});
  return g;
}

Groups single(size_t n) {
  Groups g(1);
  for (size_t l = n; l-- > 0;) g[0].push_back(l);
  return g;
}

// ---- merge rule, by hand ----

// alpha = 1, beta = 0.5; tb = [1, 1, 1]; bytes = [2, 2, 2], so tc = 1 + 0.5 * 2 = 2 each.
// ready[l] = tau_b[l] + tb[l]: ready[2] = 0 + 1 = 1, ready[1] = 1 + 1 = 2, ready[0] = 3.
// tau_c[2] = ready[2] = 1.
// l = 2: r = ready[1] = 2. r < tau_c[2] + tc[2] = 3, but tau_c[2] = 1 is not > 2 and
//        r - tau_c[2] = 1 is not < alpha = 1: no merge. tau_c[1] = max(1 + 2, 2) = 3.
// l = 1: r = ready[0] = 3 < tau_c[1] + tc[1] = 5; tau_c[1] = 3 is not > 3, but
//        r - tau_c[1] = 0 < 1: merge 1 into 0. p[0] = 4, tc[1] = 0, tc[0] = 1 + 2 = 3.
//        tau_c[0] = max(3 + 0, 3) = 3.
// predicted = tau_c[0] + tc[0] = 3 + 3 = 6; groups {2}, {1, 0}.
TEST(plan_MergeRule, MergesWhenWaitingCostsLessThanStartup) {
  const auto layers = make_layers({1, 1, 1}, {2, 2, 2});
  const auto p = plan::mgwfbp_plan(layers, line(1, 0.5));
  EXPECT_EQ(p.groups, (Groups{{2}, {1, 0}}));
  EXPECT_DOUBLE_EQ(p.predicted_s, 6);
  // wfbp: {2} 1..3, {1} ready 2, 3..5, {0} ready 3, 5..7 -> 7.
  EXPECT_DOUBLE_EQ(plan::predict(layers, per_layer(3), line(1, 0.5)), 7);
}

// alpha = 1, beta = 0.5; tb = [1, 1, 1, 1]; bytes = [2, 2, 2, 8] -> tc = [2, 2, 2, 5].
// ready[3] = 1, ready[2] = 2, ready[1] = 3, ready[0] = 4. tau_c[3] = 1.
// l = 3: r = 2 < 1 + 5 = 6; tau_c[3] = 1 not > 2; r - tau_c[3] = 1 not < 1: no merge.
//        tau_c[2] = max(1 + 5, 2) = 6.
// l = 2: r = 3 < 6 + 2 = 8 and tau_c[2] = 6 > 3 (not started): merge 2 into 1.
//        p[1] = 4, tc[2] = 0, tc[1] = 1 + 2 = 3. tau_c[1] = max(6 + 0, 3) = 6.
// l = 1: r = 4 < 6 + 3 = 9 and tau_c[1] = 6 > 4: merge 1 into 0.
//        p[0] = 6, tc[1] = 0, tc[0] = 1 + 3 = 4. tau_c[0] = max(6 + 0, 4) = 6.
// predicted = 6 + 4 = 10; groups {3}, {2, 1, 0}.
TEST(plan_MergeRule, MergesLayersWhoseCommunicationHasNotStarted) {
  const auto layers = make_layers({1, 1, 1, 1}, {2, 2, 2, 8});
  const auto p = plan::mgwfbp_plan(layers, line(1, 0.5));
  EXPECT_EQ(p.groups, (Groups{{3}, {2, 1, 0}}));
  EXPECT_DOUBLE_EQ(p.predicted_s, 10);
  // wfbp: {3} 1..6, {2} 6..8, {1} 8..10, {0} 10..12 -> 12.
  // single: ready 4, 14 bytes: 1 + 7 = 8 -> 12.
  EXPECT_DOUBLE_EQ(plan::predict(layers, per_layer(4), line(1, 0.5)), 12);
  EXPECT_DOUBLE_EQ(plan::predict(layers, single(4), line(1, 0.5)), 12);
}

// alpha = 1, beta = 0.5; tb = [0.5, 1]; bytes = [2, 2] -> tc = [2, 2].
// ready[1] = 1, ready[0] = 1.5. tau_c[1] = 1.
// l = 1: r = 1.5 < 1 + 2 = 3; started (tau_c[1] = 1 <= 1.5) but r - tau_c[1] = 0.5 < 1: merge.
//        p[0] = 4, tc[0] = 3, tau_c[0] = max(1 + 0, 1.5) = 1.5.
// predicted = 1.5 + 3 = 4.5 (wfbp: 1..3, 3..5 -> 5).
TEST(plan_MergeRule, WaitsForTheNextLayerWhenStartedJustBefore) {
  const auto layers = make_layers({0.5, 1}, {2, 2});
  const auto p = plan::mgwfbp_plan(layers, line(1, 0.5));
  EXPECT_EQ(p.groups, (Groups{{1, 0}}));
  EXPECT_DOUBLE_EQ(p.predicted_s, 4.5);
  EXPECT_DOUBLE_EQ(plan::predict(layers, per_layer(2), line(1, 0.5)), 5);
}

// alpha = 1, beta = 0.5; tb = [4, 4, 4]; bytes = [2, 2, 2] -> tc = 2.
// ready[2] = 4, ready[1] = 8, ready[0] = 12. tau_c[2] = 4.
// l = 2: r = 8 is not < 4 + 2 = 6: no merge. tau_c[1] = max(6, 8) = 8.
// l = 1: r = 12 is not < 8 + 2 = 10: no merge. tau_c[0] = max(10, 12) = 12.
// predicted = 12 + 2 = 14; one group per layer.
// single: ready 12, 6 bytes: 1 + 3 = 4 -> 16.
TEST(plan_MergeRule, KeepsLayersWhoseCommunicationHidesInBackward) {
  const auto layers = make_layers({4, 4, 4}, {2, 2, 2});
  const auto p = plan::mgwfbp_plan(layers, line(1, 0.5));
  EXPECT_EQ(p.groups, per_layer(3));
  EXPECT_DOUBLE_EQ(p.predicted_s, 14);
  EXPECT_DOUBLE_EQ(plan::predict(layers, per_layer(3), line(1, 0.5)), 14);
  EXPECT_DOUBLE_EQ(plan::predict(layers, single(3), line(1, 0.5)), 16);
}

// With a measured table the start-up a merge saves is what the table says two messages cost
// beyond one: tc(2) + tc(2) - tc(4) = 3 + 3 - 3.5 = 2.5, although the fitted alpha is 0.1.
// tb = [1, 1]; bytes = [2, 2]; table (2 B: 3 s), (4 B: 3.5 s). ready[1] = 1, ready[0] = 2.
// l = 1: r = 2 < 1 + 3 = 4; started (tau_c[1] = 1 <= 2); r - tau_c[1] = 1 < 2.5: merge.
//        tc[0] = 3.5, tau_c[0] = max(1 + 0, 2) = 2. predicted = 2 + 3.5 = 5.5.
// With the line alone (alpha 0.1, no table) 1 < 0.1 fails: no merge.
TEST(plan_MergeRule, TableSavingsReplaceAlpha) {
  const auto layers = make_layers({1, 1}, {2, 2});
  CostModel table = line(0.1, 0.25);
  table.table = {{2, 3.0}, {4, 3.5}};
  const auto p = plan::mgwfbp_plan(layers, table);
  EXPECT_EQ(p.groups, (Groups{{1, 0}}));
  EXPECT_DOUBLE_EQ(p.predicted_s, 5.5);
  EXPECT_DOUBLE_EQ(plan::predict(layers, per_layer(2), table), 7);  // 1..4, 4..7
  EXPECT_EQ(plan::mgwfbp_plan(layers, line(0.1, 0.25)).groups, per_layer(2));
}

// Groups communicate in the order given: here {0} (ready at 3) blocks {2} (ready at 1).
// {0}: start 3, end 5; {1}: ready 2, start 5, end 7; {2}: start 7, end 9.
TEST(plan_Predict, IsFifoInTheOrderGiven) {
  const auto layers = make_layers({1, 1, 1}, {2, 2, 2});
  EXPECT_DOUBLE_EQ(plan::predict(layers, {{0}, {1}, {2}}, line(1, 0.5)), 9);
  // A non-contiguous group is ready when its last layer is: {2, 0} ready 3, 4 bytes: 3..6;
  // {1}: 6..8.
  EXPECT_DOUBLE_EQ(plan::predict(layers, {{2, 0}, {1}}, line(1, 0.5)), 8);
}

TEST(plan_Predict, RejectsGroupingsThatAreNotAPartition) {
  const auto layers = make_layers({1, 1, 1}, {2, 2, 2});
  EXPECT_INVALID(plan::predict(layers, {{2}, {1}}, line(1, 0.5)), "in no group");
  EXPECT_INVALID(plan::predict(layers, {{2, 1}, {1, 0}}, line(1, 0.5)), "more than one group");
  EXPECT_INVALID(plan::predict(layers, {{3, 2, 1, 0}}, line(1, 0.5)), "names layer 3");
  EXPECT_INVALID(plan::predict(layers, {{2, 1, 0}, {}}, line(1, 0.5)), "is empty");
  EXPECT_EQ(plan::predict({}, {}, line(1, 0.5)), 0);
}

TEST(plan_MergeRule, RejectsBadBackwardTimes) {
  EXPECT_INVALID(plan::mgwfbp_plan(make_layers({1, -1}, {4, 4}), line(1, 0)), "backward_s");
  EXPECT_INVALID(plan::mgwfbp_plan(make_layers({1, NAN}, {4, 4}), line(1, 0)), "backward_s");
  EXPECT_TRUE(plan::mgwfbp_plan({}, line(1, 0)).groups.empty());
}

// ---- merge rule, limiting cases ----

TEST(plan_MergeRule, NoStartupCostAndFastLinksKeepEveryLayerSeparate) {
  // tb = 1 ms per layer, 4 KB per layer at 1 ns/byte: 4 us of communication per 1 ms gap.
  std::vector<Layer> layers;
  for (int l = 0; l < 20; ++l) layers.push_back({fmt::format("l{}", l), 4096, 1e-3});
  const auto cost = line(0, 1e-9);
  const auto p = plan::mgwfbp_plan(layers, cost);
  EXPECT_EQ(p.groups, per_layer(layers.size()));
  EXPECT_EQ(p.predicted_s, plan::predict(layers, p.groups, cost));
}

TEST(plan_MergeRule, HugeStartupCostMergesEverything) {
  std::vector<Layer> layers;
  for (int l = 0; l < 20; ++l) layers.push_back({fmt::format("l{}", l), 4096u * (l + 1), 1e-3});
  const auto cost = line(1e3, 1e-9);
  const auto p = plan::mgwfbp_plan(layers, cost);
  EXPECT_EQ(p.groups, single(layers.size()));
  EXPECT_EQ(p.predicted_s, plan::predict(layers, p.groups, cost));
}

// Random models (many small layers, a few large ones), line and table cost models: the plan's
// groups are contiguous, in backprop order, and predict() reproduces predicted_s to the bit.
TEST(plan_MergeRule, PredictAgreesWithThePlanExactly) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> tb(0, 2e-3);
  std::uniform_int_distribution<uint64_t> small(0, 64 << 10), large(1 << 20, 64 << 20);
  CostModel table = CostModel::fit(
      {{4096, 40e-6}, {65536, 70e-6}, {1 << 20, 0.6e-3}, {16 << 20, 9e-3}, {64 << 20, 35e-3}});
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<Layer> layers(1 + trial % 60);
    for (size_t l = 0; l < layers.size(); ++l) {
      layers[l].bytes = (trial % 3 == 0 && l % 7 == 0) ? large(rng) : small(rng);
      layers[l].backward_s = tb(rng);
    }
    for (const CostModel& cost : {line(50e-6, 1e-9), line(1e-3, 1e-10), line(0, 5e-9), table}) {
      const auto p = plan::mgwfbp_plan(layers, cost);
      size_t next = layers.size();
      for (const auto& g : p.groups) {
        for (size_t l : g) ASSERT_EQ(l, --next);
      }
      ASSERT_EQ(next, 0u);
      ASSERT_EQ(p.predicted_s, plan::predict(layers, p.groups, cost)) << "trial " << trial;
    }
  }
}

TEST(plan_MergeRule, PlanFromJsonRoundTripOfInputsIsTheSame) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> tb(0, 1e-3);
  std::uniform_int_distribution<uint64_t> bytes(1, 1 << 22);
  std::vector<Layer> layers(40);
  for (size_t l = 0; l < layers.size(); ++l) {
    layers[l] = {"block" + std::to_string(l) + ".weight", bytes(rng), tb(rng)};
  }
  const CostModel cost = CostModel::fit({{1024, 31.7e-6}, {1 << 16, 93.1e-6}, {1 << 22, 3.3e-3}});
  const auto original = plan::mgwfbp_plan(layers, cost);

  nlohmann::json j = {{"cost", cost.to_json()}, {"layers", nlohmann::json::array()}};
  for (const auto& layer : layers) j["layers"].push_back(layer.to_json());
  const auto parsed = nlohmann::json::parse(j.dump());
  std::vector<Layer> layers2;
  for (const auto& lj : parsed.at("layers")) layers2.push_back(Layer::from_json(lj));
  const auto again = plan::mgwfbp_plan(layers2, CostModel::from_json(parsed.at("cost")));
  EXPECT_EQ(again.groups, original.groups);
  EXPECT_EQ(again.predicted_s, original.predicted_s);

  const auto plan2 = plan::MergePlan::from_json(nlohmann::json::parse(original.to_json().dump()));
  EXPECT_EQ(plan2.groups, original.groups);
  EXPECT_EQ(plan2.predicted_s, original.predicted_s);
}

TEST(plan_MergeRule, DescribeNamesEveryGroup) {
  const auto layers = make_layers({1, 1, 1, 1}, {2, 2, 2, 8});
  const auto cost = line(1, 0.5);
  const std::string text = plan::describe(layers, plan::mgwfbp_plan(layers, cost), cost);
  EXPECT_NE(text.find("layer3"), std::string::npos) << text;
  EXPECT_NE(text.find("layer2, layer1, layer0"), std::string::npos) << text;
  EXPECT_NE(text.find("predicted 10000.000 ms"), std::string::npos) << text;
}

// ---- cost model ----

TEST(plan_CostModel, FitRecoversAnExactLine) {
  const double alpha = 25e-6, beta = 0.8e-9;
  std::vector<std::pair<uint64_t, double>> samples;
  for (uint64_t bytes = 256; bytes <= (uint64_t{1} << 30); bytes *= 4) {
    samples.emplace_back(bytes, alpha + beta * static_cast<double>(bytes));
  }
  const auto c = CostModel::fit(samples);
  EXPECT_NEAR(c.alpha_s, alpha, alpha * 1e-9);
  EXPECT_NEAR(c.beta_s_per_byte, beta, beta * 1e-9);
  EXPECT_EQ(c.table.size(), samples.size());
}

TEST(plan_CostModel, FitClampsNegativeStartupAndAveragesRepeats) {
  // The free line through these is -1e-6 + 2e-9 * x; alpha must stay >= 0.
  const auto c = CostModel::fit({{3000, 5e-6}, {1000, 1e-6}, {2000, 3e-6}, {1000, 1e-6}});
  EXPECT_EQ(c.alpha_s, 0);
  EXPECT_GT(c.beta_s_per_byte, 0);
  ASSERT_EQ(c.table.size(), 3u);  // sorted, repeats merged
  EXPECT_EQ(c.table[0].first, 1000u);
  EXPECT_DOUBLE_EQ(c.table[0].second, 1e-6);
  // Times falling with size: beta clamps at 0, alpha is then a (weighted) mean.
  const auto flat = CostModel::fit({{1000, 2e-6}, {2000, 1e-6}});
  EXPECT_EQ(flat.beta_s_per_byte, 0);
  EXPECT_GT(flat.alpha_s, 1e-6);
  EXPECT_LT(flat.alpha_s, 2e-6);
}

TEST(plan_CostModel, FitRejectsTooFewSizesAndBadTimes) {
  EXPECT_INVALID(CostModel::fit({}), "at least 2 distinct sizes");
  EXPECT_INVALID(CostModel::fit({{64, 1e-6}, {64, 2e-6}}), "at least 2 distinct sizes");
  EXPECT_INVALID(CostModel::fit({{64, 1e-6}, {128, -1}}), "128 bytes");
  EXPECT_INVALID(CostModel::fit({{64, 1e-6}, {128, INFINITY}}), "128 bytes");
}

TEST(plan_CostModel, TimeInterpolatesTheTable) {
  CostModel c = line(7, 0.01);
  EXPECT_DOUBLE_EQ(c.time(100), 7 + 1);  // no table: the line
  c.table = {{100, 1.0}, {200, 2.0}, {400, 2.5}};
  EXPECT_DOUBLE_EQ(c.time(0), 1.0);  // below the first point: clamped
  EXPECT_DOUBLE_EQ(c.time(50), 1.0);
  EXPECT_DOUBLE_EQ(c.time(100), 1.0);
  EXPECT_DOUBLE_EQ(c.time(150), 1.5);
  EXPECT_DOUBLE_EQ(c.time(200), 2.0);
  EXPECT_DOUBLE_EQ(c.time(300), 2.25);
  EXPECT_DOUBLE_EQ(c.time(400), 2.5);
  EXPECT_DOUBLE_EQ(c.time(500), 2.5 + 100 * 0.01);  // beyond the last: + beta per byte
}

TEST(plan_CostModel, JsonRoundTrips) {
  const auto c = CostModel::fit({{1024, 31.7e-6}, {1 << 16, 93.1e-6}, {1 << 22, 3.3e-3}});
  const auto back = CostModel::from_json(nlohmann::json::parse(c.to_json().dump()));
  EXPECT_EQ(back.alpha_s, c.alpha_s);
  EXPECT_EQ(back.beta_s_per_byte, c.beta_s_per_byte);
  EXPECT_EQ(back.table, c.table);
  // A line without a table.
  const auto l = CostModel::from_json(nlohmann::json{{"alpha_s", 1e-5}, {"beta_s_per_byte", 1e-9}});
  EXPECT_TRUE(l.table.empty());
  EXPECT_DOUBLE_EQ(l.time(1000), 1e-5 + 1e-6);
}

TEST(plan_CostModel, FromJsonRejectsMalformedInput) {
  using nlohmann::json;
  EXPECT_INVALID(CostModel::from_json(json::array()), "expected an object");
  EXPECT_INVALID(CostModel::from_json(json{{"beta_s_per_byte", 1e-9}}), "'alpha_s'");
  EXPECT_INVALID(CostModel::from_json(json{{"alpha_s", -1}, {"beta_s_per_byte", 0}}), "'alpha_s'");
  EXPECT_INVALID(CostModel::from_json(json::parse(
                     R"({"alpha_s": 0, "beta_s_per_byte": 0, "table": [[200, 1], [100, 2]]})")),
                 "strictly increase");
  EXPECT_INVALID(CostModel::from_json(
                     json::parse(R"({"alpha_s": 0, "beta_s_per_byte": 0, "table": [[-5, 1]]})")),
                 "table entry 0");
  EXPECT_INVALID(Layer::from_json(json{{"name", "x"}, {"bytes", -1}, {"backward_s", 0}}),
                 "layer json");
  EXPECT_INVALID(plan::MergePlan::from_json(json{{"groups", {{1, -2}}}, {"predicted_s", 1}}),
                 "layer index");
}

// ---- measure() on ranks over TCP ----

class plan_Measure : public ::testing::TestWithParam<int> {};

TEST_P(plan_Measure, EveryRankGetsTheSameModel) {
  const int world = GetParam();
  std::mutex mu;
  std::vector<nlohmann::json> models(world);
  spawn(world, [&](comm::Group& g) {
    const auto model = plan::measure(
        g, {4, 4096, 65536, 1 << 20, 999}, 4,
        [&g](std::span<float> data) {
          collective::AllreduceOptions o(g);
          o.output = collective::View(data);
          collective::allreduce(o);
        },
        1);
    std::lock_guard<std::mutex> lock(mu);
    models[g.rank()] = model.to_json();
  });
  const auto first = CostModel::from_json(models[0]);
  EXPECT_GE(first.alpha_s, 0);
  EXPECT_GE(first.beta_s_per_byte, 0);
  ASSERT_EQ(first.table.size(), 5u);
  EXPECT_EQ(first.table[1].first, 1000u);  // 999 bytes -> 250 floats
  for (const auto& [bytes, seconds] : first.table) EXPECT_GT(seconds, 0) << bytes;
  for (int r = 1; r < world; ++r) EXPECT_EQ(models[r], models[0]) << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(World, plan_Measure, ::testing::Values(1, 2, 3));

TEST(plan_MeasureArgs, RejectsBadArguments) {
  spawn(1, [](comm::Group& g) {
    auto noop = [](std::span<float>) {};
    EXPECT_INVALID(plan::measure(g, {4, 8}, 0, noop), "iters");
    EXPECT_INVALID(plan::measure(g, {4, 8}, 1, noop, -1), "warmup");
    EXPECT_INVALID(plan::measure(g, {4, 1}, 1, noop), "2 distinct sizes");
    EXPECT_INVALID(plan::measure(g, {4, 8}, 1, nullptr), "no allreduce");
  });
}

}  // namespace
}  // namespace dtrain::test
