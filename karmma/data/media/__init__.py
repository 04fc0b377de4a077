"""Media decoding (PyAV video and audio, images, optical flow), bounded on hostile files."""
