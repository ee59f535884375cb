// The convex Local SGD simulator of `dtrain bench localsgd` against independent dense
// implementations: K = 1 is plain SGD, H = 1 is mini-batch SGD with batch K b over the same
// samples, and H > 1 is K dense replicas averaged every H steps; Newton's f* against the
// gradient, the problem generators, step sizes and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "dtrain/common/error.h"
#include "dtrain/common/random.h"
#include "dtrain/train/local_sgd_convex.h"

namespace dtrain::test {
namespace {

namespace cv = train::convex;

cv::Problem small_problem(uint64_t seed = 3) {
  return cv::make_w8a_like({.n = 400, .dim = 37, .label_noise = 0.1, .seed = seed});
}

// The rows as a dense n x d matrix: the references below share no code with the CSR simulator.
std::vector<double> dense(const cv::Problem& p) {
  std::vector<double> a(p.size() * p.dim, 0.0);
  for (size_t i = 0; i < p.size(); ++i) {
    for (size_t q = p.row_start[i]; q < p.row_start[i + 1]; ++q) a[i * p.dim + p.col[q]] = p.val[q];
  }
  return a;
}

// One sample's logistic-loss gradient, scaled by `scale`, added into g.
void add_sample_gradient(const cv::Problem& p, const std::vector<double>& a, size_t i,
                         const std::vector<double>& x, double scale, std::vector<double>& g) {
  double z = 0;
  for (size_t j = 0; j < p.dim; ++j) z += a[i * p.dim + j] * x[j];
  const double y = p.label[i];
  const double coef = -y / (1 + std::exp(y * z));
  for (size_t j = 0; j < p.dim; ++j) g[j] += scale * coef * a[i * p.dim + j];
}

// K dense replicas, replica k drawing b rows per step from KeyedRng({seed, k}), averaged after
// every step t with (t + 1) % H == 0. K = 1 is plain SGD; H = 1 is mini-batch SGD with batch K b
// (computed as such: one gradient over all K b samples at the shared x).
std::vector<double> reference(const cv::Problem& p, int K, int64_t H, int64_t T, int b,
                              const cv::StepSize& step, uint64_t seed) {
  const auto a = dense(p);
  std::vector<KeyedRng> rngs;
  for (int k = 0; k < K; ++k) rngs.emplace_back(KeyedRng({seed, uint64_t(k)}));
  const size_t d = p.dim;
  if (H == 1) {
    std::vector<double> x(d, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> g(d);
      for (size_t j = 0; j < d; ++j) g[j] = p.lambda * x[j];
      for (int k = 0; k < K; ++k) {
        for (int s = 0; s < b; ++s) {
          add_sample_gradient(p, a, rngs[k].below(p.size()), x, 1.0 / (K * b), g);
        }
      }
      for (size_t j = 0; j < d; ++j) x[j] -= step.at(t) * g[j];
    }
    return x;
  }
  std::vector<std::vector<double>> xs(K, std::vector<double>(d, 0.0));
  for (int64_t t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) {
      std::vector<double> g(d);
      for (size_t j = 0; j < d; ++j) g[j] = p.lambda * xs[k][j];
      for (int s = 0; s < b; ++s)
        add_sample_gradient(p, a, rngs[k].below(p.size()), xs[k], 1.0 / b, g);
      for (size_t j = 0; j < d; ++j) xs[k][j] -= step.at(t) * g[j];
    }
    if ((t + 1) % H == 0) {
      for (size_t j = 0; j < d; ++j) {
        double m = 0;
        for (int k = 0; k < K; ++k) m += xs[k][j];
        for (int k = 0; k < K; ++k) xs[k][j] = m / K;
      }
    }
  }
  std::vector<double> mean(d, 0.0);
  for (size_t j = 0; j < d; ++j) {
    for (int k = 0; k < K; ++k) mean[j] += xs[k][j] / K;
  }
  return mean;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t j = 0; j < got.size(); ++j) {
    EXPECT_NEAR(got[j], want[j], 1e-12 * scale) << what << " coordinate " << j;
  }
}

cv::SimResult run(const cv::Problem& p, int K, const std::string& algorithm, int64_t T, int b,
                  const cv::StepSize& step, uint64_t seed, std::vector<int64_t> cps = {}) {
  cv::SimOptions o;
  o.workers = K;
  o.algorithm = algorithm;
  o.steps = T;
  o.batch = b;
  o.step = step;
  o.seed = seed;
  o.checkpoints = std::move(cps);
  return cv::simulate(p, o);
}

