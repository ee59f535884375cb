// MPI_Allreduce as a peer baseline (only with -DDTRAIN_WITH_MPI=ON; launch with mpirun).
#pragma once

#include "dtrain/collective/allreduce.h"

namespace dtrain::collective {

void mpi_allreduce(const AllreduceOptions& options);

}  // namespace dtrain::collective
