"""What a sweep on a real SLURM cluster needed beyond hydra-submitit-launcher (used by the
launcher of `hydra/launcher=slurm|slurm_cpu`, hydra_plugins/fmnist_lab_launchers/):

- `check_request` asks the cluster whether it can run the jobs as configured (`sbatch
  --test-only`) before any job or folder exists: a partition that does not exist, or more CPUs,
  memory, GPUs or nodes than the partition has, is one line naming the launcher's key.
- `QueueWatcher`: submitit learns a job's state from `sacct`; a cluster that keeps no
  accounting answers it with an error, which submitit logged at every poll ("Bypassing sacct
  error"), and then never saw a job end that left no result (scancel, a node failure): the
  sweep waited forever. There the watcher asks `squeue` instead, once said.
- `record_lost_job` writes `status: failed` with the reason into the run folder of a job that
  ended without a result, so the sweep's summary names it and a rerun resumes it.

No torch here: the sweep's own process imports this.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from submitit.slurm.slurm import SlurmInfoWatcher

log = logging.getLogger("fmnist_lab")

KEY = "hydra.launcher"

# SLURM's message -> the launcher key that asked for it.
_REFUSALS = [
    ("Invalid partition", "partition"),
    ("invalid partition", "partition"),
    ("generic resource", "gpus_per_node"),
    ("time limit", "timeout_min"),
    ("Node count", "nodes"),
    ("Memory required", "mem_gb"),
]


class ClusterRefused(Exception):
    """The cluster cannot run the jobs as configured: `key` (a hydra.launcher key) says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def check_request(sbatch_script: str, params: dict[str, Any]) -> None:
    """Raise ClusterRefused naming the key when SLURM would refuse `sbatch_script` (the script
    submitit would submit; `params` the launcher's settings). Nothing is submitted."""
    try:
        proc = subprocess.run(["sbatch", "--test-only"], input=sbatch_script, text=True,
                              capture_output=True, timeout=60)
    except FileNotFoundError:
        raise ClusterRefused(KEY, "SLURM's sbatch is not on this machine: run on a "
                                  "cluster's login node, or start one here: make cluster") from None
    except subprocess.TimeoutExpired:
        raise ClusterRefused(KEY, "sbatch --test-only got no answer in 60 s: is slurmctld "
                                  "running? (make cluster starts a local one)") from None
    if proc.returncode == 0:
        return
    said = " ".join(line.split("error:", 1)[-1].split("failure:", 1)[-1].strip()
                    for line in proc.stderr.strip().splitlines()[-1:])
    if "Unable to contact slurm controller" in proc.stderr or "Connection refused" in said:
        raise ClusterRefused(KEY, f"the SLURM controller does not answer ({said}): is slurmctld "
                                  "running? (make cluster starts a local one)")
    for pattern, key in _REFUSALS:
        if pattern in proc.stderr:
            raise ClusterRefused(f"{KEY}.{key}", _explain(key, params, said))
    if "node configuration is not available" in said:
        key, message = _which_resource(params)
        raise ClusterRefused(key, message)
    raise ClusterRefused(KEY, f"SLURM refuses the job: {said}")


def _explain(key: str, params: dict[str, Any], said: str) -> str:
    value = params.get(key)
    if key == "partition":
        return f"{value!r} is not allowed: {said}; partitions here: {', '.join(partitions())}"
    if key == "gpus_per_node":
        return (f"{value!r} is not allowed: {said} (the partition has no GPUs? "
                "hydra/launcher=slurm_cpu asks for none)")
    return f"{value!r} is not allowed: {said}"


def partitions() -> list[str]:
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    return sorted({p.rstrip("*") for p in proc.stdout.split()}) or ["none found"]