TEST(LocalSgdConvex, OneWorkerIsPlainSgd) {
  const auto p = small_problem();
  const auto step = cv::StepSize::parse("decay:2,50");
  for (int b : {1, 3}) {
    for (int64_t h : {1, 4, 7}) {
      const auto got = run(p, 1, "local:H=" + std::to_string(h), 120, b, step, 11);
      expect_close(got.mean, reference(p, 1, 1, 120, b, step, 11),
                   "K=1 b=" + std::to_string(b) + " H=" + std::to_string(h));
      EXPECT_EQ(got.rounds, 120 / h);
    }
  }
}

TEST(LocalSgdConvex, PeriodOneIsMiniBatchSgdOverTheSameSamples) {
  const auto p = small_problem(5);
  for (const char* lr : {"const:0.7", "decay:4,20"}) {
    const auto step = cv::StepSize::parse(lr);
    for (int K : {2, 3, 8}) {
      for (int b : {1, 2}) {
        const auto got = run(p, K, "local:H=1", 90, b, step, 7);
        expect_close(got.mean, reference(p, K, 1, 90, b, step, 7),
                     std::string(lr) + " K=" + std::to_string(K) + " b=" + std::to_string(b));
        // `sync` (gradients averaged every step) is the same computation.
        expect_close(run(p, K, "sync", 90, b, step, 7).mean, got.mean, "sync");
      }
    }
  }
}

TEST(LocalSgdConvex, LocalStepsMatchDenseReplicasAveragedEveryHSteps) {
  const auto p = small_problem(9);
  const auto step = cv::StepSize::parse("decay:3,30");
  for (int K : {2, 5}) {
    for (int64_t h : {2, 3, 16}) {
      const int64_t T = 96;
      std::vector<int64_t> cps;
      for (int64_t t = h; t <= T; t += h) cps.push_back(t);
      const auto got = run(p, K, "local:H=" + std::to_string(h), T, 2, step, 21, cps);
      expect_close(got.mean, reference(p, K, h, T, 2, step, 21),
                   "K=" + std::to_string(K) + " H=" + std::to_string(h));
      EXPECT_EQ(got.rounds, T / h);
      ASSERT_EQ(got.checkpoints.size(), cps.size());
      for (size_t c = 0; c < cps.size(); ++c) {
        const auto& cp = got.checkpoints[c];
        EXPECT_EQ(cp.steps, cps[c]);
        EXPECT_EQ(cp.rounds, int64_t(c + 1));
        EXPECT_EQ(cp.grad_evals, double(K) * double(cps[c]) * 2);
        EXPECT_GT(cp.spread, 0) << "replicas drift apart between averagings";
        EXPECT_TRUE(std::isnan(cp.weighted));
      }
    }
  }
}

TEST(LocalSgdConvex, RoundsFollowTheDistributedSchedule) {
  const auto p = small_problem();
  const auto step = cv::StepSize::parse("const:0.5");
  // Warm-up steps average every step, then every H: 5 + (100 - 5) / 4 rounds.
  EXPECT_EQ(run(p, 3, "local:H=4,warmup=5", 100, 1, step, 1).rounds, 5 + 95 / 4);
  EXPECT_EQ(run(p, 3, "sync", 50, 1, step, 1).rounds, 50);
  // Periods 2, 4, 8 (doubling every 16 steps): averaging times 2..16 by 2, 20..32 by 4, 40, 48.
  EXPECT_EQ(run(p, 2, "local:H=2,Hmax=8,double_every=16", 48, 1, step, 1).rounds, 8 + 4 + 2);
}

TEST(LocalSgdConvex, WeightedAverageOfIterates) {
  const auto p = small_problem();
  const auto step = cv::StepSize::parse("decay:2,10");
  cv::SimOptions o;
  o.workers = 2;
  o.algorithm = "local:H=2";
  o.steps = 40;
  o.step = step;
  o.checkpoints = {1, 40};
  o.weighted_average = true;
  const auto res = cv::simulate(p, o);
  // After one step the average holds only x_0 = 0.
  EXPECT_NEAR(res.checkpoints[0].weighted, std::log(2.0), 1e-14);
  EXPECT_LT(res.checkpoints[1].weighted, std::log(2.0));
}

