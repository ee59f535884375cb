// When Local SGD averages the models: the `--algorithm` spec and its averaging times.
//
//   sync                                   synchronous data parallelism (gradients averaged
//                                          every step through --reduce)
//   local:H=8                              H local steps between model averagings
//   local:H=8,warmup=500                   post-local SGD: the first 500 steps synchronous,
//                                          local after them
//   local:H=4,Hmax=32,double_every=1000    the period doubles every 1000 steps after the
//                                          warm-up, up to Hmax (a period that grows over the
//                                          run, as the convex analysis suggests)
//
// Steps are counted from the start of training (step 0 is the first). The schedule is a pure
// function of the step count, so a resumed run recomputes it from the spec alone.
#pragma once

#include <cstdint>
#include <string>

namespace dtrain::train {

struct LocalSgdSchedule {
  bool local = false;        // false: "sync"
  int64_t period = 1;        // H
  int64_t warmup = 0;        // synchronous steps before local SGD starts
  int64_t max_period = 0;    // Hmax (0: the period stays H)
  int64_t double_every = 0;  // steps after the warm-up between doublings (0: never)

  // Parses a spec as above (parameters through the shared spec parser). Throws InvalidArgument
  // naming --algorithm and the parameter (H < 1, warmup < 0, Hmax < H, ...).
  static LocalSgdSchedule parse(const std::string& spec);
  // Canonical spec: parse(str()) == *this.
  std::string str() const;

  // True while step `step` (0-based) is a synchronous step (gradients averaged).
  bool synchronous(int64_t step) const { return !local || step < warmup; }
  // The averaging period in force for the local steps that start at step `step` (>= warmup).
  int64_t period_at(int64_t step) const;
  // After local step `step` (0-based, >= warmup) has been taken, are the models averaged? The
  // averaging times: warmup + H, then each previous time + period_at(previous time).
  bool average_after(int64_t step) const;
  // The step after which the next averaging happens, for a run that has completed `done` steps
  // (>= warmup): the smallest averaging time t with t >= done (t counts steps done).
  int64_t next_average(int64_t done) const;

  bool operator==(const LocalSgdSchedule&) const = default;
};

}  // namespace dtrain::train
