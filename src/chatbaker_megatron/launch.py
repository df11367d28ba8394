"""Start torchrun for a run when the train command is not already under it.

`chatbaker train` and Hydra multirun points call this from a plain process:
it builds the torchrun command for this node (rendezvous from MASTER_ADDR /
MASTER_PORT / NNODES / NODE_RANK, or from SLURM's variables) and runs it.
Under torchrun (LOCAL_RANK set) training starts directly instead.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _first_slurm_host() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    ).stdout.split()
    return hosts[0]


def torchrun_command(nnodes: int, nproc_per_node: int, module: str, args: list[str]) -> list[str]:
    """The torchrun command line for this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if "SLURM_JOB_NODELIST" in os.environ and "MASTER_ADDR" not in os.environ:
            master, node_rank = _first_slurm_host(), os.environ["SLURM_NODEID"]
        else:
            missing = [v for v in ("MASTER_ADDR", "NODE_RANK") if v not in os.environ]
            if missing:
                raise RuntimeError(
                    f"a {nnodes}-node run needs {', '.join(missing)} in the environment on every "
                    "node (or launch it through SLURM, or with launch/torchrun_multinode.sh)"
                )
            master, node_rank = os.environ["MASTER_ADDR"], os.environ["NODE_RANK"]
        port = os.environ.get("MASTER_PORT", "29500")
        cmd += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={master}:{port}",
        ]
    return [*cmd, "-m", module, *args]


def run_torchrun(nnodes: int, nproc_per_node: int, module: str, args: list[str]) -> int:
    cmd = torchrun_command(nnodes, nproc_per_node, module, args)
    log.info("launching: %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode
