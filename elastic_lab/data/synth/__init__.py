"""Synthetic, scale-diverse detection data in COCO format (``elastic-lab synth``).

The set is built to make the Elastic-DETR phenomenon visible on a CPU: six shape classes that
differ only by a fine detail (disc / ring, square / square with a cross, triangle / triangle
with a dot), drawn at a per-image zoom level that ranges from ~6 px objects to objects larger
than half the image. A tiny ring is hard to tell from a tiny disc at the detector's stride, so
images full of tiny objects profit from up-scaling; large objects keep their detail when the
image is down-scaled, so those images can be processed cheaply.

Backgrounds are cluttered: random crops of photographs (four shipped ones by default, or the
caller's files), colour gradients, low-frequency texture, distractor lines / blobs / elongated
ellipses / arcs (never one of the classes), and pixel noise. All drawing is anti-aliased.

By concern:

- :mod:`.drawing`: the six classes and anti-aliased pasting;
- :mod:`.backgrounds`: photographs (an explicit, recorded input), gradients, distractors;
- :mod:`.scenes`: regimes, image sizes, :func:`render_scene`;
- :mod:`.writing`: COCO-format splits (:func:`generate`), the example images, the CLI.
"""

from .backgrounds import PHOTO_NAMES, background_record, load_photos
from .drawing import CLASS_NAMES, SUPERSAMPLE
from .scenes import (
    ASPECT_RANGE,
    LONG_SIDE_RANGE,
    MAX_OBJECTS,
    MIN_OBJECT_SIDE,
    REGIME_BLOCK,
    REGIMES,
    regime_for_index,
    render_scene,
    sample_size,
)
from .writing import (
    EXAMPLE_SIZE,
    SPLITS,
    add_arguments,
    categories_for,
    generate,
    generate_split,
    run,
    write_examples,
)

__all__ = [
    "ASPECT_RANGE", "CLASS_NAMES", "EXAMPLE_SIZE", "LONG_SIDE_RANGE", "MAX_OBJECTS",
    "MIN_OBJECT_SIDE", "PHOTO_NAMES", "REGIMES", "REGIME_BLOCK", "SPLITS", "SUPERSAMPLE",
    "add_arguments", "background_record", "categories_for", "generate", "generate_split",
    "load_photos", "regime_for_index", "render_scene", "run", "sample_size", "write_examples",
]
