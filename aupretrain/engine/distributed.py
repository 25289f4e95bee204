"""Process-group set-up and collectives. The only place that knows about ranks."""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


# torch.distributed.nn.functional.all_gather still calls the deprecated all_gather_into_tensor on every step.
warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*torch.distributed.nn.functional.*", category=FutureWarning)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (`init_distributed`): global `rank` of `world` processes, `local_rank` of
    `local_world` on its machine (LOCAL_RANK, LOCAL_WORLD_SIZE or SLURM_NTASKS_PER_NODE; default the world)."""
    rank: int
    world: int
    local_rank: int
    local_world: int

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_inference_shm_op() -> bool:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce (`deepspeed_shm_comm`).

    `deepspeed.init_distributed` on the CPU accelerator builds that C++ op (40-70 s on the first run of a machine,
    and g++ + ninja must be installed) for one use: `inference_all_reduce`, the collective of DeepSpeed's inference
    tensor parallelism (`deepspeed/module_inject`). Training — ZeRO's all-reduce, reduce-scatter and all-gather —
    goes through torch.distributed (gloo here) and never calls it. Marking the op incompatible in DeepSpeed's
    table of compatible ops (`deepspeed.ops.__compatible_ops__`, read by `deepspeed.comm.torch.build_shm_op`)
    leaves `shm_comm_op` None, DeepSpeed's own fallback on a platform without the kernel.

    Returns whether the table was changed (False with a DeepSpeed that has no such table or op: nothing to skip).
    """
    try:
        import deepspeed.ops as ops
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    except (ImportError, AttributeError, TypeError):
        return False
    return True


def init_distributed(timeout_s: float | None = None) -> DistInfo:
    """Join the process group set up by deepspeed / torchrun / srun, or make a group of one.

    `timeout_s`: how long a collective may wait for the other ranks before it fails the job (a dead or stuck
    rank; torch.distributed's `timeout`, default 30 min). With gloo a dead peer usually fails the collective at
    once; with NCCL the timeout is what ends the wait.

    Raises:
        UsageError: the rendezvous port is taken (a second job on the host with the launcher's default port).
    """
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:  # srun without a launcher
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if "RANK" not in os.environ:  # plain `python aupretrain/train.py`
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if torch.cuda.is_available():  # before anything touches CUDA (the DALI pipeline is built before DeepSpeed)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    if not dist.is_initialized():
        from datetime import timedelta

        kw = {"timeout": timedelta(seconds=float(timeout_s))} if timeout_s else {}
        if not torch.cuda.is_available():
            skip_inference_shm_op()
        try:
            deepspeed.init_distributed(auto_mpi_discovery=False, **kw)
        except RuntimeError as e:  # torch's DistNetworkError: the rendezvous port is taken (a second job here)
            if "EADDRINUSE" not in str(e) and "address already in use" not in str(e).lower():
                raise
            from ..errors import UsageError

            raise UsageError(f"the rendezvous port {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                             "is in use (another job on this host?): give another one — deepspeed --master_port P, "
                             "torchrun --master_port P (or --rdzv-endpoint), MASTER_PORT=P") from None
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", world)))
    return DistInfo(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", 0)), local_world)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0 (rank order), keeping the autograd graph.

    Backward sums the gradients that every rank's loss sends to each rank's slice, so with the usual
    gradient averaging across ranks the update equals that of one process on the whole batch.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank along dim 0 (rank order), without autograd (e.g. MoCo's queue keys)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def mean_across_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average detached scalars over ranks in one collective (for logging). The scalars may lie on different
    devices (a counter kept on the CPU beside a loss on the GPU: `torch.stack` refused them on any GPU run, one
    rank too): they meet on the accelerator's, where NCCL needs them anyway."""
    if not values:
        return {}
    names = sorted(values)
    dev = next((v.device for v in values.values() if v.device.type != "cpu"), torch.device("cpu"))
    t = torch.stack([values[n].detach().float().reshape(()).to(dev) for n in names])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return {n: float(v) for n, v in zip(names, t.tolist())}


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src` on every rank (a picklable object; `obj` itself without a process group of more than one)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a picklable object per rank; [obj] without a group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every rank reaches this point (nothing without a process group of more than one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
