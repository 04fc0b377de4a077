"""The robot-side runtime: a predictor loaded once, for clips and for live or recorded sensors.

>>> from karmma.runtime import load, VideoSource, AudioSource
>>> predictor = load("deploy")  # karmma export MODEL --pipeline --out deploy: no PyTorch needed
>>> predictor.predict_clip("clip.mp4")["topk"]["verb"][0]  # doctest: +SKIP
>>> for hop in predictor.stream([VideoSource("/dev/video0", "v4l2"), AudioSource("default", "pulse")]):
...     print(hop["t"], hop["topk"], hop["coverage"])  # doctest: +SKIP

docs/deploy.md has the whole API, the JSON each hop yields and a ROS 2 node.
"""

from karmma.runtime.predictor import Predictor, load
from karmma.runtime.sources import AudioSource, PushSource, SignalSource, VideoSource
from karmma.runtime.stream import Streamer

__all__ = ["AudioSource", "Predictor", "PushSource", "SignalSource", "Streamer", "VideoSource", "load"]
