"""The distributed step is the same computation as one process on the whole batch.

Workers run the real engine path (`deepspeed.initialize` on gloo, ZeRO-2, `train_step`) with plain SGD at
lr 1, so the change of every parameter is minus the gradient DeepSpeed applied. The reference is one
process computing the objective on the concatenated batch of every rank and micro-batch (fp32).
"""
import os

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from aupretrain.methods import build_method
from aupretrain.objectives import build_objective, split_views

MODEL = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 1, "stem_pool": False, "norm": "group",
         "norm_groups": 4, "au_grid": 2, "au_dim": 16, "id_dim": 8, "proj_hidden": 16, "proj_dim": 8,
         "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
         "decoder": {"widths": [16, 8], "start": 4, "norm_groups": 4}}
B, T, S = 3, 4, 16  # clips per micro-batch, frames, pixels
OBJECTIVES = {
    "tcl": dict(name="tcl", temperature=0.1, margin=0.2, window=1, symmetric=True, rank_weight=0.3, rank_margin=0.05,
                cross_clip_weight=1.0),
    "simclr": dict(name="simclr", temperature=0.1),
    "clp": dict(name="clp", temperature=0.1, margin=0.2, window=0, symmetric=True, rank_weight=0.3, rank_margin=0.05,
                cross_clip_weight=1.0, cir=dict(self_weight=1.0, cycle_weight=1.0, au_weight=0.5, id_weight=0.5,
                                                frames=2, identity_offset=1, stop_grad_targets=True,
                                                rec_blur=0.0)),
    "clp_nd": dict(name="clp", temperature=0.1, margin=0.2, window=0, symmetric=True, rank_weight=0.3,
                   rank_margin=0.05, cross_clip_weight=1.0, negative_min_change=0.05,
                   cir=dict(self_weight=1.0, cycle_weight=1.0, au_weight=0.5, id_weight=0.5, frames=2,
                            identity_offset=1, stop_grad_targets=True, source_frame=True, rec_blur=1.0)),
    "clp_own": dict(name="clp", temperature=0.1, margin=0.2, window=0, symmetric=True, rank_weight=0.3,
                    rank_margin=0.05, cross_clip_weight=0.0,  # own-clip negatives: TCL is a local term
                    cir=dict(self_weight=1.0, cycle_weight=1.0, au_weight=0.5, id_weight=0.5, frames=2,
                             identity_offset=1, stop_grad_targets=True, rec_blur=0.0)),
    "moco": dict(name="moco", temperature=0.2, momentum=0.99, queue_size=1000, symmetric=True),
    "clp_hb": dict(name="clp", temperature=0.1, margin=0.2, window=0, symmetric=True, rank_weight=0.3,
                   rank_margin=0.05, cross_clip_weight=1.0,
                   cir=dict(self_weight=1.0, cycle_weight=1.0, au_weight=0.5, id_weight=0.5, frames=2,
                            identity_offset=1, stop_grad_targets=True, rec_blur=0.0, hog_cell=4,
                            hog_basis_weight=1.0, hog_basis_k=3, hog_basis_fit_steps=1)),
}


def objective(name):
    return build_objective(OmegaConf.create(OBJECTIVES[name]))


def method(name):
    return build_method(OBJECTIVES[name], MODEL, S)


def global_batch(n_clips: int) -> dict:
    g = torch.Generator().manual_seed(1)
    views = torch.randn(2, n_clips, T, 3, S, S, generator=g)
    views[:, ::2, 1] = views[:, ::2, 0]  # every other clip holds its first image: near-duplicate frames 0 and 1
    # partner: another clip of the same micro-batch (micro-batches are blocks of B clips)
    partner = torch.tensor([(i % B + 1) % B for i in range(n_clips)])
    return {"view1": views[0], "view2": views[1], "partner": partner}


def micro_batch(batch: dict, block: int) -> dict:
    sl = slice(block * B, (block + 1) * B)
    return {"view1": batch["view1"][sl], "view2": batch["view2"][sl], "partner": batch["partner"][sl]}


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])


