"""Multi-process runs on `jax.distributed`: joining a run, who writes, and the few
host-level agreements a data-parallel run needs.

Every process runs the same program on its own devices; the global batch axis is
sharded over the devices of all processes (`training/loop.py`). Besides the
step's own collectives, processes agree on three host-level things, each through
JAX's own collectives (gloo on CPU, NCCL on GPU), never a side channel:

* the padding budget of each global batch (`max_over_processes`), so that every
  process pads its shards to the same shape;
* the evaluation sums (`sum_over_processes`): each process evaluates every P-th
  batch, the per-batch sums are combined in batch order;
* which checkpoint to resume from (`broadcast`), decided by process 0.

Process 0 is the writer: logs, TensorBoard, progress bars and the checkpoint
files it owns (orbax has every process take part in a save and one write).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_ADDRESS = re.compile(r'^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$')
# What a lost peer looks like from inside a collective or the coordination client.
_PEER_LOST = ('gloo', 'connection reset', 'connection closed', 'socket closed',
              'heartbeat', 'coordination service', 'unavailable', 'barrier')


def check_flags(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None) -> None:
  """Checks the explicit multi-process flags; a one-line ValueError otherwise.

  Args:
    coordinator_address: process 0's `host:port`.
    num_processes: processes in the run.
    process_id: this process, in [0, num_processes).
  """
  given = {'--coordinator_address': coordinator_address,
           '--num_processes': num_processes, '--process_id': process_id}
  missing = [k for k, v in given.items() if v is None]
  if len(missing) not in (0, 3) or (missing and coordinator_address == ''):
    raise ValueError(f'multi-process flags go together: also give {", ".join(missing)} '
                     '(or none of them, with --distributed on a cluster JAX detects).')
  if missing:
    return
  if not _ADDRESS.match(coordinator_address) or not 0 < int(
      _ADDRESS.match(coordinator_address).group(2)) < 65536:
    raise ValueError(f'--coordinator_address={coordinator_address!r} is not host:port '
                     '(e.g. node001:23456, the address of process 0).')
  if num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be at least 1.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} is out of range for '
                     f'--num_processes={num_processes} (0 .. {num_processes - 1}).')


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 120,
               heartbeat_s: int = 30) -> None:
  """Joins a multi-process run (all three flags, or none to let JAX detect SLURM,
  Open MPI, Kubernetes, ...).

  Args:
    coordinator_address: process 0's `host:port`.
    num_processes: processes in the run.
    process_id: this process.
    timeout_s: how long to wait for every process to join.
    heartbeat_s: a process silent for this long counts as lost.

  Raises:
    ValueError: one line, for malformed flags or a run that cannot be joined.
  """
  check_flags(coordinator_address, num_processes, process_id)
  where = (f'{coordinator_address} as process {process_id} of {num_processes}'
           if coordinator_address else 'the cluster JAX detected')
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_s)
  except Exception as e:  # grpc / XLA errors: multi-line and deep.
    raise ValueError(f'could not join the run at {where} within {timeout_s} s '
                     f'({first_line(e)}); check that --coordinator_address is process '
                     "0's host:port, reachable from here, and that every process is "
                     'started.') from e


def first_line(error: BaseException, limit: int = 160) -> str:
  """The first line of an error's message, shortened."""
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= limit else line[:limit - 3] + '...'


def is_peer_lost(error: BaseException) -> bool:
  """Whether `error` says that another process of a multi-process run is gone."""
  if jax.process_count() == 1:
    return False
  # Whatever its type: a failed collective can surface as a ValueError too (seen
  # from the padding agreement's all-gather).
  text = str(error).lower()
  return any(p in text for p in _PEER_LOST)


def is_writer() -> bool:
  """Process 0 writes logs, TensorBoard, progress bars and console lines."""
  return jax.process_index() == 0


def max_over_processes(value: int) -> int:
  """The largest `value` any process holds (every process must call it)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """Elementwise sum of each process's float64 `values` (same shape everywhere)."""
  values = np.asarray(values, np.float64)
  if jax.process_count() == 1:
    return values
  # float64 would be truncated to float32 without jax_enable_x64: travel as bits.
  bits = multihost_utils.process_allgather(values.view(np.int32))
  return np.asarray(bits).reshape(jax.process_count(), *values.view(np.int32).shape
                                  ).view(np.float64).reshape(
                                      jax.process_count(), *values.shape).sum(0)


def broadcast(value: int) -> int:
  """Process 0's `value`, in every process."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def barrier(name: str) -> None:
  """Waits until every process reaches `name`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def data_mesh(batch_size: int, shards_per_device: int = 1
              ) -> tuple[Mesh, list[int]]:
  """(mesh of every device of every process, batch axis 'data'; the shards of the
  global batch this process builds: those of its own devices, `shards_per_device`
  consecutive ones each).

  Raises:
    ValueError: one line, when the device count does not divide `batch_size`.
  """
  devices = jax.devices()
  if batch_size % len(devices):
    raise ValueError(
        f'--batch_size={batch_size} is not divisible by the {len(devices)} devices of '
        f'the run ({jax.process_count()} process(es) x {jax.local_device_count()} '
        f'device(s)); pick a multiple of {len(devices)}.')
  mesh = Mesh(np.array(devices), ('data',))
  local = [i * shards_per_device + j for i, d in enumerate(mesh.devices.flat)
           if d.process_index == jax.process_index() for j in range(shards_per_device)]
  return mesh, local


def global_batch(graphs: Any, mesh: Mesh) -> Any:
  """This process's stacked shards -> the global batch, sharded over 'data'."""
  sharding = NamedSharding(mesh, P('data'))
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a),
                      graphs)


def local_copy(tree: Any) -> Any:
  """Replicated global arrays -> copies on this process's first device, for work
  each process does alone (its share of an evaluation)."""
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(lambda a: a.addressable_shards[0].data
                      if isinstance(a, jax.Array) else a, tree)
