"""DDP with dtrain's comm hooks, under torchrun, against DDP's own allreduce.

Run by run_ddp_tests.sh as 2 processes. Exits non-zero (with the reason) on any failure.
"""
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import dtrain


def check(cond, what):
    if not cond:
        print("FAIL rank %d: %s" % (dist.get_rank(), what), flush=True)
        sys.exit(1)


class Net(nn.Module):
    """An MLP with a learnt scalar temperature (a 0-dim parameter, shape [])."""

    def __init__(self):
        super().__init__()
        # Sizes that make DDP use several buckets (bucket_cap_mb below), so the first-iteration
        # rebuild changes the layout.
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                  nn.Linear(256, 10))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.body(x) * self.scale


def mlp():
    return Net()


def batch(rank, step, n=32):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(n, 64, generator=g)
    teacher = torch.Generator().manual_seed(7)
    w = torch.randn(64, 10, generator=teacher)
    return x, (x @ w).argmax(dim=1)


def same_gradients_as_ddp_default(spec="dense", rtol=1e-5, atol=1e-7):
    """The hook gives DDP's default gradients, across the bucket rebuild after step 0: exactly
    for the lossless reducers (dense, omnireduce), within fp16's rounding for fp16."""
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = mlp()
    ours = mlp()
    ours.load_state_dict(reference.state_dict())
    ddp_ref = DDP(reference, bucket_cap_mb=0.1)
    ddp_ours = DDP(ours, bucket_cap_mb=0.1)
    hook = dtrain.hooks.reducer(spec)
    ddp_ours.register_comm_hook(None, hook)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    for step in range(6):
        x, y = batch(rank, step)
        for model, opt in ((ddp_ref, opt_ref), (ddp_ours, opt_ours)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        for (name, p), q in zip(reference.named_parameters(), ours.parameters()):
            check(torch.allclose(p.grad, q.grad, rtol=rtol, atol=atol),
                  "step %d: %s: %s hook gradient differs from DDP's default by %g" %
                  (step, name, spec, (p.grad - q.grad).abs().max().item()))
        opt_ref.step()
        opt_ours.step()
    # The layout was learnt on DDP's first bucket set and again after its rebuild, at most.
    check(hook.steps == 6, "hook saw %d steps, not 6" % hook.steps)
    check(1 <= hook.learning_steps <= 2, "learning steps %d" % hook.learning_steps)
    hook.close()
    print("rank %d: %s hook == DDP default over 6 steps (learning steps %d)" %
          (rank, spec, hook.learning_steps), flush=True)


def compressed_trains(spec, density, exact_k=False, steps=200):
    """A compressing hook trains (the loss falls) and sends the bytes its density implies.

    Top-k sends k = density * numel (index, value) pairs of 8 bytes to each other rank; ExDyna's
    exclusive partitions send about that much in all, never more than twice it.
    """
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    model = mlp()
    ddp = DDP(model, bucket_cap_mb=0.1)
    hook = dtrain.hooks.reducer(spec)
    ddp.register_comm_hook(None, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    sent_after_learning = None
    for step in range(steps):
        x, y = batch(rank, step % 20)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 1:
            sent_after_learning = hook.bytes_sent
    numel = sum(p.numel() for p in model.parameters())
    dense_per_step = numel * 4 * 2 * (size - 1) / size
    per_step = (hook.bytes_sent - sent_after_learning) / (steps - 2)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    check(last < 0.7 * first, "%s: loss %.3f -> %.3f does not fall" % (spec, first, last))
    pairs = density * numel * 8 * (size - 1)
    low, high = (0.9 * pairs, 1.1 * pairs) if exact_k else (0.25 * pairs, 2 * pairs)
    check(low <= per_step <= high,
          "%s: %.0f bytes per step, outside [%.0f, %.0f] (dense would be %.0f)" %
          (spec, per_step, low, high, dense_per_step))
    hook.close()
    print("rank %d: %s: loss %.3f -> %.3f, %.0f bytes/step (dense %.0f)" %
          (rank, spec, first, last, per_step, dense_per_step), flush=True)


def every_reducer_agrees_across_ranks():
    """Every kind of reducer runs as a hook, and leaves the same gradient on every rank."""
    rank, size = dist.get_rank(), dist.get_world_size()
    for spec in ("dense", "omnireduce", "fp16", "topk:0.01", "randomk:0.01", "exdyna:0.01",
                 "qcs", "powersgd:rank=2"):
        torch.manual_seed(2)
        model = mlp()
        ddp = DDP(model, bucket_cap_mb=0.1)
        hook = dtrain.hooks.reducer(spec)
        ddp.register_comm_hook(None, hook)
        for step in range(4):  # two learning steps, two through the reducer
            if step == 2:
                learnt = hook.bytes_sent
            x, y = batch(rank, step)
            model.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        everyone = [torch.empty_like(flat) for _ in range(size)]
        dist.all_gather(everyone, flat)
        check(torch.isfinite(flat).all(), "%s: non-finite gradient" % spec)
        check(all(torch.equal(everyone[0], g) for g in everyone),
              "%s: the ranks hold different gradients after the hook" % spec)
        check(hook.steps == 4 and hook.bytes_sent > learnt,
              "%s: %d steps, %d bytes after the learning steps" %
              (spec, hook.steps, hook.bytes_sent - learnt))
        hook.close()
    print("rank %d: every reducer agrees across ranks" % rank, flush=True)


def bad_spec_is_a_python_error():
    try:
        dtrain.hooks.reducer("nosuch:0.1")
    except ValueError as e:
        check("nosuch" in str(e), "ValueError without the spec's name: %s" % e)
        return
    check(False, "an unknown spec raised no ValueError")


def main():
    dtrain.init_process_group()
    bad_spec_is_a_python_error()
    same_gradients_as_ddp_default()
    same_gradients_as_ddp_default("omnireduce")
    same_gradients_as_ddp_default("fp16", rtol=1e-2, atol=1e-4)
    every_reducer_agrees_across_ranks()
    compressed_trains("exdyna:0.01", density=0.01)
    compressed_trains("topk:0.01", density=0.01, exact_k=True)
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    print("rank %d: ok" % rank, flush=True)


if __name__ == "__main__":
    main()