def worker(rank, world, port, k, name, out, precision="fp32"):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import deepspeed
    import torch.distributed as dist

    from aupretrain.engine.distributed import skip_inference_shm_op
    from aupretrain.engine.step import train_step

    torch.set_num_threads(1)
    skip_inference_shm_op()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    obj = objective(name)
    torch.manual_seed(0)
    model = method(name)
    before = flat_params(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config={
        "train_micro_batch_size_per_gpu": B, "gradient_accumulation_steps": k, "train_batch_size": B * k * world,
        "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0,
        "steps_per_print": 10**9,
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 8}})  # dynamic loss scale from 2^8
    batch = global_batch(world * k * B)
    loss, parts = train_step(engine, obj, [micro_batch(batch, rank * k + j) for j in range(k)], rank)
    total = loss.detach().clone()
    dist.all_reduce(total)
    result = {"loss": total / world, "delta": before - flat_params(engine.module).float(),
              "dtype": next(engine.module.parameters()).dtype, "skipped": bool(getattr(engine, "skipped_steps", 0)),
              "shm_op": getattr(deepspeed.comm.comm.cdb, "shm_comm_op", None) is not None}
    if name == "moco":
        m = engine.module
        result["queue"] = m.momentum.negatives()
        result["momentum"] = torch.cat([p.detach().flatten() for p in [*m.momentum.encoder.parameters(),
                                                                       *m.momentum.projector.parameters()]])
        result["online"] = torch.cat([p.detach().flatten() for p in [*m.encoder.parameters(), *m.projector.parameters()]])
    if name == "clp_hb":
        result["basis"], result["scale"] = engine.module.hog_basis.basis.clone(), engine.module.hog_basis.scale.clone()
    torch.save(result, f"{out}.{rank}")
    dist.barrier()  # nobody leaves while the other rank still uses gloo
    os._exit(0)  # skip gloo's C++ destructors: at interpreter exit they sometimes abort a correct run


def run_ranks(tmp_path, world: int, k: int, name: str, precision: str = "fp32") -> list[dict]:
    from tests.conftest import free_port

    out = str(tmp_path / "result")
    mp.spawn(worker, args=(world, free_port(), k, name, out, precision), nprocs=world, join=True)
    return [torch.load(f"{out}.{r}") for r in range(world)]


