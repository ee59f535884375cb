// LibTorch <-> engine: gradient hooks that feed the engine, reduced gradients written back, and
// parameters made identical on every rank at start.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/engine/engine.h"

namespace dtrain::torchx {

// Names and sizes of a module's parameters, in registration order.
std::vector<engine::ParamInfo> param_infos(const torch::nn::Module& module);

// Registers a hook on every parameter that hands its gradient to `engine` as backprop produces
// it. The hooks hold a raw pointer: the engine must outlive the module's backward passes.
void attach_hooks(torch::nn::Module& module, engine::GradientEngine& engine);

// Copies the engine's reduced gradients into each parameter's .grad.
void write_back(torch::nn::Module& module, const engine::GradientEngine& engine);

// Broadcasts rank 0's parameters and buffers to all ranks, then verifies with a checksum that
// every rank holds the same bytes (ProtocolError naming a rank that does not).
void broadcast_parameters(torch::nn::Module& module, comm::Group& group);

// FNV-1a over the bytes of all parameters and buffers.
uint64_t parameter_checksum(const torch::nn::Module& module);

}  // namespace dtrain::torchx
