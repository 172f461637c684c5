"""The heart over the whole cardiac cycle.

=============  =================================================================================================
module         what it holds
=============  =================================================================================================
``track``      ``track_cine``: the ED frame registered to every frame of a cine in batched forward passes, its
               labels carried along, volume curves, per-frame codes and folding; ``track_files`` and ``cvae track``
``cycles``     a cohort's cines tracked once into motion matrices (codes per frame) and ED crops; ``.npz`` cache
``model``      the motion model: a temporal network over a cycle's codes with temporal dropout, an ED context and
               a cycle style ``w ~ N(0, I)``
``train``      fitting it to a cohort's cycles (``cvae train-motion``), choosing the best validation step
``cycle``      what it does: ``interpolate`` hidden frames, ``simulate`` a cycle from ED alone, ``transport_cycle``
               onto another heart, ``decode_cycle`` and ``cycle_volumes``
``evaluate``   measuring tracking, interpolation (against linear and cubic baselines) and simulation against the
               synthetic cohort's exact cycles (``benchmarks/motion_eval.py``)
=============  =================================================================================================
"""