def reference(name: str, n_clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient of one process on the whole batch (the partner indices made global)."""
    obj = objective(name)
    torch.manual_seed(0)
    model = method(name)
    batch = global_batch(n_clips)
    batch["partner"] = batch["partner"] + torch.arange(n_clips) // B * B
    out = split_views(model(torch.cat([batch["view1"], batch["view2"]]), **model.request(batch, T)), n_clips)
    loss, _ = obj(out, batch)
    loss.backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                       for p in model.parameters() if p.requires_grad])
    return loss.detach(), grads


def assert_same(got: dict, loss: torch.Tensor, grads: torch.Tensor) -> None:
    assert torch.allclose(got["loss"], loss, atol=1e-5, rtol=1e-5), (got["loss"], loss)
    err = (got["delta"] - grads).abs().max()
    assert torch.allclose(got["delta"], grads, atol=1e-5, rtol=1e-4), f"max gradient difference {err}"
    assert grads.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tcl", "clp", "simclr", "moco"])
def test_gather_equivalence(tmp_path, name):
    """2 ranks with negatives gathered across them == one process on the concatenated batch."""
    got = run_ranks(tmp_path, world=2, k=1, name=name)
    assert_same(got[0], *reference(name, 2 * B))
    assert torch.equal(got[0]["delta"], got[1]["delta"])  # every rank applied the same update
    # the CPU backend's inference-only shared-memory op was not JIT-built (distributed.skip_inference_shm_op)
    assert not any(g["shm_op"] for g in got)


@pytest.mark.slow
@pytest.mark.parametrize("world,k,name", [(1, 3, "tcl"), (2, 2, "clp"), (2, 2, "clp_nd"), (2, 2, "clp_own")])
def test_accumulation_equivalence(tmp_path, world, k, name):
    """k micro-batches with the feature cache == one batch k times the size (every negative kept; clp_nd:
    the near-duplicate mask, whose frame change travels with the cached features, and the source-frame decoder;
    clp_own: own-clip negatives, TCL a local term — no gather, no feature cache — on 2 ranks x 2 micro-batches)."""
    got = run_ranks(tmp_path, world=world, k=k, name=name)
    assert_same(got[0], *reference(name, world * k * B))
    assert all(torch.equal(g["delta"], got[0]["delta"]) for g in got)  # every rank applied the same update


@pytest.mark.slow
def test_moco_queue_holds_keys_from_every_rank(tmp_path):
    world = 2
    got = run_ranks(tmp_path, world=world, k=1, name="moco")
    torch.manual_seed(0)  # the momentum encoder of step 1 is the initial encoder: recompute each rank's keys
    model = method("moco")
    batch = global_batch(world * B)
    expected = torch.cat([model.momentum.keys(micro_batch(batch, r)["view2"].flatten(0, 1)) for r in range(world)])
    n = world * B * T  # the view-2 keys of every frame of every rank
    assert expected.shape == (n, MODEL["proj_dim"])
    assert torch.allclose(got[0]["queue"][:n], expected, atol=1e-6)  # rank 0 holds rank 1's keys too, in rank order
    assert torch.equal(got[0]["queue"][n:], model.momentum.negatives()[n:])  # the rest: the initial random keys
    assert torch.equal(got[0]["queue"], got[1]["queue"])
    # EMA after the step: theta_k = m theta_k0 + (1 - m) theta_q (theta_k0 = theta_q0, the initial weights)
    m = OBJECTIVES["moco"]["momentum"]
    initial = torch.cat([p.detach().flatten() for p in [*model.encoder.parameters(), *model.projector.parameters()]])
    assert torch.allclose(got[0]["momentum"], m * initial + (1 - m) * got[0]["online"], atol=1e-6)
    assert not torch.allclose(got[0]["online"], initial)  # the online encoder did move


@pytest.mark.slow
def test_fp16_step_follows_the_fp32_gradient(tmp_path, packed, capfd):
    """DeepSpeed fp16 (half weights and activations, fp32 master weights, dynamic loss scaling) on 2 ranks: the
    step is the fp32 step up to half precision (same loss to 1 %, update along the fp32 gradient).

    DeepSpeed's CPU accelerator has fp16 only where oneDNN has fp16 kernels (AVX512-FP16 / AMX CPUs); on any
    other machine the trainer must refuse `deepspeed.fp16.enabled=true` at start, in one line naming it,
    before any process group or run folder exists — that is what is asserted there instead."""
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_fp16_supported():
        import torch.distributed as dist

        from aupretrain.train import main
        from tests.launch import common

        rc = main(common(packed, tmp_path, **{"tracking.enabled": "false"}) + ["deepspeed.fp16.enabled=true"])
        err = capfd.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "deepspeed.fp16.enabled=true" in err[0], err
        assert "has no fp16 support on this machine" in err[0] and "torch_autocast" in err[0]
        assert not dist.is_initialized() and not (tmp_path / "runs").exists()
        return
    got = run_ranks(tmp_path, world=2, k=1, name="tcl", precision="fp16")
    loss, grads = reference("tcl", 2 * B)
    assert got[0]["dtype"] == torch.float16 and not got[0]["skipped"]  # no overflow at scale 2^8
    assert torch.allclose(got[0]["loss"], loss, rtol=1e-2), (got[0]["loss"], loss)
    cos = torch.nn.functional.cosine_similarity(got[0]["delta"], grads, dim=0)
    assert cos > 0.99, f"fp16 update vs fp32 gradient: cosine {cos:.4f}"
    assert torch.equal(got[0]["delta"], got[1]["delta"])


@pytest.mark.slow
def test_hog_basis_is_fitted_from_every_ranks_clips(tmp_path):
    """CLP's within-clip HOG basis (fit after one step) holds the same directions on both ranks, and they are the
    directions one process fits from view 1 of the whole global batch: the engine gathered every rank's HOG."""
    from aupretrain.methods.hog_basis import WithinClipHOGBasis
    from aupretrain.objectives.hog import hog_descriptor

    world = 2
    got = run_ranks(tmp_path, world=world, k=1, name="clp_hb")
    assert torch.equal(got[0]["basis"], got[1]["basis"]) and torch.equal(got[0]["scale"], got[1]["scale"])
    view1 = global_batch(world * B)["view1"]
    norm = MODEL["mean"], MODEL["std"]
    hog = hog_descriptor(view1.flatten(0, 1), torch.tensor(norm[0]) * 255, torch.tensor(norm[1]) * 255, cell=4)
    one = WithinClipHOGBasis(hog.shape[1], k=3, fit_steps=1)
    one.accumulate(hog.view(world * B, T, -1))
    assert got[0]["basis"].abs().sum() > 0
    assert torch.allclose(got[0]["basis"], one.basis, atol=1e-4) and torch.allclose(got[0]["scale"], one.scale, rtol=1e-4)
