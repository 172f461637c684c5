"""The heart over the whole cardiac cycle.

===========  ===================================================================================================
module       what it holds
===========  ===================================================================================================
``track``    ``track_cine``: the ED frame registered to every frame of a cine in batched forward passes, its labels
             carried along, volume curves, per-frame codes and folding; ``track_files`` and ``cvae track``
===========  ===================================================================================================
"""
