"""PyTorch DDP training of an MLP on Fashion-MNIST with DDP's default allreduce or a dtrain hook.

One rank of the job: run 4 of them with bench/ddp_hooks.sh (under bench/netns.sh), or under
torchrun. Rank 0 prints one JSON line: hook, samples/s over the training loop, final test
accuracy, bytes the hook's reducer sent per rank.

    bench/netns.sh -n 4 -r 100mbit -- /usr/bin/python3 bench/ddp_hooks.py --hook exdyna:0.01
"""
import argparse
import gzip
import json
import os
import struct
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import dtrain

DATA = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, = struct.unpack(">I", raw[:4])
    dims = struct.unpack(">" + "I" * (magic & 0xFF), raw[4:4 + 4 * (magic & 0xFF)])
    data = torch.frombuffer(bytearray(raw[4 + 4 * len(dims):]), dtype=torch.uint8)
    return data.reshape(dims)


def load(split):
    images = idx(os.path.join(DATA, split + "-images-idx3-ubyte.gz")).float().div_(255)
    labels = idx(os.path.join(DATA, split + "-labels-idx1-ubyte.gz")).long()
    return (images.reshape(-1, 784) - 0.2860) / 0.3530, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", default="default", help="'default' (DDP's allreduce) or a --reduce spec")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="per rank")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(1)
    dtrain.init_process_group()
    rank, size = dist.get_rank(), dist.get_world_size()
    x_train, y_train = load("train")
    x_test, y_test = load("t10k")

    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    ddp = DDP(model)
    hook = None
    if args.hook != "default":
        hook = dtrain.hooks.reducer(args.hook)
        ddp.register_comm_hook(None, hook)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    steps_per_epoch = len(x_train) // (args.batch_size * size)
    dist.barrier()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(epoch))
        mine = order[rank::size]
        for s in range(steps_per_epoch):
            b = mine[s * args.batch_size:(s + 1) * args.batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x_train[b]), y_train[b]).backward()
            opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - start
    samples = args.epochs * steps_per_epoch * args.batch_size * size

    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    if hook is not None:
        hook.close()
    if rank == 0:
        print(json.dumps({
            "hook": args.hook, "ranks": size, "epochs": args.epochs, "lr": args.lr,
            "momentum": args.momentum, "seconds": round(elapsed, 2),
            "samples_per_s": round(samples / elapsed, 1), "test_accuracy": round(accuracy, 4),
            "mb_sent_per_rank": None if hook is None else round(hook.bytes_sent / 1e6, 2),
            "learning_steps": None if hook is None else hook.learning_steps,
        }), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
