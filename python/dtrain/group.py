"""Joining dtrain's group from a PyTorch program: torchrun's environment, dtrain's own, or yours."""
import os
import tempfile

import torch.distributed as dist

from ._dtrain import Group

_default = None


class TorchStore:
    """A torch.distributed.Store as dtrain's group wants a store: set, get, check, delete_key.

    torch 1.13's Python Store has no check(), and a short wait() is no answer under load (it times
    out on a key that is there). So every set() also bumps a counter "<key>/present", and check()
    reads the counters with add(..., 0), which answers at once.
    """

    def __init__(self, store):
        self.store = store

    def set(self, key, value):
        self.store.set(key, value)
        self.store.add(key + "/present", 1)

    def get(self, key):
        return self.store.get(key)

    def check(self, keys):
        return all(self.store.add(k + "/present", 0) > 0 for k in keys)

    def delete_key(self, key):
        self.store.delete_key(key + "/present")
        return self.store.delete_key(key)


def init(rank=None, world_size=None, rendezvous=None, store=None, timeout=300.0):
    """Returns this process's dtrain group, joining it on the first call.

    Rank and size: the arguments, else torch.distributed's default group once it is initialized,
    else the launcher's environment (torchrun's RANK/WORLD_SIZE, DTRAIN_RANK/DTRAIN_WORLD_SIZE,
    Open MPI, Slurm). Where the ranks meet: `rendezvous` or DTRAIN_RENDEZVOUS (file:///shared/dir
    or redis://host:port), else `store` (a torch.distributed.Store), else the store of
    torch.distributed's default group (the one torchrun serves at MASTER_ADDR:MASTER_PORT), under
    the prefix "dtrain". `timeout` (seconds) bounds every wait: a rank that stays away from the
    hooks longer (e.g. rank 0 evaluating while the others train on) fails the others after it.
    """
    global _default
    if _default is not None:
        return _default
    if dist.is_available() and dist.is_initialized():
        if rank is None:
            rank = dist.get_rank()
        if world_size is None:
            world_size = dist.get_world_size()
    rendezvous = rendezvous or os.environ.get("DTRAIN_RENDEZVOUS", "")
    if not rendezvous and store is None and (world_size or 1) > 1:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "dtrain.init: no rendezvous: set DTRAIN_RENDEZVOUS (file:///shared/dir or "
                "redis://host:port), pass store=, or call torch.distributed.init_process_group "
                "(e.g. dtrain.init_process_group()) first")
        store = dist.PrefixStore("dtrain", dist.distributed_c10d._get_default_store())
    run_id = ""
    if store is not None and not hasattr(store, "check"):
        store = TorchStore(store)
        # A restarted torchrun job meets in the same store: its restarts meet apart.
        run_id = "torch-restart%s" % os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    _default = Group(rank=rank, size=world_size, rendezvous=rendezvous, store=store,
                     run_id=run_id, timeout=timeout)
    return _default


def init_process_group(backend="gloo", timeout=None):
    """Initializes torch.distributed's default group from the launcher's environment.

    Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) this is
    torch.distributed.init_process_group(backend). Under dtrain's launchers (DTRAIN_RANK,
    DTRAIN_WORLD_SIZE and a file:// DTRAIN_RENDEZVOUS, as bench/netns.sh sets them) torch's group
    meets in a file in the rendezvous directory and binds DTRAIN_IFACE. Alone: a group of one.
    """
    if dist.is_initialized():
        return
    kwargs = {} if timeout is None else {"timeout": timeout}
    env = os.environ
    if "RANK" in env and "MASTER_ADDR" in env:
        dist.init_process_group(backend, **kwargs)
        return
    if "DTRAIN_RANK" in env:
        rank, size = int(env["DTRAIN_RANK"]), int(env["DTRAIN_WORLD_SIZE"])
        url = env.get("DTRAIN_RENDEZVOUS", "")
        if not url.startswith("file://"):
            raise RuntimeError(
                "dtrain.init_process_group: DTRAIN_RENDEZVOUS=%r: torch's group needs a "
                "file:// rendezvous here (or run under torchrun)" % url)
        if env.get("DTRAIN_IFACE"):
            env.setdefault("GLOO_SOCKET_IFNAME", env["DTRAIN_IFACE"])
        run_id = env.get("DTRAIN_RUN_ID", "dtrain").replace("/", "_")
        path = os.path.join(url[len("file://"):], "torch-" + run_id)
        dist.init_process_group(backend, init_method="file://" + path, rank=rank,
                                world_size=size, **kwargs)
        return
    path = os.path.join(tempfile.mkdtemp(prefix="dtrain-torch-"), "store")
    dist.init_process_group(backend, init_method="file://" + path, rank=0, world_size=1,
                            **kwargs)
