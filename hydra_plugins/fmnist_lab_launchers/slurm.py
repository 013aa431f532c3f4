"""`hydra/launcher=slurm` and `slurm_cpu`: hydra-submitit-launcher's SlurmLauncher (one SLURM job
per run, requeued at a time limit or a preemption and resumed from the run's checkpoint), with
what a sweep on a real cluster needed (fmnist_lab.slurm):

- `setup` asks SLURM whether it would run the jobs as configured (`sbatch --test-only`) before
  any job or folder exists: a missing partition or resources the cluster cannot give is one
  line naming the hydra.launcher key.
- Job states come from squeue where the cluster keeps no accounting (no per-poll warning).
- A job that ended without a result (scancel, a lost node) leaves its run `status: failed`
  with the reason, and the sweep goes on; its summary names the run, and a rerun resumes it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class SlurmLauncher(SubmititSlurmLauncher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        from fmnist_lab.slurm import ClusterRefused, check_request

        executor = self._executor()
        try:
            check_request(executor._executor._make_submission_file_text("true", "check"),
                          self.params)
        except ClusterRefused as e:
            sys.exit(f"error: {e}")

    def _executor(self) -> Any:
        """submitit's executor with this launcher's settings (as the base class makes it)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        from fmnist_lab.slurm import QUEUE_WATCHER

        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                               Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        for job in jobs:  # states from squeue where sacct does not work (fmnist_lab.slurm)
            job.watcher = QUEUE_WATCHER
            job._register_in_watcher()
        return [self._result(job, overrides, idx)
                for job, (overrides, _, idx, _, _) in zip(jobs, job_params, strict=True)]

    def _result(self, job: Any, overrides: list[str], idx: int) -> JobReturn:
        """The job's JobReturn; for a job that ended without one, its run recorded as failed
        with the reason, and a completed JobReturn whose value is None (as for a failed run),
        so the sweep goes on and its summary names the run."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        from fmnist_lab.slurm import job_state, lost_job_reason, record_lost_job

        try:
            return job.results()[0]
        except FailedJobError as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            reason = (f"SLURM job {job.job_id} failed: {lines[-1] if lines else e} "
                      f"(its log: {job.paths.stderr})")
        except UncompletedJobError:
            reason = lost_job_reason(job.job_id, job_state(job))
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = job.job_id
            sweep_config.hydra.job.num = idx
        out_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with read_write(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(out_dir.absolute())
        task_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
        record_lost_job(out_dir, task_cfg, list(overrides), reason)
        print(f"error: run {out_dir.name}: {reason}", file=sys.stderr, flush=True)
        return JobReturn(overrides=overrides, cfg=task_cfg, hydra_cfg=sweep_config,
                         working_dir=str(out_dir), task_name=str(sweep_config.hydra.job.name),
                         status=JobStatus.COMPLETED, _return_value=None)
