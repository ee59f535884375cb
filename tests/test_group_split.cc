// Group::split: sub-groups by color, ranked by key; collectives on them, including uneven splits,
// nested splits and ranks that join none; a failure inside one sub-group stays there.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "dtrain/collective/collective.h"
#include "dtrain/comm/group.h"
#include "harness.h"

namespace dtrain::test {
namespace {

// Sum over the sub-group of each member's parent rank, by allreduce on the sub-group, and
// the same sum computed from the members the test expects.
int64_t sum_of_parent_ranks(comm::Group& sub, int parent_rank) {
  std::vector<int64_t> v(1000, parent_rank);  // more than one element: every algorithm segment
  collective::AllreduceOptions o(sub);
  o.output = v;
  collective::allreduce(o);
  for (int64_t x : v) EXPECT_EQ(x, v[0]);
  return v[0];
}

TEST(GroupSplit, UnevenColorsRankedByParentRank) {
  // 5 ranks, color rank % 2: {0, 2, 4} and {1, 3}.
  spawn(5, [](comm::Group& g) {
    auto sub = g.split(g.rank() % 2, 0);
    ASSERT_NE(sub, nullptr);
    const std::vector<int> expect =
        g.rank() % 2 == 0 ? std::vector<int>{0, 2, 4} : std::vector<int>{1, 3};
    EXPECT_EQ(sub->parent_ranks(), expect);
    EXPECT_EQ(sub->size(), static_cast<int>(expect.size()));
    EXPECT_EQ(sub->parent_ranks()[sub->rank()], g.rank());
    EXPECT_EQ(sum_of_parent_ranks(*sub, g.rank()),
              std::accumulate(expect.begin(), expect.end(), int64_t{0}));
    // The parent stays usable beside its sub-groups.
    std::vector<float> all(10, 1.0f);
    collective::AllreduceOptions o(g);
    o.output = all;
    collective::allreduce(o);
    EXPECT_EQ(all[9], 5.0f);
  });
}

TEST(GroupSplit, KeyOrdersTheSubGroup) {
  spawn(4, [](comm::Group& g) {
    auto sub = g.split(0, -g.rank());  // reversed
    ASSERT_NE(sub, nullptr);
    EXPECT_EQ(sub->rank(), 3 - g.rank());
    EXPECT_EQ(sub->parent_ranks(), (std::vector<int>{3, 2, 1, 0}));
    // Rank 0 of the sub-group (parent rank 3) broadcasts its parent rank.
    std::vector<int32_t> v(3, g.rank());
    collective::BroadcastOptions b(*sub);
    b.data = v;
    b.root = 0;
    collective::broadcast(b);
    EXPECT_EQ(v, (std::vector<int32_t>{3, 3, 3}));
  });
}

TEST(GroupSplit, NegativeColorJoinsNoneAndSingletons) {
  // Ranks 0 and 3 join none; rank 1 alone in color 7; ranks 2, 4, 5 in color 1.
  spawn(6, [](comm::Group& g) {
    const int colors[6] = {-1, 7, 1, -1, 1, 1};
    auto sub = g.split(colors[g.rank()], 0);
    if (colors[g.rank()] < 0) {
      EXPECT_EQ(sub, nullptr);
      return;
    }
    ASSERT_NE(sub, nullptr);
    if (g.rank() == 1) {
      EXPECT_EQ(sub->size(), 1);
      EXPECT_EQ(sub->parent_ranks(), std::vector<int>{1});
      EXPECT_EQ(sum_of_parent_ranks(*sub, g.rank()), 1);
    } else {
      EXPECT_EQ(sub->parent_ranks(), (std::vector<int>{2, 4, 5}));
      EXPECT_EQ(sum_of_parent_ranks(*sub, g.rank()), 11);
    }
  });
}

TEST(GroupSplit, GridOfRowsAndColumnsAndNestedSplits) {
  // The model-parallel layout: 6 ranks as 2 replicas x 3 partitions. Rows (a replica's
  // partitions) and columns (one partition across replicas) at once, then a row split again.
  spawn(6, [](comm::Group& g) {
    const int replica = g.rank() / 3, part = g.rank() % 3;
    auto row = g.split(replica, part);
    auto col = g.split(part, replica);
    ASSERT_TRUE(row && col);
    EXPECT_EQ(row->rank(), part);
    EXPECT_EQ(col->rank(), replica);
    EXPECT_EQ(sum_of_parent_ranks(*row, g.rank()), replica == 0 ? 3 : 12);
    EXPECT_EQ(sum_of_parent_ranks(*col, g.rank()), 2 * part + 3);
    // Allgatherv with uneven counts on a row: member i contributes i + 1 copies of its rank.
    std::vector<size_t> counts = {1, 2, 3};
    std::vector<int32_t> in(part + 1, g.rank()), out(6, -1);
    collective::AllgathervOptions a(*row);
    a.input = in;
    a.output = out;
    a.counts = counts;
    collective::allgatherv(a);
    const int b = 3 * replica;
    EXPECT_EQ(out, (std::vector<int32_t>{b, b + 1, b + 1, b + 2, b + 2, b + 2}));
    // The first two partitions of the row split off again.
    auto pair = row->split(part < 2 ? 0 : -1, 0);
    if (part < 2) {
      ASSERT_NE(pair, nullptr);
      EXPECT_EQ(pair->size(), 2);
      EXPECT_EQ(sum_of_parent_ranks(*pair, row->rank()), 1);
    } else {
      EXPECT_EQ(pair, nullptr);
    }
  });
}

TEST(GroupSplit, FailureStaysInItsSubGroup) {
  // One member of sub-group {0, 1} fails on its own; its partner hears of it at once, naming
  // it (in its next operation, or already while finishing the split's rendezvous, if the notice
  // overtakes it); sub-group {2, 3} is unaffected, and so is the parent.
  spawn(4, [](comm::Group& g) {
    if (g.rank() == 1) {
      try {
        auto sub = g.split(0, 0);
        std::vector<float> v(4, 1.0f);
        collective::AllreduceOptions o(*sub);
        o.output = v;
        collective::allreduce(o);
        ADD_FAILURE() << "allreduce with a failed partner succeeded";
      } catch (const IoError& e) {
        EXPECT_NE(std::string(e.what()).find("rank 0 failed: disk full"), std::string::npos)
            << e.what();
      }
    } else {
      auto sub = g.split(g.rank() / 2, 0);
      ASSERT_NE(sub, nullptr);
      if (g.rank() == 0) {
        sub->announce_failure("disk full", comm::Group::FailKind::kIo);
        EXPECT_TRUE(sub->poisoned());
      } else {
        EXPECT_EQ(sum_of_parent_ranks(*sub, g.rank()), 5);
      }
    }
    // The parent group is untouched: a collective on it still works.
    EXPECT_FALSE(g.poisoned());
    std::vector<float> all(3, 1.0f);
    collective::AllreduceOptions o(g);
    o.output = all;
    collective::allreduce(o);
    EXPECT_EQ(all[2], 4.0f);
  });
}

TEST(GroupSplit, SizeOneParent) {
  comm::GroupOptions o;
  o.rank = 0;
  o.size = 1;
  auto g = comm::Group::connect(o);
  auto sub = g->split(3, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(g->split(-1, 0), nullptr);
}

}  // namespace
}  // namespace dtrain::test
