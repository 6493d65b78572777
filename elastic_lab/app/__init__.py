"""The demo app's logic (``app.py`` at the repository root holds the Gradio layout).

- :mod:`.service`: ``DetectorService`` (loaded checkpoints, detection, scale sweeps under one
  model lock with a busy refusal) and ``generate_scene`` (a synthetic scene with its ground
  truth).
- :mod:`.report`: the summary, the caveat next to the boxes and the sweep chart, all computed
  from the result.
- :mod:`.files`: bounded result folders, example images written without following links,
  checkpoint choices by name.
- :mod:`.guard`: every way an image arrives checked before it costs memory (an ASGI middleware
  and the image input's preprocessing), and clean error texts.

Image validation itself lives in :mod:`elastic_lab.data.image`, the PIL drawing in
:mod:`elastic_lab.viz.draw`.
"""
