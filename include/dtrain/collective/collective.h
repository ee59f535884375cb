// All dense collectives.
#pragma once

#include "dtrain/collective/allgather.h"
#include "dtrain/collective/allreduce.h"
#include "dtrain/collective/broadcast.h"
#include "dtrain/collective/gloo_baseline.h"
#include "dtrain/collective/types.h"