TEST(LocalSgdConvex, NewtonFindsTheOptimum) {
  const auto p = small_problem();
  const auto opt = cv::solve(p);
  EXPECT_LT(opt.grad_norm, 1e-12);
  EXPECT_LT(opt.error_bound, 1e-18);
  std::vector<double> g(p.dim);
  EXPECT_DOUBLE_EQ(cv::objective_and_gradient(p, opt.x, g), opt.value);
  EXPECT_DOUBLE_EQ(cv::objective(p, opt.x), opt.value);
  // Every nearby point and a long SGD run are worse.
  KeyedRng rng({42});
  for (int trial = 0; trial < 20; ++trial) {
    auto x = opt.x;
    for (auto& v : x) v += (double(rng.below(2001)) - 1000) * 1e-6;
    EXPECT_GT(cv::objective(p, x), opt.value);
  }
  const auto sgd = run(p, 4, "local:H=4", 4000, 4, cv::StepSize::parse("decay:4,100"), 3);
  EXPECT_GT(cv::objective(p, sgd.mean), opt.value);
  EXPECT_LT(cv::objective(p, sgd.mean) - opt.value, 0.02);
}

TEST(LocalSgdConvex, GradientMatchesFiniteDifferences) {
  const auto p = small_problem();
  std::vector<double> x(p.dim), g(p.dim);
  for (size_t j = 0; j < p.dim; ++j) x[j] = 0.3 * std::sin(double(j) + 1);
  cv::objective_and_gradient(p, x, g);
  for (size_t j = 0; j < p.dim; j += 5) {
    auto plus = x, minus = x;
    plus[j] += 1e-6;
    minus[j] -= 1e-6;
    EXPECT_NEAR((cv::objective(p, plus) - cv::objective(p, minus)) / 2e-6, g[j], 1e-8) << j;
  }
}

TEST(LocalSgdConvex, W8aLikeProblem) {
  const auto p = cv::make_w8a_like({.n = 3000, .dim = 300, .label_noise = 0.05, .seed = 1});
  ASSERT_EQ(p.size(), 3000u);
  EXPECT_EQ(p.row_start.size(), 3001u);
  EXPECT_DOUBLE_EQ(p.lambda, 1.0 / 3000);
  const double nnz = double(p.col.size()) / 3000;
  EXPECT_GT(nnz, 9);
  EXPECT_LT(nnz, 14);
  size_t positive = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    ASSERT_GT(p.row_start[i + 1], p.row_start[i]) << "row " << i << " is empty";
    double norm2 = 0;
    for (size_t q = p.row_start[i]; q < p.row_start[i + 1]; ++q) {
      ASSERT_LT(p.col[q], 300u);
      if (q > p.row_start[i]) {
        ASSERT_GT(p.col[q], p.col[q - 1]);
      }
      norm2 += p.val[q] * p.val[q];
    }
    EXPECT_NEAR(norm2, 1, 1e-12);
    ASSERT_TRUE(p.label[i] == 1 || p.label[i] == -1);
    positive += p.label[i] == 1;
  }
  EXPECT_GT(positive, 1200u);
  EXPECT_LT(positive, 1800u);
  EXPECT_NEAR(p.smoothness(), 0.25 + p.lambda, 1e-12);
  // Deterministic in the seed.
  const auto again = cv::make_w8a_like({.n = 3000, .dim = 300, .label_noise = 0.05, .seed = 1});
  EXPECT_EQ(again.col, p.col);
  EXPECT_EQ(again.label, p.label);
  EXPECT_NE(cv::make_w8a_like({.n = 3000, .dim = 300, .label_noise = 0.05, .seed = 2}).col, p.col);
}