def _which_resource(params: dict[str, Any]) -> tuple[str, str]:
    """Which of nodes, CPUs and memory asks more than the partition's nodes have."""
    partition = params.get("partition")
    command = ["sinfo", "-h", "-N", "-o", "%c %m"] + (["-p", partition] if partition else [])
    rows = [line.split() for line in subprocess.run(command, capture_output=True,
                                                    text=True).stdout.splitlines()]
    nodes = [(int(c), int(m)) for c, m in rows if c.isdigit() and m.isdigit()]
    where = f"partition {partition!r}" if partition else "the default partition"
    if not nodes:
        return KEY, f"SLURM cannot give the job what it asks for in {where}"
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    most_cpus = max(c for c, _ in nodes)
    most_mem_gb = max(m for _, m in nodes) // 1024
    if (params.get("nodes") or 1) > len(nodes):
        return f"{KEY}.nodes", (f"{params['nodes']} is not allowed: {where} has "
                                f"{len(nodes)} node(s)")
    if cpus > most_cpus:
        return f"{KEY}.cpus_per_task", (f"{params.get('cpus_per_task')} is not allowed: "
                                        f"{where}'s nodes have at most {most_cpus} CPUs")
    if (params.get("mem_gb") or 0) > most_mem_gb:
        return f"{KEY}.mem_gb", (f"{params['mem_gb']} is not allowed: {where}'s nodes have at "
                                 f"most {most_mem_gb} GB")
    return KEY, f"SLURM cannot give the job what it asks for in {where}"


# SLURM's states of a job that has ended (squeue --states=all shows them for MinJobAge).
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
         "OUT_OF_MEMORY", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}
GONE = "GONE"  # a job squeue listed and no longer lists: purged after it ended


class QueueWatcher(SlurmInfoWatcher):
    """submitit's watcher, which reads squeue where sacct does not work (no accounting)."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self.accounting: bool | None = None  # sacct works; None: not asked yet
        self._seen: set[str] = set()

    def update(self) -> None:
        if self.accounting is None:
            self.accounting = subprocess.run(["sacct", "-n", "-X", "-j", "1"],
                                             capture_output=True).returncode == 0
            if not self.accounting:
                log.debug("this cluster keeps no job accounting (sacct fails): job states "
                         "come from squeue")
        if self.accounting:
            super().update()
            return
        jobs = {x.split("_")[0] for x in self._registered - self._finished}
        if not jobs:
            return
        self._num_calls += 1
        proc = subprocess.run(["squeue", "--noheader", "--array", "--states=all",
                               "--format=%i|%T|%N"], capture_output=True, text=True)
        if proc.returncode == 0:  # else: SLURM did not answer this time; asked again later
            self._info_dict.update(self.read_queue(proc.stdout))
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def read_queue(self, text: str) -> dict[str, dict[str, str]]:
        """squeue's lines as sacct's records; a job no longer listed that was listed is GONE.
        A state that is not an end (CONFIGURING, REQUEUED, ...) reads as submitit's PENDING."""
        info = self.read_info("JobID|State|NodeList\n" + text)
        for record in info.values():
            if record["State"] not in ENDED and record["State"] != "RUNNING":
                record["State"] = "PENDING"
        for job_id in (self._registered - self._finished) & self._seen - info.keys():
            info[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        self._seen |= info.keys()
        return info


# One for the sweep's process, as submitit keeps one for all its SLURM jobs: one squeue call a
# poll for every job of the sweep. Asked at least once a minute.
QUEUE_WATCHER = QueueWatcher(delay_s=60)


def lost_job_reason(job_id: str, state: str) -> str:
    """Why a run has no result when its SLURM job ended without one."""
    how = {"CANCELLED": "was cancelled (scancel)", "NODE_FAIL": "lost its node",
           "OUT_OF_MEMORY": "ran out of memory (hydra.launcher.mem_gb)",
           "TIMEOUT": "reached its time limit without a requeue (hydra.launcher.timeout_min)",
           GONE: "ended"}.get(state.split()[0] if state else "", f"ended {state}")
    return (f"SLURM job {job_id} {how} before the run finished; rerun the same command "
            "to resume it from its last checkpoint")


def job_state(job: Any) -> str:
    """A finished job's state as the watcher last saw it ('CANCELLED by 0' -> 'CANCELLED')."""
    state = str(job.state or "")
    return re.split(r"\s", state, maxsplit=1)[0] if state else "UNKNOWN"


def record_lost_job(out_dir: Path, task_cfg: Any, overrides: list[str], reason: str) -> None:
    """`status: failed` with `reason` in out_dir's results.json, unless the run finished there
    (its job may have ended after writing it)."""
    from omegaconf import OmegaConf

    from fmnist_lab.results import FINISHED, read_results, record, write_results

    previous = read_results(out_dir) or {}
    if previous.get("status") in FINISHED:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir, record("failed", OmegaConf.to_container(task_cfg, resolve=False),
                                  overrides, None, error=reason))
