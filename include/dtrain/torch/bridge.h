// LibTorch <-> engine: parameter descriptions, and parameters made identical on every rank at
// start. The gradient path (.grad as views of bucket memory, accumulator hooks) is grad_views.h.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/engine/engine.h"

namespace dtrain::torchx {

// Names, sizes and shapes of a module's parameters, in registration order.
std::vector<engine::ParamInfo> param_infos(const torch::nn::Module& module);

// Broadcasts rank 0's parameters and buffers to all ranks, then verifies with a checksum that
// every rank holds the same bytes (ProtocolError naming a rank that does not).
void broadcast_parameters(torch::nn::Module& module, comm::Group& group);

// FNV-1a over the bytes of all parameters and buffers.
uint64_t parameter_checksum(const torch::nn::Module& module);

}  // namespace dtrain::torchx