TEST(LocalSgdConvex, FashionMnistBinaryTask) {
  // A tiny synthetic stand-in with Fashion-MNIST's standardisation (the loader's output format).
  data::Dataset d;
  d.dim = 4;
  d.num_classes = 10;
  const float pixels[4][4] = {{0, 255, 0, 0}, {10, 20, 30, 40}, {0, 0, 0, 128}, {1, 1, 1, 1}};
  const int64_t labels[4] = {0, 3, 6, 0};
  for (int i = 0; i < 4; ++i) {
    for (float px : pixels[i]) {
      d.features.push_back((px / 255 - data::kFashionMnistMean) / data::kFashionMnistStd);
    }
    d.labels.push_back(labels[i]);
  }
  const auto p = cv::make_fmnist_binary(d, 0, 6, 0);
  ASSERT_EQ(p.size(), 3u);  // class 3 left out
  EXPECT_EQ(p.label, (std::vector<double>{1, -1, 1}));
  EXPECT_EQ(p.col, (std::vector<uint32_t>{1, 3, 0, 1, 2, 3}));  // black pixels are not stored
  EXPECT_DOUBLE_EQ(p.val[0], 1);
  EXPECT_DOUBLE_EQ(p.val[2], 0.5);
  EXPECT_DOUBLE_EQ(p.lambda, 1.0 / 3);
  EXPECT_EQ(cv::make_fmnist_binary(d, 0, 6, 2).size(), 2u);
  EXPECT_THROW(cv::make_fmnist_binary(d, 0, 5, 0), InvalidArgument);
  EXPECT_THROW(cv::make_fmnist_binary(d, 6, 6, 0), InvalidArgument);
}

TEST(LocalSgdConvex, StepSizes) {
  const auto c = cv::StepSize::parse("const:0.25");
  EXPECT_EQ(c.at(0), 0.25);
  EXPECT_EQ(c.at(1000000), 0.25);
  const auto d = cv::StepSize::parse("decay:8,100");
  EXPECT_DOUBLE_EQ(d.at(0), 8);
  EXPECT_DOUBLE_EQ(d.at(300), 2);
  EXPECT_EQ(cv::StepSize::parse(d.str()).str(), d.str());
  // theory: eta_t = 4 / (mu (a + t)), a > max(16 kappa, H).
  const auto p = small_problem();
  const double kappa = p.smoothness() / p.lambda;
  for (int64_t h : {int64_t(1), int64_t(1) << 30}) {
    const auto t = cv::StepSize::parse("theory").resolve(p, h);
    EXPECT_GT(t.t0, std::max(16 * kappa, double(h)));
    EXPECT_DOUBLE_EQ(t.at(7), 4 / (p.lambda * (t.t0 + 7)));
  }
  EXPECT_THROW(cv::StepSize::parse("theory").at(0), InvalidArgument);
  for (const char* bad : {"", "const", "const:0", "const:-1", "const:x", "decay:1", "decay:1,0",
                          "decay:,5", "theory:3", "cosine:1"}) {
    EXPECT_THROW(cv::StepSize::parse(bad), InvalidArgument) << bad;
  }
}

TEST(LocalSgdConvex, FirstReaching) {
  std::vector<cv::Checkpoint> cps(3);
  for (int i = 0; i < 3; ++i) {
    cps[i].steps = 10 * (i + 1);
    cps[i].value = 1.0 + 0.1 / (i + 1);
    cps[i].weighted = 2;
  }
  EXPECT_EQ(cv::first_reaching(cps, 1.0, 0.06), &cps[1]);
  EXPECT_EQ(cv::first_reaching(cps, 1.0, 0.2), &cps[0]);
  EXPECT_EQ(cv::first_reaching(cps, 1.0, 0.01), nullptr);
  EXPECT_EQ(cv::first_reaching(cps, 1.0, 0.06, false, 19), nullptr);  // past the budget
  cps[2].weighted = 1.01;
  EXPECT_EQ(cv::first_reaching(cps, 1.0, 0.02, true), &cps[2]);
}

TEST(LocalSgdConvex, BadInputIsRefusedByName) {
  const auto p = small_problem();
  const auto step = cv::StepSize::parse("const:1");
  auto expect_message = [&](const cv::SimOptions& o, const std::string& needle) {
    try {
      cv::simulate(p, o);
      ADD_FAILURE() << "accepted; expected " << needle;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  cv::SimOptions o;
  o.steps = 10;
  o.step = step;
  o.workers = 0;
  expect_message(o, "K=0");
  o.workers = 2;
  o.algorithm = "local:H=0";
  expect_message(o, "H");
  o.algorithm = "local:H=2";
  o.checkpoints = {5, 3};
  expect_message(o, "checkpoints");
  o.checkpoints = {11};
  expect_message(o, "checkpoints");
  o.checkpoints = {};
  o.step = cv::StepSize::parse("theory");
  expect_message(o, "resolve");
  EXPECT_THROW(cv::make_w8a_like({.n = 10, .dim = 5, .label_noise = 0.5}), InvalidArgument);
}

}  // namespace
}  // namespace dtrain::test
