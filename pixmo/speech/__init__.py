"""Speech to text for spoken captions: audio, Whisper backends, quality control, bundled weights."""
