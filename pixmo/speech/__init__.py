"""Speech to text for spoken captions: audio decoding, Whisper backends, quality control and the bundled weights."""
