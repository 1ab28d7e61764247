"""Depth and camera poses of a source video (Depth Anything 3) and the release's depth step."""
