"""The tensor collectives the sharded optimizers (DP3's and RDT's) use, under one name whatever torch's version:
torch 2.13 renamed them (the old names warn); older versions have only the old ones."""

from __future__ import annotations

import torch.distributed as dist

reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)
