"""Process groups for multi-GPU / multi-node runs, launched by ``torchrun`` or ``mpiexec``.

Nothing happens at import (SPEC section 10: the original imported mpi4py and set
devices at import time). ``setup_dist()`` reads the launcher's environment:
- torchrun: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
- mpiexec (MPICH's PMI_RANK, Open MPI's OMPI_COMM_WORLD_RANK, ...): mpi4py is
  imported then, rank 0 picks a free TCP port and shares it with the others;
- neither: a single process without a process group.
Backend: NCCL when CUDA is available, gloo otherwise.
"""
from __future__ import annotations

import os
import socket

import torch as th
import torch.distributed as dist

from .errors import UserError

_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_local_rank = 0


def _launched_by_mpi() -> bool:
    return any(v in os.environ for v in _MPI_RANK_VARS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def setup_dist(backend: str | None = None) -> None:
    """Join the process group of this launch (no-op for a single process or if already set up)."""
    global _local_rank
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if th.cuda.is_available() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        _local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if int(os.environ["WORLD_SIZE"]) > 1:
            if backend == "nccl":
                th.cuda.set_device(_local_rank)
            dist.init_process_group(backend=backend, init_method="env://")
        return
    if _launched_by_mpi():
        from mpi4py import MPI  # imported only when launched by mpiexec

        comm = MPI.COMM_WORLD
        if comm.Get_size() == 1:
            return
        _local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        single_node = _single_node(comm)  # a collective: every rank calls it
        if comm.Get_rank() == 0:
            host = "127.0.0.1" if single_node else socket.gethostbyname(socket.getfqdn())
            address = (host, _free_port())
        else:
            address = None
        host, port = comm.bcast(address, root=0)
        if backend == "nccl":
            th.cuda.set_device(_local_rank)
        dist.init_process_group(backend=backend, init_method=f"tcp://{host}:{port}",
                                rank=comm.Get_rank(), world_size=comm.Get_size())


def _single_node(comm) -> bool:
    names = comm.allgather(socket.gethostname())
    return len(set(names)) == 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def dev(force: str | None = None) -> th.device:
    """This process's device: ``force`` if given ("cpu", "cuda", "cuda:1"), else its GPU when
    CUDA is available, else the CPU."""
    if force:
        device = th.device(force)
        if device.type == "cuda" and not th.cuda.is_available():
            raise UserError(f"--device {force}: CUDA is not available on this machine")
        return device
    if th.cuda.is_available():
        return th.device("cuda", _local_rank % th.cuda.device_count())
    return th.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` (picklable) on every rank; ``obj`` itself in a single process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_params(params) -> None:
    """Broadcast parameters from rank 0 so every rank starts identical."""
    if not dist.is_initialized():
        return
    for p in params:
        with th.no_grad():
            dist.broadcast(p, 0)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
