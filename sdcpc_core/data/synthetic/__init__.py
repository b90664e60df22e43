"""A procedural driving video with Cityscapes classes, for training and testing without data downloads.

Every video is a drive along a straight street, rendered with a pinhole camera from a world that a
seed fixes: a road with 2-4 lanes (oncoming traffic on the left half, lane markings, crossings,
parking lanes), kerbs, sidewalks with poles, traffic signs and trees, terrain, a frontage of
buildings (with windows), hedges, walls, fences and gaps, a backdrop of tree lines or a skyline,
and a sky with drifting clouds. Cars drive in their lanes at their own speeds or stand parked;
people walk along the sidewalks. The camera moves forward (slow speed changes), sways in its lane
and vibrates; the light drifts slowly. Colours, widths, heights and densities vary from seed to
seed, and every surface carries cheap procedural texture (asphalt grain, tiles, windows, leaves,
clouds), so no class is separable by flat colour.

On top of the clean image, a frame can carry *corruptions* that make it ambiguous on its own but
that the previous frames resolve, so that temporal context pays off:

* ``noise``: heavy sensor noise (sigma ``heavy_noise_sigma`` grey levels) for ``noise_frames``;
* ``blur``: linear motion blur (``blur_length`` x width pixels) for ``blur_frames``;
* ``flicker``: an exposure jump of ``flicker_stops`` stops (darker or brighter, clipping);
* ``occlusion``: a wiper sweep, a lens-dirt blob or a glare blob over ``occlusion_area`` of the
  image for ``occlusion_frames``;
* ``drop``: the camera delivers nothing for ``drop_frames`` frames (``SyntheticDrive.__iter__``
  skips them, so stamps jump; ``write_vspw`` leaves gaps in the frame numbers).

Each kind is an *event*: on every frame where no event of that kind is running, one starts with
probability ``p_<kind>`` and lasts a number of frames drawn from ``<kind>_frames`` (inclusive), so
``p = 1`` corrupts every frame and ``p = 0`` none (the first frame is never dropped). A weak sensor
noise (``noise_sigma``) and lens blur (``lens_blur``) are always on and are not listed as
corruptions. Labels always describe the TRUE scene: corruptions never touch them (a car behind a
wiper stays ``car``).

Labels are Cityscapes train ids (:data:`SYNTHETIC_CLASSES`): road, sidewalk, building, wall, fence,
pole, traffic sign, vegetation, terrain, sky, person and car occur; 255 (ignore) does not, but
keeps its meaning.

Determinism: a frame is a pure function of ``(config, seed, index)``: the world, the trajectories
and the corruption events are drawn once per video from ``numpy.random.SeedSequence([seed, ...])``
streams, and each frame's own randomness (noise, stamp jitter) from a stream keyed by its index, so
random access gives bitwise the frames that sequential reading gives.

Speed (default config at 240x480, one process, one thread, on a 2-core virtual machine shared with
other jobs): median 65 frames/s over five 300-frame videos (57-72), about 15 ms a frame (6 ms ray
casting, 3.5 ms objects, 2.5 ms composition, 2 ms camera effects); ``write_vspw`` adds about 2 ms a
frame for JPEG and PNG encoding, and ``sdcpc-synth --workers 2`` wrote 3000 frames (2919 delivered)
in 34 s. These figures are with :func:`keep_heap`, which ``write_vspw``'s worker processes and the
generating commands call; without it glibc returns the freed heap after every frame and a frame
takes about twice as long.

``write_vspw`` writes videos in the VSPW 480p layout that :class:`sdcpc_core.data.VSPWDataset`
reads; ``sdcpc-synth`` (:mod:`sdcpc_core.tools.synth`) is its command line.

Modules: :mod:`.config` (``SyntheticConfig``), :mod:`.scene` (the ``World`` a seed fixes: layout,
materials, objects and motion), :mod:`.rendering` (``Renderer``: one frame's clean radiance and
labels), :mod:`.corruptions` (event schedule and ``CameraEffects``), :mod:`.drive`
(``SyntheticDrive``), :mod:`.vspw` (``write_vspw``), :mod:`.sampling` (seeded random streams).
"""
from .config import CORRUPTIONS, FRONTAGES, SyntheticConfig
from .drive import SyntheticDrive, SyntheticFrame, keep_heap
from .scene import SYNTHETIC_CLASSES
from .vspw import video_name, write_vspw

__all__ = ["SYNTHETIC_CLASSES", "CORRUPTIONS", "FRONTAGES", "SyntheticConfig", "SyntheticFrame", "SyntheticDrive",
           "write_vspw", "video_name", "keep_heap"]
