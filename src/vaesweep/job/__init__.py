"""The steps of one training job, beside :func:`vaesweep.train.run_job` which reads them in order:
``checks`` (config checks, :func:`~vaesweep.job.checks.prepare`, ``validate_job``), ``hardware``
(threads, GPU share, allocator, fast path), ``resume`` (``ckpt_path``, mid-epoch resume, random
state), ``callbacks``, ``context`` (what a job reads from Hydra), ``faults`` and ``pictures``."""
