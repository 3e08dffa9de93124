"""torch.distributed set-up for learner ranks: loopback-bound store, backend chosen by device (rl/transport.py)."""
from __future__ import annotations

import os
import socket

import torch.distributed as dist

from rl.transport import backend


def init_group(rank: int, world_size: int, master_addr: str, master_port: int,
               listen_socket: socket.socket | None = None) -> None:
    """Join the learner's process group (rank 0 hosts the store on listen_socket)."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return
    if master_addr == "127.0.0.1":  # gloo's own listening device follows the hostname unless told
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    kwargs = {}
    if rank == 0 and listen_socket is not None:
        kwargs["master_listen_fd"] = listen_socket.fileno()
    store = dist.TCPStore(master_addr, master_port, world_size, is_master=(rank == 0), **kwargs)
    dist.init_process_group(backend(), store=store, rank=rank, world_size=world_size)
