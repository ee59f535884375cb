"""dtrain for PyTorch: dtrain's reducers as DDP communication hooks.

    import torch.distributed as dist
    import dtrain

    dtrain.init_process_group()            # torch.distributed's group (torchrun's environment)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp.register_comm_hook(None, dtrain.hooks.reducer("exdyna:0.01"))

Every `dtrain train --reduce` spec works ("dense", "omnireduce", "topk:0.01", "exdyna:0.01",
"qcs:rows=128", "powersgd:rank=4", ...). The hooks reduce over dtrain's own group (joined by
`dtrain.init()`, which the first hook call does for you), not through torch's process group.
"""
from ._dtrain import Group, __version__, reducer_names, validate_spec
from .group import init, init_process_group
from . import hooks

__all__ = ["Group", "hooks", "init", "init_process_group", "reducer_names", "validate_spec",
           "__version__"]
