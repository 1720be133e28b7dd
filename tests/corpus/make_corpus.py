"""Write the hostile seed corpus next to this script: small files, each an attack from issue 11
or a classic of image fuzzing, and hostile videos (issue 23). Deterministic: running it again
writes the same bytes (the videos are encoded on one thread).

    python tests/corpus/make_corpus.py

tests/test_campaign_intake.py feeds every file here to the image intake (and uses them as
seeds to mutate), tests/test_video_hostile.py and tests/test_campaign_video.py the videos to
the video intake; a longer atheris run can start from them too (RELIABILITY.md).
"""

from __future__ import annotations

import io
import random
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import av
import numpy as np
from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # the builders of issue 22's files, beside the tests

import hostile_formats  # noqa: E402


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image of random pixels (nothing compresses it away)."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    """A baseline JPEG cut off halfway through its entropy-coded data."""
    data = encoded(noise((256, 256)), "JPEG", quality=80)
    return data[: len(data) // 2]


def huge_declared_png() -> bytes:
    """A 100-byte PNG whose header declares 100,000 x 100,000 pixels."""
    return png(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 64))


def bomb_png() -> bytes:
    """A decompression bomb: 1-bit 16,000 x 16,000 (32 MB of rows) of zeros in about 32 KB."""
    width = height = 16_000
    row = b"\x00" + b"\x00" * (width // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png(width, height, 1, 0, idat)


def many_scans_jpeg(repeats: int = 5000) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times (a real one has ~10
    scans; each extra one costs the decoder a pass over every coefficient). A flat picture
    keeps each scan a few bytes long."""
    data = encoded(Image.new("RGB", (256, 256), (90, 120, 150)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    body, end = data[last_scan:-2], data[-2:]
    assert end == b"\xff\xd9"
    return data[:-2] + body * repeats + end


def fill_bytes_jpeg(run: int = 60_000) -> bytes:
    """A JPEG with a long run of 0xFF fill bytes before its first scan (legal padding that
    decoders skip one byte at a time)."""
    data = encoded(noise((128, 128), seed=2), "JPEG", quality=50)
    scan = data.index(b"\xff\xda")
    return data[:scan] + b"\xff" * run + data[scan:]


def _frames() -> list[Image.Image]:
    benign = Image.new("RGB", (128, 128), (240, 240, 240))
    return [benign, Image.new("RGB", (128, 128), (200, 60, 60)), noise((128, 128), seed=4)]


def animated_webp() -> bytes:
    """An animated WebP whose benign first frame shows for 1 ms; the others for seconds."""
    first, *rest = _frames()
    return encoded(first, "WEBP", save_all=True, append_images=rest, duration=[1, 3000, 3000],
                   loop=0, quality=50)  # fmt: skip


def apng_hidden_default() -> bytes:
    """An APNG whose default image (not part of the animation, never shown) is benign."""
    first, *rest = _frames()
    return encoded(first, "PNG", save_all=True, append_images=rest, default_image=True,
                   duration=[1000, 1000, 1000])  # fmt: skip


def wrong_crc_png() -> bytes:
    """A PNG whose IDAT checksum is wrong (Pillow alone would not notice)."""
    data = bytearray(encoded(Image.radial_gradient("L").resize((128, 128)), "PNG"))
    end = data.index(b"IEND") - 4
    data[end - 1] ^= 0xFF  # the last byte of the IDAT's CRC
    return bytes(data)


# --- videos ---------------------------------------------------------------------------------


def video(
    seconds: float,
    *,
    fps: int = 10,
    size: tuple[int, int] = (64, 64),
    codec: str = "libx264",
    container: str = "matroska",
    blue: tuple[float, float] = (0.0, 0.0),
    streams: int = 1,
    muxer_options: dict[str, str] | None = None,
    pts: list[int] | None = None,
) -> bytes:
    """A video of red frames, blue from ``blue[0]`` to ``blue[1]`` seconds; ``streams`` copies
    of the video stream; ``pts`` replaces the frames' timestamps (in 1/fps). Written to a
    file: the MP4 muxer's faststart rereads what it wrote."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"video.{container}"
        _write_video(
            path,
            seconds,
            fps=fps,
            size=size,
            codec=codec,
            container=container,
            blue=blue,
            streams=streams,
            muxer_options=muxer_options,
            pts=pts,
        )
        return path.read_bytes()


def _write_video(
    path: Path,
    seconds: float,
    *,
    fps: int,
    size: tuple[int, int],
    codec: str,
    container: str,
    blue: tuple[float, float],
    streams: int,
    muxer_options: dict[str, str] | None,
    pts: list[int] | None,
) -> None:
    options = {"fflags": "+bitexact"} | (muxer_options or {})  # no random ids, no dates
    with av.open(str(path), "w", format=container, options=options) as muxer:
        tracks = []
        for _ in range(streams):
            # bitexact: no encoder version in the bytes, which differ between PyAV's wheels
            options = {"flags": "+bitexact"}
            if codec == "libx264":
                options |= {"preset": "ultrafast", "threads": "1"}
            if codec == "mjpeg":
                options |= {"threads": "1"}  # one slice order, the same bytes every run
            track = muxer.add_stream(codec, rate=fps, options=options)
            assert isinstance(track, av.VideoStream)
            track.width, track.height = size
            track.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
            tracks.append(track)
        count = round(seconds * fps)
        for index in range(count):
            colour = (0, 0, 255) if blue[0] <= index / fps < blue[1] else (255, 0, 0)
            pixels = np.full((size[1], size[0], 3), colour, np.uint8)
            for track in tracks:
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = index if pts is None else pts[index]
                muxer.mux(track.encode(frame))
        for track in tracks:
            muxer.mux(track.encode(None))


def huge_frame_webm() -> bytes:
    """A WebM whose header says its frames are 16384 x 16384 (and whose VP8 frame header says
    16383 x 16383, VP8's largest): 400 MB a frame, refused before a frame is decoded."""
    data = bytearray(video(0.2, size=(256, 256), codec="libvpx", container="webm"))
    for element in (b"\xb0", b"\xba"):  # PixelWidth, PixelHeight: 2-byte 256
        at = data.index(element + b"\x82\x01\x00")
        data[at + 2 : at + 4] = b"\x40\x00"
    at = data.index(b"\x9d\x01\x2a")  # the VP8 key frame's start code, then its size
    struct.pack_into("<HH", data, at + 3, 16383, 16383)
    return bytes(data)


def truncated_mp4() -> bytes:
    """An MP4 with its index first (faststart) cut off in the middle of its frame at 3.5 s of
    6 s: the frames it holds are judged, and the result says it is incomplete."""
    data = video(6.0, container="mp4", blue=(1.0, 2.0), muxer_options={"movflags": "faststart"})
    with av.open(io.BytesIO(data)) as container:
        entries = container.streams.video[0].index_entries
        cut = entries[35].pos + entries[35].size // 2
    return data[:cut]


def no_index_mp4() -> bytes:
    """An MP4 whose index (at the end, as cameras write it) was cut off: nothing to judge."""
    data = video(3.0, container="mp4")
    return data[: len(data) // 2]


def absurd_timestamps_mkv() -> bytes:
    """A Matroska whose last frames jump 10^7 seconds ahead: a 'duration' of months."""
    return video(1.0, pts=[*range(8), 10**8, 10**8 + 1])


def declared_short_mkv() -> bytes:
    """30 s of frames whose header declares 1 s, with blue from 20 s to 23 s: judged over the
    frames' 30 s, not the header's 1 s, so the blue stretch is found."""
    data = bytearray(video(30.0, fps=5, blue=(20.0, 23.0)))
    at = data.index(b"\x44\x89\x88")  # Duration, a double in milliseconds
    struct.pack_into(">d", data, at + 3, 1000.0)
    return bytes(data)


def declared_long_mkv() -> bytes:
    """2 s of frames whose header declares 10,000 s, over the limit: refused from the header."""
    data = bytearray(video(2.0))
    at = data.index(b"\x44\x89\x88")
    struct.pack_into(">d", data, at + 3, 10_000_000.0)
    return bytes(data)


def many_streams_mkv() -> bytes:
    """40 video streams in one file (at most 16 are accepted)."""
    return video(0.2, size=(16, 16), streams=40)


def frame_flood_mkv() -> bytes:
    """2,000 frames in one second (at most 240 a second are accepted)."""
    return video(1.0, fps=2000, size=(16, 16))


def unknown_codec_mkv() -> bytes:
    """A Matroska track whose codec FFmpeg does not know (found by atheris)."""
    data = video(0.5)
    return data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ")


def mjpeg_mkv() -> bytes:
    """Motion JPEG: a codec outside the list, refused unread."""
    return video(0.5, codec="mjpeg")


FILES = {
    "truncated.jpg": truncated_jpeg,
    "huge-declared-size.png": huge_declared_png,
    "bomb.png": bomb_png,
    "many-scans.jpg": many_scans_jpeg,
    "fill-bytes.jpg": fill_bytes_jpeg,
    "animated.webp": animated_webp,
    "apng-hidden-default.png": apng_hidden_default,
    "wrong-crc.png": wrong_crc_png,
    "video-huge-frame.webm": huge_frame_webm,
    "video-truncated.mp4": truncated_mp4,
    "video-no-index.mp4": no_index_mp4,
    "video-absurd-timestamps.mkv": absurd_timestamps_mkv,
    "video-declared-short.mkv": declared_short_mkv,
    "video-declared-long.mkv": declared_long_mkv,
    "video-many-streams.mkv": many_streams_mkv,
    "video-frame-flood.mkv": frame_flood_mkv,
    "video-mjpeg.mkv": mjpeg_mkv,
    "video-unknown-codec.mkv": unknown_codec_mkv,
    # issue 22: GIF, TIFF, HEIF and AVIF (tests/hostile_formats.py; the big ones are built by
    # tests/test_formats_hostile.py)
    "gif-huge-screen.gif": hostile_formats.gif_huge_screen,
    "gif-lying-frame.gif": hostile_formats.gif_lying_frame,
    "gif-5001-frames.gif": lambda: hostile_formats.gif_many_frames(5001),
    "gif-lzw-bomb.gif": lambda: hostile_formats.gif_lzw_bomb(1),
    "tiff-1000-pages.tif": lambda: hostile_formats.tiff_many_pages(1000),
    "tiff-lzw-bomb.tif": lambda: hostile_formats.tiff_lzw_bomb(1),
    "heif-10000-items.heic": hostile_formats.heif_declaring_items,
    "heif-lying-grid.heic": lambda: hostile_formats.heif_grid(16, 16, tiles=1),
    "heif-truncated.heic": hostile_formats.truncated_heic,
    "avif-million-frames.avif": hostile_formats.avif_endless_sequence,
}


def main() -> None:
    for name, make in FILES.items():
        data = make()
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
