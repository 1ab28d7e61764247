"""mp4 reading and writing with PyAV (FFmpeg), shared by the data pipeline and the sampler.

Frames are uint8 [T, H, W, 3] RGB. Videos are H.264, yuv420p by default (what every player
reads) or yuv444p; height and width must be even. A ``source`` is a path or a binary file object
(``io.BytesIO``), so the same functions encode and decode videos held in memory.
Encoded bytes are not bit-stable: this FFmpeg/x264 build's output for identical frames varies
slightly from call to call (observed even single-threaded), so compare decoded videos by PSNR.
Every failure to read raises :class:`VideoReadError`, naming the file and what was expected.
"""

import fractions
import io
import os
from typing import Any, BinaryIO

import av
import numpy as np

VideoSource = str | os.PathLike | BinaryIO
# The index (moov atom) goes first, so players can stream the file and a truncated file still opens
# and is caught by the frame count check in read_video.
_MUXER_OPTIONS = {"movflags": "faststart"}


class VideoReadError(ValueError):
  """A video that cannot be opened or decoded, or that holds fewer frames than it claims."""


def _name(source: VideoSource) -> str:
  return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<in-memory video>"


def _open(source: VideoSource):
  if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
    raise VideoReadError(f"{_name(source)}: no such video file")
  if not isinstance(source, (str, os.PathLike)):
    source.seek(0)
  try:
    container = av.open(source, mode="r")
  except (av.error.FFmpegError, OSError) as e:
    raise VideoReadError(f"{_name(source)}: cannot open as a video ({e})") from e
  if not container.streams.video:
    container.close()
    raise VideoReadError(f"{_name(source)}: has no video stream")
  return container


def _count_packets(container) -> int:
  stream = container.streams.video[0]
  return sum(1 for p in container.demux(stream) if p.size > 0)


def video_info(source: VideoSource) -> dict[str, Any]:
  """Header facts: ``num_frames``, ``fps`` (float), ``height``, ``width``, ``codec``.

  ``num_frames`` is the container's frame count, or the number of video packets where the
  container does not state one.
  """
  container = _open(source)
  try:
    stream = container.streams.video[0]
    num_frames = int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    info = {
        "fps": float(rate) if rate else 0.0,
        "height": int(stream.codec_context.height),
        "width": int(stream.codec_context.width),
        "codec": stream.codec_context.name,
    }
    if num_frames <= 0:
      num_frames = _count_packets(container)
    info["num_frames"] = num_frames
    return info
  except av.error.FFmpegError as e:
    raise VideoReadError(f"{_name(source)}: cannot read the header ({e})") from e
  finally:
    container.close()


def read_video(source: VideoSource, start: int = 0, stop: int | None = None,
               stride: int = 1) -> np.ndarray:
  """Decode frames ``start, start + stride, ... < stop`` as uint8 [T, H, W, 3] RGB.

  ``stop=None`` means the end of the video. Raises :class:`VideoReadError` if the file cannot be
  decoded, if it holds fewer frames than its header states (a truncated file), or if the
  requested range goes past the last frame.
  """
  if start < 0 or stride < 1 or (stop is not None and stop <= start):
    raise ValueError(f"read_video needs 0 <= start < stop and stride >= 1; got start={start}, "
                     f"stop={stop}, stride={stride}")
  container = _open(source)
  name = _name(source)
  frames = []
  decoded = 0
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster on long videos
    declared = int(stream.frames)
    for frame in container.decode(stream):
      index = decoded
      decoded += 1
      if stop is not None and index >= stop:
        break
      if index >= start and (index - start) % stride == 0:
        frames.append(frame.to_ndarray(format="rgb24"))
  except av.error.FFmpegError as e:
    raise VideoReadError(f"{name}: decoding failed after {decoded} frames ({e})") from e
  finally:
    container.close()
  stopped_early = stop is not None and decoded > stop
  if declared > 0 and decoded < declared and not stopped_early:
    raise VideoReadError(f"{name}: truncated or corrupt: the header states {declared} frames, "
                         f"only {decoded} decode")
  available = min(decoded, declared) if declared > 0 else decoded
  if stop is not None and stop > available and not stopped_early:
    raise VideoReadError(f"{name}: frames [{start}, {stop}) requested, the video has {available}")
  if not frames:
    raise VideoReadError(f"{name}: no frames in [{start}, {stop}) with stride {stride} "
                         f"(the video has {available})")
  return np.stack(frames)


def write_video(target: VideoSource, frames: np.ndarray, fps: float = 15, crf: int = 18,
                preset: str = "medium", pix_fmt: str = "yuv420p") -> None:
  """Encode uint8 [T, H, W, 3] RGB frames as H.264 mp4 at ``fps``.

  ``crf`` is x264's constant rate factor (0 = lossless luma, 18 = visually near-lossless, the
  default). ``pix_fmt`` "yuv420p" (every player) halves the chroma resolution, which costs
  colourful fine texture a lot; "yuv444p" (High 4:4:4) keeps it. ``target`` is a path or a
  writable binary file object.
  """
  if pix_fmt not in ("yuv420p", "yuv444p"):
    raise ValueError(f"pix_fmt must be 'yuv420p' or 'yuv444p', got {pix_fmt!r}")
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_video expects uint8 [T, H, W, 3] frames; got {frames.dtype} "
                     f"{frames.shape}")
  t, h, w, _ = frames.shape
  if t == 0 or h % 2 or w % 2:
    raise ValueError(f"write_video needs at least one frame and even height/width (H.264); "
                     f"got T={t}, H={h}, W={w}")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  if isinstance(target, (str, os.PathLike)):
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    container = av.open(target, mode="w", options=_MUXER_OPTIONS)
  else:
    container = av.open(target, mode="w", format="mp4")  # faststart needs a re-readable file
  try:
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    # No macroblock tree: with it this build of x264 writes a different stream for the same
    # frames from one call to the next (up to 32 grey levels apart once decoded), so generated
    # scenes and the demo's numbers changed from run to run; without it the output is one
    # stream, about a fifth larger at equal or better PSNR (docs/reliability.md).
    stream.options = {"crf": str(int(crf)), "preset": preset, "x264-params": "mbtree=0"}
    for index, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(image, format="rgb24")
      # Explicit timestamps: without them the encoder's output varies from call to call.
      frame.pts, frame.time_base = index, 1 / rate
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  finally:
    container.close()


def encode_video_bytes(frames: np.ndarray, fps: float = 15, crf: int = 18,
                       pix_fmt: str = "yuv420p") -> bytes:
  """``write_video`` into memory; returns the mp4 file's bytes."""
  buffer = io.BytesIO()
  write_video(buffer, frames, fps=fps, crf=crf, pix_fmt=pix_fmt)
  return buffer.getvalue()


def decode_video_bytes(data: bytes, start: int = 0, stop: int | None = None,
                       stride: int = 1) -> np.ndarray:
  """``read_video`` from the bytes of an mp4 file."""
  return read_video(io.BytesIO(data), start=start, stop=stop, stride=stride)
