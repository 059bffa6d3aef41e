"""Synthetic talking-face world: the sound determines the mouth.

One random phoneme timeline drives both a formant speech synthesiser and the per-frame
mouth (opening, width, shape class); faces (a real astronaut portrait and drawn
identities, all found by mediapipe face mesh) are rendered with that mouth, head motion and
blinks. Used by tests, the tiny training preset, the demo and CPU benchmarks.

    clip = make_clip(seed=3, identity=1, resolution=256, seconds=4.0)
    clip.frames  # [T, R, R, 3] uint8;  clip.audio  # [T * 640] float32 at 16 kHz
    measure_mouth(clip.frames)  # ~ clip.mouth_open, read from the pixels
"""

from .audio import Speaker, speak, speaker_for_identity, synthesize
from .clip import VERSION, SynthClip, clip_seed, make_clip, read_sidecar, synth_dataset, write_clip
from .faces import IDENTITY_NAMES, NUM_IDENTITIES, face_model
from .measure import DEFAULT_MOUTH_REGION, LOWER_HALF_REGION, measure_mouth, region_from_face_box
from .phonemes import (
    PHONES,
    SHAPE_BILABIAL,
    SHAPE_FRICATIVE,
    SHAPE_NAMES,
    SHAPE_OPEN,
    SHAPE_ROUND,
    SHAPE_SILENCE,
    SHAPE_SPREAD,
    Segment,
    frame_truth,
    sample_timeline,
)

__all__ = [
    "DEFAULT_MOUTH_REGION",
    "IDENTITY_NAMES",
    "LOWER_HALF_REGION",
    "NUM_IDENTITIES",
    "PHONES",
    "SHAPE_BILABIAL",
    "SHAPE_FRICATIVE",
    "SHAPE_NAMES",
    "SHAPE_OPEN",
    "SHAPE_ROUND",
    "SHAPE_SILENCE",
    "SHAPE_SPREAD",
    "VERSION",
    "Segment",
    "Speaker",
    "SynthClip",
    "clip_seed",
    "face_model",
    "frame_truth",
    "make_clip",
    "measure_mouth",
    "read_sidecar",
    "region_from_face_box",
    "sample_timeline",
    "speak",
    "speaker_for_identity",
    "synth_dataset",
    "synthesize",
    "write_clip",
]
