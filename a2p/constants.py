"""Facts of the recorded data, named once and derived where they can be.

The reference scatters these as magic numbers (1600, 30, 48000); here each has a name.
"""

FPS = 30
"""Motion frame rate (frames per second) of poses and face codes."""

SAMPLE_RATE = 48_000
"""Audio sample rate of the recordings (Hz)."""

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
"""Audio samples per motion frame (1600)."""

AUDIO_CHANNELS = 2
"""Channel 0 is the person being modelled, channel 1 the conversation partner."""

POSE_DIM = 104
"""Width of a body pose: joint angles per frame."""

FACE_DIM = 256
"""Width of a face expression code per frame."""

FEATURE_RATE_HZ = 100
"""Frame rate of audio features produced by every featurizer."""

SAMPLES_PER_FEATURE = SAMPLE_RATE // FEATURE_RATE_HZ
"""Audio samples per audio-feature frame (480)."""

KEYFRAME_INTERVAL = FPS
"""Guide poses are one keyframe every this many frames (1 fps)."""

PEOPLE = ("PXB184", "RLW104", "TXB805", "GQS883")
"""The four captured people of the Audio2Photoreal dataset."""

WRAPPED_POSE_PEOPLE = ("PXB184", "RLW104")
"""Capture 1 and 2: pose channel `WRAPPED_POSE_CHANNEL` must be wrapped into [0, 2*pi)."""

WRAPPED_POSE_CHANNEL = 3

VAL_SCENES = 2
"""Scenes after the training scenes (in scene order) that form the validation split."""

TEST_SCENES = 4
"""Last scenes (in scene order) that form the test split."""

SPLITS = ("train", "val", "test")

CROP_MIN_FRAMES = 400
"""Shortest random training crop (frames)."""

CROP_MAX_FRAMES = 600
"""Training crops are padded to this length; lengths are drawn from [CROP_MIN_FRAMES, CROP_MAX_FRAMES)."""
