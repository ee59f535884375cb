// MPI_Allreduce on MPI_COMM_WORLD as a peer baseline (built with -DDTRAIN_WITH_MPI=ON). MPI is
// initialised on first use; the job must be launched by mpirun so that MPI's world is the group.
#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <limits>

#include "dtrain/collective/mpi_baseline.h"
#include "dtrain/common/error.h"

namespace dtrain::collective {
namespace {

MPI_Datatype mpi_type(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return MPI_FLOAT;
    case DataType::kFloat64:
      return MPI_DOUBLE;
    case DataType::kInt32:
      return MPI_INT32_T;
    case DataType::kInt64:
      return MPI_INT64_T;
    case DataType::kFloat16:
      break;
  }
  throw InvalidArgument(detail::concat("mpi allreduce baseline: ", name(t), " is not supported"));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
    default:
      return MPI_SUM;
  }
}

}  // namespace

void mpi_allreduce(const AllreduceOptions& o) {
  DT_ENFORCE(o.group != nullptr, "mpi_allreduce: no group");
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }
  int world = 0, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  DT_ENFORCE(world == o.group->size() && rank == o.group->rank(), "the mpi baseline needs the job ",
             "launched by mpirun with the group's ranks: MPI has rank ", rank, " of ", world,
             ", the group rank ", o.group->rank(), " of ", o.group->size());
  DT_ENFORCE(o.output.count <= static_cast<size_t>(std::numeric_limits<int>::max()),
             "mpi_allreduce: ", o.output.count, " elements exceed MPI's int count");
  const void* in =
      o.input.data != nullptr && o.input.data != o.output.data ? o.input.data : MPI_IN_PLACE;
  int rc = MPI_Allreduce(in, o.output.data, static_cast<int>(o.output.count),
                         mpi_type(o.output.dtype), mpi_op(o.op), MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) throw IoError(detail::concat("MPI_Allreduce failed with code ", rc));
  if (o.op == ReduceOp::kAvg) scale_down(o.output.data, o.output.count, o.output.dtype, world);
}

}  // namespace dtrain::collective
