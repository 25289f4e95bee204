"""The distributed loss is the same computation as one process on the whole batch (gather with grad)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aupretrain.engine.distributed import gather_with_grad
from aupretrain.models.encoder import PretrainModel
from aupretrain.objectives import tcl_loss

MODEL = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 1, "stem_pool": False, "norm": "group",
         "norm_groups": 4, "au_grid": 2, "au_dim": 16, "id_dim": 8, "proj_hidden": 16, "proj_dim": 8,
         "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
B, T, S = 4, 4, 16  # clips per rank, frames, pixels


def data(world: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, world * B, T, 3, S, S, generator=g)  # two views of the global batch


OBJECTIVES = {  # SimCLR's NT-Xent is the same function with no margin, window or ranking term
    "tcl": dict(temperature=0.1, margin=0.2, window=1, rank_weight=0.3),
    "simclr": dict(temperature=0.1, margin=0.0, window=0, rank_weight=0.0),
}


def loss_of(model, views, keys_fn, offset, objective):
    b = views.shape[1]
    z = model(torch.cat([views[0], views[1]]))["z"]
    z1, z2 = z[:b], z[b:]
    keys = keys_fn(torch.stack([z1, z2], 1))
    return tcl_loss(z1, z2, keys, offset, **OBJECTIVES[objective])[0]


def worker(rank, world, path, out, objective):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = PretrainModel(MODEL, S)
    views = data(world)[:, rank * B:(rank + 1) * B]
    loss = loss_of(model, views, gather_with_grad, rank * B, objective)
    loss.backward()
    grads = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(grads)  # what DeepSpeed / DDP do: average the ranks' gradients
    grads /= world
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        torch.save({"loss": total / world, "grads": grads}, out)
    dist.barrier()  # nobody leaves while the other rank still uses gloo
    # Leave without running gloo's C++ destructors: at interpreter exit they sometimes abort
    # ("terminate called without an active exception"), which would fail a correct run.
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_gather_equivalence(tmp_path, objective):
    world = 2
    mp.spawn(worker, args=(world, str(tmp_path / "store"), str(tmp_path / "dist.pt"), objective), nprocs=world,
             join=True)
    got = torch.load(tmp_path / "dist.pt")
    torch.manual_seed(0)
    model = PretrainModel(MODEL, S)
    loss = loss_of(model, data(world), lambda k: k, 0, objective)
    loss.backward()
    grads = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(got["loss"], loss.detach(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(got["grads"], grads, atol=1e-5, rtol=1e-4), (got["grads"] - grads).abs().max()
