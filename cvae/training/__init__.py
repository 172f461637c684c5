"""Training: the run's configuration, the generic loop, the CVAE's objective and its warm-up, ``cvae train``.

=============  ===============================================================================================
module         what it holds
=============  ===============================================================================================
``config``     ``RunConfig`` (what every run shares) and ``TrainConfig`` (the CVAE's run, holding its ``ModelConfig``)
``loop``       ``fit``: the loop shared with the VoxelMorph baseline; validation, checkpoints, resume, the log
``objective``  ``Objective``: the negative ELBO a step minimises (+ warm-up, + optional label term); its schedule
``warmup``     the code warm-up against posterior collapse (a label-free target for the code's first steps)
``train``      ``train(config)`` and ``cvae train`` (single process or ``torchrun``)
=============  ===============================================================================================
"""
